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
    port: int
    is_exit: bool
    dir: Path
    peer_id: str = ""
    proc: netsim.Proc | None = None

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.host.addr}/tcp/{self.port}/p2p/{self.peer_id}"


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
        exe = str(netsim.SHALLOT)
        if not netsim.SHALLOT.exists():
            raise RuntimeError(f"{exe} is missing: build it with `cargo build --release -p shallot`")
        web = self.net.hosts["web"]
        policy = self.net.run_dir / "exit.policy"
        # Tor's default-like "accept everything" file; the reject-private prelude stays on and
        # only the web host's /16 is exempt from it (exit_policy_private_allowed), so exits reach
        # this internet's destinations and nothing else private, loopback included.
        policy.write_text("accept *:*\n")
        placements = [(h, i) for i in range(self.per_host) for h in self.relay_hosts]
        exit_slots = set(range(len(placements) - self.exits, len(placements)))
        for n, (host_name, i) in enumerate(placements):
            host = self.net.hosts[host_name]
            rdir = self.net.run_dir / f"relay-{n}"
            out = subprocess.run([exe, "keygen", "--dir", str(rdir)], capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                raise RuntimeError(f"shallot keygen failed: {out.stderr}")
            relay = Relay(f"relay-{n}", host, RELAY_BASE_PORT + i, n in exit_slots, rdir)
            relay.peer_id = out.stdout.strip().splitlines()[-1]
            self.relays.append(relay)
        # Bootstrap from the first relay of each of the first three hosts.
        seeds = [r for r in self.relays if r.port == RELAY_BASE_PORT][:3]
        for relay in self.relays:
            lines = [
                f"data_dir = {json.dumps(str(relay.dir))}",
                f'listen = ["/ip4/{relay.host.addr}/tcp/{relay.port}"]',
                f"bootstrap = {toml_list([s.multiaddr for s in seeds if s is not relay])}",
                "allow_private_addresses = true",
                "safe_logging = false",
            ]
            if relay.is_exit:
                lines += [
                    f"exit_policy_file = {json.dumps(str(policy))}",
                    f"exit_policy_private_allowed = [{json.dumps(web.prefix)}]",
                    f'dns_upstreams = ["{web.addr}:{DNS_PORT}"]',
                ]
            config = relay.dir / "relay.toml"
            config.write_text("\n".join(lines) + "\n")
            relay.proc = self.net.start(relay.name, relay.host.ns, [str(netsim.SHALLOT), "relay", "--config", str(config), "--stop-with-stdin"])

    def start_client(self) -> None:
        home = self.net.hosts["home"]
        cdir = self.net.run_dir / "client"
        cdir.mkdir(parents=True, exist_ok=True)
        seeds = [r for r in self.relays if r.port == RELAY_BASE_PORT][:3]
        config = cdir / "client.toml"
        config.write_text(
            "\n".join(
                [
                    f'socks_listen = "{SOCKS}"',
                    f"bootstrap = {toml_list([s.multiaddr for s in seeds])}",
                    f"data_dir = {json.dumps(str(cdir))}",
                    "safe_logging = false",
                ]
            )
            + "\n"
        )
        self.client = self.net.start(
            "client", home.ns, [str(netsim.SHALLOT), "client", "--config", str(config), "--metrics", METRICS, "--stop-with-stdin"]
        )

    def check_alive(self) -> None:
        for proc in [r.proc for r in self.relays if r.proc] + [self.client, self.servers]:
            if proc and not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}); log {proc.log}:\n{proc.log.read_text(errors='replace')[-3000:]}")

    def curl(self, url: str, out: Path | None = None, max_time: float = 60, extra: list[str] | None = None) -> subprocess.CompletedProcess:
        """curl in the home namespace through the client's SOCKS port, the name resolved at the
        exit. Prints `<size> <seconds> <ttfb>` on success."""
        argv = ["curl", "-sS", "--fail", "--max-time", str(max_time), "--socks5-hostname", SOCKS, url,
                "-o", str(out) if out else "/dev/null", "-w", "%{size_download} %{time_total} %{time_starttransfer}"]
        return netsim.sh(*argv, *(extra or []), ns=self.net.hosts["home"].ns, check=False, timeout=max_time + 15)

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


# ---------------------------------------------------------------------------------------------
# Scenarios. Each returns its figures as lines of text and raises on failure.


def smoke(run_dir: Path) -> list[str]:
    """3 hosts, 6 relays (2 exits), 40 ms RTT between hosts: a client behind NAT fetches 10 MiB
    by name, SHA-256 equal; the delay is checked with ping and a TCP handshake."""
    figures = []
    net = netsim.Internet(run_dir)
    try:
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
        out_file = run_dir / "big.download"
        out = sim.curl(f"http://{WEB_NAME}:{HTTP_PORT}/big.bin", out=out_file, max_time=120)
        if out.returncode != 0:
            raise RuntimeError(f"the 10 MiB fetch failed ({out.returncode}): {out.stderr}")
        size, seconds, ttfb = out.stdout.split()
        if int(size) != len(big) or netsim.sha256_file(out_file) != sums["big.bin"]:
            raise RuntimeError(f"the 10 MiB file arrived different ({size} bytes)")
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
    finally:
        net.teardown()
    left = net.leftovers()
    if left:
        raise RuntimeError(f"teardown left {left}")
    figures.append("teardown: no namespace, link or process of the run is left")
    return figures


SCENARIOS = {"smoke": smoke}
