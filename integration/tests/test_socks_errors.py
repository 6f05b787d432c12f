"""Refusals come back as the right SOCKS5 reply (specs/07 §5), promptly, with no hang.

Each test makes one raw SOCKS5 CONNECT and times it from sending the request to reading the
reply. An error path must not wait for any timer: it takes no longer than a successful CONNECT
on the same network (the same round trip to the exit and back), with 1 s to spare. The
successful CONNECT is measured just before, so a loaded machine slows both alike; a hang would
end only at the client's 15 s stream timeout, far above the bound."""

import harness

ERROR_SLACK_SECS = 1.0


def success_time(network, web) -> float:
    """The reply time of a successful CONNECT to the web server on this network now."""
    reply = harness.socks5_connect(network.socks, "127.0.0.1", web.port, timeout=30)
    assert reply.sock is not None, f"a CONNECT to the web server failed: {reply.name}"
    reply.sock.close()
    return reply.seconds


def check(network, web, host, port, expected, record):
    baseline = success_time(network, web)
    bound = ERROR_SLACK_SECS + baseline
    reply = harness.socks5_connect(network.socks, host, port, timeout=30)
    record(
        f"SOCKS reply {reply.code:#04x} ({reply.name}) for {host}:{port} after {reply.seconds:.3f} s "
        f"(a success took {baseline:.3f} s; bound {bound:.3f} s)"
    )
    assert reply.code == expected, (
        f"expected {expected:#04x} ({harness.SOCKS_REPLY_NAMES[expected]}), got {reply.code:#04x} ({reply.name})"
    )
    assert reply.seconds <= bound, f"the error took {reply.seconds:.3f} s (bound {bound:.3f} s)"


def test_socks_error_policy_refused(network, web, record):
    """A port the exits' policy rejects (`reject *:9`): 0x02, connection not allowed by ruleset."""
    check(network, web, "127.0.0.1", harness.REFUSED_PORT, 0x02, record)


def test_socks_error_closed_port(network, web, record):
    """A port nobody listens on: the exit's connect is refused, so 0x05, connection refused."""
    port = harness.free_port()
    check(network, web, "127.0.0.1", port, 0x05, record)


def test_socks_error_unresolvable_name(network, web, record):
    """A name the exits' DNS server answers NXDOMAIN for: 0x04, host unreachable."""
    check(network, web, "no-such-host.shallot.test", web.port, 0x04, record)


def test_socks_error_unresolvable_name_without_dns(make_network, web, record):
    """An exit without `dns_upstreams` resolves only localhost: any other name gives 0x04."""
    net = make_network(relays_count=4, exits_count=1)
    check(net, web, "example.invalid", web.port, 0x04, record)
    # The same network still serves names it can resolve.
    assert b"Shallot integration page" in harness.http_get_via_socks(net.socks, "localhost", web.port)


# The key of rend-spec-v3's example, as a .shallot address (crates/shallot-onion's vector).
ONION_ADDRESS = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkendnxqb.shallot"


def test_onion_names_never_reach_an_exit(network, web, shared_dns, record):
    """A .shallot name that is no address (0xF6), an onion service address (0xF0: not
    reachable yet) and a Tor .onion name (0x04) are refused by the client itself: none of them
    is ever sent to an exit, whose resolver would ask the DNS and tell it which service the user
    wanted (RFC 7686)."""
    typo = ONION_ADDRESS.replace("25nj", "25nk", 1)
    tor = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"
    asked = len(shared_dns.queries)
    check(network, web, typo, 80, 0xF6, record)
    check(network, web, "www." + ONION_ADDRESS, 80, 0xF0, record)
    check(network, web, tor, 80, 0x04, record)
    leaked = [q.name for q in shared_dns.queries[asked:] if q.name.endswith((".shallot", ".onion"))]
    assert not leaked, f"the exits asked the DNS for {leaked}"
