#!/usr/bin/env python3
"""The destination servers of the simulated internet, run inside the web host's namespace:

    servers.py --addr 10.200.0.2 --http-port 8080 --dir DIR --dns-port 53 --name NAME=ADDR ...

An HTTP/1.1 file server for DIR (python's http.server, threads) and a DNS server that answers
A queries for the given names (TTL 300), NODATA for their other types, NXDOMAIN for any other
name. Stops when its standard input closes.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import socket
import struct
import sys
import threading


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def dns_answer(table: dict[str, str], data: bytes) -> bytes:
    qid, flags, qdcount = struct.unpack(">HHH", data[:6])
    if qdcount != 1:
        raise ValueError("one question expected")
    labels, i = [], 12
    for _ in range(128):
        n = data[i]
        i += 1
        if n == 0:
            break
        labels.append(data[i : i + n].decode("ascii", "replace"))
        i += n
    qtype, _ = struct.unpack(">HH", data[i : i + 4])
    question = data[12 : i + 4]
    name = ".".join(labels).lower()
    answers = b""
    rcode = 0
    if name not in table:
        rcode = 3
    elif qtype == 1:
        answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + socket.inet_aton(table[name])
    header = struct.pack(">HHHHHH", qid, 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def serve_dns(sock: socket.socket, table: dict[str, str]) -> None:
    while True:
        try:
            data, source = sock.recvfrom(4096)
        except OSError:
            return
        try:
            sock.sendto(dns_answer(table, data), source)
        except (ValueError, IndexError, struct.error, OSError):
            continue


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--dns-port", type=int, required=True)
    parser.add_argument("--name", action="append", default=[], help="NAME=ADDR")
    args = parser.parse_args()
    table = {}
    for spec in args.name:
        name, addr = spec.split("=", 1)
        table[name.lower().rstrip(".")] = addr
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind((args.addr, args.dns_port))
    threading.Thread(target=serve_dns, args=(dns, table), daemon=True).start()
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
