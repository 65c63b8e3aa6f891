"""`celltap cell`: the SF-TAP-compatible flow abstractor (offline from a pcap, or live)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from urllib.parse import urlsplit

from celltap.cli_types import PORT, SECONDS, bounded, endpoint_url
from celltap.user_errors import add_metrics_addr_argument

_TUNNELS = {
    "vxlan://": endpoint_url("vxlan", default_port=4789, query=("vni",), need_host=False),
    "geneve://": endpoint_url("geneve", default_port=6081, query=("vni",), need_host=False),
}


def input_spec(text: str) -> str:
    """argparse type of --input / --advertise: vxlan:// or geneve://ADDR:PORT[?vni=N], iface:, pcap:."""
    if text.startswith(("iface:", "pcap:")) and len(text.partition(":")[2]) > 0:
        return text
    scheme = next((s for s in _TUNNELS if text.startswith(s)), None)
    if scheme is None:
        raise argparse.ArgumentTypeError(
            f"expected vxlan://ADDR:PORT, geneve://ADDR:PORT, iface:IFACE or pcap:FILE, got {text!r}"
        )
    _TUNNELS[scheme](text)
    vni = text.partition("?vni=")[2]
    if vni and not (vni.isdigit() and int(vni) < 1 << 24):
        raise argparse.ArgumentTypeError(f"vni must be an integer in 0..16777215, got {vni!r}")
    return text


