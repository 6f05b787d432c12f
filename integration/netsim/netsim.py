"""A small internet on one Linux machine, from network namespaces.

Every host is a namespace with one link to a router namespace and an address in a /16 of its
own (10.K.0.2/16, the router's side 10.K.0.1). The router sends every packet that crosses
between two hosts through `linkemu.py` (latency, jitter, loss, bandwidth, in user space: this
kernel has no netem). A home network sits behind a NAT gateway (nftables masquerade, no inbound
connections): the gateway is a host on the internet (10.100.0.2), the home namespace behind it
has 192.168.77.2 and reaches the rest only through the gateway.

All names start with `nsim-<pid of the runner>-`, so a crashed run's namespaces are found and
removed by the next one (`cleanup_stale`). Links are created directly inside the namespaces
(`ip link add ... netns A type veth peer ... netns B`): nothing is left in the root namespace,
and deleting a namespace deletes its end of every link.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "nsim-"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# The integration tests' child process (own process group, stopped through its standard input
# then killed, and killed at exit if still running).
sys.path.insert(0, str(REPO / "integration" / "tests"))
from harness import Proc  # noqa: E402
SHALLOT = REPO / "target" / "release" / "shallot"
ROUTER_TUN = "lat0"
# Policy-routing table the router sends host traffic to (the TUN's).
EMU_TABLE = "100"
NAT_WAN_INDEX = 100
HOME_LAN = "192.168.77"


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit(
            "integration/netsim/run needs root: it creates network namespaces, links and "
            "nftables rules (run it as root, or with sudo)"
        )
    for tool in ("ip", "nft"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"integration/netsim/run needs `{tool}` (Debian: apt-get install -y iproute2 nftables)")


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def list_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def delete_namespace(ns: str) -> None:
    for pid in pids_in(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids_in(ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    sh("ip", "netns", "del", ns, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup_stale(everything: bool = False) -> list[str]:
    """Removes the namespaces of runs whose runner is gone (all of ours with `everything`)."""
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(PREFIX):
            continue
        owner = ns[len(PREFIX) :].split("-", 1)[0]
        if everything or not owner.isdigit() or not _alive(int(owner)):
            delete_namespace(ns)
            removed.append(ns)
    return removed


@dataclass
class Host:
    name: str
    ns: str
    addr: str
    # The /16 (or the home /24) the host's addresses are in.
    prefix: str


@dataclass
class Internet:
    """The namespaces, links and processes of one run; `teardown` removes every one."""

    run_dir: Path
    tag: str = field(default_factory=lambda: str(os.getpid()))
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)
    router: str = ""

    def ns(self, name: str) -> str:
        return f"{PREFIX}{self.tag}-{name}"

    def add_namespace(self, name: str) -> str:
        ns = self.ns(name)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        return ns

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        sh("ip", "link", "set", if_a, "up", ns=ns_a)
        sh("ip", "link", "set", if_b, "up", ns=ns_b)

    def start(self, name: str, ns: str, argv: list[str], stdin: bool = True) -> Proc:
        """Starts argv inside namespace ns, in its own process group, logging to run_dir."""
        proc = Proc(name, ["ip", "netns", "exec", ns, *argv], self.run_dir / f"{name}.log", stdin_pipe=stdin)
        self.procs.append(proc)
        return proc

    # -----------------------------------------------------------------------------------------
    # Building it.

    def build(
        self,
        host_names: list[str],
        rtt_ms: float,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        rate_mbit: float = 0.0,
        with_home: bool = True,
    ) -> None:
        """The router, one host per name (10.K.0.2/16, K from 1), the web host (10.200.0.2) and,
        with `with_home`, the NAT gateway (10.100.0.2) and the home namespace behind it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.router = self.add_namespace("router")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            sh("sysctl", "-qw", key, ns=self.router)
        indexed = [(i + 1, n) for i, n in enumerate(host_names)] + [(200, "web")]
        if with_home:
            indexed.append((NAT_WAN_INDEX, "gateway"))
        for k, name in indexed:
            ns = self.add_namespace(name)
            self.veth(ns, "eth0", self.router, f"h{k}")
            sh("ip", "addr", "add", f"10.{k}.0.2/16", "dev", "eth0", ns=ns)
            sh("ip", "addr", "add", f"10.{k}.0.1/16", "dev", f"h{k}", ns=self.router)
            sh("ip", "route", "add", "default", "via", f"10.{k}.0.1", ns=ns)
            self.hosts[name] = Host(name, ns, f"10.{k}.0.2", f"10.{k}.0.0/16")
        if with_home:
            self._home()
        self._emulator([(h.prefix, h.name) for h in self.hosts.values() if h.name != "home"], rtt_ms, jitter_ms, loss, rate_mbit)
        for k, _ in indexed:
            sh("ip", "rule", "add", "iif", f"h{k}", "lookup", EMU_TABLE, "pref", "100", ns=self.router)

    def _home(self) -> None:
        gateway = self.hosts["gateway"].ns
        home = self.add_namespace("home")
        self.veth(gateway, "lan", home, "eth0")
        sh("ip", "addr", "add", f"{HOME_LAN}.1/24", "dev", "lan", ns=gateway)
        sh("ip", "addr", "add", f"{HOME_LAN}.2/24", "dev", "eth0", ns=home)
        sh("ip", "route", "add", "default", "via", f"{HOME_LAN}.1", ns=home)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=gateway)
        # A home router: masquerade out of the WAN side, nothing new comes in.
        rules = """
table ip nat {
    chain postrouting { type nat hook postrouting priority 100; oifname "eth0" masquerade; }
}
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan" oifname "eth0" accept
    }
}
"""
        out = subprocess.run(["ip", "netns", "exec", gateway, "nft", "-f", "-"], input=rules, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"nft in the gateway failed: {out.stderr.strip()}")
        self.hosts["home"] = Host("home", home, f"{HOME_LAN}.2", f"{HOME_LAN}.0/24")

    def _emulator(self, hosts: list[tuple[str, str]], rtt_ms: float, jitter_ms: float, loss: float, rate_mbit: float) -> None:
        ready = self.run_dir / "linkemu.ready"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, str(HERE / "linkemu.py"), "--tun", ROUTER_TUN, "--rtt-ms", str(rtt_ms),
                "--jitter-ms", str(jitter_ms), "--loss", str(loss), "--rate-mbit", str(rate_mbit),
                "--stop-with-stdin", "--ready-file", str(ready)]
        for prefix, name in hosts:
            argv += ["--host", f"{prefix}={name}"]
        proc = self.start("linkemu", self.router, argv)
        deadline = time.monotonic() + 10
        while not ready.exists():
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the link emulator did not start: {proc.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        sh("ip", "link", "set", ROUTER_TUN, "up", ns=self.router)
        sh("sysctl", "-qw", f"net.ipv4.conf.{ROUTER_TUN}.rp_filter=0", ns=self.router)
        sh("ip", "route", "add", "default", "dev", ROUTER_TUN, "table", EMU_TABLE, ns=self.router)

    # -----------------------------------------------------------------------------------------
    # Tearing it down.

    def teardown(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        for ns in reversed(self.namespaces):
            delete_namespace(ns)

    def leftovers(self) -> list[str]:
        """What of this run still exists: namespaces, processes, links in the root namespace."""
        found = [f"namespace {ns}" for ns in list_namespaces() if ns.startswith(self.ns(""))]
        found += [f"process {p.name} ({p.popen.pid})" for p in self.procs if p.alive()]
        links = sh("ip", "-o", "link", "show", check=False).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name == ROUTER_TUN or (name.startswith("h") and name[1:].isdigit()) or name == "lan":
                found.append(f"link {name} in the root namespace")
        return found


@contextmanager
def running(run_dir: Path):
    """An Internet for the `with` block, torn down at its end however it ends; after a block
    that ended normally, anything of it still left is an error."""
    net = Internet(run_dir)
    try:
        yield net
    finally:
        net.teardown()
    left = net.leftovers()
    if left:
        raise RuntimeError(f"teardown left {left}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
