"""The relay's memory budget (specs/00 §4.5, Tor's MaxMemInQueues) against a client that pins
memory at an exit: 1,000 streams to a destination that sends as fast as it can, none of them
ever read. Flow control stops each stream at its window, but what the exit already read from
the destination waits there for a client that never takes it; without a budget the exit's
memory grows with the number of such streams. With one the exit destroys the circuits whose
data has waited longest once its circuits hold more than `max_queued_bytes`, and a download
that does read, on a circuit of its own through the same exit, carries on."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import socket
import struct
import subprocess
import threading
import time

import harness

ATTACK_STREAMS = 1000
# Opening streams in parallel at most this many at a time (the client queues the rest anyway).
ATTACK_PARALLEL = 100
# The exit's budget in this test: small enough that the attack passes it many times over.
BUDGET_BYTES = 16 << 20
# What the destination sends per connection at most, and for how long it tries.
FLOOD_BYTES_PER_STREAM = 8 << 20
FLOOD_SECS = 120.0
CHUNK = bytes(range(256)) * 256
# The exit's memory beyond its idle size that is not queued data: the state of the 1,000
# streams and their circuits (tasks, sockets, stream and circuit state, a few KiB each), and
# the allocator's slack. Measured about 10 MiB; this leaves room for a loaded machine.
OVERHEAD_ALLOWANCE_BYTES = 40 << 20
# How long the attack's streams are held open after the last one was opened, while the exit's
# memory is sampled.
HOLD_SECS = 10.0
SAMPLE_EVERY_SECS = 0.25
RECLAIM_LOG = "destroyed the circuits whose data waited longest"
# The quiet-streams test: what each destination sends once before it goes quiet, and the
# exit's growth allowed per quiet stream (its state: tasks, socket, stream and circuit
# records; a read buffer held while waiting would be EXIT_READ_CHUNK, 64 KiB, more).
QUIET_STREAMS = 1000
QUIET_BURST = len(CHUNK)
QUIET_ALLOWANCE_PER_STREAM = 24 * 1024


class BurstServer:
    """A TCP server on 127.0.0.1 that sends every connection QUIET_BURST bytes once, then holds
    it open, quiet, until the client closes it (for FLOOD_SECS at most)."""

    def __init__(self) -> None:
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.2)
        self.done = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + FLOOD_SECS
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            try:
                conn.sendall(CHUNK)
            except OSError:
                conn.close()
                continue
            self.held.append(conn)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.listener.close()


class FloodServer:
    """A TCP server on 127.0.0.1 that sends every connection bytes as fast as the connection
    takes them (up to FLOOD_BYTES_PER_STREAM, for FLOOD_SECS at most), reading nothing."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise AssertionError("the flood server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1

        async def flood() -> None:
            sent = 0
            while sent < FLOOD_BYTES_PER_STREAM:
                writer.write(CHUNK)
                await writer.drain()
                sent += len(CHUNK)

        try:
            await asyncio.wait_for(flood(), FLOOD_SECS)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _shutdown(self) -> None:
        self.server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class RssSampler:
    """Samples a process's resident memory every SAMPLE_EVERY_SECS until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.start = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY_SECS):
            try:
                self.samples.append((time.monotonic() - self.start, rss_bytes(self.pid)))
            except (OSError, AssertionError):
                return

    def stop(self) -> list[tuple[float, int]]:
        self.done.set()
        self.thread.join(5)
        return self.samples


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = await loop.sock_recv(sock, n - len(data))
        if not more:
            raise ConnectionError("the proxy closed the connection")
        data += more
    return data


async def _open_unread_stream(proxy: tuple[str, int], port: int, sockets: list[socket.socket]) -> int:
    """A SOCKS5 CONNECT to 127.0.0.1:port whose reply is read and nothing after it. The socket's
    receive buffer is small, so the stream's window, not the kernel, holds the destination
    back. Returns the SOCKS reply code (-1: the proxy closed, -2: no reply in time)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, proxy)
        await loop.sock_sendall(sock, b"\x05\x01\x00")
        if await _recv_exact(loop, sock, 2) != b"\x05\x00":
            sock.close()
            return -1
        await loop.sock_sendall(sock, b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
        head = await _recv_exact(loop, sock, 4)
        await _recv_exact(loop, sock, {1: 6, 4: 18}.get(head[3], 6))
    except (OSError, ConnectionError):
        sock.close()
        return -1
    sockets.append(sock)
    return head[1]


async def _attack(proxy: tuple[str, int], port: int, sockets: list[socket.socket]) -> dict[int, int]:
    gate = asyncio.Semaphore(ATTACK_PARALLEL)

    async def one() -> int:
        async with gate:
            try:
                return await asyncio.wait_for(_open_unread_stream(proxy, port, sockets), 60)
            except asyncio.TimeoutError:
                return -2

    codes: dict[int, int] = {}
    for code in await asyncio.gather(*(one() for _ in range(ATTACK_STREAMS))):
        codes[code] = codes.get(code, 0) + 1
    return codes


def _reclaims(log: str) -> list[dict[str, int]]:
    """The exit's reclaim warnings, as {field: value} of their numeric fields."""
    found = []
    for line in log.splitlines():
        if RECLAIM_LOG in line:
            found.append({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)})
    return found


