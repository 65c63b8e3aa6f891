"""`promtool test rules` unit-tests every alert of the chart's rule files (tests/deploy/alert_tests/):
each alert fires with the labels and rendered annotations its input series call for, exactly when
its `for:` has elapsed and not a step before."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool
from tests.deploy.chart import CHART, REPO

TESTS = Path(__file__).parent / "alert_tests"
RULE_FILES = sorted((CHART / "files/alerts").glob("*.yaml"))


def alerts() -> dict[str, dict[str, Any]]:
    """Every alerting rule of the chart, by name."""
    return {
        r["alert"]: r
        for f in RULE_FILES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }


def unit_tests() -> list[dict[str, Any]]:
    """The alert_rule_test entries of every test file."""
    return [
        check
        for f in sorted(TESTS.glob("*_test.yaml"))
        for group in yaml.safe_load(f.read_text())["tests"]
        for check in group.get("alert_rule_test", [])
    ]


def minutes(duration: str) -> int:
    """'5m' / '1h' / '90s' -> whole minutes."""
    unit = {"s": 1 / 60, "m": 1, "h": 60}[duration[-1]]
    return round(int(duration[:-1]) * unit)


def promtool_test(test_dir: Path) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` on every test file of a directory."""
    promtool = require_tool("promtool")
    files = [str(f) for f in sorted(test_dir.glob("*_test.yaml"))]
    return subprocess.run([promtool, "test", "rules", *files], cwd=test_dir, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_promtool_rule_unit_tests_pass() -> None:
    proc = promtool_test(TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_is_tested_at_the_edge_of_its_for_window() -> None:
    checks = unit_tests()
    for name, rule in alerts().items():
        mine = [c for c in checks if c["alertname"] == name]
        firing = [minutes(c["eval_time"]) for c in mine if c["exp_alerts"]]
        silent = [minutes(c["eval_time"]) for c in mine if not c["exp_alerts"]]
        assert firing, f"{name} is never shown to fire"
        assert rule.get("for"), f"{name} has no for: (every celltap alert waits before firing)"
        # Firing at t and silent at t-1m: promtool evaluates every minute, so a shorter `for:` would
        # fire at t-1m and a longer one would not fire at t.
        assert any(t - 1 in silent for t in firing), f"{name}: no silent check a step before it fires"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_shortening_for_breaks_the_unit_test(name: str, tmp_path: Path) -> None:
    # The unit tests see the `for:` durations: the same rules with one alert's `for:` a minute shorter fail.
    rules_dir = tmp_path / "helm/celltap/files/alerts"
    rules_dir.mkdir(parents=True)
    for f in RULE_FILES:
        doc = yaml.safe_load(f.read_text())
        for g in doc["groups"]:
            for r in g["rules"]:
                if r.get("alert") == name:
                    r["for"] = f"{minutes(r['for']) - 1}m"
        (rules_dir / f.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    # Only the test groups that check this alert (promtool evaluates every group's whole range).
    test_dir = tmp_path / TESTS.relative_to(REPO)
    test_dir.mkdir(parents=True)
    for f in TESTS.glob("*_test.yaml"):
        doc = yaml.safe_load(f.read_text())
        doc["tests"] = [
            g for g in doc["tests"] if any(c["alertname"] == name for c in g.get("alert_rule_test", []))
        ]
        if doc["tests"]:
            (test_dir / f.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = promtool_test(test_dir)
    assert proc.returncode != 0 and f"alertname: {name}," in proc.stdout + proc.stderr
