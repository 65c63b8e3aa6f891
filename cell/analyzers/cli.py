"""`celltap analyzer NAME --socket PATH`: run one analyzer (or N balanced ones) on a cell interface."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from celltap.cell.analyzers.registry import ANALYZERS
from celltap.cell.analyzers.supervisor import RESTARTS, child_command, supervise
from celltap.cell.sdk.client import run_socket
from celltap.cell.sdk.loopback import declare_loopback_reasons
from celltap.cell.sdk.metrics import declare_reasons
from celltap.cell.sdk.output import JsonLinesWriter
from celltap.cell.sdk.session import FORMATS

from celltap.cli_types import PORT, SECONDS, bounded
from celltap.user_errors import UserError, add_metrics_addr_argument, wait_for_path

log = logging.getLogger(__name__)

SOCKET_WAIT = 10.0  # seconds an analyzer waits for its interface socket before saying so


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the analyzer subcommand's options."""
    parser.add_argument("name", choices=sorted(ANALYZERS), help="which analyzer to run")
    parser.add_argument("--socket", help="interface socket, e.g. /tmp/sf-tap/tcp/http")
    parser.add_argument(
        "--socket-prefix", help="balanced interfaces: PREFIX0 .. PREFIX{N-1} (with --balance)"
    )
    parser.add_argument(
        "--balance",
        type=bounded(int, 0, 256),
        default=0,
        help="start N child analyzers, restart any that dies",
    )
    parser.add_argument("--format", choices=FORMATS, default="text", help="interface format (default text)")
    parser.add_argument("--out", help="append JSON lines to FILE (default stdout)")
    parser.add_argument(
        "--metrics-port",
        type=PORT,
        help="serve Prometheus /metrics on this port (with --balance: the supervisor; child i uses PORT+1+i)",
    )
    add_metrics_addr_argument(parser)
    parser.add_argument(
        "--socket-wait",
        type=SECONDS,
        default=SOCKET_WAIT,
        metavar="SECONDS",
        help="how long a missing interface socket is waited for before saying so (default 10)",
    )
    parser.add_argument(
        "--exit-on-eof",
        action="store_true",
        help="exit when the interface closes instead of reconnecting (offline runs)",
    )


def _wait_for_socket(path: str, exit_on_eof: bool, seconds: float, stop: threading.Event) -> None:
    """Give a missing interface socket a short wait; then fail (offline) or say what it waits for.

    A SIGTERM during the wait ends it at once (the caller's loop then sees `stop`)."""
    if wait_for_path(path, seconds, stop) or stop.is_set():
        return
    if exit_on_eof:
        raise UserError(
            f"interface socket {path} does not exist (waited {seconds:g} s): is the cell running "
            "with an interface of that name and home?"
        )
    log.warning("interface socket %s does not exist yet; waiting for the cell to create it", path)


def main(args: argparse.Namespace) -> int:
    """Run the analyzer (or the balance supervisor) until SIGTERM, or EOF with --exit-on-eof."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # the drop and error counters show 0 from the first scrape (also while the socket is awaited)
    if args.balance:
        RESTARTS.labels(args.name)
    else:
        declare_reasons(args.name, ANALYZERS[args.name].error_reasons)
        declare_loopback_reasons(args.name)
    if args.metrics_port is not None:
        from celltap.user_errors import serve_metrics

        serve_metrics(args.metrics_port, args.metrics_addr or "")
    if args.balance:
        if not args.socket_prefix:
            log.error("analyzer: --balance needs --socket-prefix")
            return 2
        commands = [
            child_command(
                args.name,
                f"{args.socket_prefix}{i}",
                args.format,
                args.out,
                None if args.metrics_port is None else args.metrics_port + 1 + i,
                args.exit_on_eof,
                args.metrics_addr,
            )
            for i in range(args.balance)
        ]
        return supervise(commands, args.name, stop, args.exit_on_eof)
    if not args.socket:
        log.error("analyzer: --socket PATH is required (or --socket-prefix with --balance)")
        return 2
    _wait_for_socket(args.socket, args.exit_on_eof, args.socket_wait, stop)
    analyzer = ANALYZERS[args.name]()
    writer = JsonLinesWriter(args.out)
    try:
        run_socket(args.socket, analyzer, writer.write, args.format, args.exit_on_eof, stop)
    finally:
        writer.close()
    return 0
