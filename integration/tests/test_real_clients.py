"""The programs people put in front of Tor, in front of Shallot: torsocks (names through SOCKS
RESOLVE), proxychains4 (names through SOCKS5 with proxy_dns) and headless Firefox ESR (remote
DNS through SOCKS5).

Nothing may bypass the proxy unnoticed, so the programs run in a network namespace of their own
whose only route is to the client's SOCKS port (on a veth address of this host), and the
destination is a web server in a second namespace, reachable from the exits on this host and
from nowhere else. A program that connected or resolved by itself would find no route; the
destination's log shows every request it got, with its Host header."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness

NAME = "ns-web.shallot.test"
TAG = str(os.getpid() % 100_000)
WEB_NS = f"shallot-rcw-{TAG}"
APP_NS = f"shallot-rca-{TAG}"
# Host side .1, namespace side .2, each a /30 of its own.
WEB_NET = "10.213.0"
APP_NET = "10.214.0"
WEB_PORT = 8080
PROGRAM_TIMEOUT_SECS = 90


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _teardown_namespaces() -> None:
    for ns in (WEB_NS, APP_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _make_namespace(ns: str, net: str, link: str) -> None:
    _ip("netns", "add", ns)
    _ip("link", "add", f"{link}h", "type", "veth", "peer", "name", f"{link}n")
    _ip("link", "set", f"{link}n", "netns", ns)
    _ip("addr", "add", f"{net}.1/30", "dev", f"{link}h")
    _ip("link", "set", f"{link}h", "up")
    _ip("-n", ns, "addr", "add", f"{net}.2/30", "dev", f"{link}n")
    _ip("-n", ns, "link", "set", f"{link}n", "up")
    _ip("-n", ns, "link", "set", "lo", "up")


@dataclass
class Setup:
    net: harness.Network
    dns: harness.DnsServer
    web_log: Path
    site: Path

    @property
    def url(self) -> str:
        return f"http://{NAME}:{WEB_PORT}"

    def requests(self) -> list[tuple[str, str]]:
        lines = self.web_log.read_text().splitlines() if self.web_log.exists() else []
        return [tuple(line.split("\t", 1)) for line in lines]


@pytest.fixture(scope="module")
def setup(web, site, tmp_path_factory):
    if os.geteuid() != 0:
        raise AssertionError("these tests make network namespaces: run them as root (CI does)")
    if not shutil.which("ip"):
        raise AssertionError("iproute2 is not installed: apt-get install -y iproute2")
    harness.require_binary()
    _teardown_namespaces()
    work = tmp_path_factory.mktemp("real-clients")
    server = None
    net = None
    dns = harness.DnsServer({NAME: f"{WEB_NET}.2"})
    try:
        _make_namespace(WEB_NS, WEB_NET, f"rcw{TAG}")
        _make_namespace(APP_NS, APP_NET, f"rca{TAG}")
        web_log = work / "web.log"
        server = subprocess.Popen(
            ["ip", "netns", "exec", WEB_NS, sys.executable, str(Path(__file__).parent / "ns_web_server.py"),
             str(site[0]), f"{WEB_NET}.2", str(WEB_PORT), str(web_log)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(work / "web.err", "wb"),
        )
        assert server.stdout.readline().strip() == b"listening", f"the namespace's web server did not start: {(work / 'web.err').read_text()}"
        net = harness.Network(
            harness.OUTPUT / "real-clients-network", relays_count=4, exits_count=1,
            dns_upstream=dns.addr, socks_ip=f"{APP_NET}.1",
        )
        net.start(web.port)
        yield Setup(net, dns, web_log, site[0])
    finally:
        if net:
            net.stop()
        if server:
            server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        dns.stop()
        _teardown_namespaces()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        assert WEB_NS not in left and APP_NS not in left, f"namespaces left behind: {left}"


def _in_app_ns(argv: list[str], env: dict[str, str] | None = None, timeout: float = PROGRAM_TIMEOUT_SECS) -> subprocess.CompletedProcess:
    """Runs argv in the programs' namespace, its whole process group killed after `timeout`."""
    return harness.run_in_own_group(["ip", "netns", "exec", APP_NS, *argv], timeout, env={**os.environ, **(env or {})})


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if not path:
        raise AssertionError(f"{program} is not installed: apt-get install -y {package}")
    return path


def _curl() -> str:
    return _require("curl", "curl")


def test_the_destination_is_out_of_reach_without_the_proxy(setup):
    """The check the other tests stand on: the programs' namespace reaches nothing but the
    SOCKS port, and resolves no name by itself."""
    direct = _in_app_ns([_curl(), "-sS", "--max-time", "5", f"http://{WEB_NET}.2:{WEB_PORT}/small.bin", "-o", "/dev/null"])
    assert direct.returncode != 0, "the destination was reached without the proxy"
    by_name = _in_app_ns([_curl(), "-sS", "--max-time", "5", f"{setup.url}/small.bin", "-o", "/dev/null"])
    assert by_name.returncode != 0, "a name resolved without the proxy"


