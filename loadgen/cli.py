"""`celltap loadgen`: write scenario pcaps, list scenarios, replay a capture onto an interface,
and generate IPFIX / NetFlow."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
import time

from celltap.cli_types import PORT, SEED, bounded
from celltap.user_errors import add_metrics_addr_argument

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the loadgen sub-subcommands to `parser`."""
    sub = parser.add_subparsers(dest="loadgen_command", metavar="ACTION")

    p = sub.add_parser(
        "pcap",
        help="write a generated scenario to a pcap/pcapng file",
        description="Write scenario SCENARIO to OUT (- for stdout); see `celltap loadgen list`.",
    )
    p.add_argument("scenario")
    p.add_argument("out", help="output file, or - for stdout")
    p.add_argument(
        "--count",
        type=bounded(int, 1, 10**9),
        default=None,
        help="scenario size (meaning per scenario: see list)",
    )
    p.add_argument("--seed", type=SEED, default=1, help="RNG seed: same seed, same bytes (default 1)")
    p.add_argument("--pcapng", action="store_true", help="write pcapng instead of pcap")
    p.add_argument("--nanosecond", action="store_true", help="nanosecond timestamps")
    p.add_argument(
        "--flows",
        type=bounded(int, 1, 10**9),
        default=None,
        help="flows (only for scenarios that take it: small)",
    )
    p.set_defaults(_loadgen_run=_run_pcap)

    p = sub.add_parser("list", help="list scenarios")
    p.set_defaults(_loadgen_run=_run_list)

    p = sub.add_parser(
        "replay",
        help="replay a capture onto a live interface (AF_PACKET)",
        description="Send every frame of PCAP out of IFACE, in order.",
    )
    p.add_argument("pcap")
    p.add_argument("iface")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument(
        "--pps",
        type=bounded(float, 0.001, 10**9),
        default=None,
        help="frames per second (default: capture timing)",
    )
    rate.add_argument("--topspeed", action="store_true", help="as fast as the socket takes them")
    p.add_argument("--loop", type=bounded(int, 1, 10**9), default=1, help="replay the file K times")
    p.add_argument(
        "--batch", type=bounded(int, 1, 1 << 20), default=None, help="frames between pacing checks"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument(
        "--metrics-port", type=PORT, default=0, help="serve Prometheus /metrics on this port (0: off)"
    )
    add_metrics_addr_argument(p)
    p.set_defaults(_loadgen_run=_run_replay)

    ipfix = importlib.import_module("celltap.loadgen.ipfix_cli")
    p = sub.add_parser("ipfix", help="IPFIX / NetFlow generator")
    ipfix.add_arguments(p)
    p.set_defaults(_loadgen_run=ipfix.main)


def main(args: argparse.Namespace) -> int:
    """Run the chosen loadgen action."""
    run = getattr(args, "_loadgen_run", None)
    if run is None:
        print("usage: celltap loadgen {pcap,list,replay,ipfix} ... (see --help)", file=sys.stderr)
        return 2
    return int(run(args) or 0)


def _run_list(args: argparse.Namespace) -> int:
    from celltap.loadgen.scenario import all_scenarios

    for sc in all_scenarios():
        print(f"{sc.name:16} {sc.description}  [--count = {sc.count_means}; default {sc.default_count}]")
    return 0


def _run_pcap(args: argparse.Namespace) -> int:
    from celltap.loadgen.scenario import get

    from celltap.pcap import PcapngWriter, PcapWriter

    try:
        sc = get(args.scenario)
    except KeyError as exc:
        print(f"celltap loadgen: {exc.args[0]}", file=sys.stderr)
        return 2
    count = args.count if args.count is not None else sc.default_count
    kwargs = {}
    if args.flows is not None:
        if "flows" not in inspect.signature(sc.generate).parameters:
            print(f"celltap loadgen: scenario {sc.name} does not take --flows", file=sys.stderr)
            return 2
        kwargs["flows"] = args.flows
    target = sys.stdout.buffer if args.out == "-" else args.out
    started = time.perf_counter()
    writer = (
        PcapngWriter(target, nanosecond=args.nanosecond)
        if args.pcapng
        else PcapWriter(target, nanosecond=args.nanosecond)
    )
    frames = 0
    try:
        for ts, frame in sc.generate(args.seed, count, **kwargs):
            writer.write(ts, frame)
            frames += 1
    finally:
        writer.close()
    log.info(
        "loadgen: %s seed=%d count=%d -> %d frames in %.2fs",
        sc.name,
        args.seed,
        count,
        frames,
        time.perf_counter() - started,
    )
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    import signal
    import threading

    from celltap.loadgen.replay import replay

    if args.metrics_port:
        from celltap.user_errors import serve_metrics

        serve_metrics(args.metrics_port, args.metrics_addr or "")
    stop = threading.Event()
    # SIGTERM (and Ctrl-C) end the replay at the next batch; the counts so far are still reported.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stats = replay(
            args.pcap,
            args.iface,
            pps=args.pps,
            topspeed=args.topspeed,
            loop=args.loop,
            batch_size=args.batch,
            stop=stop,
        )
    except OSError as exc:
        print(f"celltap loadgen replay: {args.iface}: {exc}", file=sys.stderr)
        return 1
    result = stats.as_dict()
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"sent {result['frames_sent']} frames ({result['bytes_sent']} bytes) "
            f"in {result['elapsed_s']:.3f}s: {result['pps']:.0f} pps, {result['mbps']:.1f} Mbit/s; "
            f"send errors {result['send_errors_total']} {result['send_errors'] or ''}".rstrip()
            + f"; retries {sum(result['retries'].values())} {result['retries'] or ''}".rstrip(),
            file=sys.stderr,
        )
    return 0 if result["send_errors_total"] == 0 else 1
