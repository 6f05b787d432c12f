"""The multi-process harness: real `shallot` processes on 127.0.0.0/8, a local web server, a
local DNS server, and a raw SOCKS5 client for exact reply codes.

Everything here talks only to loopback addresses. Every loop is bounded in count and time, and
every process started here is stopped by `stop()` (close its stdin, which `--stop-with-stdin`
turns into a clean stop; then SIGKILL its process group after a grace period). The children
also stop by themselves if this Python process dies, because their stdin closes with it.
"""

from __future__ import annotations

import atexit
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHALLOT = REPO / "target" / "release" / "shallot"
OUTPUT = REPO / "integration" / "output"

# Grace a process gets to stop after its stdin closes, before SIGKILL.
STOP_GRACE_SECS = 10.0
# How long a new network may take until a stream through a 3-hop circuit works.
READY_TIMEOUT_SECS = 60.0
# The exits' policy: everything but port 9 (discard), which the refusal test uses.
EXIT_POLICY = """\
# Integration tests: every destination is on 127.0.0.1 (the relays run with
# exit_policy_reject_private = false); port 9 is refused so that a policy refusal can be tested.
reject *:9
accept *:*
"""
REFUSED_PORT = 9
BIG_FILE_MIB = 50

_LIVE: list["Proc"] = []


def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        proc.kill()


atexit.register(_kill_leftovers)


