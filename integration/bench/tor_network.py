#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""C tor on loopback, measured the way bench.py measures Shallot (the benchmark's reference).

Starts a private tor network with Debian's `tor` (`TestingTorNetwork 1`, everything on
127.0.0.1): 3 directory authorities, 5 relays (2 exits whose policy accepts only the local
HTTP server, 3 middles) and 1 client with a SocksPort and a ControlPort, plus a small HTTP
server (a thread of this process) serving 1 KiB, 1 MiB and 100 MiB random files. Once the
client has bootstrapped and a first fetch through it works, it measures through the client's
SOCKS port (curl --socks5-hostname) and straight to the server:

  - 1 KiB fetch: time to first byte and total time, median of N_SMALL (20)
  - 1 MiB fetch: total time, median of N_MED (5)
  - 100 MiB download throughput, median of N_BIG (3), with the CPU-seconds of all tor
    processes during those downloads (/proc/PID/stat utime+stime) per 100 MiB
  - 3-hop circuit build: EXTENDCIRCUIT 0 on the control port until the CIRC <id> BUILT
    event, median of N_CIRC (20)
  - first 1 KiB fetch after SIGNAL NEWNYM, median of N_NEWNYM (3)
  - RSS of the client, each exit, one middle and one authority afterwards

Standalone it prints a results table:

    python3 integration/bench/tor_network.py [--n-small 5 --n-big 1 --n-circ 5 ...]

