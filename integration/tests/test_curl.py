"""curl through the client's proxy port: SOCKS5 with the name resolved at the exit, and HTTP
CONNECT."""

import hashlib
import shutil
import subprocess

import harness


def curl() -> str:
    path = shutil.which("curl")
    assert path, "curl is not installed: install Debian's curl package"
    return path


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_curl_socks5_hostname_50mib_sha256(network, web, site, tmp_path, record):
    """A 50 MiB file by name (`localhost`, resolved by the exit) arrives whole: SHA-256 equal."""
    out = tmp_path / "big.bin"
    socks = f"{network.socks[0]}:{network.socks[1]}"
    result = subprocess.run(
        [curl(), "-sS", "--fail", "--max-time", "120", "--socks5-hostname", socks,
         f"http://localhost:{web.port}/big.bin", "-o", str(out), "-w", "%{size_download} %{time_total}"],
        capture_output=True, text=True, timeout=150,
    )
    assert result.returncode == 0, f"curl failed ({result.returncode}): {result.stderr}"
    size, seconds = result.stdout.split()
    assert int(size) == harness.BIG_FILE_MIB << 20
    assert sha256_file(out) == site[1]["big.bin"]
    record(f"50 MiB through 3 hops in {float(seconds):.2f} s (informational)")
    out.unlink()


def test_curl_http_connect(network, web, site):
    """curl -p -x http://PROXY: an HTTP CONNECT tunnel carries a request to the web server."""
    proxy = f"http://{network.socks[0]}:{network.socks[1]}"
    result = subprocess.run(
        [curl(), "-sS", "--fail", "--max-time", "60", "-p", "-x", proxy, f"http://localhost:{web.port}/small.bin"],
        capture_output=True, timeout=90,
    )
    assert result.returncode == 0, f"curl failed ({result.returncode}): {result.stderr.decode()}"
    assert hashlib.sha256(result.stdout).hexdigest() == site[1]["small.bin"]


def test_curl_http_connect_page(network, web):
    """The page through an HTTP CONNECT tunnel, by the name the exit resolves with its DNS."""
    proxy = f"http://{network.socks[0]}:{network.socks[1]}"
    result = subprocess.run(
        [curl(), "-sS", "--fail", "--max-time", "60", "-p", "-x", proxy, f"http://web.shallot.test:{web.port}/"],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, f"curl failed ({result.returncode}): {result.stderr}"
    assert "Shallot integration page" in result.stdout
