"""Run every benchmark (bench/bench_*.py), print the figures with their same-run baselines, and
rewrite docs/benchmarks.md.  One command: `.venv/bin/python -m bench.run [NAME ...]`.

Each benchmark module has `main()` returning a list of `bench.common.Result` or a dict of figures;
each runs in its own process so that one benchmark's core pinning or memory cannot skew another.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import subprocess
import sys
import time

from bench.common import Result, machine

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
MARK = "<!-- figures below are written by bench/run.py -->"

_CHILD = """
import dataclasses, importlib, json, sys
res = importlib.import_module(sys.argv[1]).main()
if isinstance(res, list):
    res = [dataclasses.asdict(r) for r in res]
print("@@RESULT@@" + json.dumps(res, default=str))
"""


def discover() -> list[str]:
    """Names of the benchmark modules, core first."""
    names = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
    return sorted(names, key=lambda n: (n != "bench_core", n))


def run_one(name: str, timeout: float) -> tuple[list[Result] | dict | None, str, float]:
    """Run one benchmark module in a child process; return (results, error text, seconds)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, f"bench.{name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    took = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            data = json.loads(line[len("@@RESULT@@") :])
            if isinstance(data, list):
                return [Result(**r) for r in data], "", took
            return data, "", took
    return None, (proc.stderr or proc.stdout).strip()[-2000:], took


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(name: str, res: list[Result] | dict | None, err: str, took: float) -> list[str]:
    """Markdown lines for one benchmark."""
    lines = [f"### {name} ({took:.0f} s)", ""]
    if res is None:
        lines += ["Did not produce figures:", "", "```", err, "```", ""]
        return lines
    if isinstance(res, dict):
        tables = {k: v for k, v in res.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        lines += ["| figure | value |", "|---|---|"]
        for k, v in _flatten({k: v for k, v in res.items() if k not in tables}):
            lines.append(f"| {k} | {_fmt(v)} |")
        for rows in tables.values():
            cols = list(dict.fromkeys(c for row in rows for c in row))
            lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
        return [*lines, ""]
    lines += ["| what | ours | baseline (same run) | ratio | target | note |", "|---|---|---|---|---|---|"]
    for r in res:
        base = f"{r.baseline_name}: {_fmt(r.baseline_value)}" if r.baseline_name else ""
        ratio = f"x{r.ratio:.2f}" if r.baseline_value else ""
        target = f"{_fmt(r.target)} ({'met' if r.value >= r.target else 'NOT met'})" if r.target else ""
        lines.append(f"| {r.name} | {_fmt(r.value)} {r.unit} | {base} | {ratio} | {target} | {r.note} |")
    return [*lines, ""]


def _sections(text: str) -> dict[str, list[str]]:
    """The '### name (N s)' sections of a benchmarks page, by benchmark name."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("### "):
            current = out.setdefault(line[4:].split(" ", 1)[0], [])
        if current is not None:
            current.append(line)
    return out


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def main() -> int:
    """Run the benchmarks and rewrite docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    args = parser.parse_args()
    names = args.names or discover()
    sections: list[str] = []
    for name in names:
        print(f"== {name}", flush=True)
        res, err, took = run_one(name, args.timeout)
        block = render(name, res, err, took)
        print("\n".join(block), flush=True)
        sections += block
    if args.no_write:
        return 0
    m = machine()
    text = DOC.read_text() if DOC.exists() else ""
    head = text.split(MARK)[0] if MARK in text else ""
    if args.names:
        # A partial run replaces its own sections and keeps the others' latest figures.
        kept = _sections(text.split(MARK, 1)[1] if MARK in text else "")
        fresh = _sections("\n".join(sections))
        merged = {**kept, **fresh}
        sections = [line for name in discover() if name in merged for line in merged[name]]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        MARK,
        "",
        f"Run: {stamp}, `python -m bench.run {' '.join(args.names)}`".rstrip(),
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()),
        "",
        *sections,
    ]
    DOC.write_text(head + "\n".join(body) + "\n")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
