#!/usr/bin/env python3
"""Latency, jitter, loss and bandwidth for the simulated internet, in user space.

This machine's kernel has no netem qdisc, so the router namespace sends every packet that
crosses between two hosts through a TUN device (policy routing: packets that come in on a
host's link are routed to the TUN; what this program writes back into the TUN is routed by the
main table to the destination host's link). This program reads each packet from the TUN, holds
it for the one-way delay of the path it is on (RTT/2, plus jitter), drops it with the given
probability, paces it to the path's bandwidth, and writes it back. Packets between the same two
hosts keep their order (jitter never reorders), as on one real path.

Run inside the router namespace (netsim.py does this):

    linkemu.py --tun NAME --rtt-ms 40 [--jitter-ms 2] [--loss 0.005] [--rate-mbit 100]
               [--host PREFIX/16=NAME ...] [--rtt PAIR=MS ...] [--seed N] [--stop-with-stdin]

The default RTT applies between any two hosts; `--rtt a,b=80` sets it for one pair of hosts
named with `--host`. It stops when its standard input closes (`--stop-with-stdin`), on SIGTERM,
or when the TUN goes away. It prints one line with its counters when it stops.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import ipaddress
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
# Packets held at once; past it new packets are dropped (a router's queue is finite too). At
# 1,500 bytes this is 24 MiB, a full second of a gigabit path.
MAX_HELD_PACKETS = 16384
# The largest packet read from the TUN (its MTU is the veths' 1,500; GSO is off on a TUN
# opened without IFF_VNET_HDR).
MAX_PACKET = 65536


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def endpoints(packet: bytes) -> tuple[bytes, bytes] | None:
    """(source, destination) address of an IPv4 or IPv6 packet, raw; None if neither."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return packet[12:16], packet[16:20]
    if version == 6 and len(packet) >= 40:
        return packet[8:24], packet[24:40]
    return None


class Paths:
    """The one-way delay and the pacing of each (source host, destination host) path."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.hosts = []
        for spec in args.host:
            net, name = spec.split("=", 1)
            self.hosts.append((ipaddress.ip_network(net, strict=False), name))
        self.default_rtt = args.rtt_ms / 1000.0
        self.pair_rtt: dict[frozenset[str], float] = {}
        for spec in args.rtt:
            pair, ms = spec.split("=", 1)
            a, b = pair.split(",", 1)
            self.pair_rtt[frozenset((a, b))] = float(ms) / 1000.0
        self.jitter = args.jitter_ms / 1000.0
        self.loss = args.loss
        # Bytes per second of each path's one direction; 0: unpaced.
        self.rate = args.rate_mbit * 1e6 / 8 if args.rate_mbit else 0.0
        # When each path's last packet leaves (keeps order and paces).
        self.last_out: dict[tuple[str, str], float] = {}
        # Host names by raw address, bounded (a scenario has a few dozen addresses).
        self.host_of_cache: dict[bytes, str] = {}

    def host_of(self, addr: bytes) -> str:
        name = self.host_of_cache.get(addr)
        if name is None:
            ip = ipaddress.ip_address(addr)
            name = next((n for net, n in self.hosts if ip in net), str(ip))
            if len(self.host_of_cache) < 65536:
                self.host_of_cache[addr] = name
        return name

    def leave_at(self, now: float, src: bytes, dst: bytes, size: int, rng: random.Random) -> float | None:
        """When a packet from src to dst of `size` bytes leaves the router; None: it is lost."""
        if self.loss and rng.random() < self.loss:
            return None
        a, b = self.host_of(src), self.host_of(dst)
        one_way = self.pair_rtt.get(frozenset((a, b)), self.default_rtt) / 2
        if self.jitter:
            one_way = max(0.0, one_way + rng.uniform(-self.jitter, self.jitter))
        key = (a, b)
        at = now + one_way
        last = self.last_out.get(key, 0.0)
        if self.rate:
            at = max(at, last + size / self.rate)
        at = max(at, last)
        self.last_out[key] = at
        return at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tun", required=True)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--rate-mbit", type=float, default=0.0)
    parser.add_argument("--host", action="append", default=[], help="PREFIX=NAME")
    parser.add_argument("--rtt", action="append", default=[], help="NAME,NAME=MS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stop-with-stdin", action="store_true")
    parser.add_argument("--ready-file", help="written once the TUN is open")
    args = parser.parse_args()
    if not 0.0 <= args.loss < 1.0:
        parser.error("--loss must be in [0, 1)")

    fd = open_tun(args.tun)
    paths = Paths(args)
    rng = random.Random(args.seed)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    held: list[tuple[float, int, bytes]] = []
    seq = 0
    forwarded = dropped_loss = dropped_full = 0
    watch = [fd] + ([sys.stdin.fileno()] if args.stop_with_stdin else [])
    while not stopping:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, packet = heapq.heappop(held)
            try:
                os.write(fd, packet)
                forwarded += 1
            except BlockingIOError:
                dropped_full += 1
            except OSError:
                stopping = True
                break
        timeout = max(0.0, held[0][0] - now) if held else 1.0
        try:
            ready, _, _ = select.select(watch, [], [], timeout)
        except InterruptedError:
            continue
        if args.stop_with_stdin and sys.stdin.fileno() in ready:
            if not os.read(sys.stdin.fileno(), 4096):
                break
        if fd not in ready:
            continue
        now = time.monotonic()
        # Everything the TUN has now, so that one wake-up handles a burst.
        for _ in range(1024):
            try:
                packet = os.read(fd, MAX_PACKET)
            except BlockingIOError:
                break
            except OSError:
                stopping = True
                break
            ends = endpoints(packet)
            if ends is None:
                continue
            at = paths.leave_at(now, ends[0], ends[1], len(packet), rng)
            if at is None:
                dropped_loss += 1
                continue
            if len(held) >= MAX_HELD_PACKETS:
                dropped_full += 1
                continue
            seq += 1
            heapq.heappush(held, (at, seq, packet))
    print(
        f"linkemu: forwarded {forwarded} packets, dropped {dropped_loss} (loss) and {dropped_full} (queue full)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
