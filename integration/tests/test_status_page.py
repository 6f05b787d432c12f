"""The client's status page at `/` of its metrics address, in headless Chromium after a 50 MiB
download: circuits with their hops and a throughput graph that moved; and `shallot status`,
the same as text in a terminal."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request

import harness
from test_browser import run_chromium
from test_curl import curl


def _download_50_mib(network, web, tmp_path) -> None:
    out = tmp_path / "big.bin"
    result = subprocess.run(
        [curl(), "-sS", "--fail", "--max-time", "120", "--socks5-hostname", f"{network.socks[0]}:{network.socks[1]}",
         f"http://localhost:{web.port}/big.bin", "-o", str(out)],
        capture_output=True, text=True, timeout=150,
    )
    assert result.returncode == 0, f"curl failed ({result.returncode}): {result.stderr}"
    assert out.stat().st_size == harness.BIG_FILE_MIB << 20
    out.unlink()
    # The graph samples once a second: let it take the download's last second.
    time.sleep(2)


def test_the_status_page_shows_circuits_and_a_graph_that_moved(network, web, tmp_path, output_dir, record):
    _download_50_mib(network, web, tmp_path)
    url = f"http://{network.metrics[0]}:{network.metrics[1]}/"
    # Chromium goes to loopback directly, not through its proxy; the page then reads /status.
    result = run_chromium(network, ["--dump-dom", "--virtual-time-budget=5000"], url, output_dir / "chromium-dom.log")
    (output_dir / "status-dom.html").write_text(result.stdout)
    assert result.returncode == 0, f"chromium exited {result.returncode}; log {output_dir / 'chromium-dom.log'}"
    dom = result.stdout
    assert "data-refreshed" in dom, f"the page never read /status; DOM:\n{dom[:3000]}"
    count = re.search(r'<span id="circuit-count">(\d+)</span>', dom)
    assert count and int(count.group(1)) >= 1, f"no circuit on the page; DOM:\n{dom[:3000]}"
    rows = re.findall(r'<td class="mono">([^<]*→[^<]*)</td>', dom)
    assert any(len(r.split(" → ")) == 3 for r in rows), f"no circuit with three hops: {rows}"
    points = re.search(r'id="down-line"[^>]*points="([^"]*)"', dom) or re.search(r'points="([^"]*)"[^>]*id="down-line"', dom)
    assert points and points.group(1), f"no throughput line; DOM:\n{dom[:3000]}"
    ys = [float(p.split(",")[1]) for p in points.group(1).split()]
    # The baseline is y = 158: a line that moved has points well above it.
    assert min(ys) < 100, f"the throughput line never rose: {ys[-20:]}"
    peak = re.search(r'<span id="peak">([^<]*)</span>', dom)
    record(f"status page after a 50 MiB download: {count.group(1)} circuits, {peak.group(1) if peak else '?'}")

    shot = output_dir / "status-page.png"
    result = run_chromium(
        network,
        [f"--screenshot={shot}", "--window-size=900,1000", "--hide-scrollbars", "--virtual-time-budget=5000"],
        url,
        output_dir / "chromium-screenshot.log",
    )
    assert result.returncode == 0 and shot.is_file(), f"no screenshot; log {output_dir / 'chromium-screenshot.log'}"
    record(f"status page screenshot: {shot.relative_to(harness.REPO)}")


def test_shallot_status_prints_the_same_as_text(network, web):
    result = subprocess.run(
        [str(harness.require_binary()), "status", "--metrics", f"{network.metrics[0]}:{network.metrics[1]}"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "bootstrap   100%" in text, text
    known = re.search(r"relays\s+(\d+) known", text)
    assert known and int(known.group(1)) == network.relays_count, text
    assert re.search(r"^circuits \((\d+)\)", text, re.M), text
    assert " > " in text, f"no circuit with hops:\n{text}"


def test_shallot_status_without_a_client_says_what_to_check():
    port = harness.free_port()
    result = subprocess.run(
        [str(harness.require_binary()), "status", "--metrics", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "--metrics" in result.stderr, result.stderr


def test_the_status_answers_no_other_host_name(network):
    """A web page that rebinds its own name to the metrics address sends that name as Host."""
    req = urllib.request.Request(
        f"http://{network.metrics[0]}:{network.metrics[1]}/status", headers={"Host": "rebound.example"}
    )
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("the status was served to another host name")
    except urllib.error.HTTPError as err:
        assert err.code == 403