def require_binary() -> Path:
    if not SHALLOT.is_file():
        raise AssertionError(
            f"{SHALLOT} is missing: build it with `cargo build --release -p shallot` "
            "(integration/run does)"
        )
    return SHALLOT


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port free on `ip` right now (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_port(addr: tuple[str, int], timeout: float) -> None:
    """Waits until something accepts TCP connections on `addr` (bounded)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        try:
            with socket.create_connection(addr, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {addr[0]}:{addr[1]} after {timeout} s")


def run_in_own_group(argv: list[str], timeout: float, env: dict[str, str] | None = None, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    """Runs argv in a process group of its own (a browser's helpers too) and kills the whole
    group when it ends or after `timeout`, which fails the test. stdout is captured; stderr as
    given (captured by default)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        raise AssertionError(f"{argv[0]} did not finish within {timeout} s") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, err or b"")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Proc:
    """A child process in its own process group, tied to us through its stdin."""

    def __init__(self, name: str, argv: list[str], log: Path, stdin_pipe: bool = True):
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _LIVE.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """`kill -9` the process itself (as an operator would), not its group."""
        os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._close()

    def stop(self) -> None:
        """Closes stdin (a clean stop), then SIGKILLs the group after the grace period."""
        if self.popen.stdin:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        try:
            self.popen.wait(timeout=STOP_GRACE_SECS)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def _close(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        self._log_file.close()


# ---------------------------------------------------------------------------------------------
# SOCKS5 (RFC 1928), written out so that tests see the exact reply code and its timing.

SOCKS_REPLY_NAMES = {
    0x00: "succeeded",
    0x01: "general failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
    # Tor's extended errors (proposal 304), for onion service names.
    0xF0: "onion service descriptor can not be found",
    0xF6: "onion service address invalid",
}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    for _ in range(n + 1):
        if len(data) == n:
            return data
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"proxy closed after {len(data)} of {n} bytes")
        data += chunk
    return data


@dataclass
class SocksReply:
    code: int
    seconds: float
    sock: socket.socket | None

    @property
    def name(self) -> str:
        return SOCKS_REPLY_NAMES.get(self.code, f"unknown {self.code:#04x}")


def socks5_connect(
    proxy: tuple[str, int],
    host: str,
    port: int,
    timeout: float = 30.0,
    auth: tuple[str, str] | None = None,
) -> SocksReply:
    """SOCKS5 CONNECT to host:port (a name is sent as a name: ATYP 3), with username/password
    authentication (RFC 1929) when `auth` is given. Returns the reply code, the seconds from
    sending the request to reading the reply, and on success the socket."""
    sock = socket.create_connection(proxy, timeout=timeout)
    try:
        if auth is None:
            sock.sendall(b"\x05\x01\x00")
            if _recv_exact(sock, 2) != b"\x05\x00":
                raise AssertionError("the proxy did not accept SOCKS5 without authentication")
        else:
            sock.sendall(b"\x05\x01\x02")
            if _recv_exact(sock, 2) != b"\x05\x02":
                raise AssertionError("the proxy did not accept SOCKS5 username/password")
            user, password = auth[0].encode(), auth[1].encode()
            sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
            if _recv_exact(sock, 2) != b"\x01\x00":
                raise AssertionError("the proxy refused the credentials")
        try:
            addr = b"\x01" + socket.inet_aton(host)
        except OSError:
            raw = host.encode()
            addr = b"\x03" + bytes([len(raw)]) + raw
        start = time.monotonic()
        sock.sendall(b"\x05\x01\x00" + addr + struct.pack(">H", port))
        head = _recv_exact(sock, 4)
        seconds = time.monotonic() - start
        if head[0] != 5:
            raise AssertionError(f"bad SOCKS reply version {head[0]}")
        atyp = head[3]
        if atyp == 1:
            _recv_exact(sock, 4 + 2)
        elif atyp == 4:
            _recv_exact(sock, 16 + 2)
        elif atyp == 3:
            _recv_exact(sock, _recv_exact(sock, 1)[0] + 2)
        code = head[1]
        if code != 0:
            sock.close()
            return SocksReply(code, seconds, None)
        return SocksReply(code, seconds, sock)
    except BaseException:
        sock.close()
        raise


def http_get_via_socks(
    proxy: tuple[str, int],
    host: str,
    port: int,
    path: str = "/",
    timeout: float = 10.0,
    auth: tuple[str, str] | None = None,
) -> bytes:
    """GET http://host:port/path through the proxy with a raw SOCKS5 CONNECT (with `auth` as
    username/password, if given); returns the body."""
    reply = socks5_connect(proxy, host, port, timeout=timeout, auth=auth)
    if reply.sock is None:
        raise ConnectionError(f"SOCKS reply {reply.code:#04x} ({reply.name})")
    with reply.sock as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            chunk = s.recv(65536)
            if not chunk or time.monotonic() > deadline:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise ConnectionError(f"unexpected response {head[:60]!r}")
    return body


async def socks5_fetch_async(proxy: tuple[str, int], port: int, expected: bytes) -> int:
    """One SOCKS5 CONNECT (no authentication) to 127.0.0.1:port with asyncio, a request, and a
    read of exactly len(expected) bytes. Returns 0 when they are `expected`, else the SOCKS
    reply code, or -1 for a short or different body, -2 for a refused greeting, -4 when the
    proxy did not take the connection."""
    import asyncio

    try:
        reader, writer = await asyncio.open_connection(*proxy)
    except OSError:
        return -4
    try:
        writer.write(b"\x05\x01\x00")
        if await reader.readexactly(2) != b"\x05\x00":
            return -2
        writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
        head = await reader.readexactly(4)
        await reader.readexactly({1: 6, 4: 18}.get(head[3], 6))
        if head[1] != 0:
            return head[1]
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        body = await reader.readexactly(len(expected))
        return 0 if body == expected else -1
    except (OSError, asyncio.IncompleteReadError):
        return -1
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------------
# The web server: generated files and a page with an image and a script.

PAGE_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shallot integration page</title>
<style>body{font-family:sans-serif;margin:2em;background:#f4f1ea} img{border:2px solid #333}</style>
</head>
<body>
<h1 id="title">Shallot integration page</h1>
<p id="status">the script has not run</p>
<img id="picture" src="/picture.png" width="160" height="120" alt="test picture"
     onload="document.getElementById('picture-state').textContent = 'picture loaded ' + this.naturalWidth + 'x' + this.naturalHeight">
<p id="picture-state">picture not loaded</p>
<script src="/app.js"></script>
</body></html>
"""

APP_JS = """// Changes the DOM, so that a DOM dump proves the script came through the proxy and ran.
document.getElementById('status').textContent = 'script ran through Shallot';
var item = document.createElement('p');
item.id = 'made-by-script';
item.textContent = 'host seen by the page: ' + location.host;
document.body.appendChild(item);
"""


def make_png(width: int, height: int) -> bytes:
    """A deterministic RGB PNG: colour bands, so a screenshot visibly shows it."""
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            row += bytes([(x * 255) // width, (y * 255) // height, 160])
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


def make_site(root: Path) -> dict[str, str]:
    """Writes the site into `root`; returns {file name: SHA-256 hex}."""
    root.mkdir(parents=True, exist_ok=True)
    sums = {}
    big = root / "big.bin"
    rng = random.Random(20240601)
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        for _ in range(BIG_FILE_MIB):
            block = rng.randbytes(1 << 20)
            digest.update(block)
            f.write(block)
    sums["big.bin"] = digest.hexdigest()
    small = random.Random(7).randbytes(1 << 20)
    (root / "small.bin").write_bytes(small)
    sums["small.bin"] = hashlib.sha256(small).hexdigest()
    (root / "index.html").write_text(PAGE_HTML)
    (root / "app.js").write_text(APP_JS)
    (root / "picture.png").write_bytes(make_png(160, 120))
    return sums


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        self.server.requests.append((self.path, self.headers.get("Host", "")))

    def log_error(self, format, *args):  # noqa: A002
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that goes away mid-transfer (the fault tests) is expected, not an error.
        pass


class WebServer:
    """http.server on 127.0.0.1:PORT in a thread, serving `root`; records (path, Host)."""

    def __init__(self, root: Path):
        handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.requests = []
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(self.server.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# A DNS server on 127.0.0.1 (UDP) that answers A queries from a table and records who asked.


@dataclass
class DnsQuery:
    name: str
    qtype: int
    source: tuple[str, int]
    owner_pid: int | None


def _udp_socket_inodes(port: int) -> set[str]:
    """Inodes of the UDP sockets bound to local `port` (IPv4 and IPv6 tables)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def owner_of_udp_port(port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds a UDP socket bound to local `port` (None: none of them)."""
    wanted = {f"socket:[{inode}]" for inode in _udp_socket_inodes(port)}
    if not wanted:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return pid
            except OSError:
                continue
    return None


class DnsServer:
    """Answers `A` (and `AAAA`) queries for names in `table` with their IPv4 (IPv6) address,
    `PTR` queries for names in `ptr` with their target, NODATA for the other types of those
    names, NXDOMAIN for every other name. For each query it records the name, the type, the
    source, and which of the watched processes holds the source socket: a resolver waits for
    the answer, so its socket is still open while the query is being handled.

    `bind` and `ttl` let the simulated internet (integration/netsim/servers.py) run it as its
    destination network's DNS server, with `record` off: a long run would keep every query."""

    def __init__(
        self,
        table: dict[str, str],
        ptr: dict[str, str] | None = None,
        bind: tuple[str, int] = ("127.0.0.1", 0),
        ttl: int = 5,
        record: bool = True,
    ):
        self.table = {k.lower().rstrip("."): v for k, v in table.items()}
        self.ptr = {k.lower().rstrip("."): v for k, v in (ptr or {}).items()}
        self.ttl = ttl
        self.record = record
        self.queries: list[DnsQuery] = []
        self.watched_pids: list[int] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data, source)
            except (ValueError, IndexError, struct.error):
                continue
            try:
                self.sock.sendto(reply, source)
            except OSError:
                continue

    def _answer(self, data: bytes, source: tuple[str, int]) -> bytes:
        qid, flags, qdcount = struct.unpack(">HHH", data[:6])
        if qdcount != 1:
            raise ValueError("one question expected")
        labels, i = [], 12
        for _ in range(128):
            n = data[i]
            i += 1
            if n == 0:
                break
            labels.append(data[i : i + n].decode("ascii", "replace"))
            i += n
        qtype, qclass = struct.unpack(">HH", data[i : i + 4])
        question = data[12 : i + 4]
        name = ".".join(labels).lower()
        if self.record:
            owner = owner_of_udp_port(source[1], list(self.watched_pids))
            self.queries.append(DnsQuery(name, qtype, source, owner))
        answers = b""
        rcode = 0
        address = self.table.get(name, "")
        if name not in self.table and name not in self.ptr:
            rcode = 3  # NXDOMAIN
        elif qtype == 1 and ":" not in address:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, self.ttl, 4) + socket.inet_aton(address)
        elif qtype == 28 and ":" in address:
            packed = socket.inet_pton(socket.AF_INET6, address)
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 28, 1, self.ttl, 16) + packed
        elif qtype == 12 and name in self.ptr:
            target = b"".join(bytes([len(p)]) + p.encode() for p in self.ptr[name].rstrip(".").split(".")) + b"\x00"
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 12, 1, self.ttl, len(target)) + target
        ancount = 1 if answers else 0
        rd = flags & 0x0100
        header = struct.pack(">HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, ancount, 0, 0)
        return header + question + answers

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# The network.


@dataclass
class Relay:
    index: int
    peer_id: str
    ip: str
    port: int
    is_exit: bool
    dir: Path
    proc: Proc | None = None

    @property
    def name(self) -> str:
        return f"{'exit' if self.is_exit else 'relay'} {self.index}"

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.ip}/tcp/{self.port}/p2p/{self.peer_id}"


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


