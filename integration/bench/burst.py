#!/usr/bin/env python3
"""Bursts of concurrent streams through one Shallot client: how long N streams take when they
all start at once, and what they cost the client in memory. Prints a markdown table.

    python3 integration/bench/burst.py                  # 1,000 and 10,000 streams
    python3 integration/bench/burst.py --streams 2000   # one burst size
    python3 integration/bench/burst.py --no-build       # target/release/shallot is built

Each burst runs on a fresh network (5 relays, 2 exits, 1 client; the integration harness's
`Network`), so no circuit is ready when it starts. Every stream is a raw SOCKS5 CONNECT to a
local server (its own process, which answers any request with 64 KiB) and reads the whole
answer. The client runs with its defaults except `max_connections`, raised to take the whole
burst at once (the default 1,024 leaves the rest in the listen backlog). Reported: outcomes
(0 = all 64 KiB intact; other numbers are SOCKS reply codes, -1 a short body, -3 no end within
the bound), the time from the first connect to the last stream's end, the median and slowest
stream, and the client's RSS before, after, and at its peak (VmHWM). Speed is not asserted
anywhere: the integration test `test_load.py` asserts that every stream of a 1,000 burst
succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import harness  # noqa: E402  (the integration tests' harness)

PAYLOAD_BYTES = 64 * 1024
STREAM_LIMIT_SECS = 300.0

SERVER = r"""
import asyncio, sys
PAYLOAD = bytes((i * 131) % 251 for i in range(64 * 1024))
async def serve(reader, writer):
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
        writer.write(PAYLOAD)
        await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=16384)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        # Ends with its stdin (the benchmark), so it never outlives it.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""

PAYLOAD = bytes((i * 131) % 251 for i in range(PAYLOAD_BYTES))


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def one_stream(proxy, port: int) -> tuple[int, float]:
    start = time.monotonic()
    code = await harness.socks5_fetch_async(proxy, port, PAYLOAD)
    return code, time.monotonic() - start


async def burst(proxy, port: int, n: int):
    async def bounded():
        try:
            return await asyncio.wait_for(one_stream(proxy, port), STREAM_LIMIT_SECS)
        except asyncio.TimeoutError:
            return -3, STREAM_LIMIT_SECS

    start = time.monotonic()
    results = await asyncio.gather(*(bounded() for _ in range(n)))
    return results, time.monotonic() - start


def run(n: int, work: Path) -> dict:
    net = harness.Network(work / f"burst-{n}", relays_count=5, exits_count=2,
                          client_settings=[f"max_connections = {max(2 * n, 1024)}"])
    web = harness.WebServer(work)
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        net.start(web.port)
        pid = net.client.pid
        before = kib(pid, "VmRSS")
        results, took = asyncio.run(burst(net.socks, port, n))
        after = kib(pid, "VmRSS")
        peak = kib(pid, "VmHWM")
        net.check_alive()
    finally:
        net.stop()
        web.stop()
        server.stdin.close()
        server.wait(timeout=10)
    codes: dict[int, int] = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    times = sorted(t for _, t in results)
    return {
        "streams": n,
        "outcomes": dict(sorted(codes.items())),
        "seconds": took,
        "median_stream": times[len(times) // 2],
        "slowest_stream": times[-1],
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "rss_peak_mb": peak / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, action="append", help="burst size (repeatable); default 1000 and 10000")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build --release -p shallot")
    a = p.parse_args()
    sizes = a.streams or [1000, 10000]
    # Each stream holds two sockets in this process at most (one to the proxy; the server is
    # another process): make sure the limit allows the biggest burst.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * max(sizes) + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < max(sizes) + 256:
        sys.exit(f"the open-file limit ({hard}) is too low for {max(sizes)} streams")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "shallot"], cwd=harness.REPO, check=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shallot-burst-") as tmp:
        for n in sizes:
            print(f"burst of {n} streams ...", file=sys.stderr, flush=True)
            rows.append(run(n, Path(tmp)))
    print(f"| streams at once | outcomes | all ended after (s) | median stream (s) | slowest (s) | client RSS before / after / peak (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['streams']:,} | {r['outcomes']} | {r['seconds']:.2f} | {r['median_stream']:.2f} | "
            f"{r['slowest_stream']:.2f} | {r['rss_before_mb']:.1f} / {r['rss_after_mb']:.1f} / {r['rss_peak_mb']:.1f} |"
        )
    print(f"\n({os.cpu_count()} cores; 64 KiB per stream; fresh 5-relay network per burst)")


if __name__ == "__main__":
    main()
