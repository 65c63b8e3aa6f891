"""values.schema.json has teeth, judged by helm itself: the chart defaults and every example pass,
and each broken values file is rejected by `helm template` at the key that is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.chart import CHART, RELEASE, VALUE_SETS, helm, merged_values

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def errors(values: dict[str, Any]) -> list[str]:
    """Every schema violation jsonschema finds, as 'path: message' (a second, independent validator)."""
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)]


def helm_schema_errors(override: dict[str, Any], tmp_path: Path) -> tuple[int, list[str]]:
    """`helm template` with one values file: exit code and the '- key: message' lines helm prints."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(override))
    proc = helm("template", RELEASE, str(CHART), "-f", str(values))
    return proc.returncode, [line[2:] for line in proc.stderr.splitlines() if line.startswith("- ")]


def test_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_values_validate(name: str) -> None:
    # helm validates while rendering (test_helm_template); jsonschema agrees on helm's merged values.
    assert errors(merged_values(VALUE_SETS[name])) == []


def test_example_files_are_partial_overrides() -> None:
    # Each example file alone is not a full values set: it must be merged over the chart defaults.
    for files in VALUE_SETS.values():
        for f in files:
            assert errors(yaml.safe_load(Path(f).read_text())), f"{f} should not be complete on its own"


def nested(path: str, value: Any) -> dict[str, Any]:
    """{'a': {'b': value}} for 'a.b'."""
    out: dict[str, Any] = {}
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


# (key, value, the key helm must name, a phrase of its message, why the value is wrong).  null deletes
# a defaulted key, as in a user's values file.
BROKEN: list[tuple[str, Any, str, str, str]] = [
    ("collector.service.type", "ClusterIP", "collector.service.type", "must be one of",
     "routers need an external Service type"),
    ("collector.service.externalTrafficPolicy", "Sometimes", "collector.service.externalTrafficPolicy",
     "must be one of", "not a Kubernetes policy"),
    ("incubator.mode", "inline", "incubator.peer", "greater than or equal to 1", "inline mode needs a peer"),
    ("incubator.capture", "eth1", "incubator.capture", "Does not match pattern",
     "needs afpacket: or netmap:"),
    ("incubator.tapNodeLabel", "celltap.io/tap", "incubator.tapNodeLabel", "Does not match pattern",
     "a node label is KEY=VALUE"),
    ("etcd.bundled", False, "etcd.externalUrl", "greater than or equal to 1",
     "an external etcd needs its URL"),
    ("etcd.replicas", 2, "etcd.replicas", "must be one of", "an even etcd cluster has no better quorum"),
    ("cells.replicas", 0, "cells.replicas", "greater than or equal to 1", "at least one cell"),
    ("cells.discovery", "dns", "cells.discovery", "must be one of", "registry or static"),
    ("cells.analyzers", [{"name": "ftp", "socket": "tcp/ftp", "metricsPort": 9490}], "cells.analyzers.0.name",
     "must be one of", "no such analyzer"),
    ("collector.podDisruptionBudget.bound", "both", "collector.podDisruptionBudget.bound", "must be one of",
     "a PDB sets minAvailable or maxUnavailable"),
    ("nodes.podDisruptionBudget.value", "150%", "nodes.podDisruptionBudget.value", "",
     "not a count or a percentage"),
    ("cells.vxlanPort", 70000, "cells.vxlanPort", "less than or equal to 65535", "not a port"),
    ("nodes.apps", ["top_talkers"], "nodes.apps", "Invalid type",
     "apps are a mapping of name to {kind, key}"),
    ("metrics.serviceMonitor.interval", "fast", "metrics.serviceMonitor.interval", "Does not match pattern",
     "not a duration"),
    ("cells.sftapConfig", None, "cells", "sftapConfig is required", "the abstractor needs its configuration"),
    ("typo", 1, "(root)", "Additional property typo is not allowed", "unknown top-level keys are rejected"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "key", "phrase", "why"), BROKEN, ids=[b[0] for b in BROKEN])
def test_helm_rejects_broken_values(
    path: str, value: Any, key: str, phrase: str, why: str, tmp_path: Path
) -> None:
    code, lines = helm_schema_errors(nested(path, value), tmp_path)
    assert code != 0, why
    assert [line for line in lines if line.startswith(f"{key}:") and phrase in line], (why, lines)


def test_helm_accepts_a_cleared_tap_label_and_percentages(tmp_path: Path) -> None:
    # The two shapes the restructured values allow that the broken cases sit next to.
    override = {
        "incubator": {"tapNodeLabel": ""},
        "nodes": {"podDisruptionBudget": {"bound": "minAvailable", "value": "50%"}},
    }
    assert helm_schema_errors(override, tmp_path) == (0, [])
