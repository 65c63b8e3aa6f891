"""The single `celltap` entry point: dispatches subcommands to the module of each plane."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Each subcommand lives in the module of the plane that owns it.  A module exposes
# `add_arguments(parser)` and `main(args) -> int`; it is imported only when its
# subcommand runs so that `celltap loadgen` does not pay for grpc, etc.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "analyze": (
        "celltap.cell.analyze.cli",
        "Zeek-style logs (conn, http, dns...) from captures or an interface",
    ),
    "demo": ("celltap.demo", "local cluster on embedded defaults, generated traffic, summary"),
    "up": ("celltap.up", "long-running local cluster from a cluster YAML"),
    "incubator": ("celltap.incubator.cli", "flow-hashing cell balancer (live or offline split)"),
    "cell": ("celltap.cell.cli", "SF-TAP-compatible flow abstractor with IPFIX export"),
    "pcap": ("celltap.cell.store.cli", "one flow's packets from cells' packet stores (by uid or 5-tuple)"),
    "analyzer": ("celltap.cell.analyzers.cli", "application analyzers reading a cell interface"),
    "collector": ("celltap.collector.cli", "IPFIX / NetFlow collector and inspector"),
    "node": ("celltap.collector.node_cli", "analysis node hosting analysis apps"),
    "loadgen": ("celltap.loadgen.cli", "traffic, pcap and IPFIX generators"),
    "status": ("celltap.status", "cluster view from the registry and metrics endpoints"),
    "top": ("celltap.status", "cluster-wide queries"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; with `only`, import just that subcommand's module (fast start)."""
    from celltap.cli_types import OneLineParser  # a bad flag is one line naming it, not a usage block

    parser = OneLineParser(prog="celltap", description="celltap: scale-out traffic analysis")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # that plane is not built yet: leave its command out of --help
            raise
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        if name == "top" and hasattr(module, "add_top_arguments"):
            module.add_top_arguments(sp)
            sp.set_defaults(_entry="top_main")
        else:
            module.add_arguments(sp)
            sp.set_defaults(_entry="main")
    return parser


def quiet_created_series() -> None:
    """Export no `*_created` series (one per labelled counter, only noise on dashboards) unless the
    environment asks for them: PROMETHEUS_DISABLE_CREATED_SERIES=false."""
    if os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "true").lower() in ("true", "1", "t"):
        from prometheus_client import disable_created_metrics

        disable_created_metrics()


def main(argv: list[str] | None = None) -> int:
    """Run the celltap command line."""
    words = sys.argv[1:] if argv is None else argv
    quiet_created_series()
    # Every process of a cluster starts through here: import only the plane it runs.
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    entry = getattr(args._module, args._entry)
    from celltap.user_errors import UserError, explain

    try:
        return int(entry(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UserError as exc:
        print(f"celltap {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # the outside world said no (a port, a path, an interface): one line, not a traceback
        print(f"celltap {args.command}: {explain(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
