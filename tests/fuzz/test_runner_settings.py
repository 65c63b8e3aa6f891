"""The runner's per-harness speed settings (fuzz/run.py): FUZZ_MAX_LEN, UNINSTRUMENTED, ARRAY_COMPARES.

Each check runs in its own interpreter: instrumenting imports and replacing atheris's comparison hook
must not leak into the test process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from fuzz.run import _harness_attr, harness_names

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, timeout: float = 120) -> str:
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_settings_are_read_from_the_harness_source() -> None:
    assert _harness_attr("http", "FUZZ_MAX_LEN", 0) == 8192
    assert _harness_attr("ipfix", "UNINSTRUMENTED", ()) == ("celltap.collector.json_output",)
    assert _harness_attr("capture_time", "ARRAY_COMPARES", False) is True
    assert _harness_attr("sip", "ARRAY_COMPARES", False) is False  # the default when a harness says nothing
    for name in harness_names():
        cap = _harness_attr(name, "FUZZ_MAX_LEN", 0)
        assert isinstance(cap, int) and (cap == 0 or cap >= 1024), (name, cap)


def test_max_len_reaches_libfuzzer_and_the_report(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), "dns", "--runs", "200", "--crash-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    result = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert result["max_len"] == 2048 and result["runs"] >= 200 and not result["error"], result


def test_uninstrumented_module_stays_plain_and_the_parser_is_instrumented() -> None:
    out = _python(
        """
        import atheris, sys
        from fuzz.run import _is_instrumented
        skip = ["celltap.collector.json_output"]
        with atheris.instrument_imports(include=["celltap", "fuzz"], exclude=skip):
            import fuzz.harness_ipfix
        print(_is_instrumented(sys.modules["celltap.collector.json_output"]),
              _is_instrumented(sys.modules["celltap.collector.ingest"]),
              _is_instrumented(sys.modules["fuzz.harness_ipfix"]))
        """
    )
    assert out.split()[-3:] == ["False", "True", "True"], out


def test_array_comparisons_bypass_the_leaking_hook_with_the_same_results() -> None:
    """With the hook replaced, 100,000 array comparisons in instrumented code leave the process's
    memory where it was (atheris 3.0's own hook keeps ~160 bytes each: 16 MB), give numpy's own
    results, and scalar comparisons still reach atheris."""
    out = _python(
        """
        import gc, atheris, numpy as np
        from fuzz.run import _compare_arrays_directly
        native = atheris._trace_cmp
        _compare_arrays_directly(atheris)
        assert atheris._trace_cmp is not native

        @atheris.instrument_func
        def cmp(a, b):
            return a <= b, a == b, a > b

        def rss_kb():
            gc.collect()
            return int(open("/proc/self/statm").read().split()[1]) * 4

        a, b = np.arange(16), np.arange(16)[::-1].copy()
        le, eq, gt = cmp(a, b)
        assert np.array_equal(le, a <= b) and np.array_equal(eq, a == b) and np.array_equal(gt, a > b)
        assert cmp(3, 4) == (True, False, False) and cmp(b"ab", b"ab") == (True, True, False)
        before = rss_kb()
        for _ in range(100_000):
            cmp(a, b)
        print("growth_kb", rss_kb() - before)
        """
    )
    growth = int(out.split()[-1])
    assert growth < 2048, out  # the leaking hook: ~47,000 kB for these 300,000 comparisons


def test_a_vectorised_harness_does_not_grow_under_libfuzzer(tmp_path: Path) -> None:
    """End to end through the worker (atheris.Fuzz binds its own hook, which the runner must wrap):
    20,000 capture_time inputs keep libFuzzer's peak RSS near its start (the leaking hook added about
    5 KB per input here: ~100 MB)."""
    from fuzz.run import write_seeds

    write_seeds("capture_time", tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--worker", "capture_time", "--", "-runs=20000",
         "-print_final_stats=1", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )  # fmt: skip
    text = p.stdout + p.stderr
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.M))
    assert p.returncode == 0 and int(stats["number_of_executed_units"]) == 20000, text[-2000:]
    start = int(re.search(r"INITED .* rss: (\d+)Mb", text).group(1))
    assert int(stats["peak_rss_mb"]) < start + 40, (start, stats)
