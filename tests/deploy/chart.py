"""Render the celltap chart with the real `helm` (pinned by scripts/install_helm.sh).

`helm template` renders the manifests.  Two things helm has no plain command for without a cluster,
the computed (deep-merged) values and NOTES.txt, are rendered by helm too: from a copy of the chart
with two probe templates added (`{{ toYaml .Values }}`, and NOTES.txt rendered by `tpl`), so that the values
the tests compare against are Helm's own merge, not ours.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "celltap"
EXAMPLES = REPO / "helm" / "examples"
RELEASE = "celltap"
NAMESPACE = "traffic"
PROBE_VALUES = "templates/zz-probe-values.yaml"
PROBE_NOTES = "templates/zz-probe-notes.yaml"

# The values sets the chart must render: chart defaults and the documented layouts.
VALUE_SETS: dict[str, list[Path]] = {
    "default": [],
    "one-rack": [EXAMPLES / "one-rack.yaml"],
    "several-racks": [EXAMPLES / "several-racks.yaml"],
}


def helm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run helm (skip when it is not installed) and return the finished process."""
    exe = require_tool("helm")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def value_args(value_files: list[Path]) -> list[str]:
    """`-f FILE` for each values file."""
    return [a for f in value_files for a in ("-f", str(f))]


def helm_template(value_files: list[Path], chart: Path = CHART, *extra: str) -> str:
    """`helm template` under the test release name and namespace; its stdout (failure fails the test)."""
    proc = helm("template", RELEASE, str(chart), "--namespace", NAMESPACE, *value_args(value_files), *extra)
    assert proc.returncode == 0, f"helm template {value_files} failed:\n{proc.stderr}"
    return proc.stdout


@functools.cache
def probe_chart() -> Path:
    """A copy of the chart with the probe templates (values and NOTES.txt) added."""
    root = Path(tempfile.mkdtemp(prefix="celltap-chart-probe-"))
    atexit.register(shutil.rmtree, root, True)
    chart = root / "celltap"
    shutil.copytree(CHART, chart)
    (chart / PROBE_VALUES).write_text("{{ toYaml .Values }}\n")
    # Templates must render YAML: NOTES.txt goes in as a string, rendered by `tpl` with the chart's context.
    (chart / "probe").mkdir()
    shutil.copy(CHART / "templates/NOTES.txt", chart / "probe/NOTES.txt")
    (chart / PROBE_NOTES).write_text('notes: {{ tpl (.Files.Get "probe/NOTES.txt") . | toJson }}\n')
    return chart


def _show_only(template: str, value_files: list[Path]) -> str:
    text = helm_template(value_files, probe_chart(), "--show-only", template)
    return "\n".join(line for line in text.splitlines() if not line.startswith(("---", "# Source:")))


@functools.cache
def _computed_values(value_files: tuple[Path, ...]) -> str:
    return _show_only(PROBE_VALUES, list(value_files))


def merged_values(value_files: list[Path]) -> dict[str, Any]:
    """The values Helm computes from the chart defaults and the files (its deep merge; null deletes)."""
    return yaml.safe_load(_computed_values(tuple(value_files)))


def helm_notes(value_files: list[Path]) -> str:
    """NOTES.txt as Helm renders it for these values."""
    return yaml.safe_load(_show_only(PROBE_NOTES, value_files))["notes"]


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a rendered stream."""
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The one document of a kind whose name ends with the suffix."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, (
        f"expected one {kind} *{name_suffix}, found {[d['metadata']['name'] for d in hits]}"
    )
    return hits[0]