Options default to these environment variables: BASE_PORT (25000; the network uses the
ports BASE_PORT .. BASE_PORT+40), N_SMALL, N_MED, N_BIG, N_CIRC, N_NEWNYM, BOOT_TIMEOUT (300 s),
WORKROOT (where the temporary directory goes), RESULTS_FILE (also write the table there),
KEEP_WORKDIR=1 (keep configs and logs), EXTRA_TORRC (lines added to every torrc),
CONSENSUS_PARAMS (the authorities' ConsensusParams).

bench.py imports it and calls run(), which returns a dict (see run's docstring).

Every process it starts is stopped when it ends, also on errors, Ctrl-C and SIGTERM: SIGTERM,
then SIGKILL after a grace period. Each tor also watches this process
(__OwningControllerProcess) and exits within ~15 s if it disappears without cleaning up.
"""
import argparse
import contextlib
import http.server
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1024 * 1024
HZ = os.sysconf("SC_CLK_TCK")
N_AUTH, N_MIDDLE, N_EXIT = 3, 3, 2
FILES = {"1k.bin": 1024, "1m.bin": MIB, "100m.bin": 100 * MIB}
NEWNYM_GAP_S = 10.5  # tor accepts at most one NEWNYM per 10 s and delays the rest


class TorNetworkError(RuntimeError):
    pass


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ ports


class Ports:
    """Fixed offsets from the base port, all on 127.0.0.1:
    authority i: OR base+i, Dir base+10+i; relay i: OR base+20+i;
    client: SOCKS base+30, control base+31; HTTP server: base+40."""

    def __init__(self, base):
        self.base = base
        self.auth_or = [base + i for i in range(N_AUTH)]
        self.auth_dir = [base + 10 + i for i in range(N_AUTH)]
        self.relay_or = [base + 20 + i for i in range(N_MIDDLE + N_EXIT)]
        self.socks = base + 30
        self.control = base + 31
        self.http = base + 40

    def all(self):
        return (self.auth_or + self.auth_dir + self.relay_or
                + [self.socks, self.control, self.http])

    def check_free(self):
        for port in self.all():
            with socket.socket() as s:
                # as tor's listeners do: old connections in TIME_WAIT do not block the port
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    raise TorNetworkError(
                        f"port 127.0.0.1:{port} is in use; pick another base port "
                        f"(--base-port / BASE_PORT)") from None


# ------------------------------------------------------------------ HTTP server


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files of FILES from the server's directory, with sendfile."""

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    def _serve(self, body):
        name = self.path.lstrip("/").split("?", 1)[0]
        if name not in FILES:
            self.send_error(404)
            return
        path = os.path.join(self.server.directory, name)
        with open(path, "rb") as f:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.end_headers()
            if body:
                try:
                    self.connection.sendfile(f)
                except OSError:
                    pass  # the client went away (e.g. curl's --max-time)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def _write_files(directory):
    os.makedirs(directory, exist_ok=True)
    for name, size in FILES.items():
        with open(os.path.join(directory, name), "wb") as f:
            left = size
            while left:
                n = min(left, MIB)
                f.write(os.urandom(n))
                left -= n


# ----------------------------------------------------------------- /proc, curl


def _cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _mem_kib(pid):
    """(VmRSS, VmHWM) in KiB, None where unknown."""
    out = {"VmRSS": None, "VmHWM": None}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out["VmRSS"], out["VmHWM"]


def _curl(url, socks_port=None, max_time=60):
    """One fetch; (ttfb s, total s, bytes per s, bytes) or None if it failed."""
    cmd = ["curl", "-s", "-f", "-o", "/dev/null", "--max-time", str(max_time), "-w",
           "%{time_starttransfer} %{time_total} %{speed_download} %{size_download}"]
    if socks_port:
        cmd += ["--socks5-hostname", f"127.0.0.1:{socks_port}"]
    else:
        cmd += ["--noproxy", "*"]
    try:
        r = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=max_time + 15,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    ttfb, total, speed, size = r.stdout.split()
    return float(ttfb), float(total), float(speed), int(size)


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------- control port


class _Control:
    """A minimal tor control-port client (control-spec): cookie authentication, commands,
    and asynchronous 650 events kept in a queue while a command waits for its reply."""

    def __init__(self, port, cookie_file, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.events = []
        with open(cookie_file, "rb") as f:
            self.command("AUTHENTICATE " + f.read().hex(), timeout)

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def _line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("control port: no answer in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("control port: no answer in time") from None
            if not chunk:
                raise TorNetworkError("control port closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode(errors="replace")

    def _reply(self, deadline):
        """One whole reply: [(status code, text)], data blocks ("250+...") joined into text."""
        lines = []
        while True:
            line = self._line(deadline)
            code, kind, text = line[:3], line[3:4], line[4:]
            if kind == "+":
                data = []
                while True:
                    d = self._line(deadline)
                    if d == ".":
                        break
                    data.append(d[1:] if d.startswith("..") else d)
                text = text + "\n" + "\n".join(data)
            lines.append((code, text))
            if kind == " ":
                return lines

    def command(self, line, timeout=30):
        self.sock.sendall(line.encode() + b"\r\n")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._reply(deadline)
            if reply[0][0] == "650":
                self.events.append(reply)
                continue
            if not reply[-1][0].startswith("2"):
                raise TorNetworkError(f"control port: {line.split()[0]} -> "
                                      f"{reply[-1][0]} {reply[-1][1]}")
            return reply

    def event(self, deadline):
        """The next asynchronous event as a list of its lines' texts."""
        while not self.events:
            reply = self._reply(deadline)
            if reply[0][0] == "650":
                self.events.append(reply)
        return [text for _, text in self.events.pop(0)]


# --------------------------------------------------------------------- network


class _Network:
    def __init__(self, tor, gencert, work, ports, extra_torrc="", consensus_params=""):
        self.tor, self.gencert, self.work, self.ports = tor, gencert, work, ports
        self.extra_torrc = extra_torrc
        self.consensus_params = consensus_params
        self.procs = {}  # name -> Popen
        self.fingerprints = {}  # name -> relay identity fingerprint
        self.dirauthority = []
        self.empty = os.path.join(work, "empty.torrc")  # tor will not read /dev/null as a torrc
        open(self.empty, "w").close()

    def dir(self, name):
        return os.path.join(self.work, name)

    # -- configuration
    def _authority_keys(self, i):
        name = f"auth{i}"
        keys = os.path.join(self.dir(name), "keys")
        os.makedirs(keys, mode=0o700)
        r = subprocess.run(
            [self.gencert, "--create-identity-key", "-m", "12",
             "-a", f"127.0.0.1:{self.ports.auth_dir[i]}", "--passphrase-fd", "0",
             "-i", "authority_identity_key", "-s", "authority_signing_key",
             "-c", "authority_certificate"],
            cwd=keys, input="\n", capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise TorNetworkError(f"tor-gencert for {name} failed: {r.stderr[-400:]}")
        v3ident = None
        with open(os.path.join(keys, "authority_certificate")) as f:
            for line in f:
                if line.startswith("fingerprint "):
                    v3ident = line.split()[1]
        # the relay identity key (and so the fingerprint) is made by tor itself
        r = subprocess.run(
            [self.tor, "--defaults-torrc", self.empty, "-f", self.empty, "--quiet",
             "--DataDirectory", self.dir(name), "--ORPort", f"127.0.0.1:{self.ports.auth_or[i]}",
             "--Nickname", name, "--list-fingerprint"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        fp = self._read_fingerprint(name)
        if r.returncode != 0 or not v3ident or not fp:
            raise TorNetworkError(f"could not make {name}'s identities: {r.stdout[-300:]} "
                                  f"{r.stderr[-300:]}")
        self.dirauthority.append(
            f"DirAuthority {name} orport={self.ports.auth_or[i]} no-v2 v3ident={v3ident} "
            f"127.0.0.1:{self.ports.auth_dir[i]} {fp}")

    def _read_fingerprint(self, name):
        try:
            with open(os.path.join(self.dir(name), "fingerprint")) as f:
                fp = f.read().split()[1]
        except (OSError, IndexError):
            return None
        self.fingerprints[name] = fp
        return fp

    def _common(self, name):
        lines = [
            "TestingTorNetwork 1",
            f"Nickname {name}",
            f"DataDirectory {self.dir(name)}",
            "RunAsDaemon 0",
            f"__OwningControllerProcess {os.getpid()}",
            "ShutdownWaitLength 0",
            f"Log notice file {os.path.join(self.dir(name), 'notice.log')}",
            "SafeLogging 0",
        ] + self.dirauthority
        return lines

    def _relay_common(self, name, or_port):
        return self._common(name) + [
            f"ORPort 127.0.0.1:{or_port}",
            "Address 127.0.0.1",
            "AssumeReachable 1",
            "SocksPort 0",
            f"ContactInfo {name}@example.invalid",
        ]

    def _write(self, name, lines):
        lines = lines + [x for x in self.extra_torrc.splitlines() if x.strip()]
        with open(os.path.join(self.dir(name), "torrc"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def configure(self):
        for i in range(N_AUTH):
            os.makedirs(self.dir(f"auth{i}"), mode=0o700)
            self._authority_keys(i)
        for i in range(N_AUTH):
            name = f"auth{i}"
            lines = self._relay_common(name, self.ports.auth_or[i]) + [
                f"DirPort 127.0.0.1:{self.ports.auth_dir[i]}",
                "AuthoritativeDirectory 1",
                "V3AuthoritativeDirectory 1",
                "ExitRelay 0",
                "ExitPolicy reject *:*",
                # every relay gets the flags a path needs, without waiting for measurements
                "TestingDirAuthVoteGuard *",
                "TestingDirAuthVoteExit *",
                "TestingMinExitFlagThreshold 0",
                # a vote every 10 s (every 5 s until the first consensus, so the two schedules
                # line up); vote and distribution delays must fit inside the interval, and a
                # consensus stays valid for two intervals
                "TestingV3AuthInitialVotingInterval 5",
                "TestingV3AuthInitialVoteDelay 2",
                "TestingV3AuthInitialDistDelay 2",
                "V3AuthVotingInterval 10",
                "V3AuthVoteDelay 2",
                "V3AuthDistDelay 2",
                "V3AuthNIntervalsValid 2",
            ]
            if self.consensus_params:
                lines.append(f"ConsensusParams {self.consensus_params}")
            self._write(name, lines)
        for i in range(N_MIDDLE + N_EXIT):
            name = f"relay{i}"
            os.makedirs(self.dir(name), mode=0o700)
            lines = self._relay_common(name, self.ports.relay_or[i])
            if i >= N_MIDDLE:
                lines += ["ExitRelay 1", "ExitPolicyRejectPrivate 0",
                          f"ExitPolicy accept 127.0.0.1:{self.ports.http}",
                          "ExitPolicy reject *:*"]
            else:
                lines += ["ExitRelay 0", "ExitPolicy reject *:*"]
            self._write(name, lines)
        os.makedirs(self.dir("client"), mode=0o700)
        self._write("client", self._common("client") + [
            f"SocksPort 127.0.0.1:{self.ports.socks}",
            f"ControlPort 127.0.0.1:{self.ports.control}",
            "CookieAuthentication 1",
            "PathsNeededToBuildCircuits 0.67",
            # the exits accept only 127.0.0.1:<http port>; a microdescriptor's policy summary
            # lists only ports open to every address, so from microdescriptors the client would
            # see no usable exit. Full descriptors carry the whole policy.
            "UseMicrodescriptors 0",
        ])

    # -- processes
    @property
    def names(self):
        return ([f"auth{i}" for i in range(N_AUTH)]
                + [f"relay{i}" for i in range(N_MIDDLE + N_EXIT)] + ["client"])

    @property
    def exits(self):
        return [f"relay{i}" for i in range(N_MIDDLE, N_MIDDLE + N_EXIT)]

    @property
    def middles(self):
        return [f"relay{i}" for i in range(N_MIDDLE)]

    def start(self):
        for name in self.names:
            out = open(os.path.join(self.dir(name), "stdout.log"), "w")
            try:
                # own session: a Ctrl-C in the terminal reaches only this script, which then
                # stops the network in order
                self.procs[name] = subprocess.Popen(
                    [self.tor, "--defaults-torrc", self.empty,
                     "-f", os.path.join(self.dir(name), "torrc")],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            finally:
                out.close()
        for name in self.names:
            if name != "client" and name not in self.fingerprints:
                deadline = time.monotonic() + 30
                while not self._read_fingerprint(name) and time.monotonic() < deadline:
                    self.check_alive()
                    time.sleep(0.2)

    def pids(self):
        return {name: p.pid for name, p in self.procs.items()}

    def tail(self, name, n=5):
        for log in ("notice.log", "stdout.log"):  # stdout has what tor said before its log
            try:
                with open(os.path.join(self.dir(name), log), errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            if lines:
                return "\n".join(lines[-n:])
        return "(no log)"

    def check_alive(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise TorNetworkError(f"{name} exited ({p.returncode}):\n{self.tail(name)}")

    def stop(self, grace=10):
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        deadline = time.monotonic() + grace
        for name, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"tor network: {name} (pid {p.pid}) ignored SIGTERM; killing it")
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
        self.procs.clear()


@contextlib.contextmanager
def _sigterm_as_exit():
    """Inside the block the first SIGTERM raises SystemExit, so the finally clauses stop the
    network; later ones are ignored until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    seen = []

    def on_term(signum, frame):
        if not seen:  # a second SIGTERM must not interrupt the cleanup the first one started
            seen.append(signum)
            raise SystemExit(128 + signum)
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ---------------------------------------------------------------- measurements


def _wait_ready(net, ports, url, deadline, log):
    """Waits for 'bootstrap 100 %' on the control port and a first fetch through the client."""
    cookie = os.path.join(net.dir("client"), "control_auth_cookie")
    ctl = None
    try:
        progress = -1
        while True:
            net.check_alive()
            if time.monotonic() > deadline:
                raise TorNetworkError(f"client not bootstrapped in time (at {progress} %):\n"
                                      + net.tail("client"))
            try:
                if ctl is None:
                    ctl = _Control(ports.control, cookie, timeout=10)
                text = " ".join(t for _, t in ctl.command("GETINFO status/bootstrap-phase"))
                m = re.search(r"PROGRESS=(\d+)", text)
                p = int(m.group(1)) if m else -1
                if p != progress:
                    log(f"client bootstrap {p} %")
                    progress = p
                if p >= 100:
                    break
            except (OSError, TorNetworkError):
                if ctl:
                    ctl.close()
                ctl = None
            time.sleep(1)
    finally:
        if ctl:
            ctl.close()
    booted = time.monotonic()
    tries = 0
    while True:
        tries += 1
        if _curl(url + "/1k.bin", ports.socks, max_time=15):
            return booted, time.monotonic(), tries
        net.check_alive()
        if time.monotonic() > deadline:
            raise TorNetworkError(f"no fetch through the client worked in time ({tries} tries):\n"
                                  + net.tail("client"))
        time.sleep(2)


def _entry_guard(ctl):
    """Fingerprint of the client's first guard that is up (its channel is already open)."""
    for _, text in ctl.command("GETINFO entry-guards"):
        for line in text.splitlines():
            line = line.replace("entry-guards=", "")
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("$") and parts[1] == "up":
                return re.split("[~=]", parts[0][1:])[0]
    return None


def _circuit_builds(net, ports, n, per_circuit_s=30):
    """n 3-hop circuits via EXTENDCIRCUIT 0, each timed from the command to its BUILT event.

    The path is given: guard, middle, exit. Without one tor picks a path for a circuit that
    needs capacity, and in a young test network the Fast flag is not yet on every exit, so
    that fails ("551 Couldn't start circuit") now and then. The first hop is the client's own
    guard, as for its ordinary circuits, so each build is one CREATE plus two EXTENDs over an
    open channel; middles and exits rotate among those the client already has in its consensus
    and has a descriptor of (a relay a young network has not listed yet gives "552 No such
    router")."""
    ctl = _Control(ports.control, os.path.join(net.dir("client"), "control_auth_cookie"))
    times, failures = [], []

    def known(fp):
        try:
            ctl.command(f"GETINFO ns/id/{fp}")
            ctl.command(f"GETINFO desc/id/{fp}")
            return True
        except TorNetworkError:
            return False

    def usable(names, guard, wait_s=30):
        deadline = time.monotonic() + wait_s
        while True:
            fps = [net.fingerprints[x] for x in names if net.fingerprints[x] != guard]
            ok = [fp for fp in fps if known(fp)]
            if ok or time.monotonic() > deadline:
                return ok or fps  # nothing known after the wait: try anyway, and fail visibly
            time.sleep(1)
    try:
        guard = _entry_guard(ctl) or net.fingerprints[net.middles[0]]
        ctl.command("SETEVENTS CIRC")
        for i in range(n):
            mids, exits = usable(net.middles, guard), usable(net.exits, guard)
            path = f"${guard},${mids[i % len(mids)]},${exits[i % len(exits)]}"
            t0 = time.monotonic()
            deadline = t0 + per_circuit_s
            try:
                reply = ctl.command(f"EXTENDCIRCUIT 0 {path}")
            except (TorNetworkError, TimeoutError) as e:
                failures.append(str(e))
                continue
            cid = reply[-1][1].split()[1]  # "EXTENDED <id>"
            try:
                while True:
                    ev = ctl.event(deadline)[0].split()
                    if len(ev) >= 3 and ev[0] == "CIRC" and ev[1] == cid:
                        if ev[2] == "BUILT":
                            times.append(time.monotonic() - t0)
                            break
                        if ev[2] in ("FAILED", "CLOSED"):
                            failures.append(f"circuit {cid} {' '.join(ev[2:])}")
                            break
            except TimeoutError:
                failures.append(f"circuit {cid} not built within {per_circuit_s} s")
            with contextlib.suppress(TorNetworkError, TimeoutError):
                ctl.command(f"CLOSECIRCUIT {cid}")
            time.sleep(0.2)
    finally:
        ctl.close()
    return times, failures, guard


def _newnym_fetches(net, ports, url, n):
    """n times: SIGNAL NEWNYM, then one 1 KiB fetch (it must go on a circuit not used before;
    tor may have one built in advance, so this is 'NEWNYM + fetch', not a build time)."""
    ctl = _Control(ports.control, os.path.join(net.dir("client"), "control_auth_cookie"))
    out = []
    try:
        for k in range(n):
            if k:
                time.sleep(NEWNYM_GAP_S)
            ctl.command("SIGNAL NEWNYM")
            out.append(_curl(url + "/1k.bin", ports.socks, max_time=60))
    finally:
        ctl.close()
    return out


def _host():
    mem = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1048576:.1f} GiB"
    osname = ""
    with contextlib.suppress(OSError):
        osname = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    return f"{platform.system()} {platform.release()} {platform.machine()}, " \
           f"{os.cpu_count()} cores, {mem}, {osname}"


def _version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        return (r.stdout.splitlines() or ["?"])[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def find_tor():
    """Paths of tor and tor-gencert (Debian puts tor in /usr/sbin), None where missing."""
    tor = shutil.which("tor") or next(
        (p for p in ("/usr/sbin/tor", "/usr/bin/tor") if os.access(p, os.X_OK)), None)
    gencert = shutil.which("tor-gencert") or next(
        (p for p in ("/usr/bin/tor-gencert", "/usr/sbin/tor-gencert") if os.access(p, os.X_OK)),
        None)
    return tor, gencert


def run(base_port=25000, n_small=20, n_med=5, n_big=3, n_circ=20, n_newnym=3,
        boot_timeout=300, workroot=None, keep_workdir=False, extra_torrc="",
        consensus_params="", log=_log):
    """Starts the network, measures, stops it. Returns a dict:

      tor, direct: {ttfb_1k_ms, total_1k_ms, ttfb_1k_min_ms, ttfb_1k_max_ms, total_1m_ms,
                    mbps_100m, mbps_100m_all, fails}   (tor: through the client's SOCKS;
                    direct: curl straight to the HTTP server)
      tor also: circuit_build_ms (median), circuit_build_min_ms, circuit_build_max_ms,
                circuit_builds_ok, circuit_build_failures, newnym_ttfb_ms,
                cpu_s_per_100mib (all tor processes), cpu_s, cpu_client_s, cpu_wall_s
      rss_kib: {name: [VmRSS, VmHWM]} for the client, the exits, one middle, one authority
      boot_s, first_fetch_s, first_fetch_tries, tor_version, host, counts, report (text)
    Raises TorNetworkError if the network cannot be brought up."""
    outer_log = log

    def log(msg):
        outer_log(f"tor network: {msg}")
    tor, gencert = find_tor()
    if not tor or not gencert:
        raise TorNetworkError("tor / tor-gencert not found (Debian: apt-get install tor)")
    if not shutil.which("curl"):
        raise TorNetworkError("curl not found")
    ports = Ports(base_port)
    ports.check_free()
    if workroot:
        os.makedirs(workroot, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tornet-", dir=workroot)
    counts = dict(n_small=n_small, n_med=n_med, n_big=n_big, n_circ=n_circ, n_newnym=n_newnym)
    res = {"tor_version": _version([tor, "--version"]), "host": _host(),
           "curl_version": " ".join(_version(["curl", "--version"]).split()[:2]),
           "base_port": base_port, "counts": counts, "tor": {}, "direct": {}, "rss_kib": {}}
    net = server = None
    t_begin = t_start = time.monotonic()
    with _sigterm_as_exit():
        try:
            net = _Network(tor, gencert, work, ports, extra_torrc, consensus_params)
            www = os.path.join(work, "www")
            _write_files(www)
            srv = _Server(("127.0.0.1", ports.http), _FileHandler)
            srv.directory = www
            threading.Thread(target=srv.serve_forever, name="tor-network-http",
                             daemon=True).start()
            server = srv  # only a running server may be shut down
            url = f"http://127.0.0.1:{ports.http}"

            net.configure()
            log(f"starting {N_AUTH} authorities, {N_MIDDLE + N_EXIT} relays ({N_EXIT} exits) and "
                f"a client on 127.0.0.1:{base_port}..{base_port + 40} in {work}")
            t_start = time.monotonic()
            net.start()
            booted, first, tries = _wait_ready(net, ports, url, t_start + boot_timeout, log)
            res["boot_s"] = round(booted - t_start, 1)
            res["first_fetch_s"] = round(first - t_start, 1)
            res["first_fetch_tries"] = tries
            log(f"bootstrapped after {res['boot_s']} s, first fetch after "
                f"{res['first_fetch_s']} s; measuring")
            _measure(net, ports, url, res, counts, log)
            res["elapsed_s"] = round(time.monotonic() - t_begin, 1)
        finally:
            if net:
                net.stop()
            if server:
                server.shutdown()
                server.server_close()
            if keep_workdir:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    res["report"] = report(res)
    return res


def _measure(net, ports, url, res, counts, log):
    t, d = res["tor"], res["direct"]
    socks = ports.socks
    _curl(url + "/1k.bin")
    _curl(url + "/1k.bin", socks)

    for out, sp in ((d, None), (t, socks)):
        small = [_curl(url + "/1k.bin", sp, max_time=30) for _ in range(counts["n_small"])]
        ok = [r for r in small if r]
        out["ttfb_1k_ms"] = _median([r[0] for r in ok]) * 1000
        out["total_1k_ms"] = _median([r[1] for r in ok]) * 1000
        out["ttfb_1k_min_ms"] = min(r[0] for r in ok) * 1000 if ok else float("nan")
        out["ttfb_1k_max_ms"] = max(r[0] for r in ok) * 1000 if ok else float("nan")
        out["fails"] = {"1k": len(small) - len(ok)}
    log("1 KiB done")
    for out, sp in ((d, None), (t, socks)):
        med = [_curl(url + "/1m.bin", sp, max_time=60) for _ in range(counts["n_med"])]
        ok = [r for r in med if r and r[3] == MIB]
        out["total_1m_ms"] = _median([r[1] for r in ok]) * 1000
        out["fails"]["1m"] = len(med) - len(ok)
    log("1 MiB done")

    def big(out, sp):
        runs = [_curl(url + "/100m.bin", sp, max_time=300) for _ in range(counts["n_big"])]
        ok = [r for r in runs if r and r[3] == 100 * MIB]
        out["mbps_100m"] = _median([r[2] / 1e6 for r in ok])
        out["mbps_100m_all"] = [round(r[2] / 1e6, 1) for r in ok]
        out["fails"]["100m"] = len(runs) - len(ok)
        return len(ok)
    big(d, None)
    pids = net.pids()
    all_pids, client = list(pids.values()), [pids["client"]]
    c0, cc0, w0 = _cpu_ticks(all_pids), _cpu_ticks(client), time.monotonic()
    n_ok = big(t, socks)
    c1, cc1, w1 = _cpu_ticks(all_pids), _cpu_ticks(client), time.monotonic()
    t["cpu_s"] = round((c1 - c0) / HZ, 2)
    t["cpu_client_s"] = round((cc1 - cc0) / HZ, 2)
    t["cpu_wall_s"] = round(w1 - w0, 1)
    t["cpu_s_per_100mib"] = (c1 - c0) / HZ / n_ok if n_ok else float("nan")
    log(f"100 MiB done ({t['mbps_100m_all']} MB/s through tor)")

    times, failures, guard = _circuit_builds(net, ports, counts["n_circ"])
    t["circuit_build_ms"] = _median(times) * 1000
    t["circuit_build_min_ms"] = min(times) * 1000 if times else float("nan")
    t["circuit_build_max_ms"] = max(times) * 1000 if times else float("nan")
    t["circuit_builds_ok"] = len(times)
    t["circuit_build_failures"] = failures
    t["circuit_guard"] = guard
    log(f"circuit builds done ({len(times)} built, {len(failures)} failed)")

    nn = _newnym_fetches(net, ports, url, counts["n_newnym"])
    t["newnym_ttfb_ms"] = _median([r[0] for r in nn if r]) * 1000
    t["fails"]["newnym"] = sum(1 for r in nn if r is None)

    for name in ["client"] + net.exits + [net.middles[0], "auth0"]:
        res["rss_kib"][name] = list(_mem_kib(pids[name]))


def _f(v, digits=2):
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.{digits}f}"


def report(res):
    """The results as a plain-text table."""
    t, d, c = res["tor"], res["direct"], res["counts"]
    rows = [
        (f"1 KiB time to first byte, median of {c['n_small']} (ms)",
         _f(d.get("ttfb_1k_ms")), _f(t.get("ttfb_1k_ms"))),
        ("1 KiB time to first byte, min-max (ms)",
         f"{_f(d.get('ttfb_1k_min_ms'))}-{_f(d.get('ttfb_1k_max_ms'))}",
         f"{_f(t.get('ttfb_1k_min_ms'))}-{_f(t.get('ttfb_1k_max_ms'))}"),
        (f"1 KiB total time, median of {c['n_small']} (ms)",
         _f(d.get("total_1k_ms")), _f(t.get("total_1k_ms"))),
        (f"1 MiB total time, median of {c['n_med']} (ms)",
         _f(d.get("total_1m_ms")), _f(t.get("total_1m_ms"))),
        (f"100 MiB throughput, median of {c['n_big']} (MB/s)",
         _f(d.get("mbps_100m"), 1), _f(t.get("mbps_100m"), 1)),
        ("100 MiB throughput, every run (MB/s)",
         ",".join(map(str, d.get("mbps_100m_all", []))) or "-",
         ",".join(map(str, t.get("mbps_100m_all", []))) or "-"),
        (f"3-hop circuit build, median of {t.get('circuit_builds_ok', 0)} (ms)",
         "-", _f(t.get("circuit_build_ms"))),
        ("3-hop circuit build, min-max (ms)", "-",
         f"{_f(t.get('circuit_build_min_ms'))}-{_f(t.get('circuit_build_max_ms'))}"),
        (f"1 KiB first byte after NEWNYM, median of {c['n_newnym']} (ms)",
         "-", _f(t.get("newnym_ttfb_ms"))),
        ("CPU-s per 100 MiB, all tor processes", "-", _f(t.get("cpu_s_per_100mib"), 3)),
    ]
    w = max(len(r[0]) for r in rows)
    out = [f"tor network on 127.0.0.1 ({N_AUTH} authorities, {N_MIDDLE + N_EXIT} relays of which "
           f"{N_EXIT} exits, 1 client; client uses full descriptors)",
           f"host: {res.get('host')}",
           f"{res.get('tor_version')}; {res.get('curl_version')}; python {platform.python_version()}",
           f"client bootstrapped after {res.get('boot_s', '?')} s, first fetch through it after "
           f"{res.get('first_fetch_s', '?')} s ({res.get('first_fetch_tries', '?')} tries); "
           f"whole run (with key generation, before the stop) {res.get('elapsed_s', '?')} s",
           "",
           f"{'measure':<{w}}  {'direct':>15}  {'through tor':>15}",
           f"{'-' * w}  {'-' * 15}  {'-' * 15}"]
    out += [f"{a:<{w}}  {b:>15}  {x:>15}" for a, b, x in rows]
    out.append("")
    out.append("RSS after the run, MiB (now / peak):")
    for name, (rss, hwm) in res.get("rss_kib", {}).items():
        role = ("client" if name == "client" else "authority" if name.startswith("auth")
                else "exit" if name in [f"relay{i}" for i in range(N_MIDDLE, N_MIDDLE + N_EXIT)]
                else "middle")
        out.append(f"  {name:<8} {role:<10} {_f(rss / 1024 if rss else None, 1):>7} / "
                   f"{_f(hwm / 1024 if hwm else None, 1)}")
    out.append(f"CPU during the 100 MiB downloads through tor: {_f(t.get('cpu_s'))} s in all tor "
               f"processes ({_f(t.get('cpu_client_s'))} s in the client) over "
               f"{_f(t.get('cpu_wall_s'), 1)} s")
    fails = {f"{k}_{side}": v for side, part in (("direct", d), ("tor", t))
             for k, v in part.get("fails", {}).items()}
    fails["circuit"] = len(t.get("circuit_build_failures", []))
    out.append("failures: " + " ".join(f"{k}={v}" for k, v in fails.items()))
    for msg in t.get("circuit_build_failures", [])[:5]:
        out.append(f"  circuit build: {msg}")
    return "\n".join(out)


def main():
    env = os.environ.get
    ap = argparse.ArgumentParser(
        description="Measure a private C tor network on 127.0.0.1 (bench.py's reference).",
        epilog="Defaults come from the environment variables BASE_PORT, N_SMALL, N_MED, N_BIG, "
               "N_CIRC, N_NEWNYM, BOOT_TIMEOUT, WORKROOT, RESULTS_FILE, KEEP_WORKDIR, "
               "EXTRA_TORRC, CONSENSUS_PARAMS.")
    ap.add_argument("--base-port", type=int, default=int(env("BASE_PORT", 25000)))
    ap.add_argument("--n-small", type=int, default=int(env("N_SMALL", 20)))
    ap.add_argument("--n-med", type=int, default=int(env("N_MED", 5)))
    ap.add_argument("--n-big", type=int, default=int(env("N_BIG", 3)))
    ap.add_argument("--n-circ", type=int, default=int(env("N_CIRC", 20)))
    ap.add_argument("--n-newnym", type=int, default=int(env("N_NEWNYM", 3)))
    ap.add_argument("--boot-timeout", type=float, default=float(env("BOOT_TIMEOUT", 300)),
                    help="seconds for bootstrap and the first fetch")
    ap.add_argument("--workroot", default=env("WORKROOT"), help="parent of the temp directory")
    ap.add_argument("--results-file", default=env("RESULTS_FILE"),
                    help="also write the table here")
    ap.add_argument("--json", help="also write every figure as JSON here")
    ap.add_argument("--keep-workdir", action="store_true", default=env("KEEP_WORKDIR") == "1")
    ap.add_argument("--extra-torrc", default=env("EXTRA_TORRC", ""),
                    help="lines added to every torrc")
    ap.add_argument("--consensus-params", default=env("CONSENSUS_PARAMS", ""),
                    help="the authorities' ConsensusParams, e.g. cc_alg=0")
    a = ap.parse_args()
    try:
        res = run(base_port=a.base_port, n_small=a.n_small, n_med=a.n_med, n_big=a.n_big,
                  n_circ=a.n_circ, n_newnym=a.n_newnym, boot_timeout=a.boot_timeout,
                  workroot=a.workroot, keep_workdir=a.keep_workdir,
                  extra_torrc=a.extra_torrc.replace("\\n", "\n"),
                  consensus_params=a.consensus_params)
    except (TorNetworkError, OSError) as e:
        _log(f"tor network failed: {e}")
        return 1
    except KeyboardInterrupt:
        _log("tor network: interrupted; network stopped")
        return 130
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            _log("tor network: terminated; network stopped")
        raise
    print(res["report"])
    if a.results_file:
        os.makedirs(os.path.dirname(os.path.abspath(a.results_file)), exist_ok=True)
        with open(a.results_file, "w") as f:
            f.write(res["report"] + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
