"""Names are resolved at the exits, with their configured DNS upstream, and nowhere else."""

import socket

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import harness

ASKED = "asked.shallot.test"
MISSING = "missing.shallot.test"
V6_NAME = "six.shallot.test"
V6_ADDR = "2001:db8::7"
PTR_ADDR = "192.0.2.55"
PTR_NAME = "reverse.shallot.test"
# The exits clip every TTL the upstream gives (5 s) to this (specs/03 §4.10).
CLIPPED_TTL = 300
# A lookup may wait for a circuit of the DNS port's own isolation group to be built.
DNS_PORT_TIMEOUT = 30
# A valid .shallot address (crates/shallot-onion's vector), one with a typo, and a Tor name.
ONION_ADDRESS = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkendnxqb.shallot"
ONION_TYPO = ONION_ADDRESS.replace("25nj", "25nk", 1)
TOR_ONION = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"


def test_dns_names_resolve_only_at_exits(make_network, web):
    """A local DNS server (the test's own, on 127.0.0.1) is the exits' only upstream. The client
    is asked for one name that resolves, one that does not, one IP literal and `localhost`.

    Proves: (1) the exits resolve names with their upstream (the page loads by a name only that
    server knows); (2) every query the server gets comes from a socket held by an exit process,
    never by the client or a non-exit relay (the server looks the source port up in
    /proc/net/udp and finds which process holds that socket while the query waits for its
    answer); (3) the server sees exactly the names the client was asked for: no IP literal, no
    `localhost` (exits answer it themselves), and nothing else."""
    dns = harness.DnsServer({ASKED: "127.0.0.1"})
    try:
        net = make_network(relays_count=5, exits_count=2, dns_upstream=dns.addr)
        exits = {r.proc.pid: r.name for r in net.relays if r.is_exit}
        others = {r.proc.pid: r.name for r in net.relays if not r.is_exit}
        others[net.client.pid] = "client"
        dns.watched_pids = list(exits) + list(others)
        assert dns.queries == [], f"queries before any name was asked for: {dns.queries}"

        body = harness.http_get_via_socks(net.socks, ASKED, web.port, "/")
        assert b"Shallot integration page" in body
        reply = harness.socks5_connect(net.socks, MISSING, web.port)
        assert reply.code == 0x04, f"{MISSING}: SOCKS reply {reply.code:#04x} ({reply.name}), expected 0x04"
        harness.http_get_via_socks(net.socks, "127.0.0.1", web.port, "/")
        harness.http_get_via_socks(net.socks, "localhost", web.port, "/")

        queries = list(dns.queries)
        names = {q.name for q in queries}
        assert ASKED in names, f"the exits never asked for {ASKED}: {queries}"
        assert MISSING in names, f"the exits never asked for {MISSING}: {queries}"
        assert names == {ASKED, MISSING}, f"queries for names the client was not asked for: {names - {ASKED, MISSING}}"
        for q in queries:
            who = exits.get(q.owner_pid) or others.get(q.owner_pid) or f"an unknown process (pid {q.owner_pid})"
            assert q.owner_pid in exits, f"query for {q.name} from {q.source} was sent by {who}, not by an exit"
        print(f"{len(queries)} queries, all from exits: " + ", ".join(sorted({exits[q.owner_pid] for q in queries})))
    finally:
        dns.stop()


def test_dns_server_attributes_queries_to_processes():
    """The instrument the test above relies on: a query from this process is attributed to
    this process, and a query from a process not watched is attributed to none."""
    import os
    import socket
    import struct

    dns = harness.DnsServer({ASKED: "127.0.0.1"})
    try:
        query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
        query += b"".join(bytes([len(p)]) + p.encode() for p in ASKED.split(".")) + b"\x00" + struct.pack(">HH", 1, 1)
        for watched, expected in (([os.getpid()], os.getpid()), ([1], None)):
            dns.watched_pids = watched
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(query, dns.addr)
                answer, _ = s.recvfrom(512)
            assert answer[:2] == b"\x00\x07" and answer[-4:] == socket.inet_aton("127.0.0.1")
            assert dns.queries[-1].owner_pid == expected
    finally:
        dns.stop()


