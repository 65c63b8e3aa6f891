"""`celltap loadgen ipfix HOST:PORT --rate R --exporters K`: emulate K routers exporting IPFIX / v9."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from celltap.ipfix.message import IPFIX_VERSION
from loadgen.ipfix_gen import MessagePool, build_pool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the IPFIX generator."""
    parser.add_argument(
        "target", metavar="HOST:PORT", help="collector address (loopback or a test namespace)"
    )
    parser.add_argument(
        "--rate", type=float, default=10000.0, help="records per second in total (0: flat out)"
    )
    parser.add_argument(
        "--exporters",
        type=int,
        default=1,
        help="routers to emulate; router k sends from 127.0.0.(10+k) on loopback",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds to send")
    parser.add_argument("--records", type=int, help="stop after this many records instead")
    parser.add_argument("--version", type=int, choices=(9, 10), default=10, help="NetFlow v9 or IPFIX")
    parser.add_argument(
        "--template-refresh", type=float, default=1.0, help="seconds between template messages (UDP)"
    )
    parser.add_argument(
        "--source-base",
        default="127.0.0.10",
        help="source address of router 0; others count up (default 127.0.0.10)",
    )
    parser.add_argument("--seed", type=int, default=1)


def _sources(base: str, k: int) -> list[str]:
    a = [int(x) for x in base.split(".")]
    start = (a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]
    return [socket.inet_ntoa((start + i).to_bytes(4, "big")) for i in range(k)]


def run(
    target: str,
    rate: float,
    exporters: int,
    duration: float,
    records: int | None = None,
    version: int = IPFIX_VERSION,
    template_refresh: float = 1.0,
    source_base: str = "127.0.0.10",
    seed: int = 1,
) -> dict:
    """Send for `duration` seconds (or until `records`); return what was sent (records, octets, packets)."""
    host, _, port = target.rpartition(":")
    now = time.time()
    pools: list[MessagePool] = []
    socks = []
    for k, src in enumerate(_sources(source_base, exporters)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        if host.startswith("127."):
            s.bind((src, 0))
        s.connect((host, int(port)))
        socks.append(s)
        pools.append(build_pool(k + 1, seed + k, now, version=version))
    per_msg = pools[0].records[0]
    sent = {"records": 0, "octets": 0, "packets": 0, "messages": 0, "send_errors": 0}
    start = time.monotonic()
    next_templates = start
    i = 0
    burst = 32
    while True:
        t = time.monotonic()
        if t - start >= duration or (records is not None and sent["records"] >= records):
            break
        if t >= next_templates:
            for s, p in zip(socks, pools, strict=True):
                s.send(p.stamp_templates())
            next_templates = t + template_refresh
        if rate > 0:
            due = (t - start) * rate
            if sent["records"] >= due:
                time.sleep(min(0.001, (sent["records"] - due) / rate))
                continue
        for _ in range(burst):
            if records is not None and sent["records"] >= records:
                break
            k = i % exporters
            p = pools[k]
            j = i // exporters
            m = p.next_message(j)
            i += 1
            try:
                socks[k].send(m)
            except OSError:
                # Never left this host: not counted as sent (the collector sees a sequence gap).
                sent["send_errors"] += 1
                continue
            idx = j % len(p.messages)
            sent["records"] += per_msg
            sent["octets"] += p.octets[idx]
            sent["packets"] += p.packets[idx]
            sent["messages"] += 1
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    sent["seconds"] = round(elapsed, 3)
    sent["records_per_second"] = round(sent["records"] / elapsed) if elapsed else 0
    return sent


def main(args: argparse.Namespace) -> int:
    """Run the generator and print what was sent as one JSON line."""
    if args.exporters < 1 or args.exporters > 240:
        print("celltap loadgen ipfix: --exporters must be 1..240", file=sys.stderr)
        return 2
    out = run(
        args.target,
        args.rate,
        args.exporters,
        args.duration,
        args.records,
        args.version,
        args.template_refresh,
        args.source_base,
        args.seed,
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="celltap loadgen ipfix")
    add_arguments(p)
    sys.exit(main(p.parse_args()))
