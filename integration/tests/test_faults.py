"""Faults: `kill -9` a relay of the circuit carrying a 50 MiB download.

Each test starts a fresh network (6 relays, 2 exits), starts a download of the 50 MiB file
through the proxy, finds the circuit carrying it in the client's `GET /status` (hops[0] =
guard, hops[1] = middle, hops[2] = exit), and `kill -9`s the relay in the position under test.
The download is a raw SOCKS5 stream read by the test itself at about 4 MiB/s until the kill
(so that the kill lands mid-transfer) and as fast as it can after it, so that what the sockets
already buffer drains at once: the time from the kill to the stream's end is then the client's,
not the reader's, and it must be at most 5 s (an error, not a hang; a hang would last until the
test gives up after 60 s). The requests after the kill use curl, as a user would."""

import hashlib
import shutil
import subprocess
import threading
import time

import harness

ERROR_BOUND_SECS = 5.0
# How long the download may take to end at most before the test gives up on it (and fails).
GIVE_UP_SECS = 60.0
# The download reads at most READ_CHUNK bytes, then pauses READ_PAUSE_SECS: about 4 MiB/s.
READ_CHUNK = 64 * 1024
READ_PAUSE_SECS = 0.016
# Longest the client may take, after the download failed, to drop its circuits through the dead relay.
SETTLE_SECS = 5.0


def curl() -> str:
    path = shutil.which("curl")
    assert path, "curl is not installed: install Debian's curl package"
    return path


class Download:
    """GET /big.bin by name through the proxy on a raw SOCKS5 stream, read in a thread at about
    4 MiB/s. `ended_at` is when the stream ended (EOF or error), `got` the body bytes read."""

    def __init__(self, net, web):
        reply = harness.socks5_connect(net.socks, "localhost", web.port, timeout=30)
        assert reply.sock is not None, f"the download's CONNECT failed: {reply.name}"
        self.sock = reply.sock
        self.sock.settimeout(GIVE_UP_SECS)
        self.sock.sendall(f"GET /big.bin HTTP/1.0\r\nHost: localhost:{web.port}\r\n\r\n".encode())
        self.got = 0
        self.length = None
        self.ended_at = None
        self.error = None
        self.throttle = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        head = b""
        try:
            for _ in range(1_000_000):
                chunk = self.sock.recv(READ_CHUNK)
                if not chunk:
                    break
                if self.length is None:
                    head += chunk
                    if b"\r\n\r\n" not in head:
                        continue
                    head, _, body = head.partition(b"\r\n\r\n")
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            self.length = int(line.split(b":")[1])
                    chunk = body
                self.got += len(chunk)
                if self.throttle:
                    time.sleep(READ_PAUSE_SECS)
        except OSError as err:
            self.error = err
        finally:
            self.ended_at = time.monotonic()
            self.sock.close()

    def wait_for_bytes(self, at_least: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 1):
            if self.got >= at_least:
                return
            if self.ended_at is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"the download did not reach {at_least} bytes within {timeout} s ({self.got} read)")

    def wait_end(self) -> float:
        self.thread.join(timeout=GIVE_UP_SECS)
        if self.ended_at is None:
            raise AssertionError(f"the download still runs {GIVE_UP_SECS} s after the kill: a hang")
        return self.ended_at

    def complete(self) -> bool:
        return self.length is not None and self.got >= self.length


def carrying_circuit(net) -> dict:
    """The one circuit with a stream (the download) in /status; bounded wait."""
    last = None
    for _ in range(50):
        last = net.status()
        busy = [c for c in last["circuits"] if c["streams"] > 0]
        if len(busy) == 1:
            assert len(busy[0]["hops"]) == 3, f"not a 3-hop circuit: {busy[0]}"
            return busy[0]
        time.sleep(0.1)
    raise AssertionError(f"no single circuit carries the download in /status: {last}")


def kill_during_download(net, web, position: int, record) -> tuple[harness.Relay, dict]:
    """Kills hops[position] of the download's circuit; asserts the download fails within the bound."""
    download = Download(net, web)
    download.wait_for_bytes(2 << 20)
    circuit = carrying_circuit(net)
    victim = net.relay_by_peer(circuit["hops"][position])
    role = ("guard", "middle", "exit")[position]
    assert victim.proc.alive(), f"{victim.name} is already dead"
    download.throttle = False
    start = time.monotonic()
    victim.proc.kill9()
    seconds = download.wait_end() - start
    how = f"error {download.error}" if download.error else "end of stream"
    record(
        f"killed the {role} ({victim.name}) at {download.got >> 20} MiB; the download ended ({how}) "
        f"{seconds:.3f} s later (bound {ERROR_BOUND_SECS} s)"
    )
    assert download.length == harness.BIG_FILE_MIB << 20, f"unexpected Content-Length {download.length}"
    assert not download.complete(), "the download finished before the kill; the test proved nothing"
    assert seconds <= ERROR_BOUND_SECS, f"the download took {seconds:.3f} s to fail after the {role} died"
    return victim, circuit


