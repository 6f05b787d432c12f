"""Headless Chromium from Debian's `chromium` package loads the page by host name through the
proxy: the DOM shows the script ran and the picture loaded, and a screenshot is saved."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import harness

CHROMIUM_TIMEOUT_SECS = 90


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium is not installed: install Debian's chromium package (apt-get install -y chromium)")


def run_chromium(network, extra: list[str], url: str, log: Path) -> subprocess.CompletedProcess:
    """One headless Chromium run with a fresh profile; the whole process group is killed at
    the end or after CHROMIUM_TIMEOUT_SECS."""
    with tempfile.TemporaryDirectory(prefix="shallot-chromium-") as profile:
        argv = [
            chromium(),
            "--headless",
            "--no-sandbox",
            f"--proxy-server=socks5://{network.socks[0]}:{network.socks[1]}",
            # Chromium sends every host name to a SOCKS5 proxy; this makes any local lookup
            # fail outright, so the page can only load if the exit resolved the name.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--disable-background-networking",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ]
        with open(log, "wb") as err:
            result = harness.run_in_own_group(argv, CHROMIUM_TIMEOUT_SECS, stderr=err)
        return subprocess.CompletedProcess(argv, result.returncode, result.stdout.decode(errors="replace"), "")


def test_chromium_loads_page_by_name(network, web, shared_dns, output_dir):
    """--dump-dom shows the DOM after the script (fetched through the proxy) changed it and the
    picture loaded; the web server saw the page, script and picture asked for by host name."""
    url = f"http://web.shallot.test:{web.port}/"
    seen_before = len(web.requests)
    result = run_chromium(network, ["--dump-dom"], url, output_dir / "chromium-dump-dom.log")
    (output_dir / "dom.html").write_text(result.stdout)
    assert result.returncode == 0, f"chromium exited {result.returncode}; log {output_dir / 'chromium-dump-dom.log'}"
    dom = result.stdout
    assert "script ran through Shallot" in dom, f"the script did not run; DOM:\n{dom[:2000]}"
    assert f"host seen by the page: web.shallot.test:{web.port}" in dom
    assert "picture loaded 160x120" in dom, f"the picture did not load; DOM:\n{dom[:2000]}"
    fetched = {path for path, host in web.requests[seen_before:] if host == f"web.shallot.test:{web.port}"}
    assert {"/", "/app.js", "/picture.png"} <= fetched, fetched
    assert any(q.name == "web.shallot.test" for q in shared_dns.queries), "the exits never asked the DNS server"


def test_chromium_screenshot(network, web, output_dir, record):
    """A screenshot of the page loaded through the proxy, saved under integration/output/."""
    shot = output_dir / "page.png"
    result = run_chromium(
        network,
        [f"--screenshot={shot}", "--window-size=1024,768", "--hide-scrollbars"],
        f"http://web.shallot.test:{web.port}/",
        output_dir / "chromium-screenshot.log",
    )
    assert result.returncode == 0, f"chromium exited {result.returncode}; log {output_dir / 'chromium-screenshot.log'}"
    assert shot.is_file(), f"no screenshot at {shot}"
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, f"{shot} is not a real screenshot"
    record(f"screenshot saved: {shot.relative_to(harness.REPO)}")
