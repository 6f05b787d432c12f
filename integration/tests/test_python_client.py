"""A Python program through the proxy: `requests` with PySocks, by name and by IP."""

import hashlib

import pytest


def proxies(network) -> dict:
    # socks5h: the name goes to the proxy unresolved (the exit resolves it).
    url = f"socks5h://{network.socks[0]}:{network.socks[1]}"
    return {"http": url, "https": url}


@pytest.fixture
def requests_module():
    try:
        import requests
        import socks  # noqa: F401 (PySocks, which requests needs for socks5h://)
    except ImportError as err:
        raise AssertionError(f"{err}: install integration/requirements.txt with pip (integration/run does)")
    return requests


def test_python_requests_by_name(network, web, site, requests_module):
    """`requests` fetches by host name; the exit resolves web.shallot.test with its DNS server."""
    r = requests_module.get(f"http://web.shallot.test:{web.port}/small.bin", proxies=proxies(network), timeout=60)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == site[1]["small.bin"]
    page = requests_module.get(f"http://web.shallot.test:{web.port}/", proxies=proxies(network), timeout=60)
    assert "Shallot integration page" in page.text


def test_python_requests_by_ip(network, web, site, requests_module):
    """`requests` fetches by IPv4 literal (sent as an address, nothing to resolve)."""
    r = requests_module.get(f"http://127.0.0.1:{web.port}/small.bin", proxies=proxies(network), timeout=60)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == site[1]["small.bin"]
