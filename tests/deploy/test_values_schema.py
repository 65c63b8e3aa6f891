"""values.yaml and the example values files validate against values.schema.json, which has teeth."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.chart import CHART, VALUE_SETS, merged_values

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def errors(values: dict[str, Any]) -> list[str]:
    """Every schema violation, as 'path: message'."""
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)]


def test_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_values_validate(name: str) -> None:
    assert errors(merged_values(VALUE_SETS[name])) == []


def test_example_files_are_partial_overrides() -> None:
    # Each example file alone is not a full values set: it must be merged over the chart defaults.
    for files in VALUE_SETS.values():
        for f in files:
            assert errors(yaml.safe_load(Path(f).read_text())), f"{f} should not be complete on its own"


def _with(path: str, value: Any) -> dict[str, Any]:
    values = copy.deepcopy(merged_values([]))
    node = values
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return values


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        ("collector.service.type", "ClusterIP", "routers need an external Service type"),
        ("collector.service.externalTrafficPolicy", "Sometimes", "not a Kubernetes policy"),
        ("incubator.mode", "inline", "inline mode needs a peer interface"),
        ("incubator.capture", "eth1", "capture needs afpacket: or netmap:"),
        ("incubator.nodeSelector", {}, "the incubator must be pinned to the tap nodes"),
        ("etcd.bundled", False, "an external etcd needs its URL"),
        ("etcd.replicas", 2, "an even etcd cluster has no better quorum"),
        ("cells.replicas", 0, "at least one cell"),
        ("cells.discovery", "dns", "registry or static"),
        ("cells.analyzers", [{"name": "ftp", "socket": "tcp/ftp", "metricsPort": 9490}], "no such analyzer"),
        (
            "collector.podDisruptionBudget",
            {"minAvailable": 1, "maxUnavailable": 1},
            "a PDB takes one of them",
        ),
        ("cells.vxlanPort", 70000, "not a port"),
        ("nodes.apps", ["top_talkers"], "apps are a mapping of name to {kind, key}"),
        ("metrics.serviceMonitor.interval", "fast", "not a duration"),
        ("cells.sftapConfig", _DELETE, "the abstractor needs its configuration"),
        ("typo", 1, "unknown top-level keys are rejected"),
    ],
)
def test_schema_rejects(path: str, value: Any, why: str) -> None:
    assert errors(_with(path, value)), why
