"""`shallot testnet`, the README's run command, as a person would use it: it prints `ready`
and a curl line, the curl line works, and SIGTERM stops the whole network."""

import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import time

import harness

READY_WITHIN_SECS = 120.0


def test_testnet_prints_ready_and_its_curl_line_works(output_dir):
    exe = str(harness.require_binary())
    socks = harness.free_port()
    metrics = harness.free_port()
    argv = [exe, "testnet", "--relays", "5", "--socks", f"127.0.0.1:{socks}", "--metrics", f"127.0.0.1:{metrics}",
            "--data-dir", str(output_dir / "testnet"), "--ready-timeout", "100"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines = []
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + READY_WITHIN_SECS
        try_line = None
        pending = b""
        for _ in range(10_000):
            if try_line or time.monotonic() > deadline:
                break
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                if line.strip().startswith("try:"):
                    try_line = line.split("try:", 1)[1].strip()
        output = "\n".join(lines)
        assert any(l.startswith("ready") for l in lines), f"no `ready` line:\n{output}"
        assert try_line and try_line.startswith("curl --socks5-hostname"), f"no curl line:\n{output}"
        cmd = shlex.split(try_line)
        assert shutil.which(cmd[0]), "curl is not installed: install Debian's curl package"
        result = subprocess.run(cmd + ["-sS", "--fail", "--max-time", "30"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"`{try_line}` failed: {result.stderr}"
        assert "Hello through Shallot" in result.stdout
        print(f"{lines[-1] if lines else ''}\nran: {try_line}")

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex(("127.0.0.1", socks)) != 0, "the client still listens after testnet stopped"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        (output_dir / "testnet-stdout.txt").write_text("\n".join(lines) + "\n")
