"""Names are resolved at the exits, with their configured DNS upstream, and nowhere else."""

import harness

ASKED = "asked.shallot.test"
MISSING = "missing.shallot.test"


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
