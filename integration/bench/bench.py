#!/usr/bin/env python3
"""Shallot's one-command performance benchmark. See README.md next to this file.

One run on loopback: a Shallot testnet (5 relays, 3-hop circuits, 1 client) and a local HTTP
server; Shallot, the ceilings (direct curl, one raw libp2p stream) and, when `tor` is installed,
a private C tor network (tor_network.py next to this file: 3 authorities, 5 relays, 1 client)
are measured in the same run. Prints one markdown table and writes the same as JSON under
target/bench/. Every process it starts is stopped at the end.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tor_network  # noqa: E402  (next to this file)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHALLOT = os.path.join(ROOT, "target", "release", "shallot")
HELPER = os.path.join(ROOT, "target", "release", "shallot-bench")
HZ = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# No tor reference figures are kept here: tor is measured in the same run (tor_network.py), and
# a run where it cannot run shows n/a in the tor column. Figures from an earlier measured run on
# this kind of machine are in README.md next to this file.
STARTED = []  # Popen objects to stop at exit


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port(ip="127.0.0.1"):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def start(cmd, **kw):
    """Starts a process in its own process group (so its children are stopped with it)."""
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    STARTED.append(p)
    return p


def stop_all():
    for p in reversed(STARTED):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 15
    for p in STARTED:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    STARTED.clear()


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = open(f"/proc/{d}/cmdline").read().split("\0")
                out.append((int(d), cmd))
        except (OSError, IndexError, ValueError):
            pass
    return out


def cpu_s(pids):
    t = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except OSError:
            pass
    return t / HZ


def rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def curl(url, socks=None, user=None, max_time=300, extra=()):
    cmd = ["curl", "-s", "-f", "-o", "/dev/null", "--max-time", str(max_time), "-w",
           "%{time_starttransfer} %{time_total} %{speed_download} %{size_download}"]
    if socks:
        proxy = f"socks5h://{user}:x@{socks}" if user else f"socks5h://{socks}"
        cmd += ["--proxy", proxy]
    cmd += list(extra) + [url]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    ttfb, total, speed, size = r.stdout.split()
    return float(ttfb), float(total), float(speed), int(size)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def metrics(addr):
    try:
        with socket.create_connection(tuple_addr(addr), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        return data.decode(errors="replace")
    except OSError:
        return ""


def tuple_addr(a):
    h, p = a.rsplit(":", 1)
    return h, int(p)


def histogram(text, name):
    """{le: count}, sum, count of a Prometheus histogram."""
    buckets, total, count = {}, 0.0, 0
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket\{{le="([^"]+)"\}} (\S+)', line)
        if m:
            buckets[float(m.group(1))] = float(m.group(2))
        elif line.startswith(f"{name}_sum"):
            total = float(line.split()[-1])
        elif line.startswith(f"{name}_count"):
            count = float(line.split()[-1])
    return buckets, total, count


def bucket_median(b0, b1):
    """Median of the observations between two histogram snapshots, linear within a bucket."""
    les = sorted(b1)
    diff = [(le, b1[le] - b0.get(le, 0)) for le in les]
    n = diff[-1][1] if diff else 0
    if n <= 0:
        return float("nan")
    half, prev_le, prev_c = n / 2, 0.0, 0
    for le, c in diff:
        if c >= half:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (half - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return float("nan")


def wait_ready(p, timeout):
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            if p.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        if line.startswith("ready"):
            return lines
    raise RuntimeError("testnet not ready:\n" + "\n".join(lines[-20:]))


def http_server(www):
    port = free_port()
    start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
           "--directory", www], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if curl(url + "/1k.bin", max_time=2):
            return url
        time.sleep(0.1)
    raise RuntimeError("http server did not start")


def measure_shallot(a, work, url, res):
    socks = f"127.0.0.1:{free_port()}"
    maddr = f"127.0.0.1:{free_port()}"
    net = start([SHALLOT, "testnet", "--relays", "5", "--socks", socks, "--metrics", maddr,
                 "--data-dir", os.path.join(work, "testnet")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                stdin=subprocess.DEVNULL)
    t0 = time.time()
    wait_ready(net, 180)
    res["shallot"]["ready_s"] = round(time.time() - t0, 2)
    kids = children(net.pid)
    client = [p for p, c in kids if "client" in c]
    relays = [p for p, c in kids if "relay" in c]
    allp = [net.pid] + [p for p, _ in kids]
    log(f"testnet ready: client {client}, relays {relays}")
    s = res["shallot"]
    # warm circuit, then 1 KiB TTFB
    curl(url + "/1k.bin", socks)
    small = [curl(url + "/1k.bin", socks) for _ in range(a.n_small)]
    s["ttfb_1k_ms"] = median([r[0] for r in small if r]) * 1000
    s["fail_1k"] = sum(1 for r in small if r is None)
    # 100 MiB, CPU of every Shallot process
    c0, w0 = cpu_s(allp), time.time()
    big = [curl(url + "/100m.bin", socks) for _ in range(a.n_big)]
    c1 = cpu_s(allp)
    ok = [r for r in big if r and r[3] == 100 * MIB]
    s["mbps_100m"] = median([r[2] / 1e6 for r in ok])
    s["mbps_100m_all"] = [round(r[2] / 1e6, 1) for r in ok]
    s["cpu_s_per_100mib"] = (c1 - c0) / max(len(ok), 1)
    s["cpu_wall_s"] = round(time.time() - w0, 1)
    # 100 parallel 1 MiB streams
    cfg = os.path.join(work, "parallel.curl")
    with open(cfg, "w") as f:
        for _ in range(100):
            f.write(f'url = "{url}/1m.bin"\noutput = "/dev/null"\n')
    t = time.time()
    r = subprocess.run(["curl", "-s", "-f", "-Z", "--parallel-max", "100", "--max-time", "300",
                        "--proxy", f"socks5h://{socks}", "-K", cfg,
                        "-w", "%{size_download}\n"], capture_output=True, text=True)
    dt = time.time() - t
    got = sum(int(x) for x in r.stdout.split() if x.isdigit())
    s["parallel_100x1m_mbps"] = got / dt / 1e6
    s["parallel_ok"] = sum(1 for x in r.stdout.split() if x == str(MIB))
    # circuit build: 20 fresh isolation groups, each needs its own circuit
    h0 = histogram(metrics(maddr), "shallot_circuit_build_seconds")
    fresh = []
    for i in range(a.n_circ):
        fresh.append(curl(url + "/1k.bin", socks, user=f"bench{i}-{time.time_ns()}"))
        time.sleep(0.2)
    time.sleep(1)
    h1 = histogram(metrics(maddr), "shallot_circuit_build_seconds")
    n = h1[2] - h0[2]
    s["circuit_builds_observed"] = n
    s["circuit_build_ms"] = bucket_median(h0[0], h1[0]) * 1000
    s["circuit_build_mean_ms"] = (h1[1] - h0[1]) / n * 1000 if n else float("nan")
    s["ttfb_1k_fresh_isolation_ms"] = median([r[0] for r in fresh if r]) * 1000
    s["rss_client_mb"] = max(rss_mb(p) for p in client) if client else float("nan")
    s["rss_relays_mb"] = [round(rss_mb(p), 1) for p in relays]
    s["rss_relay_max_mb"] = max(s["rss_relays_mb"]) if relays else float("nan")
    os.killpg(net.pid, signal.SIGTERM)
    try:
        net.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(net.pid, signal.SIGKILL)
        net.wait()


def measure_idle_circuits(a, work, res):
    """One relay process with limits raised for the bench (2,000 circuits per peer and per
    address, CREATE burst 2,000), and the helper holding a.idle one-hop circuits to it."""
    d = os.path.join(work, "idle-relay")
    os.makedirs(d, exist_ok=True)
    subprocess.run([SHALLOT, "keygen", "--dir", d], check=True, capture_output=True)
    port = free_port("127.0.9.1")
    cfg = os.path.join(d, "relay.toml")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{d}"\nlisten = ["/ip4/127.0.9.1/tcp/{port}"]\n'
                f"max_circuits = 4096\nmax_circuits_per_peer = 2000\n"
                f"max_circuits_per_address = 2000\n"
                f"[create_rate_per_peer]\nper_second = 2000\nburst = 2000\n"
                f"[create_rate_per_address]\nper_second = 2000\nburst = 2000\n")
    relay = start([SHALLOT, "relay", "--config", cfg, "--stop-with-stdin"],
                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                  stderr=open(os.path.join(d, "log.txt"), "w"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.9.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    r = subprocess.run([HELPER, "idle-circuits", "--relay-dir", d, "--addr",
                        f"/ip4/127.0.9.1/tcp/{port}", "--pid", str(relay.pid),
                        "--circuits", str(a.idle)], capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        res["shallot"]["idle_circuit"] = json.loads(r.stdout)
        res["shallot"]["bytes_per_idle_circuit"] = res["shallot"]["idle_circuit"]["bytes_per_circuit"]
    else:
        log("idle-circuit helper failed: " + r.stderr[-500:])
    relay.stdin.close()
    relay.wait(timeout=20)


def measure_ceilings(a, url, res):
    c = res["ceiling"]
    curl(url + "/1k.bin")
    c["ttfb_1k_ms"] = median([curl(url + "/1k.bin")[0] for _ in range(a.n_small)]) * 1000
    c["mbps_100m"] = median([curl(url + "/100m.bin")[2] / 1e6 for _ in range(a.n_big)])
    for _ in range(2):  # one retry: the helper has once failed at start under load
        r = subprocess.run([HELPER, "raw-stream", "--mib", "1024"], capture_output=True,
                           text=True, timeout=300)
        if r.returncode == 0:
            break
    if r.returncode == 0:
        raw = json.loads(r.stdout)
        c["raw_libp2p_mbps"] = raw["mb_per_s"]
        c["raw_libp2p_cpu_s_per_100mib"] = raw["cpu_s_per_100mib"]
    else:
        log("raw-stream helper failed: " + r.stderr[:800])


def measure_tor(a, work, res):
    if not tor_network.find_tor()[0]:
        if not a.with_tor:
            res["tor"]["status"] = "tor not installed (run with --with-tor to install it)"
            return
        log("installing tor")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "tor"], env=env, timeout=600)
        if not tor_network.find_tor()[0]:
            res["tor"]["status"] = "tor install failed"
            return
    log("measuring a private tor network (tor_network.py)")
    try:
        r = tor_network.run(n_small=a.n_small, n_big=a.n_big, n_circ=a.n_circ, n_newnym=1,
                            workroot=os.path.join(work, "tor"), log=log)
    except Exception as e:  # tor's failure must not lose the Shallot figures of this run
        res["tor"]["status"] = f"tor network failed: {str(e)[-300:]}"
        return
    t = res["tor"]
    t["status"] = "measured in this run"
    t["ttfb_1k_ms"] = r["tor"]["ttfb_1k_ms"]
    t["mbps_100m"] = r["tor"]["mbps_100m"]
    t["circuit_build_ms"] = r["tor"]["circuit_build_ms"]
    t["cpu_s_per_100mib"] = r["tor"]["cpu_s_per_100mib"]
    rss = {name: kib[0] for name, kib in r["rss_kib"].items() if kib[0] is not None}
    t["rss_client_mb"] = rss["client"] / 1024 if "client" in rss else float("nan")
    relays = [kib / 1024 for name, kib in rss.items() if name.startswith("relay")]  # exits, middle
    t["rss_relay_max_mb"] = max(relays) if relays else float("nan")
    t["raw"] = r["report"]
    t["details"] = {k: v for k, v in r.items() if k != "report"}


def fmt(v, d=1):
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.{d}f}"


def table(res):
    s, t, c = res["shallot"], res["tor"], res["ceiling"]
    rows = [
        # label, key, unit digits, target ratio (shallot/tor), higher is better, ceiling key
        ("1 KiB TTFB, warm circuit, median (ms)", "ttfb_1k_ms", 2, "≤ 0.2", False, "ttfb_1k_ms"),
        ("100 MiB throughput, median (MB/s)", "mbps_100m", 1, "≥ 15", True, "mbps_100m"),
        ("3-hop circuit build, median (ms)", "circuit_build_ms", 1, "≤ 0.25", False, None),
        ("CPU-s per 100 MiB, all processes", "cpu_s_per_100mib", 2, "≤ 0.4", False,
         "raw_libp2p_cpu_s_per_100mib"),
        ("client RSS after test (MB)", "rss_client_mb", 1, "≤ 20 MB", False, None),
        ("largest relay RSS after test (MB)", "rss_relay_max_mb", 1, "≤ 30 MB", False, None),
        ("100 parallel 1 MiB streams (MB/s)", "parallel_100x1m_mbps", 1, "", True, None),
        ("relay memory per idle circuit (bytes)", "bytes_per_idle_circuit", 0, "", False, None),
    ]
    out = ["| measure | Shallot | tor | ceiling | Shallot / tor | target | met |",
           "|---|---|---|---|---|---|---|"]
    for label, k, d, target, _higher, ck in rows:
        sv, tv = s.get(k), t.get(k)
        ratio = sv / tv if isinstance(sv, (int, float)) and isinstance(tv, (int, float)) and tv else None
        met = ""
        if target.endswith("MB"):
            met = "yes" if sv is not None and sv <= float(target.split()[1]) else "no"
        elif target and ratio is not None:
            op, x = target.split()
            met = "yes" if (ratio >= float(x) if op == "≥" else ratio <= float(x)) else "no"
        cv = c.get(ck) if ck else None
        if k == "mbps_100m":
            cv_s = f"{fmt(cv)} (curl) / {fmt(c.get('raw_libp2p_mbps'))} (raw libp2p)"
        else:
            cv_s = fmt(cv, d) if cv is not None else "-"
        out.append(f"| {label} | {fmt(sv, d)} | {fmt(tv, d) if tv is not None else 'n/a'} | "
                   f"{cv_s} | {fmt(ratio, 3) if ratio is not None else '-'} | {target} | {met} |")
    out.append("")
    out.append(f"tor: {t.get('status', '?')}. Load before/after: {res['load']}. "
               f"Circuit builds observed: {s.get('circuit_builds_observed')}, mean "
               f"{fmt(s.get('circuit_build_mean_ms'))} ms (metrics histogram); relay RSS "
               f"{s.get('rss_relays_mb')} MB; 100 MiB runs {s.get('mbps_100m_all')} MB/s.")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--with-tor", action="store_true", help="apt-get install tor if missing")
    ap.add_argument("--no-tor", action="store_true", help="skip tor even if installed")
    ap.add_argument("--no-build", action="store_true", help="use the existing release build")
    ap.add_argument("--n-small", type=int, default=20)
    ap.add_argument("--n-big", type=int, default=3)
    ap.add_argument("--n-circ", type=int, default=20)
    ap.add_argument("--idle", type=int, default=1000)
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "shallot", "-p", "shallot-bench"],
                       cwd=ROOT, check=True)
    res = {"shallot": {}, "tor": {}, "ceiling": {}, "load": [open("/proc/loadavg").read().split()[:3]],
           "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip()}
    work = tempfile.mkdtemp(prefix="shallot-bench-")
    try:
        www = os.path.join(work, "www")
        os.makedirs(www)
        for name, size in (("1k.bin", 1024), ("1m.bin", MIB), ("100m.bin", 100 * MIB)):
            with open(os.path.join(www, name), "wb") as f:
                f.write(os.urandom(size))
        url = http_server(www)
        log("measuring ceilings")
        measure_ceilings(a, url, res)
        log("measuring Shallot")
        measure_shallot(a, work, url, res)
        log("measuring a relay's memory per idle circuit")
        measure_idle_circuits(a, work, res)
        stop_all()
        if a.no_tor:
            res["tor"]["status"] = "skipped (--no-tor)"
        else:
            measure_tor(a, work, res)
    finally:
        stop_all()
        res["load"].append(open("/proc/loadavg").read().split()[:3])
        shutil.rmtree(work, ignore_errors=True)
    md = table(res)
    print(md)
    outdir = os.path.join(ROOT, "target", "bench")
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    res["table"] = md
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)
    log(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
