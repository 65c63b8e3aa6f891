"""The chart rendered for each values set: valid Kubernetes objects that say what the issue asks."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import NAMESPACE, RELEASE, VALUE_SETS, find, merged_values

CRD_KINDS = ("ServiceMonitor", "PrometheusRule")
CRD_VALIDATOR = Path(__file__).parent / "crd_validator"
# The chart's minimum (Chart.yaml kubeVersion) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


def crd_errors(docs: list[dict[str, Any]]) -> list[str | None]:
    """Per object, the prometheus-operator validators' error or None (npm @kubernetes-models/
    prometheus-operator, generated from prometheus-operator's API types; setup.sh --system installs it)."""
    node = shutil.which("node")
    if node is None or not (CRD_VALIDATOR / "node_modules/@kubernetes-models/prometheus-operator").is_dir():
        pytest.skip(
            "CRD validators not installed: scripts/setup.sh --system (npm ci in tests/deploy/crd_validator)"
        )
    proc = subprocess.run(
        [node, str(CRD_VALIDATOR / "validate.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=CRD_VALIDATOR,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def k8s_errors(doc: dict[str, Any], version: str) -> str | None:
    """First schema error of an object (built-in kinds: kubernetes-validate; CRDs: prometheus-operator's)."""
    if doc["kind"] in CRD_KINDS:
        return crd_errors([doc])[0]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return exc.message
    return None


def problems(docs: list[dict[str, Any]], version: str) -> dict[str, str]:
    """'Kind/name' -> error, for every object that does not validate (CRDs checked in one batch)."""
    crds = [d for d in docs if d["kind"] in CRD_KINDS]
    found = {f"{d['kind']}/{d['metadata']['name']}": k8s_errors(d, version) for d in docs if d not in crds}
    found |= {f"{d['kind']}/{d['metadata']['name']}": e for d, e in zip(crds, crd_errors(crds), strict=True)}
    return {k: v for k, v in found.items() if v}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_validates(rendered: dict[str, list[dict[str, Any]]], name: str, version: str) -> None:
    docs = rendered[name]
    assert len(docs) >= 10
    assert {d["kind"] for d in docs} >= set(CRD_KINDS)
    assert problems(docs, version) == {}


def test_validators_reject_broken_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # A validator that accepts anything would make the test above vacuous.
    docs = rendered["default"]
    dep = copy.deepcopy(find(docs, "Deployment", "-collector"))
    dep["spec"]["template"]["spec"]["containers"][0]["capabilites"] = {}  # misspelt key
    assert k8s_errors(dep, KUBE_VERSIONS[0])
    svc = copy.deepcopy(find(docs, "Service", "-collector"))
    svc["spec"]["ports"][0]["port"] = "4739/udp"
    assert k8s_errors(svc, KUBE_VERSIONS[0])
    sm = copy.deepcopy(find(docs, "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert k8s_errors(sm, KUBE_VERSIONS[0])
    rule = copy.deepcopy(find(docs, "PrometheusRule"))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert k8s_errors(rule, KUBE_VERSIONS[0])
    rule = copy.deepcopy(find(docs, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    assert k8s_errors(rule, KUBE_VERSIONS[0])


def test_names_fit_dns_labels(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        for d in docs:
            if d["kind"] in ("Service", "StatefulSet", "DaemonSet", "Deployment"):
                assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
            assert d["metadata"]["namespace"] == NAMESPACE


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template spec of a workload."""
    return doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_incubator_daemonset(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    values = merged_values(VALUE_SETS[name])
    ds = find(rendered[name], "DaemonSet", "-incubator")
    spec = pod_spec(ds)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"  # the registry Service must resolve
    key, value = values["incubator"]["tapNodeLabel"].split("=")
    assert spec["nodeSelector"] == {**values["incubator"]["nodeSelector"], key: value}
    (c,) = spec["containers"]
    caps = c["securityContext"]["capabilities"]
    # NET_RAW alone: AF_PACKET capture needs no more (tests/incubator/test_capabilities.py)
    assert caps == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert "privileged" not in c["securityContext"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_workload_is_hardened_and_probed(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    for d in rendered[name]:
        if d["kind"] not in ("DaemonSet", "StatefulSet", "Deployment"):
            continue
        spec = pod_spec(d)
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            where = f"{d['metadata']['name']}/{c['name']}"
            # The registrar serves nothing to probe (it exits when the cell stops answering), and
            # init containers are not probed.
            if c["name"] != "registrar" and c not in spec.get("initContainers", []):
                assert "readinessProbe" in c and "livenessProbe" in c, where
            assert c["resources"]["requests"], where
            assert c["resources"]["limits"]["memory"], where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            if d["kind"] != "DaemonSet":
                # The Pod Security "restricted" profile, for everything but the incubator.
                assert spec["securityContext"]["runAsNonRoot"] is True, where
                assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert "add" not in c["securityContext"]["capabilities"], where
                assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), where
        for v in spec.get("volumes", []):
            assert set(v) - {"name"} <= {"configMap", "emptyDir", "persistentVolumeClaim", "secret"}, v


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_cells_statefulset(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    values = merged_values(VALUE_SETS[name])
    sts = find(rendered[name], "StatefulSet", "-cell")
    assert sts["spec"]["replicas"] == values["cells"]["replicas"]
    spread = pod_spec(sts)["topologySpreadConstraints"]
    rack = [s for s in spread if s["topologyKey"] == values["topology"]["rackLabel"]]
    assert rack and rack[0]["whenUnsatisfiable"] == values["topology"]["whenUnsatisfiable"]
    assert rack[0]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    names = [c["name"] for c in pod_spec(sts)["containers"]]
    sidecar = values["cells"]["discovery"] == "registry" and values["cells"]["registration"] == "sidecar"
    assert names == ["cell", *(["registrar"] if sidecar else [])] + [
        f"analyzer-{a['name']}" for a in values["cells"]["analyzers"]
    ]
    # The cell id is the StatefulSet ordinal, read through the downward API.
    env = {e["name"]: e for e in pod_spec(sts)["containers"][0]["env"]}
    assert (
        env["CELL_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    pdb = find(rendered[name], "PodDisruptionBudget", "-cell")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_collector_service_keeps_exporter_addresses(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    values = merged_values(VALUE_SETS[name])
    svc = find(rendered[name], "Service", "-collector")
    assert svc["spec"]["type"] in ("LoadBalancer", "NodePort")
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    ports = {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]}
    assert ports == {(p["port"], p["protocol"]) for p in values["collector"]["service"]["ports"]}
    assert (4739, "UDP") in ports
    dep = find(rendered[name], "Deployment", "-collector")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    target_names = {p["name"] for p in pod_spec(dep)["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= target_names


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_etcd_bundled_or_external(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    values = merged_values(VALUE_SETS[name])
    docs = rendered[name]
    etcd = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-etcd")]
    config = find(docs, "ConfigMap", "-config")["data"]
    if values["etcd"]["bundled"]:
        (sts,) = etcd
        replicas = values["etcd"]["replicas"]
        assert sts["spec"]["replicas"] == replicas
        cmd = pod_spec(sts)["containers"][0]["command"]
        initial = next(a for a in cmd if a.startswith("--initial-cluster="))
        assert initial.count("=http://") == replicas
        pdb = find(docs, "PodDisruptionBudget", "-etcd")
        assert pdb["spec"]["minAvailable"] == replicas // 2 + 1
        assert f"{RELEASE}-etcd-0.{RELEASE}-etcd-headless.{NAMESPACE}.svc:2379" in config["collector.yaml"]
    else:
        assert etcd == []
        assert values["etcd"]["externalUrl"] in config["collector.yaml"]


def test_several_racks_spreads_strictly(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for suffix in ("-cell", "-node"):
        sts = find(rendered["several-racks"], "StatefulSet", suffix)
        spread = pod_spec(sts)["topologySpreadConstraints"][0]
        assert spread == {**spread, "topologyKey": "celltap.io/rack", "whenUnsatisfiable": "DoNotSchedule"}


VARIANTS = {
    "etcd-without-persistence": "etcd:\n  persistence:\n    enabled: false\n",
    "static-discovery": "cells:\n  discovery: static\n  replicas: 6\n",
    "inline-incubator": "incubator:\n  mode: inline\n  capture: afpacket:eth1\n  peer: afpacket:eth2\n",
    "no-monitoring-no-incubator": (
        "incubator:\n  enabled: false\nmetrics:\n  serviceMonitor:\n    enabled: false\n"
        "  prometheusRule:\n    enabled: false\n  dashboards:\n    enabled: false\n"
    ),
    "no-pdbs-no-ipfix": (
        "cells:\n  podDisruptionBudget:\n    enabled: false\n  ipfix:\n    enabled: false\n"
        "collector:\n  podDisruptionBudget:\n    enabled: false\n"
        "nodes:\n  podDisruptionBudget:\n    enabled: false\n"
    ),
    "incubator-on-every-node": 'incubator:\n  tapNodeLabel: ""\n',
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_render_valid_objects(tmp_path: Path, variant: str) -> None:
    from tests.deploy.chart import documents, helm_template
    from tests.deploy.test_values_schema import errors

    values = tmp_path / "values.yaml"
    values.write_text(VARIANTS[variant])
    assert errors(merged_values([values])) == []
    docs = documents(helm_template([values]))
    assert problems(docs, KUBE_VERSIONS[0]) == {}
    kinds = {d["kind"] for d in docs}
    if variant == "no-monitoring-no-incubator":
        assert not kinds & {"DaemonSet", "ServiceMonitor", "PrometheusRule"}
        assert not [d for d in docs if "grafana_dashboard" in d["metadata"]["labels"]]
    if variant == "no-pdbs-no-ipfix":
        assert [d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"] == ["celltap-etcd"]
        assert (
            "--ipfix"
            not in find(docs, "StatefulSet", "-cell")["spec"]["template"]["spec"]["containers"][0]["args"]
        )
    if variant == "incubator-on-every-node":
        assert "nodeSelector" not in find(docs, "DaemonSet", "-incubator")["spec"]["template"]["spec"]
    if variant == "inline-incubator":
        assert "peer: afpacket:eth2" in find(docs, "ConfigMap", "-config")["data"]["incubator.yaml"]
    if variant == "etcd-without-persistence":
        sts = find(docs, "StatefulSet", "-etcd")
        assert "volumeClaimTemplates" not in sts["spec"]
        assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_ports_are_unique_and_scraped(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    docs = rendered[name]
    for d in docs:
        if d["kind"] in ("DaemonSet", "StatefulSet", "Deployment"):
            ports = [(p["containerPort"], p.get("protocol", "TCP")) for c in pod_spec(d)["containers"]
                     for p in c.get("ports", [])]  # fmt: skip
            names = [p["name"] for c in pod_spec(d)["containers"] for p in c.get("ports", [])]
            assert len(ports) == len(set(ports)) and len(names) == len(set(names)), d["metadata"]["name"]
    # Every ServiceMonitor endpoint names a port of some metrics Service, and every metrics-labelled
    # Service port that serves /metrics has an endpoint.
    sm = find(docs, "ServiceMonitor")
    endpoints = {e["port"] for e in sm["spec"]["endpoints"]}
    metric_services = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["labels"].get("celltap.io/metrics")
    ]
    served = {p["name"] for s in metric_services for p in s["spec"]["ports"]}
    assert endpoints <= served
    assert {n for n in served if n.startswith("metrics") or n.startswith("an-")} == endpoints


_QUANTITY = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6}
_QUANTITY |= {"G": 10**9, "T": 10**12}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_cell_memory_budget_is_its_memory_limit(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    """Each cell gets its container's memory limit as --memory-budget, and the rendered sftap.yaml's
    worst case under that budget fits it (cell/memory_budget.py; docs/cell.md, "Memory budget")."""
    from celltap.cell.memory_budget import plan
    from celltap.cell.sftap_config import parse_config

    sts = find(rendered[name], "StatefulSet", "-cell")
    cell = next(c for c in pod_spec(sts)["containers"] if c["name"] == "cell")
    limit = str(cell["resources"]["limits"]["memory"])
    digits = limit.rstrip("KiMGT")
    expected = int(digits) * _QUANTITY[limit[len(digits) :]]
    args = cell["args"]
    assert args[args.index("--memory-budget") + 1] == str(expected), name
    sftap = yaml.safe_load(find(rendered[name], "ConfigMap", "-config")["data"]["sftap.yaml"]) or {}
    sftap["global"] = {**(sftap.get("global") or {}), "memory_budget": expected}
    p = plan(parse_config(sftap))
    assert p.total <= p.usable <= expected, p.describe()