log = logging.getLogger("celltap.cell")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `celltap cell`."""
    parser.add_argument("--config", required=True, help="SF-TAP YAML configuration")
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--read", metavar="PCAP", help="offline: read a capture, end all flows at its end, exit 0"
    )
    src.add_argument(
        "--input",
        type=input_spec,
        action="append",
        default=[],
        metavar="SPEC",
        help="live input, repeatable: vxlan://ADDR:PORT[?vni=N], geneve://ADDR:PORT[?vni=N], "
        "iface:IFACE or pcap:FILE",
    )
    parser.add_argument(
        "--wait-readers",
        default="",
        metavar="LIST",
        help="comma-separated interfaces (e.g. tcp/http,udp/dns) that must have a reader first",
    )
    parser.add_argument(
        "--wait-timeout", type=SECONDS, default=60.0, help="seconds to wait for those readers"
    )
    parser.add_argument(
        "--cell-id", type=bounded(int, 0, 2**32 - 1), default=None, help="cell id (IPFIX observation domain)"
    )
    parser.add_argument(
        "--ipfix",
        type=endpoint_url("udp"),
        metavar="udp://HOST:PORT",
        help="export one IPFIX biflow record per flow",
    )
    parser.add_argument("--metrics-port", type=PORT, default=None, help="serve Prometheus /metrics here")
    add_metrics_addr_argument(parser)
    parser.add_argument("--home", help="interface directory (overrides global.home)")
    parser.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="loopback7/pcap input sockets 0660 with this group (global.socket_group; default 0600)",
    )
    parser.add_argument(
        "--reader-buffer", type=bounded(int, 4096, 2**40), default=None, help="bytes buffered per reader"
    )
    parser.add_argument(
        "--memory-budget",
        type=bounded(int, 1 << 28, 1 << 46),
        default=None,
        metavar="BYTES",
        help="the pod's memory limit (global.memory_budget): caps left unset follow it (docs/cell.md)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=SECONDS,
        default=10.0,
        help="offline: seconds to wait for a full reader before dropping its events",
    )
    st = parser.add_argument_group("packet store (overrides the config's `store:` section)")
    st.add_argument("--store", metavar="DIR", help="keep the frames in rotating pcap files with a flow index")
    # ranges as the store section's (cell/store/config.py: 64 KiB minimum, 32-bit index offsets)
    st.add_argument(
        "--store-file-bytes",
        type=bounded(int, 65536, (1 << 32) - 1),
        metavar="N",
        help="rotate at this file size",
    )
    st.add_argument(
        "--store-max-bytes", type=bounded(int, 65536, 1 << 50), metavar="N", help="retention: bytes on disk"
    )
    st.add_argument(
        "--store-max-age", type=bounded(float, 0, 10**9), metavar="S", help="retention: seconds (0: none)"
    )
    st.add_argument("--store-listen", metavar="HOST:PORT", help="serve retrieval over HTTP (needs a token)")
    st.add_argument("--store-token-file", metavar="F", help="bearer token the store endpoint requires")
    reg = parser.add_argument_group("registration (live cells): tell incubators where to send")
    reg.add_argument("--registry", metavar="URL", help="etcd://host:2379[,...] or file:///path")
    reg.add_argument("--cluster", default="default", help="cluster name (default 'default')")
    reg.add_argument(
        "--advertise",
        type=input_spec,
        metavar="SPEC",
        help="the input incubators send to, e.g. vxlan://10.1.2.3:4789",
    )
    reg.add_argument(
        "--weight", type=bounded(int, 1, 1000), default=1, help="ring weight of this cell (default 1)"
    )
    reg.add_argument(
        "--lease-ttl",
        type=bounded(float, 0.1, 86400),
        default=10.0,
        help="registry lease seconds (default 10)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=SECONDS,
        default=30.0,
        help="offline: seconds to wait at the end for readers to take their bytes",
    )


def main(args: argparse.Namespace) -> int:
    """Run the cell; returns the process exit code."""
    from celltap.cell.runtime import Cell
    from celltap.cell.sftap_config import ConfigError, load_config

    from celltap.pcap import CaptureFormatError
    from celltap.user_errors import UserError, explain

    try:
        budget = {"memory_budget": args.memory_budget} if args.memory_budget is not None else None
        cfg = load_config(args.config, budget)
    except ConfigError as exc:
        print(f"celltap cell: config error: {exc}", file=sys.stderr)
        return 2
    if args.home:
        cfg.glob.home = args.home
    if args.socket_group:
        from celltap.cell.sftap_config import parse_group

        try:
            cfg.glob.socket_group = parse_group(args.socket_group, "--socket-group")
        except ConfigError as exc:
            print(f"celltap cell: {exc}", file=sys.stderr)
            return 2
    try:
        _store_overrides(args, cfg)
    except ValueError as exc:
        print(f"celltap cell: config error: {exc}", file=sys.stderr)
        return 2
    cell_id = args.cell_id if args.cell_id is not None else cfg.glob.cell_id
    if args.metrics_port is not None:
        # Imported before the sockets appear, so that /metrics answers soon after they do.
        from celltap.cell.metrics import CellCollector
        from prometheus_client import CollectorRegistry

        from celltap.user_errors import serve_metrics
    try:
        cell = Cell(cfg, cell_id, args.ipfix, args.reader_buffer, inputs=max(1, len(args.input)))
    except (ValueError, OSError) as exc:
        print(f"celltap cell: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, _frame: object) -> None:
        cell.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if args.metrics_port is not None:
            registry = CollectorRegistry()
            registry.register(CellCollector(cell))
            if cell.store is not None:
                from celltap.cell.store.metrics import StoreCollector

                registry.register(StoreCollector(cell))
            serve_metrics(args.metrics_port, args.metrics_addr or "", registry=registry)
        waits = cell.expand_waits([w.strip() for w in args.wait_readers.split(",") if w.strip()])
        read = args.read
        live = []
        for spec in args.input:
            if spec.startswith("pcap:"):
                read = spec[len("pcap:") :]
            else:
                live.append(spec)
        for spec in live:
            try:
                cell.add_input(spec)
            except OSError as exc:
                raise UserError(f"--input {spec}: {explain(exc, spec.partition(':')[2])}") from None
        if waits and not cell.wait_readers(waits, args.wait_timeout):
            return 1
        # Register only once the inputs are bound and the readers are there: from then on the
        # incubators may send, and nothing they send is lost to a cell that is not ready.
        membership = _register(args, cell_id, live, cell) if not read else None
        if read:
            cell.run_offline(read, args.stall_timeout, args.drain_timeout)
            _warn_unread(cell)
        else:
            try:
                cell.run_live()
            finally:
                if membership is not None:
                    membership.close(withdraw=True)  # incubators stop sending new flows at once
            cell.abstractor.finish()
            cell.flush()
            cell.server.drain(2.0)
            cell.log_live_drops()
        return 0
    except OSError as exc:
        print(f"celltap cell: {explain(exc)}", file=sys.stderr)
        return 2
    except CaptureFormatError as exc:
        print(f"celltap cell: {exc.path or 'capture'}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"celltap cell: {exc}", file=sys.stderr)
        return 2
    finally:
        cell.close()


def _warn_unread(cell: object) -> None:
    """An offline run whose interfaces had no reader threw their events away: say so, once."""
    unread = {
        name: counts[0]
        for (name, reason), counts in cell.server.drops.items()  # type: ignore[attr-defined]
        if reason == "no_reader" and counts[0]
    }
    if unread:
        names = ", ".join(f"{n} ({e} events)" for n, e in sorted(unread.items()))
        print(
            f"celltap cell: no reader was connected to {names}: those events were discarded "
            "(start readers with --wait-readers, or run `celltap analyze` for cell + analyzers in one)",
            file=sys.stderr,
        )


def _store_overrides(args: argparse.Namespace, cfg: object) -> None:
    """Apply the --store* flags to the configuration's `store` section (creating it with --store)."""
    from celltap.cell.store.config import StoreConfig, check_store

    sc = cfg.store  # type: ignore[attr-defined]
    if args.store:
        sc = cfg.store = StoreConfig(dir=args.store) if sc is None else sc  # type: ignore[attr-defined]
        sc.dir = args.store
    flags = ("file_bytes", "max_bytes", "max_age", "listen", "token_file")
    given = {k: getattr(args, f"store_{k}") for k in flags if getattr(args, f"store_{k}") is not None}
    if not given:
        return
    if sc is None:
        raise ValueError("--store-*: no packet store configured (add --store DIR or a store: section)")
    for k, v in given.items():
        setattr(sc, k, v)
    check_store(sc)


