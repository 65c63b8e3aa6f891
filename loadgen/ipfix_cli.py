"""`celltap loadgen ipfix HOST:PORT --rate R --exporters K`: emulate K routers exporting IPFIX / v9."""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

import numpy as np
from celltap.loadgen.ipfix_gen import MessagePool, build_pool
from celltap.loadgen.ipfix_sendmmsg import PoolSender

from celltap.cli_types import SECONDS, SEED, bounded, ipv4_address
from celltap.ipfix.message import IPFIX_VERSION
from celltap.mmsg import sendmmsg_available
from celltap.user_errors import parse_host_port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the IPFIX generator."""
    parser.add_argument(
        "target", metavar="HOST:PORT", help="collector address (loopback or a test namespace)"
    )
    parser.add_argument(
        "--rate",
        type=bounded(float, 0, 10**9),
        default=10000.0,
        help="records per second in total (0: flat out)",
    )
    parser.add_argument(
        "--exporters",
        type=bounded(int, 1, 240),
        default=1,
        help="routers to emulate; router k sends from 127.0.0.(10+k) on loopback",
    )
    parser.add_argument("--duration", type=SECONDS, default=5.0, help="seconds to send")
    parser.add_argument("--records", type=bounded(int, 1, 2**40), help="stop after this many records instead")
    parser.add_argument("--version", type=int, choices=(9, 10), default=10, help="NetFlow v9 or IPFIX")
    parser.add_argument(
        "--template-refresh",
        type=bounded(float, 0.01, 3600),
        default=1.0,
        help="seconds between template messages (UDP)",
    )
    parser.add_argument(
        "--source-base",
        type=ipv4_address,
        default="127.0.0.10",
        help="source address of router 0; others count up (default 127.0.0.10)",
    )
    parser.add_argument("--seed", type=SEED, default=1)


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
    use_sendmmsg: bool = True,
) -> dict:
    """Send for `duration` seconds (or until `records`); return what was sent (records, octets, packets).

    Without a record limit, each router's whole message pool goes out in one sendmmsg call."""
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
    n_pool = len(pools[0].messages)
    seq_off = 8 if version == IPFIX_VERSION else 12
    seq_step = per_msg if version == IPFIX_VERSION else 1  # IPFIX counts records, v9 packets
    pack = struct.Struct("!I").pack_into
    senders = [s.send for s in socks]
    seqs = [0] * exporters
    if records is None and use_sendmmsg and sendmmsg_available():
        return _run_pools(socks, pools, rate, duration, template_refresh, seq_off, seq_step)
    messages = octets = packets = errors = template_errors = 0
    start = time.monotonic()
    next_templates = start
    j = 0
    rounds = max(1, 64 // exporters)  # messages per clock check: one per router per round
    while True:
        t = time.monotonic()
        if t - start >= duration or (records is not None and messages * per_msg >= records):
            break
        if t >= next_templates:
            for k, (snd, p) in enumerate(zip(senders, pools, strict=True)):
                p.sequence = seqs[k]
                try:
                    snd(p.stamp_templates())
                except OSError:  # e.g. ECONNREFUSED while the collector restarts: resent next refresh
                    template_errors += 1
                seqs[k] = p.sequence
            next_templates = t + template_refresh
        if rate > 0:
            due = (t - start) * rate
            if messages * per_msg >= due:
                time.sleep(min(0.001, (messages * per_msg - due) / rate))
                continue
        for _ in range(rounds):
            if records is not None and messages * per_msg >= records:
                break
            idx = j % n_pool
            j += 1
            for k in range(exporters):
                p = pools[k]
                m = p.messages[idx]
                pack(m, seq_off, seqs[k] & 0xFFFFFFFF)
                seqs[k] += seq_step
                try:
                    senders[k](m)
                except OSError:
                    # Never left this host: not counted as sent (the collector sees a sequence gap).
                    errors += 1
                    continue
                messages += 1
                octets += p.octets[idx]
                packets += p.packets[idx]
                if records is not None and messages * per_msg >= records:
                    break
    sent = {
        "records": messages * per_msg,
        "octets": octets,
        "packets": packets,
        "messages": messages,
        "send_errors": errors,
        "template_send_errors": template_errors,
    }
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    sent["seconds"] = round(elapsed, 3)
    sent["records_per_second"] = round(sent["records"] / elapsed) if elapsed else 0
    return sent


def _run_pools(
    socks: list[socket.socket],
    pools: list[MessagePool],
    rate: float,
    duration: float,
    template_refresh: float,
    seq_off: int,
    seq_step: int,
) -> dict:
    """The sendmmsg sender: one system call per router per round of its pool."""
    senders = [PoolSender(s, p.messages, seq_off) for s, p in zip(socks, pools, strict=True)]
    per_msg = pools[0].records[0]
    cum_oct = [np.cumsum([0, *p.octets]) for p in pools]
    cum_pkt = [np.cumsum([0, *p.packets]) for p in pools]
    seqs = [0] * len(pools)
    messages = octets = packets = errors = template_errors = 0
    start = time.monotonic()
    next_templates = start
    while True:
        t = time.monotonic()
        if t - start >= duration:
            break
        if t >= next_templates:
            for k, (s, p) in enumerate(zip(socks, pools, strict=True)):
                p.sequence = seqs[k]
                try:
                    s.send(p.stamp_templates())
                except OSError:  # e.g. ECONNREFUSED while the collector restarts: resent next refresh
                    template_errors += 1
                seqs[k] = p.sequence
            next_templates = t + template_refresh
        if rate > 0:
            due = (t - start) * rate
            if messages * per_msg >= due:
                time.sleep(min(0.001, (messages * per_msg - due) / rate))
                continue
        for k, snd in enumerate(senders):
            snd.stamp(seqs[k], seq_step)
            n = snd.send()
            seqs[k] += n * seq_step
            messages += n
            octets += int(cum_oct[k][n])
            packets += int(cum_pkt[k][n])
            errors += snd.count - n
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    return {
        "records": messages * per_msg,
        "octets": octets,
        "packets": packets,
        "messages": messages,
        "send_errors": errors,
        "template_send_errors": template_errors,
        "seconds": round(elapsed, 3),
        "records_per_second": round(messages * per_msg / elapsed) if elapsed else 0,
    }


def main(args: argparse.Namespace) -> int:
    """Run the generator and print what was sent as one JSON line."""
    if args.exporters < 1 or args.exporters > 240:
        print("celltap loadgen ipfix: --exporters must be 1..240", file=sys.stderr)
        return 2
    parse_host_port(args.target, "target")  # a bad HOST:PORT is one line naming it
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