def test_torsocks_resolves_through_socks_and_fetches(setup, tmp_path):
    torsocks = _require("torsocks", "torsocks")
    conf = tmp_path / "torsocks.conf"
    conf.write_text(f"TorAddress {setup.net.socks[0]}\nTorPort {setup.net.socks[1]}\nAllowInbound 0\n")
    env = {"TORSOCKS_CONF_FILE": str(conf)}
    asked = len(setup.dns.queries)
    # A lookup alone goes out as SOCKS RESOLVE (Tor's extension): the exit resolves it.
    resolved = _in_app_ns([torsocks, sys.executable, "-c", f"import socket; print(socket.gethostbyname('{NAME}'))"], env)
    assert resolved.returncode == 0, resolved.stderr.decode(errors="replace")
    assert resolved.stdout.decode().strip() == f"{WEB_NET}.2"
    assert any(q.name == NAME for q in setup.dns.queries[asked:]), "the exits never asked the DNS server"
    out = tmp_path / "small.bin"
    seen = len(setup.requests())
    fetched = _in_app_ns([torsocks, _curl(), "-sS", "--fail", "--max-time", "60", f"{setup.url}/small.bin", "-o", str(out)], env)
    assert fetched.returncode == 0, fetched.stderr.decode(errors="replace")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256((setup.site / "small.bin").read_bytes()).hexdigest()
    assert ("/small.bin", f"{NAME}:{WEB_PORT}") in setup.requests()[seen:]


def test_proxychains_resolves_through_socks_and_fetches(setup, tmp_path):
    proxychains = _require("proxychains4", "proxychains4")
    conf = tmp_path / "proxychains.conf"
    conf.write_text(
        "strict_chain\nproxy_dns\nremote_dns_subnet 224\ntcp_read_time_out 30000\ntcp_connect_time_out 30000\n"
        f"[ProxyList]\nsocks5 {setup.net.socks[0]} {setup.net.socks[1]}\n"
    )
    out = tmp_path / "small.bin"
    seen = len(setup.requests())
    fetched = _in_app_ns([proxychains, "-q", "-f", str(conf), _curl(), "-sS", "--fail", "--max-time", "60", f"{setup.url}/small.bin", "-o", str(out)])
    assert fetched.returncode == 0, fetched.stderr.decode(errors="replace")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256((setup.site / "small.bin").read_bytes()).hexdigest()
    assert ("/small.bin", f"{NAME}:{WEB_PORT}") in setup.requests()[seen:]


def test_firefox_loads_the_page_by_name_through_socks(setup, output_dir, record):
    firefox = shutil.which("firefox-esr") or shutil.which("firefox")
    if not firefox:
        raise AssertionError("Firefox is not installed: apt-get install -y firefox-esr")
    with tempfile.TemporaryDirectory(prefix="shallot-firefox-") as profile:
        host, port = setup.net.socks
        Path(profile, "user.js").write_text(
            "\n".join(
                [
                    'user_pref("network.proxy.type", 1);',
                    f'user_pref("network.proxy.socks", "{host}");',
                    f'user_pref("network.proxy.socks_port", {port});',
                    'user_pref("network.proxy.socks_version", 5);',
                    # Names go to the proxy; Firefox resolves nothing itself.
                    'user_pref("network.proxy.socks_remote_dns", true);',
                    'user_pref("network.dns.disablePrefetch", true);',
                    'user_pref("network.trr.mode", 5);',
                    'user_pref("app.update.enabled", false);',
                    'user_pref("browser.shell.checkDefaultBrowser", false);',
                    'user_pref("datareporting.policy.dataSubmissionEnabled", false);',
                    'user_pref("toolkit.telemetry.enabled", false);',
                    'user_pref("browser.safebrowsing.malware.enabled", false);',
                    'user_pref("browser.safebrowsing.phishing.enabled", false);',
                    'user_pref("extensions.update.enabled", false);',
                    'user_pref("network.captive-portal-service.enabled", false);',
                    'user_pref("network.connectivity-service.enabled", false);',
                ]
            )
            + "\n"
        )
        shot = output_dir / "firefox.png"
        seen = len(setup.requests())
        started = time.monotonic()
        result = _in_app_ns(
            [firefox, "--headless", "--no-remote", "--profile", profile, "--window-size=1024,768", "--screenshot", str(shot), f"{setup.url}/"],
            env={"HOME": profile, "MOZ_HEADLESS": "1"},
        )
        seconds = time.monotonic() - started
    (output_dir / "firefox.log").write_bytes(result.stdout + result.stderr)
    assert result.returncode == 0, f"firefox exited {result.returncode}; log {output_dir / 'firefox.log'}"
    fetched = {path for path, h in setup.requests()[seen:] if h == f"{NAME}:{WEB_PORT}"}
    assert {"/", "/app.js", "/picture.png"} <= fetched, fetched
    assert shot.is_file() and shot.read_bytes().startswith(b"\x89PNG"), f"no screenshot at {shot}"
    record(f"Firefox loaded the page by name through Shallot in {seconds:.1f} s; screenshot {shot.relative_to(harness.REPO)}")
