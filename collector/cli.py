"""`celltap collector`: run from a config, inspect a capture, or inspect live export as JSON lines."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time

from celltap.collector.config import CollectorConfig, ConfigError, load_config, parse_listen

from celltap.cli_types import PORT, SECONDS, bounded
from celltap.user_errors import add_metrics_addr_argument, explain

log = logging.getLogger("celltap.collector")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Collector options."""
    parser.add_argument("--config", help="collector YAML file (listen, workers, allow, registry, ...)")
    parser.add_argument("--read-pcap", metavar="PCAP", help="decode the IPFIX/NetFlow messages of a capture")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help="udp://ADDR:PORT or tcp://ADDR:PORT (repeatable); overrides the config's",
    )
    parser.add_argument("--json", action="store_true", help="print decoded records as JSON lines")
    parser.add_argument("--workers", type=bounded(int, 1, 64), help="UDP worker processes per UDP address")
    parser.add_argument("--allow", action="append", metavar="NET", help="accept only these exporters")
    parser.add_argument(
        "--port", type=PORT, action="append", help="with --read-pcap: only traffic to this destination port"
    )
    parser.add_argument("--metrics-port", type=PORT, help="serve /metrics here (0: off)")
    add_metrics_addr_argument(parser)
    parser.add_argument(
        "--count", type=bounded(int, 1, 2**40), help="stop after this many records (live inspect)"
    )
    parser.add_argument("--duration", type=SECONDS, help="stop after this many seconds")


def _summary(stats: object, out: object) -> None:
    s = stats
    summary = {
        "messages": s.total("messages"),
        "records": s.total("records"),  # type: ignore[attr-defined]
        "dropped_messages": dict(s.dropped_messages),  # type: ignore[attr-defined]
        "dropped_sets": dict(s.dropped_sets),  # type: ignore[attr-defined]
        "sequence_lost": s.total("sequence_lost"),  # type: ignore[attr-defined]
    }
    print(json.dumps(summary), file=out)  # type: ignore[call-overload]


