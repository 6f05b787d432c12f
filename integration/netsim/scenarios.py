"""Scenarios of the simulated internet (netsim.py): Shallot relays on several hosts, a client
behind NAT, destination servers on a host of their own."""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import netsim

WEB_NAME = "web.netsim.test"
HTTP_PORT = 8080
DNS_PORT = 53
RELAY_BASE_PORT = 9001
SOCKS = "127.0.0.1:9050"
METRICS = "127.0.0.1:9051"
READY_TIMEOUT_SECS = 120.0
SMOKE_FILE_MIB = 10


@dataclass
class Relay:
    name: str
    host: netsim.Host
    # The relay's own address in its host's /16 (10.K.S.2, S its slot on the host): the
    # view admits at most two relays per /24, and on the real internet relays that share a
    # /24 are rarely many, so each relay gets a /24 of its own while a host's relays still
    # share its /16 (the family rule no path may break).
    addr: str
    port: int
    is_exit: bool
    dir: Path
    peer_id: str = ""
    proc: netsim.Proc | None = None
    # Killed on purpose (churn): not expected to be alive.
    killed: bool = False

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.addr}/tcp/{self.port}/p2p/{self.peer_id}"


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


@dataclass
class ShallotNet:
    """Relays (`per_host` on each relay host, the exits spread over hosts from the last), the
    destination servers on the web host, and a client in the home namespace."""

    net: netsim.Internet
    relay_hosts: list[str]
    per_host: int
    exits: int
    # Extra lines of every relay's config (they come last, so they may open tables).
    relay_settings: list[str] = field(default_factory=list)
    relays: list[Relay] = field(default_factory=list)
    client: netsim.Proc | None = None
    servers: netsim.Proc | None = None

    def start_servers(self, files: dict[str, bytes]) -> dict[str, str]:
        """Writes the files the web server serves; returns their SHA-256."""
        root = self.net.run_dir / "www"
        root.mkdir(parents=True, exist_ok=True)
        sums = {}
        for name, data in files.items():
            (root / name).write_bytes(data)
            sums[name] = netsim.hashlib.sha256(data).hexdigest()
        web = self.net.hosts["web"]
        self.servers = self.net.start(
            "servers",
            web.ns,
            [sys.executable, str(netsim.HERE / "servers.py"), "--addr", web.addr, "--http-port", str(HTTP_PORT),
             "--dir", str(root), "--dns-port", str(DNS_PORT), "--name", f"{WEB_NAME}={web.addr}"],
        )
        deadline = time.monotonic() + 10
        while b"servers ready" not in self.servers.log.read_bytes():
            if not self.servers.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web and DNS servers did not start: {self.servers.log.read_text(errors='replace')}")
            time.sleep(0.05)
        return sums

    def start_relays(self) -> None:
        if not netsim.SHALLOT.exists():
            raise RuntimeError(f"{netsim.SHALLOT} is missing: build it with `cargo build --release -p shallot`")
        placements = [(h, i) for i in range(self.per_host) for h in self.relay_hosts]
        exit_slots = set(range(len(placements) - self.exits, len(placements)))
        for n, (host_name, i) in enumerate(placements):
            self.relays.append(self._new_relay(host_name, RELAY_BASE_PORT + i, n in exit_slots))
        for relay in self.relays:
            self.launch(relay)

    def seeds(self) -> list[Relay]:
        """The bootstrap relays: the first relay of each of the first three hosts."""
        return [r for r in self.relays if r.port == RELAY_BASE_PORT][:3]

    def _new_relay(self, host_name: str, port: int, is_exit: bool) -> Relay:
        rdir = self.net.run_dir / f"relay-{len(self.relays)}"
        out = subprocess.run([str(netsim.SHALLOT), "keygen", "--dir", str(rdir)], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"shallot keygen failed: {out.stderr}")
        host = self.net.hosts[host_name]
        slot = 1 + sum(1 for r in self.relays if r.host.name == host_name)
        if slot > 254:
            raise RuntimeError(f"no address left on {host_name} for another relay")
        sixteen = host.prefix.split(".")[:2]
        addr = f"{sixteen[0]}.{sixteen[1]}.{slot}.2"
        netsim.sh("ip", "addr", "add", f"{addr}/16", "dev", "eth0", ns=host.ns)
        relay = Relay(f"relay-{len(self.relays)}", host, addr, port, is_exit, rdir)
        relay.peer_id = out.stdout.strip().splitlines()[-1]
        return relay

    def add_relay(self, host_name: str, is_exit: bool) -> Relay:
        """A new relay (a new identity) on `host_name`, on the next free port there, started."""
        port = max((r.port for r in self.relays if r.host.name == host_name), default=RELAY_BASE_PORT - 1) + 1
        relay = self._new_relay(host_name, port, is_exit)
        self.relays.append(relay)
        self.launch(relay)
        return relay

    def launch(self, relay: Relay) -> None:
        web = self.net.hosts["web"]
        policy = self.net.run_dir / "exit.policy"
        # Tor's default-like "accept everything" file; the reject-private prelude stays on and
        # only the web host's /16 is exempt from it (exit_policy_private_allowed), so exits reach
        # this internet's destinations and nothing else private, loopback included.
        policy.write_text("accept *:*\n")
        lines = [
            f"data_dir = {json.dumps(str(relay.dir))}",
            f'listen = ["/ip4/{relay.addr}/tcp/{relay.port}"]',
            f"bootstrap = {toml_list([s.multiaddr for s in self.seeds() if s is not relay])}",
            "allow_private_addresses = true",
            "safe_logging = false",
        ]
        if relay.is_exit:
            lines += [
                f"exit_policy_file = {json.dumps(str(policy))}",
                f"exit_policy_private_allowed = [{json.dumps(web.prefix)}]",
                f'dns_upstreams = ["{web.addr}:{DNS_PORT}"]',
            ]
        # Last: a table in them takes every key after it.
        lines += self.relay_settings
        config = relay.dir / "relay.toml"
        config.write_text("\n".join(lines) + "\n")
        relay.proc = self.net.start(relay.name, relay.host.ns, [str(netsim.SHALLOT), "relay", "--config", str(config), "--stop-with-stdin"])

    def start_client(self, extra: list[str] | None = None) -> None:
        """The client in the home namespace; `extra` lines go last in its config."""
        home = self.net.hosts["home"]
        cdir = self.net.run_dir / "client"
        cdir.mkdir(parents=True, exist_ok=True)
        seeds = self.seeds()
        config = cdir / "client.toml"
        config.write_text(
            "\n".join(
                [
                    f'socks_listen = "{SOCKS}"',
                    f"bootstrap = {toml_list([s.multiaddr for s in seeds])}",
                    f"data_dir = {json.dumps(str(cdir))}",
                    "safe_logging = false",
                    *(extra or []),
                ]
            )
            + "\n"
        )
        # The path log ("path chosen", specs/05 §5) is a debug line of the client's manager.
        self.client = self.net.start(
            "client",
            home.ns,
            ["env", "RUST_LOG=info,shallot_client::manager=debug", str(netsim.SHALLOT), "client", "--config", str(config),
             "--metrics", METRICS, "--stop-with-stdin"],
        )

    def check_alive(self) -> None:
        for proc in [r.proc for r in self.relays if r.proc and not r.killed] + [self.client, self.servers]:
            if proc and not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}); log {proc.log}:\n{proc.log.read_text(errors='replace')[-3000:]}")

    def curl(self, url: str, out: Path | None = None, max_time: float = 60, extra: list[str] | None = None) -> subprocess.CompletedProcess:
        """curl in the home namespace through the client's SOCKS port, the name resolved at the
        exit. Prints `<size> <seconds> <ttfb>` on success."""
        argv = ["curl", "-sS", "--fail", "--max-time", str(max_time), "--socks5-hostname", SOCKS, url,
                "-o", str(out) if out else "/dev/null", "-w", "%{size_download} %{time_total} %{time_starttransfer}"]
        return netsim.sh(*argv, *(extra or []), ns=self.net.hosts["home"].ns, check=False, timeout=max_time + 15)

    def fetch_intact(self, name: str, size: int, sha256: str, max_time: float) -> tuple[str, str, str]:
        """Fetches `name` from the web host by name into the run folder and checks its size and
        SHA-256; returns curl's size, seconds and time to first byte."""
        out_file = self.net.run_dir / f"{name}.download"
        out = self.curl(f"http://{WEB_NAME}:{HTTP_PORT}/{name}", out=out_file, max_time=max_time)
        if out.returncode != 0:
            raise RuntimeError(f"the fetch of {name} failed ({out.returncode}): {out.stderr}")
        got, seconds, ttfb = out.stdout.split()
        if int(got) != size or netsim.sha256_file(out_file) != sha256:
            raise RuntimeError(f"{name} arrived different ({got} of {size} bytes)")
        return got, seconds, ttfb

    def wait_ready(self) -> float:
        start = time.monotonic()
        last = "no attempt"
        while time.monotonic() - start < READY_TIMEOUT_SECS:
            self.check_alive()
            out = self.curl(f"http://{WEB_NAME}:{HTTP_PORT}/ready.txt", max_time=15)
            if out.returncode == 0:
                return time.monotonic() - start
            last = out.stderr.strip()
            time.sleep(1)
        raise RuntimeError(f"no fetch through the network worked within {READY_TIMEOUT_SECS:.0f} s (last: {last}); client log:\n"
                           f"{self.client.log.read_text(errors='replace')[-3000:] if self.client else ''}")

    def metrics(self) -> str:
        out = netsim.sh("curl", "-sS", "--max-time", "5", f"http://{METRICS}/metrics", ns=self.net.hosts["home"].ns, check=False)
        return out.stdout

    def paths(self) -> list[list[str]]:
        """Every path the client chose, from its path log (guard first)."""
        found = []
        for line in self.client.log.read_text(errors="replace").splitlines() if self.client else []:
            if "path chosen" in line:
                match = re.search(r"path=(\S+)", line)
                if match:
                    found.append(match.group(1).split(","))
        return found

    def status(self) -> dict:
        out = netsim.sh("curl", "-sS", "--max-time", "5", f"http://{METRICS}/status", ns=self.net.hosts["home"].ns, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"GET /status failed: {out.stderr}")
        return json.loads(out.stdout)


