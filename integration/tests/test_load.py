"""Loads a browser or a crawler puts on one client: a burst of concurrent streams, and many
isolation groups one after another (Tor Browser gives every first-party site its own SOCKS
credentials, so its own circuit).

Both run on a fresh network, so that no circuit is ready when the load starts: the client must
queue streams while it builds the circuits they need, and make room for a new isolation group
by closing circuits nobody uses, instead of refusing."""

from __future__ import annotations

import asyncio
import time

import harness

BURST_STREAMS = 1000
BURST_BYTES = 64 * 1024
# Every stream must end within this (an error path bound, not a speed target): a loaded 2-core
# machine carries the whole burst in a few seconds.
BURST_STREAM_LIMIT_SECS = 90.0
ISOLATION_GROUPS = 100


# Made once: generating it per stream would cost the test more time than Shallot takes.
PAYLOAD = bytes((i * 131) % 251 for i in range(BURST_BYTES))


async def _serve_payload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers any request with BURST_BYTES deterministic bytes, then closes."""
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        writer.write(PAYLOAD)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


async def _one_stream(proxy: tuple[str, int], port: int) -> tuple[int, float]:
    """One 64 KiB fetch through the proxy: (outcome of harness.socks5_fetch_async, seconds)."""
    start = time.monotonic()
    code = await harness.socks5_fetch_async(proxy, port, PAYLOAD)
    return code, time.monotonic() - start


async def _burst(proxy: tuple[str, int]) -> tuple[list[tuple[int, float]], float]:
    server = await asyncio.start_server(_serve_payload, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    async with server:
        start = time.monotonic()

        async def bounded() -> tuple[int, float]:
            try:
                return await asyncio.wait_for(_one_stream(proxy, port), BURST_STREAM_LIMIT_SECS)
            except asyncio.TimeoutError:
                return -3, BURST_STREAM_LIMIT_SECS

        results = await asyncio.gather(*(bounded() for _ in range(BURST_STREAMS)))
        return results, time.monotonic() - start


def test_burst_of_1000_concurrent_streams_all_succeed(make_network, record):
    """1,000 SOCKS5 streams at once through one fresh client, each fetching 64 KiB from a local
    server that takes them all: every one gets reply 0x00 and its 64 KiB intact. Codes: -1 a
    short or corrupt body, -2 a refused greeting, -3 no end within the bound."""
    net = make_network(relays_count=5, exits_count=2)
    results, took = asyncio.run(_burst(net.socks))
    codes: dict[int, int] = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    slowest = max(s for _, s in results)
    record(
        f"{BURST_STREAMS} concurrent streams of {BURST_BYTES // 1024} KiB: outcomes {dict(sorted(codes.items()))} "
        f"in {took:.2f} s, slowest stream {slowest:.2f} s"
    )
    net.check_alive()
    assert codes == {0: BURST_STREAMS}, (
        f"not every stream succeeded: {codes}; client log {net.client.log}:\n{harness.log_tail(net.client.log)}"
    )


def test_100_isolation_groups_one_after_another_all_fetch(make_network, web, record):
    """100 distinct SOCKS credentials one after another (Tor Browser's per-site isolation), each
    fetching a page: all 100 succeed, although each needs its own circuit and the client is set
    to keep at most 32 open (`max_circuits`; the default, 128, would hold them all), so idle
    circuits must be closed to make room."""
    net = make_network(relays_count=5, exits_count=2, client_settings=["max_circuits = 32"])
    failures = []
    start = time.monotonic()
    for i in range(ISOLATION_GROUPS):
        try:
            body = harness.http_get_via_socks(net.socks, "127.0.0.1", web.port, "/", timeout=30, auth=(f"site-{i}", "x"))
            if b"Shallot integration page" not in body:
                failures.append((i, "wrong body"))
        except (OSError, ConnectionError) as err:
            failures.append((i, str(err)))
    took = time.monotonic() - start
    circuits = len(net.status()["circuits"])
    record(
        f"{ISOLATION_GROUPS} isolation groups in a row: {ISOLATION_GROUPS - len(failures)} fetched in {took:.2f} s, "
        f"{circuits} circuits open at the end"
    )
    assert not failures, f"{len(failures)} groups failed, first: {failures[:5]}"


OPEN_SITES = 40


def test_40_isolated_sites_held_open_at_once_each_get_a_circuit(make_network, web, record):
    """A browser that isolates sites keeps an idle keep-alive connection open to each site it
    visited lately, so each site holds its circuit: 40 distinct SOCKS credentials, each with a
    connection to the web server that stays open while the next ones connect. Every one is
    connected (with the old default of 32 circuits, the 33rd waited `stream_timeout_secs` and
    got SOCKS reply 0x01: sites 33 to 40 were refused after 15.0 s each)."""
    net = make_network(relays_count=5, exits_count=2)
    held = []
    refused = []
    start = time.monotonic()
    try:
        for i in range(OPEN_SITES):
            reply = harness.socks5_connect(net.socks, "127.0.0.1", web.port, timeout=30, auth=(f"open-site-{i}", "x"))
            if reply.sock is None:
                refused.append((i + 1, f"{reply.code:#04x} after {reply.seconds:.1f} s"))
            else:
                held.append(reply.sock)
        took = time.monotonic() - start
        circuits = len(net.status()["circuits"])
    finally:
        for sock in held:
            sock.close()
    record(f"{OPEN_SITES} isolated sites held open at once: {len(held)} connected in {took:.2f} s, {circuits} circuits open")
    assert not refused, f"sites refused (number, reply): {refused[:5]}"
