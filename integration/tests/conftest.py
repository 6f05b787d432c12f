"""Fixtures: the generated web site and its server, a shared network for the tests that leave
it intact, fresh networks for the destructive ones, per-test output folders, and the
measurements printed at the end of the run."""

from __future__ import annotations

import json
import re
import shutil

import pytest

import harness

SHARED_NAME = "web.shallot.test"

_MEASUREMENTS: list[tuple[str, str]] = []


def pytest_sessionstart(session):
    if harness.OUTPUT.exists():
        shutil.rmtree(harness.OUTPUT)
    harness.OUTPUT.mkdir(parents=True)


def pytest_terminal_summary(terminalreporter):
    if not _MEASUREMENTS:
        return
    terminalreporter.section("measurements")
    for test, text in _MEASUREMENTS:
        terminalreporter.write_line(f"{test}: {text}")
    path = harness.OUTPUT / "measurements.json"
    path.write_text(json.dumps([{"test": t, "measurement": m} for t, m in _MEASUREMENTS], indent=2) + "\n")
    terminalreporter.write_line(f"(also in {path.relative_to(harness.REPO)})")


@pytest.fixture
def record(request):
    """record("text"): prints it now and again in the run's closing `measurements` section."""

    def add(text: str) -> None:
        print(f"{request.node.name}: {text}")
        _MEASUREMENTS.append((request.node.name, text))

    return add


@pytest.fixture
def output_dir(request):
    """integration/output/<test name>/ (fresh)."""
    path = harness.OUTPUT / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The generated files: (folder, {name: SHA-256})."""
    root = tmp_path_factory.mktemp("site")
    return root, harness.make_site(root)


@pytest.fixture(scope="session")
def web(site):
    server = harness.WebServer(site[0])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_dns():
    server = harness.DnsServer({SHARED_NAME: "127.0.0.1"})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def network(web, shared_dns):
    """One network (6 relays, 2 exits, exits resolving with `shared_dns`) for every test that
    leaves it intact."""
    harness.require_binary()
    net = harness.Network(harness.OUTPUT / "shared-network", dns_upstream=shared_dns.addr)
    try:
        net.start(web.port)
        yield net
    finally:
        net.stop()


@pytest.fixture
def make_network(web, output_dir):
    """make_network(**kw) starts a fresh network for one test (stopped at its end)."""
    started = []

    def make(**kw) -> harness.Network:
        net = harness.Network(output_dir / f"network-{len(started)}", **kw)
        started.append(net)
        net.start(web.port)
        return net

    yield make
    for net in started:
        net.stop()