def read_pcap(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    """Decode a capture offline and print records (--json) or a summary."""
    from celltap.collector.json_output import JsonLinesSink
    from celltap.collector.pcap_input import messages_from_capture
    from celltap.collector.service import make_ingestor
    from celltap.collector.template_store import InMemoryTemplateStore

    ingestor = make_ingestor(cfg, InMemoryTemplateStore())
    sink = JsonLinesSink(sys.stdout) if args.json else None
    pending: list = []
    last_ts = 0.0

    def flush() -> None:
        batches = ingestor.feed(pending, last_ts)
        if sink is not None:
            sink(batches)
        pending.clear()

    ports = set(args.port) if args.port else None
    try:
        for ts, exporter, msg in messages_from_capture(args.read_pcap, ports):
            if pending and ts != last_ts and len(pending) >= 256:
                flush()
            last_ts = ts
            pending.append((exporter, msg))
        flush()
    except OSError as exc:
        print(f"celltap collector: {explain(exc, args.read_pcap)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"celltap collector: {args.read_pcap}: {exc}", file=sys.stderr)
        return 2
    _summary(ingestor.stats, sys.stderr if args.json else sys.stdout)
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the collector subcommand."""
    try:
        cfg = load_config(args.config) if args.config else CollectorConfig()
        if args.listen:
            cfg.listen = [parse_listen(u, "--listen") for u in args.listen]
        if args.workers is not None:
            cfg.workers = args.workers
        elif args.json and not args.config:
            cfg.workers = 1  # one printer keeps JSON lines whole and in order
        if args.allow:
            from celltap.collector.config import _allow

            cfg.allow = _allow("--allow", args.allow)
        if args.metrics_port is not None:
            cfg.metrics_port = args.metrics_port
        elif not args.config:
            cfg.metrics_port = 0
        if args.metrics_addr is not None:
            cfg.metrics_addr = args.metrics_addr
    except ConfigError as exc:
        print(f"celltap collector: {exc}", file=sys.stderr)
        return 2
    if args.read_pcap:
        return read_pcap(args, cfg)
    if not args.config and not args.listen:
        print("celltap collector: give --config, --listen or --read-pcap", file=sys.stderr)
        return 2
    from celltap.collector.json_output import JsonLinesSink
    from celltap.collector.service import CollectorService, check_state_dir

    from celltap.user_errors import explain

    sinks: list[JsonLinesSink] = []

    def json_hook(index: int) -> JsonLinesSink:
        sink = JsonLinesSink(sys.stdout)
        sinks.append(sink)
        return sink

    hook = json_hook if args.json else None
    routing = bool(cfg.registry) and cfg.route_to_nodes and not args.json
    routers: list = []  # the routing sinks of workers running in this process (threads)
    if routing:
        # With a registry, records go through the ring to the analysis nodes registered there.
        hook = _routing_hook(cfg, routers)
        if hook is None:
            return 2
    try:
        check_state_dir(cfg)
    except OSError as exc:
        print(f"celltap collector: state_dir: {explain(exc, cfg.state_dir)}", file=sys.stderr)
        return 2
    service = CollectorService(cfg, hook)
    signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
    try:
        service.start()
    except OSError as exc:
        where = ", ".join(map(str, cfg.listen))
        print(f"celltap collector: cannot listen on {where}: {explain(exc)}", file=sys.stderr)
        return 2
    print(
        f"celltap collector: listening on {', '.join(map(str, cfg.listen))}"
        f" ({service.workers_alive()} UDP worker(s),"
        f" {cfg.workers if service.processes else 1} per UDP address)",
        file=sys.stderr,
        flush=True,
    )
    # Routing workers register themselves (one router each); a plain collector registers here.
    membership = None if routing else _register(cfg)
    start = time.monotonic()
    try:
        while not service.stopped():
            time.sleep(0.05)
            if args.duration is not None and time.monotonic() - start >= args.duration:
                break
            if args.count is not None and sum(s.records for s in sinks) >= args.count:
                break
    except KeyboardInterrupt:
        pass
    service.stop()
    if membership is not None:
        membership.close()
    _summary(service.totals, sys.stderr)
    for sink in routers:  # last lines: what each router delivered, acknowledged or dropped
        print(json.dumps(sink.router.stats()), flush=True)
    return 0


def _registry_value(cfg: CollectorConfig) -> dict[str, str]:
    """What the collector tells the registry about itself besides its id: its metrics endpoint."""
    if not cfg.metrics_port:
        return {}
    host = "127.0.0.1" if cfg.metrics_addr in ("0.0.0.0", "::") else cfg.metrics_addr
    return {"metrics": f"http://{host}:{cfg.metrics_port}/metrics"}


def _routing_hook(cfg: CollectorConfig, started: list) -> object | None:
    """The cluster router hook for every worker, or None after printing why it cannot be built."""
    import os
    import socket

    from celltap.collector.cluster_collector import cluster_hook_factory

    from celltap.registry.tls import TLSConfig

    cid = cfg.collector_id or f"{socket.gethostname()}-{os.getpid()}"
    try:
        tls = TLSConfig.from_mapping(cfg.tls or None)
        registry_tls = tls if cfg.registry_tls is None else TLSConfig.from_mapping(cfg.registry_tls or None)
        return cluster_hook_factory(
            cfg.registry or "", cfg.cluster, cid, cfg.routing, tls, started, _registry_value(cfg),
            registry_tls=registry_tls,
        )  # fmt: skip
    except ValueError as exc:
        print(f"celltap collector: {exc}", file=sys.stderr)
        return None


def _register(cfg: CollectorConfig) -> object | None:
    """Register this collector under /celltap/<cluster>/collectors/<id> when a registry is configured."""
    if not cfg.registry:
        return None
    import os
    import socket

    from celltap.registry import Membership, open_registry

    cid = cfg.collector_id or f"{socket.gethostname()}-{os.getpid()}"
    try:
        membership = Membership(open_registry(cfg.registry), cfg.cluster)
        value = {"listen": [str(a) for a in cfg.listen], "pid": os.getpid(), **_registry_value(cfg)}
        membership.register("collectors", cid, value)
    except Exception as exc:  # the registry is for sharing and discovery; ingestion goes on without it
        log.error("cannot register collector %s in %s: %s", cid, cfg.registry, exc)
        return None
    return membership