def fetch_small(net, web, site, max_time=30, user=None) -> subprocess.CompletedProcess:
    """GET /small.bin by name; `user` sends SOCKS5 credentials, which isolate it on its own circuit."""
    auth = ["--proxy-user", f"{user}:x"] if user else []
    result = subprocess.run(
        [curl(), "-sS", "--fail", "--max-time", str(max_time), "--socks5-hostname", f"{net.socks[0]}:{net.socks[1]}",
         *auth, f"http://localhost:{web.port}/small.bin"],
        capture_output=True, timeout=max_time + 30,
    )
    if result.returncode == 0:
        assert hashlib.sha256(result.stdout).hexdigest() == site[1]["small.bin"], "wrong bytes"
    return result


def assert_next_request_on_new_circuit(net, web, site, victim, old_circuit, record):
    """After a bounded settle (until /status lists no circuit through the dead relay, at most
    SETTLE_SECS), the next request succeeds on a new circuit, and no open circuit uses the dead
    relay."""
    settle_start = time.monotonic()
    for _ in range(int(SETTLE_SECS / 0.1) + 1):
        if all(victim.peer_id not in c["hops"] for c in net.status()["circuits"]):
            break
        if time.monotonic() - settle_start > SETTLE_SECS:
            break
        time.sleep(0.1)
    record(f"client dropped circuits through the dead relay within {time.monotonic() - settle_start:.3f} s")
    start = time.monotonic()
    result = fetch_small(net, web, site)
    assert result.returncode == 0, f"the next request after the kill failed: curl {result.returncode}: {result.stderr.decode().strip()}"
    record(f"the next request succeeded {time.monotonic() - start:.3f} s later")
    circuits = net.status()["circuits"]
    assert all(c["id"] != old_circuit["id"] for c in circuits), f"the broken circuit is still listed: {circuits}"
    assert all(victim.peer_id not in c["hops"] for c in circuits), f"a circuit still uses the dead relay: {circuits}"
    net.check_alive()


def test_fault_kill_middle_during_download(make_network, web, site, record):
    """kill -9 the middle relay: the download fails within 5 s, the next request succeeds on a new circuit."""
    net = make_network()
    victim, circuit = kill_during_download(net, web, 1, record)
    assert_next_request_on_new_circuit(net, web, site, victim, circuit, record)


def test_fault_kill_exit_during_download(make_network, web, site, record):
    """kill -9 the exit: the download fails within 5 s, the next request succeeds on a new circuit."""
    net = make_network()
    victim, circuit = kill_during_download(net, web, 2, record)
    assert_next_request_on_new_circuit(net, web, site, victim, circuit, record)


def test_fault_kill_guard_client_recovers(make_network, web, site, record):
    """kill -9 the client's guard (hops[0] of the download's circuit): the download fails within 5 s, and
    the client recovers through another guard: a request succeeds within 60 s (bounded
    attempts), on a circuit whose first hop is not the dead guard."""
    net = make_network()
    victim, _ = kill_during_download(net, web, 0, record)
    start = time.monotonic()
    errors = []
    for attempt in range(1, 31):
        result = fetch_small(net, web, site, max_time=20)
        if result.returncode == 0:
            break
        errors.append(result.stderr.decode().strip())
        if time.monotonic() - start > 60:
            break
        time.sleep(1)
    else:
        result = None
    assert result is not None and result.returncode == 0, f"no request succeeded within 60 s after the guard died: {errors}"
    record(f"recovered through another guard after {time.monotonic() - start:.3f} s ({attempt} request(s))")
    circuits = net.status()["circuits"]
    assert circuits, "no circuit open after a successful request"
    assert all(c["hops"][0] != victim.peer_id for c in circuits), f"a circuit still starts at the dead guard: {circuits}"
    pinned = net.guards_state()
    if pinned:
        record(f"guards.state after recovery: {len(pinned)} guard(s), dead guard first: {pinned[0] == victim.peer_id}")
    net.check_alive()


# New circuits built while a dead exit is still in the view (isolation groups force a build each).
FRESH_CIRCUITS_AFTER_EXIT_DIES = 6


def test_fault_dead_exit_still_in_view(make_network, web, site, record):
    """kill -9 an exit that carries nothing: its descriptor stays in the client's view until it
    expires, so new paths keep drawing it (half the exits here). Each of several requests in its
    own isolation group (its own circuit, built now) must still succeed at the first request: a
    build whose EXTEND to the dead exit is refused is retried on another path by the client."""
    net = make_network()
    exits = [r for r in net.relays if r.is_exit]
    busy = {h for c in net.status()["circuits"] for h in c["hops"]}
    victim = next((r for r in exits if r.peer_id not in busy), exits[0])
    victim.proc.kill9()
    times = []
    for i in range(FRESH_CIRCUITS_AFTER_EXIT_DIES):
        start = time.monotonic()
        result = fetch_small(net, web, site, user=f"fresh-{i}")
        times.append(time.monotonic() - start)
        assert result.returncode == 0, (
            f"request {i + 1} (new circuit) failed with {victim.name} dead: curl {result.returncode}: "
            f"{result.stderr.decode().strip()}"
        )
    circuits = net.status()["circuits"]
    assert all(victim.peer_id not in c["hops"] for c in circuits), f"a circuit uses the dead exit: {circuits}"
    record(
        f"{FRESH_CIRCUITS_AFTER_EXIT_DIES} requests on new circuits with {victim.name} dead all succeeded; "
        f"times {', '.join(f'{t:.3f}' for t in times)} s"
    )
    net.check_alive()
