"""`helm template` (where helm exists) agrees with the Go renderer; NOTES tell operators what to wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.chart import RELEASE, VALUE_SETS, documents, go_render, helm_render


def keyed(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Objects by (kind, name), without the config checksums (YAML text layout differs by encoder)."""
    out = {}
    for d in docs:
        ann = (
            d["spec"]["template"]["metadata"].get("annotations", {})
            if "template" in d.get("spec", {})
            else {}
        )
        ann.pop("checksum/config", None)
        if d["kind"] == "Secret" and d["metadata"]["labels"].get("app.kubernetes.io/component") == "tls":
            d.pop("data")  # a fresh CA and keys at every render (genCA): compared in tests/security
        out[(d["kind"], d["metadata"]["name"])] = d
    return out


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_template_matches_go_renderer(renderer: Path, name: str) -> None:
    helm_docs = documents(helm_render(VALUE_SETS[name]))
    go_docs = documents(go_render(renderer, VALUE_SETS[name]))
    assert keyed(helm_docs) == keyed(go_docs)


def test_notes_tell_how_to_point_routers_and_mirror_ports(renderer: Path) -> None:
    notes = go_render(renderer, [], notes=True)
    assert f"svc {RELEASE}-collector" in notes
    assert "UDP 4739" in notes and "UDP 2055" in notes
    assert "kubectl label node NODE celltap.io/tap=true" in notes
    assert "afpacket:eth1" in notes and "VXLAN (UDP 4789)" in notes
    rack = go_render(renderer, VALUE_SETS["one-rack"], notes=True)
    assert "UDP 30739" in rack and "get pods" in rack  # NodePort: tells which node port and nodes


def test_chart_refuses_kubernetes_without_pod_index_label(renderer: Path) -> None:
    # Cell ids come from the apps.kubernetes.io/pod-index label, set by Kubernetes 1.28 and later.
    import subprocess

    from tests.deploy.chart import CHART

    old = subprocess.run(
        [str(renderer), "--kube-version", "v1.27.9", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert old.returncode != 0 and "incompatible with Kubernetes v1.27.9" in old.stderr
    new = subprocess.run(
        [str(renderer), "--kube-version", "v1.28.0", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert new.returncode == 0, new.stderr
