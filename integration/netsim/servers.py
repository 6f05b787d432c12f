#!/usr/bin/env python3
"""The destination servers of the simulated internet, run inside the web host's namespace:

    servers.py --addr 10.200.0.2 --http-port 8080 --dir DIR --dns-port 53 --name NAME=ADDR ...

An HTTP/1.1 file server for DIR (python's http.server, threads) and the integration tests' DNS
server (harness.DnsServer) answering A queries for the given names (TTL 300), NODATA for their
other types, NXDOMAIN for any other name. Stops when its standard input closes.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
from pathlib import Path

# The integration tests' DNS server, run here as the destination network's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import DnsServer  # noqa: E402


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--dns-port", type=int, required=True)
    parser.add_argument("--name", action="append", default=[], help="NAME=ADDR")
    args = parser.parse_args()
    table = dict(spec.split("=", 1) for spec in args.name)
    DnsServer(table, bind=(args.addr, args.dns_port), ttl=300, record=False)
    handler = functools.partial(QuietHandler, directory=args.dir)
    httpd = http.server.ThreadingHTTPServer((args.addr, args.http_port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("servers ready", flush=True)
    # Stops with its standard input (the runner holds the other end).
    sys.stdin.read()
    httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