def test_unread_exit_streams_stay_within_the_exit_memory_budget(make_network, web, site, tmp_path, output_dir, record):
    """1,000 streams that are never read, to a destination that sends fast: the exit's RSS stays
    under its idle RSS plus the budget plus a stated allowance for the streams' own state; the
    circuits whose data waited longest are destroyed and the exit counts them in its log; a
    download that reads, through the same exit at the same time, arrives whole."""
    curl = shutil.which("curl")
    assert curl, "curl is not installed: install Debian's curl package"
    net = make_network(relays_count=4, exits_count=1, exit_settings=[f"max_queued_bytes = {BUDGET_BYTES}"])
    exit_relay = net.relays[-1]
    assert exit_relay.is_exit and exit_relay.proc
    pid = exit_relay.proc.popen.pid
    idle_rss = rss_bytes(pid)
    server = FloodServer()
    sampler = RssSampler(pid)
    sockets: list[socket.socket] = []
    honest_out = tmp_path / "honest.bin"
    # Its own credentials, so its own circuit; slowed down so that it runs through the attack.
    honest = subprocess.Popen(
        [curl, "-sS", "--fail", "--max-time", "150", "--limit-rate", "5M",
         "--proxy", f"socks5h://honest:x@{net.socks[0]}:{net.socks[1]}",
         f"http://localhost:{web.port}/big.bin", "-o", str(honest_out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        codes = asyncio.run(_attack(net.socks, server.port, sockets))
        opened = time.monotonic()
        time.sleep(HOLD_SECS)
        samples = sampler.stop()
        try:
            _, honest_err = honest.communicate(timeout=160)
        except subprocess.TimeoutExpired:
            honest.kill()
            _, honest_err = honest.communicate()
        net.check_alive()
        peak = max(rss for _, rss in samples)
        log = exit_relay.proc.log.read_text(errors="replace")
        reclaims = _reclaims(log)
        destroyed = sum(r.get("destroyed", 0) for r in reclaims)
        with open(output_dir / "exit_rss.csv", "w") as f:
            f.write("seconds,rss_bytes\n")
            for t, rss in samples:
                f.write(f"{t:.2f},{rss}\n")
        series = " ".join(f"{t:.0f}s:{rss / 2**20:.0f}" for t, rss in samples[:: max(1, len(samples) // 12)])
        record(
            f"{ATTACK_STREAMS} unread streams (SOCKS replies {dict(sorted(codes.items()))}, "
            f"{server.connections} reached the destination) against a {BUDGET_BYTES >> 20} MiB budget: "
            f"exit RSS idle {idle_rss / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB "
            f"(+{(peak - idle_rss) / 2**20:.1f} MiB); {len(reclaims)} reclaims destroyed {destroyed} circuits; "
            f"RSS MiB over time {series}; held {time.monotonic() - opened:.0f} s"
        )
        assert server.connections >= ATTACK_STREAMS // 2, (
            f"only {server.connections} streams reached the destination: the attack did not happen "
            f"(SOCKS replies {codes})"
        )
        assert reclaims and destroyed >= 1, (
            f"the exit never destroyed a circuit over its budget; exit log {exit_relay.proc.log}:\n"
            f"{harness.log_tail(exit_relay.proc.log)}"
        )
        assert peak <= idle_rss + BUDGET_BYTES + OVERHEAD_ALLOWANCE_BYTES, (
            f"the exit's RSS reached {peak / 2**20:.1f} MiB, above idle {idle_rss / 2**20:.1f} MiB + budget "
            f"{BUDGET_BYTES >> 20} MiB + allowance {OVERHEAD_ALLOWANCE_BYTES >> 20} MiB"
        )
        assert honest.returncode == 0, f"the honest download failed ({honest.returncode}): {honest_err}"
        digest = hashlib.sha256(honest_out.read_bytes()).hexdigest()
        assert digest == site[1]["big.bin"], "the honest download arrived corrupt"
    finally:
        for s in sockets:
            s.close()
        sampler.stop()
        server.stop()
        if honest.poll() is None:
            honest.kill()
            honest.wait()
    # Once the attack is gone, a fresh stream through the same exit works.
    body = harness.http_get_via_socks(net.socks, "127.0.0.1", web.port, "/", timeout=30, auth=("after", "x"))
    assert b"Shallot integration page" in body


async def _open_and_drain(proxy: tuple[str, int], port: int, sockets: list[socket.socket]) -> int:
    """A SOCKS5 CONNECT to 127.0.0.1:port that reads the destination's whole burst, then keeps
    the stream open, quiet. Returns the SOCKS reply code (-1: failed, -2: short burst)."""
    loop = asyncio.get_running_loop()
    code = await _open_unread_stream(proxy, port, sockets)
    if code != 0:
        return code
    sock = sockets[-1]
    try:
        await _recv_exact(loop, sock, QUIET_BURST)
    except (OSError, ConnectionError):
        return -2
    return 0


def test_quiet_exit_streams_hold_no_read_buffer(make_network, record):
    """1,000 exit streams whose destinations each send 64 KiB, which the client reads, and then
    go quiet: nothing is queued anywhere, and the exit must not keep a 64 KiB read buffer per
    stream while it waits for more (memory no budget counts: the exit held one per quiet
    stream before its reader dropped the buffer before waiting). The exit's RSS may grow by
    QUIET_ALLOWANCE_PER_STREAM per stream at most."""
    net = make_network(relays_count=4, exits_count=1)
    exit_relay = net.relays[-1]
    assert exit_relay.is_exit and exit_relay.proc
    pid = exit_relay.proc.popen.pid
    idle_rss = rss_bytes(pid)
    server = BurstServer()
    sockets: list[socket.socket] = []
    try:

        async def run() -> dict[int, int]:
            gate = asyncio.Semaphore(ATTACK_PARALLEL)

            async def one() -> int:
                async with gate:
                    try:
                        return await asyncio.wait_for(_open_and_drain(net.socks, server.port, sockets), 60)
                    except asyncio.TimeoutError:
                        return -3

            codes: dict[int, int] = {}
            for code in await asyncio.gather(*(one() for _ in range(QUIET_STREAMS))):
                codes[code] = codes.get(code, 0) + 1
            return codes

        codes = asyncio.run(run())
        time.sleep(2)
        quiet_rss = rss_bytes(pid)
        grown = quiet_rss - idle_rss
        record(
            f"{QUIET_STREAMS} quiet exit streams after a {QUIET_BURST // 1024} KiB burst each (outcomes "
            f"{dict(sorted(codes.items()))}): exit RSS idle {idle_rss / 2**20:.1f} MiB, with them "
            f"{quiet_rss / 2**20:.1f} MiB (+{grown / 1024 / QUIET_STREAMS:.1f} KiB per stream)"
        )
        assert codes.get(0, 0) >= QUIET_STREAMS * 9 // 10, f"too few streams opened and drained: {codes}"
        assert grown <= QUIET_STREAMS * QUIET_ALLOWANCE_PER_STREAM, (
            f"the exit grew {grown / 1024 / QUIET_STREAMS:.1f} KiB per quiet stream, above "
            f"{QUIET_ALLOWANCE_PER_STREAM // 1024} KiB: does it hold a read buffer while it waits?"
        )
        net.check_alive()
    finally:
        for s in sockets:
            s.close()
        server.stop()