def _ask(port: int, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", port=port, timeout=DNS_PORT_TIMEOUT)


def _records(answer: dns.message.Message, rdtype: str) -> list[tuple[str, int]]:
    return [
        (rdata.to_text(), rrset.ttl)
        for rrset in answer.answer
        if rrset.rdtype == dns.rdatatype.from_text(rdtype)
        for rdata in rrset
    ]


def test_dns_port_answers_through_exits_over_udp_and_tcp(make_network):
    """The client's `dns_listen` port (specs/07 §8), with the test's DNS server as the exits'
    only upstream. Proves: A, AAAA and PTR answers over UDP and TCP equal what the upstream
    knows, with the exits' clipped TTL; an unknown name is NXDOMAIN; MX is NOTIMP and never
    reaches the upstream; `.shallot` and `.onion` names are NXDOMAIN and never reach it; two
    questions are FORMERR; and every query the upstream saw came from an exit process, none
    from the client (it resolves nothing itself)."""
    reverse = dns.reversename.from_address(PTR_ADDR).to_text()
    upstream = harness.DnsServer({ASKED: "127.0.0.1", V6_NAME: V6_ADDR}, ptr={reverse: PTR_NAME})
    try:
        port = harness.free_port()
        net = make_network(
            relays_count=5,
            exits_count=2,
            dns_upstream=upstream.addr,
            client_settings=[f'dns_listen = "127.0.0.1:{port}"'],
        )
        exits = {r.proc.pid: r.name for r in net.relays if r.is_exit}
        others = {r.proc.pid: r.name for r in net.relays if not r.is_exit}
        others[net.client.pid] = "client"
        upstream.watched_pids = list(exits) + list(others)

        first = _ask(port, ASKED, "A")
        assert first.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(first.rcode())
        assert first.flags & dns.flags.RA
        assert _records(first, "A") == [("127.0.0.1", CLIPPED_TTL)], first.to_text()
        over_tcp = _ask(port, ASKED, "A", tcp=True)
        assert [a for a, _ in _records(over_tcp, "A")] == ["127.0.0.1"], over_tcp.to_text()
        assert all(0 < ttl <= CLIPPED_TTL for _, ttl in _records(over_tcp, "A"))

        six = _ask(port, V6_NAME, "AAAA", tcp=True)
        assert [a for a, _ in _records(six, "AAAA")] == [V6_ADDR], six.to_text()
        no_six = _ask(port, ASKED, "AAAA")
        assert no_six.rcode() == dns.rcode.NOERROR and not no_six.answer, no_six.to_text()

        ptr = _ask(port, reverse, "PTR")
        assert [a for a, _ in _records(ptr, "PTR")] == [PTR_NAME + "."], ptr.to_text()

        for tcp in (False, True):
            missing = _ask(port, MISSING, "A", tcp=tcp)
            assert missing.rcode() == dns.rcode.NXDOMAIN, dns.rcode.to_text(missing.rcode())
        # Onion names (RFC 7686 and specs/09): NXDOMAIN from the client itself; the `names`
        # check below shows they never reached the upstream.
        for onion in (ONION_ADDRESS, "www." + ONION_ADDRESS, ONION_TYPO, TOR_ONION):
            answer = _ask(port, onion, "A")
            assert answer.rcode() == dns.rcode.NXDOMAIN, f"{onion}: {dns.rcode.to_text(answer.rcode())}"
        mx = _ask(port, ASKED, "MX")
        assert mx.rcode() == dns.rcode.NOTIMP, dns.rcode.to_text(mx.rcode())

        two = bytearray(dns.message.make_query(ASKED, "A").to_wire())
        two[4:6] = (2).to_bytes(2, "big")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(DNS_PORT_TIMEOUT)
            s.sendto(bytes(two), ("127.0.0.1", port))
            reply, _ = s.recvfrom(512)
        assert reply[:2] == two[:2] and reply[3] & 0x0F == dns.rcode.FORMERR

        queries = list(upstream.queries)
        assert queries, "the upstream saw no query"
        assert 15 not in {q.qtype for q in queries}, "an MX query reached the upstream"
        names = {q.name for q in queries}
        assert names <= {ASKED, V6_NAME, MISSING, reverse.lower().rstrip(".")}, names
        for q in queries:
            who = exits.get(q.owner_pid) or others.get(q.owner_pid) or f"an unknown process (pid {q.owner_pid})"
            assert q.owner_pid in exits, f"query for {q.name} from {q.source} was sent by {who}, not by an exit"
        print(f"{len(queries)} upstream queries, all from exits")
    finally:
        upstream.stop()
