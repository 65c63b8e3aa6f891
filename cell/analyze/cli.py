"""`celltap analyze`: Zeek-style logs from captures or a live interface, in one command.

celltap analyze x.pcap [y.pcap ...] [-o DIR]     one JSON-lines log per kind in DIR, exit 0 at the end
celltap analyze -r x.pcap --json http             one log on standard output
celltap analyze -i eth1 -o DIR --rotate-interval 3600   live, until SIGINT/SIGTERM
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import time
from importlib import resources
from pathlib import Path

from celltap.cli_types import COUNT, SECONDS

PROG = "celltap analyze"


class UserError(Exception):
    """A mistake of the user's: one line on stderr, exit 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `celltap analyze`."""
    parser.add_argument(
        "pcaps", nargs="*", metavar="PCAP", help="capture files (pcap or pcapng), merged by time"
    )
    parser.add_argument(
        "-r", "--read", action="append", default=[], metavar="PCAP", help="a capture file (repeatable)"
    )
    parser.add_argument(
        "-i", "--interface", metavar="IFACE", help="capture live on IFACE until SIGINT/SIGTERM"
    )
    parser.add_argument(
        "-o", "--out", metavar="DIR", default=".", help="log directory (default: current directory)"
    )
    parser.add_argument(
        "--config", metavar="SFTAP_YAML", help="SF-TAP configuration (default: celltap's built-in rules)"
    )
    parser.add_argument(
        "--analyzer",
        action="append",
        default=[],
        metavar="IF=NAME",
        help="bind interface IF of the configuration to analyzer NAME (default: by interface name)",
    )
    parser.add_argument("--json", metavar="LOG", help="write only this log (e.g. http), to standard output")
    parser.add_argument(
        "--rotate-size", type=_size, default=0, metavar="BYTES", help="rotate logs at this size"
    )
    parser.add_argument(
        "--rotate-interval",
        type=SECONDS,
        default=0.0,
        metavar="SECONDS",
        help="rotate logs this often (live)",
    )
    parser.add_argument(
        "--weird-limit", type=COUNT, default=1000, help="weird.log records per weird name per run"
    )
    parser.add_argument("--quiet", action="store_true", help="no summary on stderr")


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    try:
        return int(float(digits) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100M)") from None


def main(args: argparse.Namespace) -> int:
    """Run the analysis; the exit code is 0 at the end of the captures (or on SIGINT/SIGTERM live)."""
    try:
        return _run(args)
    except UserError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from celltap.cell.analyze.logs import LogSet
    from celltap.cell.analyze.pipeline import Analysis

    paths = [*args.pcaps, *args.read]
    if args.interface and paths:
        raise UserError("give capture files or -i IFACE, not both")
    if not args.interface and not paths:
        raise UserError("nothing to analyze: give capture files (or -r PCAP) or -i IFACE")
    for p in paths:
        _check_readable(p)
    cfg = _load_config(args.config)
    bindings = _bindings(args.analyzer)
    directory = None if args.json and args.out == "." else _out_dir(args.out)
    logs = LogSet(directory, args.json, args.rotate_size, args.rotate_interval)
    analysis = Analysis(cfg, logs, bindings, args.weird_limit)
    if not analysis.bindings:
        raise UserError("no interface of the configuration has an analyzer (see --analyzer IF=NAME)")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if args.interface:
            _run_live(analysis, args.interface)
        else:
            _run_files(analysis, paths)
    finally:
        logs.close()
    if not args.quiet:
        _summary(analysis, time.perf_counter() - t0, time.process_time() - c0, directory)
    return 0


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"no such capture file: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a capture file")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read {path}: permission denied")


def _load_config(path: str | None):
    from celltap.cell.sftap_config import ConfigError, load_config

    try:
        if path is None:
            with resources.as_file(resources.files("celltap") / "defaults" / "sftap.yaml") as p:
                return load_config(str(p))
        if not os.path.exists(path):
            raise UserError(f"no such configuration file: {path}")
        return load_config(path)
    except ConfigError as exc:
        raise UserError(f"config error in {path or 'the built-in rules'}: {exc}") from None


def _bindings(items: list[str]) -> dict[str, str]:
    from celltap.cell.analyzers.registry import ANALYZERS

    out: dict[str, str] = {}
    for item in items:
        ifname, sep, name = item.partition("=")
        if not sep or not ifname:
            raise UserError(f"--analyzer: expected IF=NAME, got {item!r}")
        if name and name not in ANALYZERS:
            raise UserError(f"--analyzer: unknown analyzer {name!r} (have: {', '.join(sorted(ANALYZERS))})")
        out[ifname] = name
    return out