def ping_rtt_ms(net: netsim.Internet, src: str, dst: str, count: int = 5) -> float:
    """The average RTT of `count` pings from host src to host dst."""
    out = netsim.sh("ping", "-q", "-c", str(count), "-i", "0.2", "-W", "5", net.hosts[dst].addr, ns=net.hosts[src].ns, check=False, timeout=60)
    match = re.search(r"= [\d.]+/([\d.]+)/", out.stdout)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"ping {src} -> {dst} failed: {out.stdout} {out.stderr}")
    return float(match.group(1))


def tcp_connect_ms(net: netsim.Internet, src: str, dst: str, port: int) -> float:
    """The time of a TCP handshake from host src to dst:port (the median of 5)."""
    code = (
        "import socket,sys,time\n"
        "t=[]\n"
        "for _ in range(5):\n"
        "    s=time.monotonic(); c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); t.append(time.monotonic()-s); c.close()\n"
        "t.sort(); print(t[2]*1000)\n"
    )
    out = netsim.sh(sys.executable, "-c", code, net.hosts[dst].addr, str(port), ns=net.hosts[src].ns, timeout=60)
    return float(out.stdout.strip())


sys.path.insert(0, str(netsim.REPO / "integration" / "bench"))
from bench import bucket_median, histogram  # noqa: E402  (the bench's Prometheus readers)