def _store_url(cell: object, host: str) -> str | None:
    """The store endpoint's URL for the registry (the config's `advertise`, else host:bound port)."""
    server = getattr(cell, "store_server", None)
    if server is None:
        return None
    sc = cell.cfg.store  # type: ignore[attr-defined]
    if sc.advertise:
        return sc.advertise
    listen_host = sc.listen.rpartition(":")[0].strip("[]")
    if listen_host not in ("", "0.0.0.0", "::"):
        host = listen_host
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if sc.tls else 'http'}://{host}:{server.port}"


def _register(args: argparse.Namespace, cell_id: int, live: list[str], cell: object = None) -> object | None:
    """Register /celltap/<cluster>/cells/<id> with a kept-alive lease when --registry is given."""
    if not args.registry:
        return None
    from celltap.registry import Membership, open_registry

    advertise = args.advertise or (live[0] if live else None)
    if advertise is None:
        raise ValueError("--registry needs --advertise (or an --input to advertise)")
    value: dict[str, object] = {"input": advertise, "weight": args.weight}
    if args.metrics_port is not None:
        # A wildcard /metrics answers on the advertised host; a specific address only there.
        host = args.metrics_addr or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = urlsplit(advertise).hostname if "://" in advertise else None
            host = host if host and host not in ("0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        value["metrics"] = f"http://{host}:{args.metrics_port}/metrics"
    adv_host = urlsplit(advertise).hostname if "://" in advertise else None
    store = _store_url(cell, adv_host if adv_host and adv_host not in ("0.0.0.0", "::") else "127.0.0.1")
    if store:
        value["store"] = store
    membership = Membership(open_registry(args.registry), args.cluster, ttl=args.lease_ttl)
    membership.register("cells", str(cell_id), value)
    return membership
