"""A web server for a network namespace: `ip netns exec NS python3 ns_web_server.py ROOT IP
PORT LOG` serves ROOT at IP:PORT and appends `path<TAB>host` for each request to LOG. It stops
when its standard input closes (the test that started it ended, however it ended) or after
MAX_LIFETIME_SECS."""

from __future__ import annotations

import http.server
import sys
import threading

MAX_LIFETIME_SECS = 900


def main() -> None:
    root, ip, port, log_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    log = open(log_path, "a", buffering=1)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=root, **kw)

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass

        def do_GET(self):  # noqa: N802 (the base class's name)
            log.write(f"{self.path}\t{self.headers.get('Host', '')}\n")
            super().do_GET()

    server = http.server.ThreadingHTTPServer((ip, port), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    print("listening", flush=True)
    stdin_closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stdin_closed.set()), daemon=True).start()
    stdin_closed.wait(MAX_LIFETIME_SECS)
    server.shutdown()


if __name__ == "__main__":
    main()