def parallel_fetches(sim: ShallotNet, url: str, users: list[str], parallel: int) -> int:
    """One fetch of url per SOCKS username (so a circuit each), `parallel` at a time, with one
    curl; returns how many succeeded."""
    cfg = sim.net.run_dir / "parallel.curl"
    # Connection: close, so that curl keeps no idle connection (and so no stream, and so no
    # circuit) open after each fetch. Every option per URL: after `next` curl starts each URL's
    # options afresh.
    groups = [
        f'url = "{url}"\noutput = "/dev/null"\nproxy = "socks5h://{user}:x@{SOCKS}"\n'
        f'header = "Connection: close"\nmax-time = 60\nwrite-out = "%{{http_code}}\\n"\n'
        for user in users
    ]
    cfg.write_text("next\n".join(groups))
    out = netsim.sh("curl", "-s", "-Z", "--parallel-max", str(parallel), "-K", str(cfg),
                    ns=sim.net.hosts["home"].ns, check=False, timeout=900)
    return sum(1 for code in out.stdout.split() if code == "200")


def check_paths(sim: ShallotNet, paths: list[list[str]]) -> None:
    """No path has two relays of one host's /16 (specs/05 §5)."""
    subnet = {r.peer_id: r.host.prefix for r in sim.relays}
    for path in paths:
        nets = [subnet.get(h, h) for h in path]
        if len(set(nets)) != len(nets):
            raise RuntimeError(f"a path has two relays of one host's /16: {path}")


