"""Build the Go chart renderer and render the celltap chart (with it, or with helm when installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "celltap"
EXAMPLES = REPO / "helm" / "examples"
RENDERER_SRC = REPO / "helm" / "tools" / "render"
# Debian's Go library tree: golang-github-masterminds-sprig-dev and golang-k8s-sigs-yaml-dev.
DEBIAN_GOPATH = Path("/usr/share/gocode")
RELEASE = "celltap"
NAMESPACE = "traffic"

# The values sets the chart must render: chart defaults and the two documented layouts.
VALUE_SETS: dict[str, list[Path]] = {
    "default": [],
    "one-rack": [EXAMPLES / "one-rack.yaml"],
    "several-racks": [EXAMPLES / "several-racks.yaml"],
}


def build_renderer(out_dir: Path) -> Path:
    """Compile helm/tools/render against Debian's sprig and sigs.k8s.io/yaml (GOPATH mode, no network)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (Debian golang-go); scripts/setup.sh --system installs it")
    if not (DEBIAN_GOPATH / "src/github.com/Masterminds/sprig").is_dir():
        pytest.skip("sprig is not installed (Debian golang-github-masterminds-sprig-dev)")
    if not (DEBIAN_GOPATH / "src/sigs.k8s.io/yaml").is_dir():
        pytest.skip("sigs.k8s.io/yaml is not installed (Debian golang-k8s-sigs-yaml-dev)")
    cache = os.environ.get("GOCACHE") or str(Path.home() / ".cache" / "go-build")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(DEBIAN_GOPATH),
        "GOFLAGS": "",
        "GOCACHE": cache,
        "GOPROXY": "off",
    }
    binary = out_dir / "render"
    proc = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=RENDERER_SRC,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"go build of the renderer failed:\n{proc.stderr}"
    return binary


def render(tool: list[str], chart: Path, value_files: list[Path], *extra: str) -> str:
    """Run a renderer (the Go one or `helm template`) and return its stdout."""
    args = [*tool]
    for f in value_files:
        args += ["-f", str(f)]
    args += [*extra]
    proc = subprocess.run([*args, str(chart)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def go_render(renderer: Path, value_files: list[Path], chart: Path = CHART, notes: bool = False) -> str:
    """Render with the Go renderer under the test release name and namespace."""
    extra = ["--name", RELEASE, "--namespace", NAMESPACE] + (["--notes"] if notes else [])
    return render([str(renderer)], chart, value_files, *extra)


def helm_render(value_files: list[Path], chart: Path = CHART) -> str:
    """Render with the real `helm template` (only where helm is installed)."""
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip(
            "helm is not on PATH (it cannot be installed on these machines); the Go renderer stands in"
        )
    # --kube-version: the chart needs 1.28+ and older helm defaults to an older Kubernetes.
    return render(
        [helm, "template", RELEASE, "--namespace", NAMESPACE, "--kube-version", "1.30.0"], chart, value_files
    )


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a rendered stream."""
    return [d for d in yaml.safe_load_all(text) if d]


def merged_values(value_files: list[Path]) -> dict[str, Any]:
    """Chart defaults deep-merged with the files, as Helm merges them (null deletes a key)."""

    def merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
        for key, value in src.items():
            if value is None:
                dst.pop(key, None)
            elif isinstance(value, dict) and isinstance(dst.get(key), dict):
                merge(dst[key], value)
            else:
                dst[key] = value
        return dst

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in value_files:
        merge(values, yaml.safe_load(f.read_text()) or {})
    return values


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The one document of a kind whose name ends with the suffix."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, (
        f"expected one {kind} *{name_suffix}, found {[d['metadata']['name'] for d in hits]}"
    )
    return hits[0]
