"""Run one fuzz harness under atheris (libFuzzer), coverage-guided, and keep what it finds.

    python fuzz/run.py NAME [--runs N] [--seconds S] [--corpus DIR] [--crash-dir DIR] [--max-len N]

Theory of operation: the runner (this process) writes the harness's seeds into a corpus directory and
starts a worker process (`--worker NAME`) that imports `fuzz/harness_NAME.py` inside
`atheris.instrument_imports(include=["celltap", "fuzz"])`, so every celltap module the harness reaches
is instrumented for coverage (except the modules a harness names in `UNINSTRUMENTED`: oracles and sinks
that check what the parser produced, which then run at full speed and still check every input), then
hands control to libFuzzer. A harness may set `FUZZ_MAX_LEN`, the largest input libFuzzer makes for it
(its parser's unit is small; without a cap libFuzzer's inputs grow towards the largest seed or 4096
bytes over a long run, and the rate falls with them); --max-len overrides. libFuzzer stops at the first
input that raises (or hangs past --timeout) and writes it as an artifact. The runner replays each
artifact in a separate process to get its signature (exception type and innermost source line), keeps it
in `tests/fuzz/crashers/NAME/` unless a kept crasher has the same signature, and restarts the worker
with the remaining budget; it gives up after three duplicates in a row (one bug being found again). It
prints runs, exec/s (executed inputs over the workers' wall time, start-up included) and the new
crashers, and a final `RESULT {json}` line; exit status 0 when nothing new was found, 1 when a new
crasher was kept, 2 when the harness could not run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ_DIR = ROOT / "fuzz"
CRASHERS = ROOT / "tests" / "fuzz" / "crashers"
MAX_DUPLICATES = 3  # consecutive re-finds of known crashers before the runner stops
MAX_RESTARTS = 50
STAT = re.compile(rb"^stat::(\w+):\s+(\d+)", re.M)


def harness_names() -> list[str]:
    """Every harness in fuzz/ (harness_NAME.py -> NAME), sorted."""
    return sorted(p.stem.removeprefix("harness_") for p in FUZZ_DIR.glob("harness_*.py"))


def load_harness(name: str):
    """Import fuzz.harness_NAME (from this checkout), or a harness file given by its path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if name.endswith(".py"):  # a harness outside fuzz/ (the runner's own tests use one)
        folder = str(Path(name).resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return importlib.import_module(Path(name).stem)  # imported, so instrument_imports sees it
    return importlib.import_module(f"fuzz.harness_{name}")


def short_name(name: str) -> str:
    """The harness's name for reports and the crashers folder (a path's harness_NAME.py -> NAME)."""
    return Path(name).stem.removeprefix("harness_") if name.endswith(".py") else name


def signature(exc: BaseException) -> str:
    """Exception type and the innermost frame in this repository: one line that names the bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(str(ROOT)) and "/fuzz/" not in f.filename]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    loc = f"{os.path.relpath(where.filename, ROOT)}:{where.lineno}" if where else "?"
    return f"{type(exc).__name__} at {loc}"


def replay_signature(name: str, data: bytes) -> str | None:
    """Signature of the exception `data` raises in harness `name`, or None if it passes."""
    mod = load_harness(name)
    try:
        mod.test_one_input(data)
    except Exception as exc:
        return signature(exc)
    return None


@dataclass
class Result:
    """What one run of the runner did."""

    harness: str
    runs: int = 0
    seconds: float = 0.0
    exec_per_second: float = 0.0
    new_units: int = 0
    workers: int = 0
    new_crashers: list[str] = field(default_factory=list)
    duplicate_crashers: int = 0
    error: str = ""
    max_len: int = 0  # libFuzzer's -max_len (0: libFuzzer's own choice)


def _artifact_signature(name: str, path: Path) -> str:
    """Replay an artifact in a separate process (a hang or crash there cannot take the runner down)."""
    kind = path.name.split("-", 1)[0]
    if kind != "crash":
        return kind  # timeout / oom / slow-unit: the input's cost is the finding
    cmd = [sys.executable, "-m", "fuzz.run", "--replay", name, str(path)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env())
    except subprocess.TimeoutExpired:
        return "replay timed out"
    return p.stdout.strip().splitlines()[-1] if p.stdout.strip() else f"crash (replay: {p.stderr[-200:]})"


SCRATCH_ENV = "CELLTAP_FUZZ_SCRATCH"  # a directory the runner removes after the run


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def known_signatures(name: str, crash_dir: Path) -> set[str]:
    """Signatures of the crashers already kept for `name` (those that still fail)."""
    out = set()
    for path in sorted(crash_dir.glob("*")) if crash_dir.is_dir() else []:
        if path.is_file():
            out.add(_artifact_signature(name, path))
    return out


def write_seeds(name: str, corpus: Path) -> int:
    """Write the harness's seeds into the corpus directory (named by content hash); return their count."""
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = load_harness(name).seeds()
    for seed in seeds:
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
    return len(seeds)


def max_len_for(name: str, args: argparse.Namespace) -> int:
    """--max-len, else the harness's FUZZ_MAX_LEN, else 0 (libFuzzer chooses)."""
    return args.max_len or getattr(load_harness(name), "FUZZ_MAX_LEN", 0)


def _worker_command(name: str, budget: list[str], corpus: Path, artifacts: Path, args: argparse.Namespace):
    max_len = max_len_for(name, args)
    libfuzzer = [
        *budget,
        f"-artifact_prefix={artifacts}/",
        f"-timeout={args.timeout}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]
    if max_len:
        libfuzzer.append(f"-max_len={max_len}")
    return [sys.executable, "-m", "fuzz.run", "--worker", name, "--", *libfuzzer, str(corpus)]


def _keep(name: str, art: Path, crash_dir: Path, known: set[str], result: Result) -> bool:
    """Keep a new artifact as a crasher unless its signature is known; True if it was new."""
    sig = _artifact_signature(name, art)
    if sig is None or sig in known:
        result.duplicate_crashers += 1
        print(f"fuzz {name}: crasher again: {sig}", flush=True)
        return False
    known.add(sig)
    crash_dir.mkdir(parents=True, exist_ok=True)
    kind = art.name.split("-", 1)[0]
    dest = crash_dir / f"{kind}-{hashlib.sha1(art.read_bytes()).hexdigest()[:16]}"
    shutil.copyfile(art, dest)
    result.new_crashers.append(f"{os.path.relpath(dest, ROOT)}: {sig}")
    print(f"fuzz {name}: NEW CRASHER {dest}: {sig}", flush=True)
    return True


def fuzz(name: str, args: argparse.Namespace) -> Result:
    """Run harness `name` for the budget in `args`, restarting the worker after each crash."""
    result = Result(short_name(name), max_len=max_len_for(name, args))
    crash_dir = CRASHERS if not args.crash_dir else Path(args.crash_dir)
    crash_dir = crash_dir / result.harness
    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{result.harness}-"))
    # Files a harness writes go here, on a tmpfs where there is one, and go with the run: libFuzzer
    # ends its worker without Python's exit handlers, so a harness cannot clean up after itself.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    scratch = tempfile.mkdtemp(prefix=f"celltap-fuzz-{result.harness}-", dir=shm)
    corpus = Path(args.corpus) if args.corpus else tmp / "corpus"
    try:
        write_seeds(name, corpus)
        known = known_signatures(name, crash_dir)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        duplicates = 0
        while result.workers < MAX_RESTARTS and duplicates < MAX_DUPLICATES:
            budget = []
            if deadline is not None:
                left = int(deadline - time.monotonic())
                if left < 1:
                    break
                budget.append(f"-max_total_time={left}")
            if args.runs:
                left = args.runs - result.runs
                if left < 1:
                    break
                budget.append(f"-runs={left}")
            artifacts = tmp / f"artifacts{result.workers}"
            artifacts.mkdir()
            log = tmp / f"worker{result.workers}.log"
            started = time.monotonic()
            with open(log, "wb") as out:
                code = subprocess.call(
                    _worker_command(name, budget, corpus, artifacts, args),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    env={**_env(), SCRATCH_ENV: scratch},
                )
            result.seconds += time.monotonic() - started
            result.workers += 1
            text = log.read_bytes()
            stats = {k.decode(): int(v) for k, v in STAT.findall(text)}
            result.runs += stats.get("number_of_executed_units", 0)
            result.new_units += stats.get("new_units_added", 0)
            found = sorted(artifacts.iterdir())
            if code != 0 and not found:
                tail = text[-3000:].decode("utf-8", "replace")
                result.error = f"worker exited with {code} without an artifact:\n{tail}"
                break
            for art in found:
                duplicates = 0 if _keep(name, art, crash_dir, known, result) else duplicates + 1
            if code == 0:
                break  # the budget ran out without a crash
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    result.exec_per_second = round(result.runs / result.seconds, 1) if result.seconds else 0.0
    result.seconds = round(result.seconds, 2)
    return result


def _worker(name: str, libfuzzer_args: list[str]) -> None:
    """Inside the worker: instrument celltap and the harness, then let libFuzzer drive it."""
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # analyzers log what they count; the fuzzer's output is the report
    include = ["celltap", "fuzz", *([Path(name).stem] if name.endswith(".py") else [])]
    skip = _harness_attr(name, "UNINSTRUMENTED", ())
    with atheris.instrument_imports(include=include, exclude=list(skip)):
        mod = load_harness(name)
    wrong = [m for m in skip if m in sys.modules and _is_instrumented(sys.modules[m])]
    if wrong or not _is_instrumented(mod):
        raise RuntimeError(f"instrumentation is not as meant: harness {mod.__name__}, skipped {wrong}")
    target = mod.test_one_input
    if _harness_attr(name, "ARRAY_COMPARES", False):
        installed = []

        def target(data: bytes) -> None:
            if not installed:  # atheris.Fuzz() binds its own hook on the module: wrap that one
                _compare_arrays_directly(atheris)
                installed.append(True)
            mod.test_one_input(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], target)
    atheris.Fuzz()


def _compare_arrays_directly(atheris) -> None:
    """Route comparisons with a numpy array operand around atheris's comparison hook.

    atheris 3.0's hook (`_trace_cmp`, which instrumented code looks up on the module at each call)
    leaks about 160 bytes whenever the comparison yields an array, as vectorised code's elementwise
    `a <= b` does: a harness doing that per input grows by kilobytes per input until libFuzzer's
    -rss_limit_mb stops it with an out-of-memory that is not the parser's. Such comparisons are done
    directly (no comparison feedback for them; branch coverage is unchanged); every other goes to
    atheris. Opt-in per harness (`ARRAY_COMPARES = True`): the extra Python call costs a fifth of the
    rate of a harness that compares many scalars.
    """
    import operator

    import numpy as np
    from atheris.version_dependent import CMP_OP_SHIFT_AMOUNT

    if CMP_OP_SHIFT_AMOUNT:  # Python 3.12+: the hook gets the opcode's shifted argument; not handled
        return
    native = atheris._trace_cmp
    ops = (operator.lt, operator.le, operator.eq, operator.ne, operator.gt, operator.ge)
    array = np.ndarray

    def trace_cmp(a, b, op, counter, is_const):
        if isinstance(a, array) or isinstance(b, array):
            return ops[op](a, b)
        return native(a, b, op, counter, is_const)

    atheris._trace_cmp = trace_cmp


def _harness_attr(name: str, attr: str, default):
    """A harness module-level setting, read from its source (importing it now would import, and so
    leave uninstrumented, the modules it reaches)."""
    import ast

    path = Path(name) if name.endswith(".py") else FUZZ_DIR / f"harness_{name}.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == attr for t in node.targets):
            return ast.literal_eval(node.value)
    return default


def _is_instrumented(module) -> bool:
    """True if any function of `module` carries atheris's coverage hooks."""
    codes = [
        v.__code__
        for v in vars(module).values()
        if hasattr(v, "__code__") and getattr(v, "__module__", None) == module.__name__
    ]
    return any("_trace_branch" in c.co_names for c in codes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The runner's command line."""
    p = argparse.ArgumentParser(prog="fuzz/run.py", description="run a fuzz harness under atheris")
    p.add_argument("name", help=f"harness (fuzz/harness_NAME.py, or a path): {', '.join(harness_names())}")
    p.add_argument("--runs", type=int, default=0, help="number of inputs to execute")
    p.add_argument(
        "--seconds", type=float, default=0, help="time budget in seconds (with --runs: first wins)"
    )
    p.add_argument("--corpus", help="corpus directory to keep and grow (default: a temporary one)")
    p.add_argument("--crash-dir", help="where crashers go, per harness (default tests/fuzz/crashers)")
    p.add_argument("--max-len", type=int, default=0, help="largest input libFuzzer makes (default: its own)")
    p.add_argument("--timeout", type=int, default=10, help="seconds one input may take (longer: a finding)")
    args = p.parse_args(argv)
    if not args.name.endswith(".py") and args.name not in harness_names():
        p.error(f"no harness fuzz/harness_{args.name}.py (have: {', '.join(harness_names())})")
    if not args.runs and not args.seconds:
        args.runs = 10_000
    if args.runs < 0 or args.seconds < 0 or args.max_len < 0 or args.timeout < 1:
        p.error("--runs, --seconds and --max-len must be >= 0, --timeout >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: runner, or (internal) `--worker NAME -- ARGS` and `--replay NAME FILE`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    if argv[:1] == ["--replay"]:
        import logging

        logging.disable(logging.CRITICAL)
        sig = replay_signature(argv[1], Path(argv[2]).read_bytes())
        print(sig or "passes")
        return 0
    args = parse_args(argv)
    result = fuzz(args.name, args)
    print(
        f"fuzz {result.harness}: {result.runs} runs in {result.seconds} s ({result.exec_per_second} exec/s),"
        f" {result.new_units} new corpus units, {len(result.new_crashers)} new crashers,"
        f" {result.duplicate_crashers} re-found",
        flush=True,
    )
    print("RESULT " + json.dumps(asdict(result)), flush=True)
    if result.error:
        print(result.error, file=sys.stderr)
        return 2
    return 1 if result.new_crashers else 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make `fuzz` and this checkout importable
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