# ---------------------------------------------------------------------------------------------
# Scenarios. Each returns its figures as lines of text and raises on failure.


def smoke(run_dir: Path) -> list[str]:
    """3 hosts, 6 relays (2 exits), 40 ms RTT between hosts: a client behind NAT fetches 10 MiB
    by name, SHA-256 equal; the delay is checked with ping and a TCP handshake."""
    figures = []
    with netsim.running(run_dir) as net:
        net.build(["h1", "h2", "h3"], rtt_ms=40)
        rtt = ping_rtt_ms(net, "h1", "h2")
        figures.append(f"ping h1 -> h2: {rtt:.1f} ms average RTT (configured 40 ms)")
        if not 38 <= rtt <= 60:
            raise RuntimeError(f"ping RTT {rtt:.1f} ms is not the configured 40 ms")
        sim = ShallotNet(net, ["h1", "h2", "h3"], per_host=2, exits=2)
        rng = random.Random(14)
        big = rng.randbytes(SMOKE_FILE_MIB << 20)
        sums = sim.start_servers({"ready.txt": b"ready\n", "big.bin": big})
        handshake = tcp_connect_ms(net, "h1", "web", HTTP_PORT)
        figures.append(f"TCP handshake h1 -> web: {handshake:.1f} ms (one RTT, configured 40 ms)")
        if not 38 <= handshake <= 60:
            raise RuntimeError(f"TCP handshake {handshake:.1f} ms is not one configured RTT of 40 ms")
        sim.start_relays()
        sim.start_client()
        ready = sim.wait_ready()
        figures.append(f"first fetch through the network from behind NAT {ready:.1f} s after the client started")
        size, seconds, ttfb = sim.fetch_intact("big.bin", len(big), sums["big.bin"], max_time=120)
        figures.append(
            f"{SMOKE_FILE_MIB} MiB by name from behind NAT: SHA-256 equal, {float(seconds):.2f} s "
            f"({int(size) / float(seconds) / 1e6:.1f} MB/s), first byte after {float(ttfb) * 1000:.0f} ms"
        )
        hops = [c["hops"] for c in sim.status()["circuits"]]
        subnets = {r.peer_id: r.host.prefix for r in sim.relays}
        for path in hops:
            nets = [subnets.get(h) for h in path]
            if len(set(nets)) != len(nets):
                raise RuntimeError(f"a circuit has two relays of one host's /16: {path}")
        figures.append(f"{len(hops)} circuits in the client's /status, each through {len(hops[0]) if hops else 0} hosts")
        sim.check_alive()
    figures.append("teardown: no namespace, link or process of the run is left")
    return figures


LOSS_HOSTS = 5
LOSS_PER_HOST = 4
LOSS_RATE = 0.005
LOSS_FILE_MIB = 50
LOSS_PATHS = 1000


