"""Faults: `kill -9` a relay of the circuit carrying a 50 MiB download.

Each test starts a fresh network (6 relays, 2 exits), starts `curl --socks5-hostname` on the
50 MiB file (rate-limited by curl to 4 MiB/s so the kill lands mid-transfer), finds the circuit
carrying it in the client's `GET /status` (hops[0] = guard, hops[1] = middle, hops[2] = exit),
and `kill -9`s the relay in the position under test. The time from the kill to curl's exit is
measured and printed; it must be at most 5 s (an error, not a hang)."""

import hashlib
import shutil
import subprocess
import time

import harness

ERROR_BOUND_SECS = 5.0
# How long curl may take to notice at most before the test gives up on it (and fails).
CURL_GIVE_UP_SECS = 60.0
RATE = "4M"
# Longest the client may take, after curl failed, to drop its circuits through the dead relay.
SETTLE_SECS = 5.0


def curl() -> str:
    path = shutil.which("curl")
    assert path, "curl is not installed: install Debian's curl package"
    return path


def start_download(net, web, out):
    return subprocess.Popen(
        [curl(), "-sS", "--socks5-hostname", f"{net.socks[0]}:{net.socks[1]}", "--limit-rate", RATE,
         f"http://localhost:{web.port}/big.bin", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


def wait_for_bytes(path, at_least, timeout=30.0):
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if path.exists() and path.stat().st_size >= at_least:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"the download did not reach {at_least} bytes within {timeout} s")


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


def kill_during_download(net, web, tmp_path, position: int, record) -> tuple[harness.Relay, dict]:
    """Kills hops[position] of the download's circuit; asserts curl fails within the bound."""
    out = tmp_path / "big.bin"
    download = start_download(net, web, out)
    try:
        wait_for_bytes(out, 2 << 20)
        circuit = carrying_circuit(net)
        victim = net.relay_by_peer(circuit["hops"][position])
        role = ("guard", "middle", "exit")[position]
        assert victim.proc.alive(), f"{victim.name} is already dead"
        start = time.monotonic()
        victim.proc.kill9()
        try:
            download.wait(timeout=CURL_GIVE_UP_SECS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"curl still running {CURL_GIVE_UP_SECS} s after the {role} was killed: a hang")
        seconds = time.monotonic() - start
        got = out.stat().st_size if out.exists() else 0
        record(
            f"killed the {role} ({victim.name}) at {got >> 20} MiB; curl exited {download.returncode} "
            f"after {seconds:.3f} s (bound {ERROR_BOUND_SECS} s)"
        )
        assert download.returncode != 0, (
            f"curl reported success after the {role} died ({got} of {harness.BIG_FILE_MIB << 20} bytes)"
        )
        assert got < harness.BIG_FILE_MIB << 20, "the download finished before the kill; the test proved nothing"
        assert seconds <= ERROR_BOUND_SECS, f"curl took {seconds:.3f} s to fail after the {role} died"
        return victim, circuit
    finally:
        if download.poll() is None:
            download.kill()
            download.wait(timeout=10)
        if out.exists():
            out.unlink()


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


def test_fault_kill_middle_during_download(make_network, web, site, tmp_path, record):
    """kill -9 the middle relay: curl fails within 5 s, the next request succeeds on a new circuit."""
    net = make_network()
    victim, circuit = kill_during_download(net, web, tmp_path, 1, record)
    assert_next_request_on_new_circuit(net, web, site, victim, circuit, record)


def test_fault_kill_exit_during_download(make_network, web, site, tmp_path, record):
    """kill -9 the exit: curl fails within 5 s, the next request succeeds on a new circuit."""
    net = make_network()
    victim, circuit = kill_during_download(net, web, tmp_path, 2, record)
    assert_next_request_on_new_circuit(net, web, site, victim, circuit, record)


def test_fault_kill_guard_client_recovers(make_network, web, site, tmp_path, record):
    """kill -9 the client's guard (hops[0] of the download's circuit): curl fails within 5 s, and
    the client recovers through another guard: a request succeeds within 60 s (bounded
    attempts), on a circuit whose first hop is not the dead guard."""
    net = make_network()
    victim, _ = kill_during_download(net, web, tmp_path, 0, record)
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