@dataclass
class Network:
    """N relays (the last K exits) and a client, each its own `shallot` process. Relay i
    listens on 127.<i+1>.0.1, so each sits in its own /16 and the path rules stay on."""

    dir: Path
    relays_count: int = 6
    exits_count: int = 2
    dns_upstream: tuple[str, int] | None = None
    relays: list[Relay] = field(default_factory=list)
    client: Proc | None = None
    socks: tuple[str, int] = ("127.0.0.1", 0)
    metrics: tuple[str, int] = ("127.0.0.1", 0)
    # Extra lines of the client's TOML config (e.g. "max_connections = 16384").
    client_settings: list[str] = field(default_factory=list)
    # Extra top-level lines of each exit's TOML config (e.g. "max_queued_bytes = 16777216").
    exit_settings: list[str] = field(default_factory=list)
    # Where the client's SOCKS port listens (an address of this host; a test's namespace may
    # reach it where it cannot reach loopback).
    socks_ip: str = "127.0.0.1"
    # Extra top-level lines of every relay's TOML config (e.g. 'bandwidth_rate = "1 MB"').
    relay_settings: list[str] = field(default_factory=list)

    def start(self, probe_port: int) -> "Network":
        """Starts everything and waits (bounded) until a stream to 127.0.0.1:probe_port works."""
        exe = str(require_binary())
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        policy = self.dir / "exit.policy"
        policy.write_text(EXIT_POLICY)
        for i in range(self.relays_count):
            rdir = self.dir / f"relay-{i}"
            out = subprocess.run([exe, "keygen", "--dir", str(rdir)], capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                raise AssertionError(f"shallot keygen failed: {out.stderr}")
            peer = out.stdout.strip().splitlines()[-1]
            ip = f"127.{i + 1}.0.1"
            relay = Relay(i, peer, ip, free_port(ip), i >= self.relays_count - self.exits_count, rdir)
            bootstrap = [r.multiaddr for r in self.relays[:3]]
            lines = [
                f"data_dir = {json.dumps(str(rdir))}",
                f'listen = ["/ip4/{ip}/tcp/{relay.port}"]',
                f"bootstrap = {_toml_list(bootstrap)}",
                "exit_policy_reject_private = false",
                "allow_private_addresses = true",
                "safe_logging = false",
            ]
            if relay.is_exit:
                lines.append(f"exit_policy_file = {json.dumps(str(policy))}")
                if self.dns_upstream:
                    lines.append(f'dns_upstreams = ["{self.dns_upstream[0]}:{self.dns_upstream[1]}"]')
                lines += self.exit_settings
            lines += self.relay_settings
            # Every client of these networks connects from 127.0.0.1, one address: give it
            # what a relay gives one relay, as `shallot testnet` does (specs/00 §4.4). The
            # table comes last: TOML keys after it would belong to it.
            lines += [
                "max_circuits_per_address = 512",
                "[create_rate_per_address]",
                "per_second = 20",
                "burst = 100",
            ]
            config = rdir / "relay.toml"
            config.write_text("\n".join(lines) + "\n")
            relay.proc = Proc(relay.name, [exe, "relay", "--config", str(config), "--stop-with-stdin"], rdir / "log.txt")
            self.relays.append(relay)
        cdir = self.dir / "client"
        cdir.mkdir()
        self.socks = (self.socks_ip, free_port(self.socks_ip))
        self.metrics = ("127.0.0.1", free_port())
        config = cdir / "client.toml"
        config.write_text(
            "\n".join(
                [
                    f'socks_listen = "{self.socks[0]}:{self.socks[1]}"',
                    f"bootstrap = {_toml_list([r.multiaddr for r in self.relays[:3]])}",
                    f"data_dir = {json.dumps(str(cdir))}",
                    "safe_logging = false",
                    *self.client_settings,
                ]
            )
            + "\n"
        )
        self.client = Proc(
            "client",
            [exe, "client", "--config", str(config), "--metrics", f"{self.metrics[0]}:{self.metrics[1]}", "--stop-with-stdin"],
            cdir / "log.txt",
        )
        self.wait_ready(probe_port)
        self.wait_view_complete()
        return self

    def wait_view_complete(self, timeout: float = READY_TIMEOUT_SECS) -> None:
        """Waits (bounded) until the client's view holds every relay: relays publish only once
        their reachability is known (specs/04 §4.1), so a first stream can work before the
        last relay is in the view, and a test that kills one exit needs the other."""
        start = time.monotonic()
        known = None
        for _ in range(int(timeout / 0.25) + 1):
            for line in self.metrics_text().splitlines():
                if line.startswith("shallot_relays_known "):
                    known = float(line.split()[-1])
            if known is not None and known >= self.relays_count:
                return
            if time.monotonic() - start > timeout:
                break
            time.sleep(0.25)
        raise AssertionError(f"the client's view held {known} of {self.relays_count} relays after {timeout:.0f} s")

    @property
    def client_dir(self) -> Path:
        return self.dir / "client"

    def processes(self) -> list[Proc]:
        procs = [r.proc for r in self.relays if r.proc]
        return procs + ([self.client] if self.client else [])

    def check_alive(self) -> None:
        for p in self.processes():
            if not p.alive() and p.popen.returncode != -signal.SIGKILL:
                raise AssertionError(f"{p.name} exited ({p.popen.returncode}); log {p.log}:\n{log_tail(p.log)}")

    def wait_ready(self, probe_port: int, timeout: float = READY_TIMEOUT_SECS) -> float:
        """Probes the proxy (SOCKS5 to 127.0.0.1:probe_port, GET /) until it works; bounded."""
        start = time.monotonic()
        last = "no attempt"
        for _ in range(int(timeout / 0.5) + 1):
            self.check_alive()
            try:
                http_get_via_socks(self.socks, "127.0.0.1", probe_port, "/", timeout=10)
                return time.monotonic() - start
            except (OSError, ConnectionError, AssertionError) as err:
                last = str(err)
            if time.monotonic() - start > timeout:
                break
            time.sleep(0.5)
        raise AssertionError(
            f"no stream through the network worked within {timeout} s (last: {last}); "
            f"client log {self.client.log}:\n{log_tail(self.client.log)}"
        )

    def relay_by_peer(self, peer_id: str) -> Relay:
        for r in self.relays:
            if r.peer_id == peer_id:
                return r
        raise AssertionError(f"{peer_id} is not a relay of this network")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics[0]}:{self.metrics[1]}/metrics", timeout=5) as r:
            return r.read().decode()

    def status(self) -> dict:
        """The client's `GET /status`, checked against the shape the fault tests rely on:
        {"circuits": [{"id": u64, "hops": [guard, middle, exit], "streams": n, "age_secs": n}]}."""
        url = f"http://{self.metrics[0]}:{self.metrics[1]}/status"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read().decode()
        except urllib.error.HTTPError as err:
            raise AssertionError(
                f"the client does not serve GET /status yet (HTTP {err.code} at {url}): the fault "
                "tests need it to find which relays carry a circuit"
            ) from None
        try:
            status = json.loads(body)
            for c in status["circuits"]:
                assert isinstance(c["id"], int) and isinstance(c["streams"], int)
                assert isinstance(c["hops"], list) and all(isinstance(h, str) for h in c["hops"])
        except (ValueError, KeyError, TypeError, AssertionError):
            raise AssertionError(f"GET /status answered something else than the expected shape: {body[:300]!r}") from None
        return status

    def guards_state(self) -> list[str]:
        """PeerIds of the pinned guards in guards.state (specs/05 §6.2), in order."""
        path = self.client_dir / "guards.state"
        if not path.exists():
            return []
        return [line.split()[1] for line in path.read_text().splitlines() if line.startswith("guard ")]

    def stop(self) -> None:
        for p in self.processes():
            if p.popen.stdin:
                try:
                    p.popen.stdin.close()
                except OSError:
                    pass
        for p in self.processes():
            p.stop()
