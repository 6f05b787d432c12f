"""Refusals come back as the right SOCKS5 reply (specs/07 §5), within 1 s, with no hang.

Each test makes one raw SOCKS5 CONNECT and times it from sending the request to reading the
reply; the 1 s bound is a correctness requirement on these error paths (an error, not a hang)."""

import harness

ERROR_BOUND_SECS = 1.0


def check(network, host, port, expected, record):
    reply = harness.socks5_connect(network.socks, host, port, timeout=30)
    record(f"SOCKS reply {reply.code:#04x} ({reply.name}) for {host}:{port} after {reply.seconds:.3f} s")
    assert reply.code == expected, (
        f"expected {expected:#04x} ({harness.SOCKS_REPLY_NAMES[expected]}), got {reply.code:#04x} ({reply.name})"
    )
    assert reply.seconds <= ERROR_BOUND_SECS, f"the error took {reply.seconds:.3f} s (bound {ERROR_BOUND_SECS} s)"


def test_socks_error_policy_refused(network, record):
    """A port the exits' policy rejects (`reject *:9`): 0x02, connection not allowed by ruleset."""
    check(network, "127.0.0.1", harness.REFUSED_PORT, 0x02, record)


def test_socks_error_closed_port(network, record):
    """A port nobody listens on: the exit's connect is refused, so 0x05, connection refused."""
    port = harness.free_port()
    check(network, "127.0.0.1", port, 0x05, record)


def test_socks_error_unresolvable_name(network, web, record):
    """A name the exits' DNS server answers NXDOMAIN for: 0x04, host unreachable."""
    check(network, "no-such-host.shallot.test", web.port, 0x04, record)


def test_socks_error_unresolvable_name_without_dns(make_network, web, record):
    """An exit without `dns_upstreams` resolves only localhost: any other name gives 0x04."""
    net = make_network(relays_count=4, exits_count=1)
    check(net, "example.invalid", web.port, 0x04, record)
    # The same network still serves names it can resolve.
    assert b"Shallot integration page" in harness.http_get_via_socks(net.socks, "localhost", web.port)
