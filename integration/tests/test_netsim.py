"""The simulated internet's CI scenario (integration/netsim): `integration/netsim/run smoke`
builds 3 hosts with 6 relays (2 exits) 40 ms apart, a web and DNS host, and a client behind NAT,
fetches 10 MiB by name through Shallot and checks its SHA-256, then tears everything down and
checks that nothing of it is left. Needs root (network namespaces), as CI has."""

import subprocess

import harness

NETSIM_RUN = harness.REPO / "integration" / "netsim" / "run"
SMOKE_LIMIT_SECS = 300


def _our_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith("nsim-")]


def test_netsim_smoke_fetches_10_mib_from_behind_nat_and_leaves_nothing(record):
    harness.require_binary()
    before = _our_namespaces()
    result = subprocess.run([str(NETSIM_RUN), "smoke"], capture_output=True, text=True, timeout=SMOKE_LIMIT_SECS)
    for line in result.stdout.splitlines():
        if line.startswith("netsim smoke: "):
            record(line[len("netsim smoke: "):])
    assert result.returncode == 0, f"netsim smoke failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert "SHA-256 equal" in result.stdout
    left = [ns for ns in _our_namespaces() if ns not in before]
    assert not left, f"netsim smoke left namespaces behind: {left}"
