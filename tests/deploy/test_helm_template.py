"""The real helm judges the chart: `helm lint --strict` as users run it, `helm template` for every
values set, Chart.yaml's kubeVersion, and NOTES.txt telling operators what to wire."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import CHART, EXAMPLES, RELEASE, VALUE_SETS, documents, helm, helm_notes


def test_helm_is_the_pinned_release() -> None:
    pinned = next(
        line.split("=", 1)[1]
        for line in (CHART.parents[1] / "scripts/install_helm.sh").read_text().splitlines()
        if line.startswith("HELM_VERSION=")
    )
    proc = helm("version", "--template", "{{ .Version }}")
    assert proc.returncode == 0 and proc.stdout.strip() == pinned


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(name: str) -> None:
    # How users run it: the example file on top of the chart, warnings fatal.
    args = [a for f in VALUE_SETS[name] for a in ("-f", str(f))]
    proc = helm("lint", "--strict", *args, str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_every_example_is_a_values_set() -> None:
    examples = {f for files in VALUE_SETS.values() for f in files}
    assert examples == set(EXAMPLES.glob("*.yaml"))


def test_examples_need_no_null() -> None:
    # null is the only way to drop a defaulted key, and `helm lint` puts the default back (helm
    # issues 12819, 8267): the values are shaped so that no example needs it.
    def nulls(node: object, path: str = "") -> list[str]:
        if node is None:
            return [path]
        if isinstance(node, dict):
            return [p for k, v in node.items() for p in nulls(v, f"{path}.{k}")]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in nulls(v, f"{path}[{i}]")]
        return []

    for f in EXAMPLES.glob("*.yaml"):
        assert nulls(yaml.safe_load(f.read_text())) == [], f


def test_lint_catches_a_broken_chart(tmp_path: Path) -> None:
    # lint is a real check: an undefined template call fails it.
    import shutil

    chart = tmp_path / "celltap"
    shutil.copytree(CHART, chart)
    (chart / "templates/broken.yaml").write_text('{{ include "celltap.nosuch" . }}\n')
    proc = helm("lint", "--strict", str(chart))
    assert proc.returncode != 0 and "celltap.nosuch" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_template_renders(rendered: dict[str, list[dict]], name: str) -> None:
    kinds = {d["kind"] for d in rendered[name]}
    assert {"DaemonSet", "StatefulSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds


def test_notes_tell_how_to_point_routers_and_mirror_ports() -> None:
    notes = helm_notes([])
    assert f"svc {RELEASE}-collector" in notes
    assert "UDP 4739" in notes and "UDP 2055" in notes
    assert "kubectl label node NODE celltap.io/tap=true" in notes
    assert "afpacket:eth1" in notes and "VXLAN (UDP 4789)" in notes
    rack = helm_notes(VALUE_SETS["one-rack"])
    assert "UDP 30739" in rack and "get pods" in rack  # NodePort: tells which node port and nodes


def test_chart_refuses_kubernetes_without_pod_index_label() -> None:
    # Cell ids come from the apps.kubernetes.io/pod-index label, set by Kubernetes 1.28 and later.
    old = helm("template", RELEASE, str(CHART), "--kube-version", "v1.27.9")
    assert old.returncode != 0 and "incompatible with Kubernetes v1.27.9" in old.stderr
    new = helm("template", RELEASE, str(CHART), "--kube-version", "v1.28.0")
    assert new.returncode == 0, new.stderr
    assert documents(new.stdout)
