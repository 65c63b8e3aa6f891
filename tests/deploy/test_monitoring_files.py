"""Dashboards and alert rules ship exactly as the files in the chart (the ones promtool checks)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require_tool
from tests.deploy.chart import CHART, documents, helm_template

DASHBOARDS = sorted((CHART / "files/dashboards").glob("*.json"))
ALERTS = sorted((CHART / "files/alerts").glob("*.yaml"))


def dashboard_maps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ConfigMaps the Grafana sidecar picks up."""
    return [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]


def rule_groups(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """spec.groups of the rendered PrometheusRule ([] when there is none)."""
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) <= 1
    return rules[0]["spec"]["groups"] if rules else []


def test_chart_ships_dashboards_and_rules() -> None:
    assert DASHBOARDS, "helm/celltap/files/dashboards/ has no dashboard"
    assert ALERTS, "helm/celltap/files/alerts/ has no rule file"
    for f in DASHBOARDS:
        assert json.loads(f.read_text())["panels"], f


def test_each_dashboard_configmap_holds_its_file_byte_for_byte(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in rendered.values():
        maps = dashboard_maps(docs)
        shipped = {name: text for m in maps for name, text in m["data"].items()}
        assert len(maps) == len(DASHBOARDS) == len(shipped)
        assert shipped == {f.name: f.read_text() for f in DASHBOARDS}


def test_prometheusrule_is_the_rule_files(rendered: dict[str, list[dict[str, Any]]]) -> None:
    expected = [g for f in ALERTS for g in yaml.safe_load(f.read_text())["groups"]]
    for docs in rendered.values():
        assert rule_groups(docs) == expected


def test_promtool_accepts_the_files_and_the_rendered_rules(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    promtool = require_tool("promtool")
    out = tmp_path / "rendered-rules.yaml"
    out.write_text(yaml.safe_dump({"groups": rule_groups(rendered["default"])}))
    for f in [*ALERTS, out]:
        proc = subprocess.run(
            [promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"promtool check rules {f}:\n{proc.stdout}{proc.stderr}"
    # promtool is a real check: a broken expression in the same shape fails it.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "rate(x[5m]"}]}]})
    )
    assert (
        subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, timeout=60).returncode
        != 0
    )


def test_chart_loads_whatever_files_are_there(tmp_path: Path) -> None:
    chart = tmp_path / "celltap"
    shutil.copytree(CHART, chart)
    extra_dash = {"title": "Extra", "uid": "extra", "panels": [{"id": 1, "type": "text", "title": "t"}]}
    (chart / "files/dashboards/Extra_Board.json").write_text(json.dumps(extra_dash, indent=1) + "\n")
    extra_rules = {
        "groups": [{"name": "extra", "rules": [{"record": "job:up:sum", "expr": "sum by (job) (up)"}]}]
    }
    (chart / "files/alerts/zz-extra.yaml").write_text(yaml.safe_dump(extra_rules))
    docs = documents(helm_template([], chart))
    maps = dashboard_maps(docs)
    assert len(maps) == len(DASHBOARDS) + 1
    extra = [m for m in maps if "Extra_Board.json" in m["data"]]
    assert extra and extra[0]["metadata"]["name"].endswith("-dashboard-extra-board")
    assert json.loads(extra[0]["data"]["Extra_Board.json"]) == extra_dash
    assert rule_groups(docs)[-1] == extra_rules["groups"][0]

    for f in [*(chart / "files/dashboards").iterdir(), *(chart / "files/alerts").iterdir()]:
        f.unlink()
    docs = documents(helm_template([], chart))
    assert dashboard_maps(docs) == [] and rule_groups(docs) == []