def loss(run_dir: Path) -> list[str]:
    """5 hosts × 4 relays, 40 ms RTT, 0.5 % loss on every path between hosts: 50 MiB arrive
    intact, and over 1,000 paths from the client's path log none has two relays of one
    host's /16. The relays give the client's NAT address the CREATE rate of a relay (its 1,000
    circuits would otherwise wait on the per-address rate, specs/00 §4.4)."""
    figures = []
    hosts = [f"h{i + 1}" for i in range(LOSS_HOSTS)]
    with netsim.running(run_dir) as net:
        net.build(hosts, rtt_ms=40, loss=LOSS_RATE)
        figures.append(f"ping h1 -> h2 over 0.5 % loss: {ping_rtt_ms(net, 'h1', 'h2', count=10):.1f} ms average RTT")
        sim = ShallotNet(net, hosts, per_host=LOSS_PER_HOST, exits=5, relay_settings=[
            "max_circuits_per_address = 2048", "[create_rate_per_address]", "per_second = 200", "burst = 2000"])
        big = random.Random(15).randbytes(LOSS_FILE_MIB << 20)
        sums = sim.start_servers({"ready.txt": b"ready\n", "big.bin": big, "1k.bin": b"x" * 1024})
        sim.start_relays()
        sim.start_client()
        figures.append(f"first fetch after {sim.wait_ready():.1f} s")
        size, seconds, _ = sim.fetch_intact("big.bin", len(big), sums["big.bin"], max_time=600)
        figures.append(f"{LOSS_FILE_MIB} MiB over 0.5 % loss: SHA-256 equal, {float(seconds):.1f} s "
                       f"({int(size) / float(seconds) / 1e6:.2f} MB/s)")
        stamp = time.time_ns()
        started = time.monotonic()
        ok = 0
        for round_ in range(8):
            users = [f"path-{stamp}-{round_}-{i}" for i in range(LOSS_PATHS // 4)]
            ok += parallel_fetches(sim, f"http://{WEB_NAME}:{HTTP_PORT}/1k.bin", users, parallel=24)
            if len(sim.paths()) >= LOSS_PATHS:
                break
        paths = sim.paths()
        if len(paths) < LOSS_PATHS:
            raise RuntimeError(f"only {len(paths)} paths in the client's path log ({ok} fetches succeeded)")
        check_paths(sim, paths)
        middles = {p[1] for p in paths if len(p) == 3}
        exits = {p[-1] for p in paths}
        figures.append(f"{len(paths)} paths in {time.monotonic() - started:.0f} s ({ok} fetches succeeded): none has two "
                       f"relays of one host's /16; {len(middles)} distinct middles, {len(exits)} distinct exits")
        sim.check_alive()
    return figures


LATENCY_RTTS_MS = [0, 20, 80]
LATENCY_BIG_MIB = 100
LATENCY_BUILDS = 10


def latency(run_dir: Path) -> list[str]:
    """Shallot on 3 hosts × 2 relays at 0, 20 and 80 ms RTT between hosts, beside a direct TCP
    fetch over the same emulated path: 100 MiB single-stream throughput, 1 KiB time to first byte
    on a warm circuit, and a fresh 3-hop circuit's build time in ms and in round trips.
    (tor in the same namespaces is not part of it yet: see the README.)"""
    figures = ["| RTT ms | direct MB/s | Shallot MB/s | share of direct | warm 1 KiB TTFB ms | build ms (median / mean) | build in RTTs |",
               "|---|---|---|---|---|---|---|"]
    big = random.Random(16).randbytes(LATENCY_BIG_MIB << 20)
    for rtt in LATENCY_RTTS_MS:
        with netsim.running(run_dir / f"rtt-{rtt}") as net:
            net.build(["h1", "h2", "h3"], rtt_ms=rtt)
            sim = ShallotNet(net, ["h1", "h2", "h3"], per_host=2, exits=2)
            sim.start_servers({"ready.txt": b"ready\n", "big.bin": big, "1k.bin": b"x" * 1024})
            direct = netsim.sh("curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                               f"http://{net.hosts['web'].addr}:{HTTP_PORT}/big.bin", ns=net.hosts["home"].ns, timeout=300)
            size, secs = direct.stdout.split()
            direct_mbps = int(size) / float(secs) / 1e6
            sim.start_relays()
            sim.start_client()
            sim.wait_ready()
            out = sim.curl(f"http://{WEB_NAME}:{HTTP_PORT}/big.bin", max_time=600)
            if out.returncode != 0:
                raise RuntimeError(f"the 100 MiB fetch at {rtt} ms failed: {out.stderr}")
            size, secs, _ = out.stdout.split()
            shallot_mbps = int(size) / float(secs) / 1e6
            ttfbs = []
            for _ in range(10):
                r = sim.curl(f"http://{WEB_NAME}:{HTTP_PORT}/1k.bin", max_time=30)
                if r.returncode == 0:
                    ttfbs.append(float(r.stdout.split()[2]) * 1000)
            ttfbs.sort()
            h0 = histogram(sim.metrics(), "shallot_circuit_build_seconds")
            for i in range(LATENCY_BUILDS):
                sim.curl(f"http://{WEB_NAME}:{HTTP_PORT}/1k.bin", max_time=30, extra=["--proxy-user", f"build{i}-{time.time_ns()}:x"])
            time.sleep(1)
            h1 = histogram(sim.metrics(), "shallot_circuit_build_seconds")
            n = h1[2] - h0[2]
            median_ms = bucket_median(h0[0], h1[0]) * 1000
            mean_ms = (h1[1] - h0[1]) / n * 1000 if n else float("nan")
            in_rtts = f"{median_ms / rtt:.1f}" if rtt else "-"
            figures.append(f"| {rtt} | {direct_mbps:.1f} | {shallot_mbps:.1f} | {shallot_mbps / direct_mbps:.2f} | "
                           f"{ttfbs[len(ttfbs) // 2] if ttfbs else float('nan'):.0f} | {median_ms:.0f} / {mean_ms:.0f} | {in_rtts} |")
            sim.check_alive()
    return figures


NAT_DETECT_LIMIT_SECS = 60.0
NAT_WATCH_SECS = 90.0
UNREACHABLE_LOG = "not reachable at any announced address"


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None


def nat(run_dir: Path) -> list[str]:
    """3 hosts × 2 relays and, in the home network behind NAT, a would-be relay announcing its
    LAN address: it learns within 60 s (AutoNAT, specs/04 §4.1) that nobody can reach it,
    publishes nothing, and over 90 s of browsing the client behind the same NAT never picks it,
    never counts it in its view, and fetches normally."""
    figures = []
    with netsim.running(run_dir) as net:
        net.build(["h1", "h2", "h3"], rtt_ms=40)
        sim = ShallotNet(net, ["h1", "h2", "h3"], per_host=2, exits=2)
        sim.start_servers({"ready.txt": b"ready\n", "1m.bin": random.Random(17).randbytes(1 << 20)})
        sim.start_relays()
        home = net.hosts["home"]
        rdir = run_dir / "relay-home"
        out = subprocess.run([str(netsim.SHALLOT), "keygen", "--dir", str(rdir)], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"shallot keygen failed: {out.stderr}")
        home_peer = out.stdout.strip().splitlines()[-1]
        seeds = sim.seeds()
        (rdir / "relay.toml").write_text("\n".join([
            f"data_dir = {json.dumps(str(rdir))}",
            f'listen = ["/ip4/{home.addr}/tcp/{RELAY_BASE_PORT}"]',
            f"bootstrap = {toml_list([s.multiaddr for s in seeds])}",
            "allow_private_addresses = true",
            "safe_logging = false",
        ]) + "\n")
        started = time.monotonic()
        home_relay = net.start("relay-home", home.ns, ["env", "RUST_LOG=info,shallot_relay=debug", str(netsim.SHALLOT), "relay",
                                                      "--config", str(rdir / "relay.toml"), "--stop-with-stdin"])
        sim.start_client()
        sim.wait_ready()
        detected = None
        fetches = ok = 0
        while time.monotonic() - started < NAT_WATCH_SECS:
            if not home_relay.alive():
                raise RuntimeError(f"the relay behind NAT exited: {home_relay.log.read_text(errors='replace')[-2000:]}")
            if detected is None and UNREACHABLE_LOG in home_relay.log.read_text(errors="replace"):
                detected = time.monotonic() - started
            # Browsing: each fetch its own isolation, so each a new path.
            fetches += 1
            r = sim.curl(f"http://{WEB_NAME}:{HTTP_PORT}/1m.bin", max_time=30, extra=["--proxy-user", f"nat{fetches}:x"])
            ok += r.returncode == 0
            time.sleep(1)
        log = home_relay.log.read_text(errors="replace")
        if detected is None:
            raise RuntimeError(f"the relay behind NAT never said it is unreachable; log:\n{log[-3000:]}")
        if detected > NAT_DETECT_LIMIT_SECS:
            raise RuntimeError(f"the relay behind NAT took {detected:.0f} s to find it is unreachable")
        figures.append(f"the relay behind NAT found itself unreachable {detected:.1f} s after it started")
        if "descriptor published" in log:
            raise RuntimeError("the relay behind NAT published a descriptor")
        figures.append("it published no descriptor")
        paths = sim.paths()
        picked = [p for p in paths if home_peer in p]
        known = metric_value(sim.metrics(), "shallot_relays_known")
        if picked:
            raise RuntimeError(f"the client picked the relay behind NAT in {len(picked)} of {len(paths)} paths")
        if known != len(sim.relays):
            raise RuntimeError(f"the client knows {known} relays, not the {len(sim.relays)} reachable ones")
        check_paths(sim, paths)
        if ok < fetches:
            raise RuntimeError(f"the client behind NAT fetched {ok} of {fetches} pages")
        figures.append(f"the client behind the same NAT: {ok} of {fetches} isolated 1 MiB fetches over "
                       f"{NAT_WATCH_SECS:.0f} s, {len(paths)} paths, none through the NATed relay; relays known: {known:.0f}")
        sim.check_alive()
    return figures


CHURN_HOSTS = 10
CHURN_PER_HOST = 3
CHURN_EXITS = 6
CHURN_EVERY_SECS = 10.0
CHURN_SECS = 300.0
CHURN_RTT_MS = 40
CHURN_FETCH_LIMIT_SECS = 60
CHURN_VIEW_REFRESH_SECS = 30
# The long download: paced so that it lasts the whole churn.
LONG_RATE = 1_600_000
LONG_MIB = 450
STATUS_EVERY_SECS = 0.5


def log_time(line: str) -> float | None:
    """The Unix time of a tracing log line (UTC, RFC 3339)."""
    from datetime import datetime

    stamp = line.split(" ", 1)[0]
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def churn(run_dir: Path) -> list[str]:
    """30 relays on 10 hosts (40 ms apart); every 10 s for 5 minutes one relay is killed
    (SIGKILL, as a crash) and a new one (a new identity) starts on the same host, while the
    client fetches 1 MiB files back to back (no retries) and one long paced download runs. The
    bootstrap relays are never killed. Figures: the share of fetches that succeed, the time from a
    relay's death until the client's circuits through it are gone, each new relay's time to its
    first path, and the client's view size over time (a PNG plot)."""
    import threading

    figures = []
    hosts = [f"h{i + 1}" for i in range(CHURN_HOSTS)]
    rng = random.Random(18)
    events: list[tuple[float, str, str]] = []  # (unix time, "kill"/"start", peer id)
    view: list[tuple[float, float]] = []
    circuits_seen: list[tuple[float, list[tuple[int, list[str]]]]] = []
    fetches: list[tuple[float, bool, float]] = []  # (start, ok, seconds)
    stop = threading.Event()
    with netsim.running(run_dir) as net:
        try:
            net.build(hosts, rtt_ms=CHURN_RTT_MS)
            sim = ShallotNet(net, hosts, per_host=CHURN_PER_HOST, exits=CHURN_EXITS)
            www = run_dir / "www"
            www.mkdir(parents=True, exist_ok=True)
            with open(www / "long.bin", "wb") as f:
                f.truncate(LONG_MIB << 20)
            sim.start_servers({"ready.txt": b"ready\n", "1m.bin": rng.randbytes(1 << 20)})
            sim.start_relays()
            # Time runs fast here: a relay dies every 10 s, where on a real network relays
            # live for days and a client refreshes every 10 minutes. The refresh is
            # compressed with it (CHURN_VIEW_REFRESH_SECS), as a real client's would matter
            # against a real network's churn.
            sim.start_client([f"view_refresh_secs = {CHURN_VIEW_REFRESH_SECS}"])
            sim.wait_ready()
            ready_at = time.time()

            def watch() -> None:
                while not stop.wait(STATUS_EVERY_SECS):
                    try:
                        known = metric_value(sim.metrics(), "shallot_relays_known")
                        status = sim.status()
                    except (RuntimeError, ValueError):
                        continue
                    now = time.time()
                    if known is not None:
                        view.append((now, known))
                    circuits_seen.append((now, [(c["id"], c["hops"]) for c in status["circuits"]]))

            def fetch_loop() -> None:
                while not stop.is_set():
                    start = time.time()
                    r = sim.curl(f"http://{WEB_NAME}:{HTTP_PORT}/1m.bin", max_time=CHURN_FETCH_LIMIT_SECS)
                    parts = r.stdout.split()
                    ok = r.returncode == 0 and bool(parts) and parts[0] == str(1 << 20)
                    fetches.append((start, ok, time.time() - start))

            long_out = run_dir / "long.download"
            long_dl = subprocess.Popen(
                ["ip", "netns", "exec", net.hosts["home"].ns, "curl", "-sS", "--fail", "--limit-rate", str(LONG_RATE),
                 "--max-time", str(int(CHURN_SECS + 120)), "--socks5-hostname", SOCKS, f"http://{WEB_NAME}:{HTTP_PORT}/long.bin",
                 "-o", str(long_out), "--proxy-user", "long:x"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
            )
            threads = [threading.Thread(target=watch, daemon=True), threading.Thread(target=fetch_loop, daemon=True)]
            for t in threads:
                t.start()
            seeds = {r.peer_id for r in sim.seeds()}
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < CHURN_SECS:
                n += 1
                next_at = started + n * CHURN_EVERY_SECS
                time.sleep(max(0.0, next_at - time.monotonic()))
                sim.check_alive()
                alive = [r for r in sim.relays if not r.killed and r.peer_id not in seeds]
                victim = rng.choice(alive)
                victim.proc.kill()
                victim.killed = True
                events.append((time.time(), "kill", victim.peer_id))
                newcomer = sim.add_relay(victim.host.name, victim.is_exit)
                events.append((time.time(), "start", newcomer.peer_id))
            stop.set()
            for t in threads:
                t.join(CHURN_FETCH_LIMIT_SECS + 10)
            long_got = long_out.stat().st_size if long_out.exists() else 0
            long_alive = long_dl.poll() is None
            if long_alive:
                long_dl.terminate()
            long_err = long_dl.communicate(timeout=30)[1]
            # Fetches started after ready; a failure is a failure (no retries).
            total = len(fetches)
            ok = sum(1 for _, good, _ in fetches if good)
            figures.append(f"{total} back-to-back 1 MiB fetches during {CHURN_SECS:.0f} s of churn ({len(events) // 2} relays killed "
                           f"and as many started): {ok} succeeded ({100 * ok / max(total, 1):.1f} %, goal 99 %)")
            figures.append(f"the long paced download: {long_got >> 20} MiB received, "
                           f"{'still running at the end' if long_alive else 'ended: ' + (long_err.strip() or 'complete')}")
            # Death to failure: circuits through a killed relay, until gone from /status.
            gaps = []
            for at, kind, peer in events:
                if kind != "kill":
                    continue
                before = [snap for t, snap in circuits_seen if t <= at]
                if not before:
                    continue
                carrying = {cid for cid, hops in before[-1] if peer in hops}
                if not carrying:
                    continue
                gone = next((t for t, snap in circuits_seen if t > at and not carrying & {cid for cid, _ in snap}), None)
                if gone is not None:
                    gaps.append(gone - at)
            if gaps:
                gaps.sort()
                figures.append(f"death of a relay carrying circuits to their end at the client: {len(gaps)} cases, median "
                               f"{gaps[len(gaps) // 2]:.1f} s, worst {gaps[-1]:.1f} s (goal at most 5 s; /status polled every "
                               f"{STATUS_EVERY_SECS} s)")
            # New relay to its first path.
            first_use = {}
            for line in sim.client.log.read_text(errors="replace").splitlines() if sim.client else []:
                if "path chosen" in line:
                    t = log_time(line)
                    for _, kind, peer in events:
                        if kind == "start" and peer in line and peer not in first_use and t is not None:
                            first_use[peer] = t
            starts = [(at, peer) for at, kind, peer in events if kind == "start"]
            uses = sorted(first_use[p] - at for at, p in starts if p in first_use)
            figures.append(f"new relays in a path: {len(uses)} of {len(starts)}"
                           + (f", first use after median {uses[len(uses) // 2]:.0f} s, fastest {uses[0]:.0f} s" if uses else ""))
            if view:
                sizes = [k for _, k in view]
                figures.append(f"the client's view: {min(sizes):.0f} to {max(sizes):.0f} relays (30 alive at any time)")
            plot = churn_plot(run_dir / "churn.png", ready_at, view, events, fetches)
            figures.append(f"plot: {plot}")
            sim.check_alive()
        finally:
            # The watcher and fetcher threads stop before the network they use goes.
            stop.set()
    return figures


def churn_plot(path: Path, t0: float, view, events, fetches) -> str:
    """The view size over time, with the kills and starts, and each fetch's outcome."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not drawn: matplotlib is missing (python3 -m pip install -r integration/netsim/requirements.txt)"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([t - t0 for t, _ in view], [k for _, k in view], label="relays in the client's view")
    for at, kind, _ in events:
        top.axvline(at - t0, color="red" if kind == "kill" else "green", alpha=0.15, linewidth=1)
    top.set_ylabel("relays known")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    top.set_title("netsim churn: a relay killed (red) and one started (green) every 10 s")
    good = [(s - t0, d) for s, ok, d in fetches if ok]
    bad = [(s - t0, d) for s, ok, d in fetches if not ok]
    bottom.scatter([x for x, _ in good], [d for _, d in good], s=6, label="1 MiB fetch ok")
    bottom.scatter([x for x, _ in bad], [d for _, d in bad], s=18, marker="x", color="red", label="failed")
    bottom.set_ylabel("fetch s")
    bottom.set_xlabel("seconds after ready")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


SCENARIOS = {"smoke": smoke, "loss": loss, "latency": latency, "nat": nat, "churn": churn}