def _out_dir(path: str) -> Path:
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise UserError(f"output directory {path} is a file")
    if not d.exists():
        if not d.parent.exists():
            raise UserError(f"output directory {path}: its parent directory {d.parent} does not exist")
        try:
            d.mkdir()
        except OSError as exc:
            raise UserError(f"cannot create output directory {path}: {exc.strerror}") from None
    if not os.access(d, os.W_OK):
        raise UserError(f"output directory {path} is not writable")
    return d


def _run_files(analysis, paths: list[str]) -> None:
    from celltap.cell.analyze.inputs import merged_batches

    from celltap.pcap import CaptureFormatError

    stop = _stop_on_signals()
    try:
        for batch in merged_batches(paths):
            analysis.process(batch)
            if stop["now"]:
                break
    except CaptureFormatError as exc:
        analysis.finish()  # what was read before the damage is still analyzed and logged
        where = f" {exc.path}" if exc.path else ""
        raise UserError(f"bad capture file{where}: {exc}") from None
    analysis.finish()


def _run_live(analysis, ifname: str) -> None:
    import selectors

    from celltap.cell.inputs import InterfaceSource

    try:
        socket.if_nametoindex(ifname)
    except OSError:
        raise UserError(f"no network interface named {ifname!r}") from None
    try:
        src = InterfaceSource(ifname)
    except PermissionError:
        raise UserError(f"capturing on {ifname} needs root (or CAP_NET_RAW)") from None
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise UserError(f"no network interface named {ifname!r}") from None
        raise UserError(f"cannot capture on {ifname}: {exc.strerror}") from None
    stop = _stop_on_signals()
    print(f"{PROG}: capturing on {ifname} (SIGINT or SIGTERM ends the run)", file=sys.stderr, flush=True)
    sel = selectors.DefaultSelector()
    sel.register(src.sock, selectors.EVENT_READ)
    last_tick = time.monotonic()
    try:
        while not stop["now"]:
            if sel.select(0.1):
                while True:
                    batch = src.read_batch()
                    if batch is None:
                        break
                    analysis.process(batch, time.time_ns())
            if time.monotonic() - last_tick >= 0.1:
                last_tick = time.monotonic()
                analysis.tick(time.time_ns())
        # frames the kernel still holds are analyzed before the end
        src.settle()
        while (batch := src.read_batch()) is not None:
            analysis.process(batch, time.time_ns())
    finally:
        analysis.finish()
        sel.close()
        src.count_kernel_drops()
        src.close()
        for k, v in src.drops.items():
            analysis.abstractor.count_drop(f"input_{k}", v)


def _stop_on_signals() -> dict[str, bool]:
    flag = {"now": False}

    def stop(_signum: int, _frame: object) -> None:
        flag["now"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return flag


def _summary(analysis, wall: float, cpu: float, directory: Path | None) -> None:
    a = analysis.abstractor
    flows = sum(a.flows_created.values())
    lines = [f"{PROG}: {a.packets} packets, {flows} flows in {wall:.2f} s (cpu {cpu:.2f} s)"]
    logs = analysis.logs.counts
    if logs:
        where = f" in {directory}" if directory is not None else ""
        lines.append("  logs" + where + ": " + ", ".join(f"{k}.log {v}" for k, v in sorted(logs.items())))
    else:
        lines.append("  no records")
    drops = {**a.drops, **{f"loopback_{k}": v for k, v in a.loopback_drops.items()}}
    if drops:
        lines.append("  cell drops: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    if a.unrouted_bytes:
        lines.append(f"  bytes of flows no rule classified: {a.unrouted_bytes}")
    for name, errs in sorted(analysis.analyzer_errors().items()):
        if errs:
            lines.append(f"  {name} errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errs.items())))
    t = analysis.totals
    if t.unanalyzed_events:
        lines.append(
            "  events of interfaces with no analyzer: "
            + ", ".join(f"{k} {v}" for k, v in sorted(t.unanalyzed_events.items()))
        )
    if t.weird_suppressed:
        lines.append(
            "  weirds over --weird-limit, not logged: "
            + ", ".join(f"{k} {v}" for k, v in sorted(t.weird_suppressed.items()))
        )
    print("\n".join(lines), file=sys.stderr)
