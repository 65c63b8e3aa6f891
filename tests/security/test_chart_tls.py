"""The Helm chart secures collector -> node gRPC and the nodes' query API by default (docs/security.md).

Rendered with the real `helm template` (genCA / genSignedCert / lookup are Helm's own functions). The
generated certificates are checked with `cryptography` (an independent X.509 library), then used for
real: an analysis node started from the chart's own node.yaml and node Secret, a ClusterRouter with
the collector Secret, curl with the client Secret.
"""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from celltap.collector.cluster_collector import router_config, start_router
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from celltap.registry.tls import TLSConfig
from tests.cluster.procs import CELLTAP, Proc, free_port, wait_for
from tests.cluster.records import make_batch, make_records
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "celltap"
RELEASE, NAMESPACE = "celltap", "traffic"
HEADLESS = f"{RELEASE}-node-headless.{NAMESPACE}.svc"
QUERY = f"{RELEASE}-query.{NAMESPACE}.svc"

pytestmark = pytest.mark.timeout(180)


def helm_template(*sets: str) -> list[dict[str, Any]]:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not installed (scripts/install_helm.sh installs the pinned release)")
    args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (hit,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return hit


def config_file(docs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-config")["data"][key])


def secret_files(docs: list[dict[str, Any]], role: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in one(docs, "Secret", f"{RELEASE}-{role}-tls")["data"].items()}


def pod_spec(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return one(docs, kind, name)["spec"]["template"]["spec"]


def test_default_chart_generates_one_ca_and_certificates_for_each_role() -> None:
    docs = helm_template()
    ca = x509.load_pem_x509_certificate(secret_files(docs, "node")["ca.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for role, usages in (
        ("node", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("collector", {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("client", {ExtendedKeyUsageOID.CLIENT_AUTH}),
    ):
        files = secret_files(docs, role)
        assert files["ca.crt"] == secret_files(docs, "node")["ca.crt"], role  # one CA for the release
        cert = x509.load_pem_x509_certificate(files["tls.crt"])
        cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
        assert usages <= set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value), role
        assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3000)
    node = x509.load_pem_x509_certificate(secret_files(docs, "node")["tls.crt"])
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    assert {f"*.{HEADLESS}", QUERY} <= dns  # what collectors (registered address) and people dial


def test_default_chart_wires_tls_into_node_and_collector_pods() -> None:
    docs = helm_template()
    tls_files = {
        "ca": "/etc/celltap-tls/ca.crt",
        "cert": "/etc/celltap-tls/tls.crt",
        "key": "/etc/celltap-tls/tls.key",
    }
    for key, kind, name, role in (
        ("node.yaml", "StatefulSet", f"{RELEASE}-node", "node"),
        ("collector.yaml", "Deployment", f"{RELEASE}-collector", "collector"),
    ):
        cfg = config_file(docs, key)
        assert cfg["tls"] == tls_files, key
        assert cfg["registry_tls"] == {}  # the bundled etcd is plain: the URL decides
        spec = pod_spec(docs, kind, name)
        (vol,) = [v for v in spec["volumes"] if v["name"] == "tls"]
        assert vol["secret"]["secretName"] == f"{RELEASE}-{role}-tls"
        mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls"]
        assert mounts == [{"name": "tls", "mountPath": "/etc/celltap-tls", "readOnly": True}]
    node = pod_spec(docs, "StatefulSet", f"{RELEASE}-node")["containers"][0]
    assert node["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert node["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    (ep,) = [
        e for e in one(docs, "ServiceMonitor", RELEASE)["spec"]["endpoints"] if e["port"] == "metrics-https"
    ]
    assert ep["scheme"] == "https" and ep["tlsConfig"]["ca"]["secret"]["name"] == f"{RELEASE}-node-tls"
    assert ep["tlsConfig"]["serverName"] == QUERY


def test_chart_sets_every_listen_address_explicitly() -> None:
    docs = helm_template()
    col, node = config_file(docs, "collector.yaml"), config_file(docs, "node.yaml")
    assert all(u.startswith("udp://0.0.0.0:") for u in col["listen"]) and col["metrics_addr"] == "0.0.0.0"
    assert node["listen"].startswith("0.0.0.0:") and node["http"].startswith("0.0.0.0:")
    cells = pod_spec(docs, "StatefulSet", f"{RELEASE}-cell")["containers"]
    for c in cells:
        if "--metrics-port" in c.get("args", []):
            assert c["args"][c["args"].index("--metrics-addr") + 1] == "0.0.0.0", c["name"]
    inc = pod_spec(docs, "DaemonSet", f"{RELEASE}-incubator")["containers"][0]
    assert inc["args"][inc["args"].index("--metrics-addr") + 1] == "$(POD_IP)"  # host network: not every NIC


def test_tls_can_be_turned_off_or_left_to_cert_manager() -> None:
    off = helm_template("tls.enabled=false")
    assert not [d for d in off if d["kind"] in ("Secret", "Certificate")]
    assert "tls" not in config_file(off, "node.yaml") and "tls" not in config_file(off, "collector.yaml")
    node = pod_spec(off, "StatefulSet", f"{RELEASE}-node")["containers"][0]
    assert "scheme" not in node["readinessProbe"]["httpGet"]

    cm = helm_template("tls.source=certManager")
    assert not [d for d in cm if d["kind"] == "Secret"]
    certs = {d["metadata"]["name"]: d["spec"] for d in cm if d["kind"] == "Certificate"}
    assert certs[f"{RELEASE}-ca"]["isCA"]
    assert certs[f"{RELEASE}-node"]["secretName"] == f"{RELEASE}-node-tls"
    assert f"*.{HEADLESS}" in certs[f"{RELEASE}-node"]["dnsNames"]
    assert certs[f"{RELEASE}-collector"]["usages"] == ["client auth"]
    assert {d["metadata"]["name"] for d in cm if d["kind"] == "Issuer"} == {
        f"{RELEASE}-selfsigned",
        f"{RELEASE}-ca",
    }
    given = helm_template(
        "tls.source=certManager",
        "tls.certManager.issuerRef.name=corp",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not [d for d in given if d["kind"] == "Issuer"]
    node_cert = one(given, "Certificate", f"{RELEASE}-node")["spec"]
    assert node_cert["issuerRef"] == {"name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"}


def test_existing_secrets_must_be_named() -> None:
    helm = shutil.which("helm") or pytest.skip("helm is not installed")
    p = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--set", "tls.source=existing"],
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "existingSecrets" in p.stderr, p.stderr
    docs = helm_template(
        "tls.source=existing", "tls.existingSecrets.node=n", "tls.existingSecrets.collector=c"
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    (vol,) = [v for v in pod_spec(docs, "StatefulSet", f"{RELEASE}-node")["volumes"] if v["name"] == "tls"]
    assert vol["secret"]["secretName"] == "n"


def test_generated_certificates_work_for_grpc_and_https(tmp_path: Path) -> None:
    """The chart's own node.yaml and Secrets, on loopback: the collector's certificate routes records
    over mutual TLS to the node (dialled by its in-cluster name), the client certificate queries."""
    docs = helm_template()
    pki: dict[str, dict[str, str]] = {}
    for role in ("node", "collector", "client"):
        d = tmp_path / role
        d.mkdir()
        for name, data in secret_files(docs, role).items():
            (d / name).write_bytes(data)
        pki[role] = {"ca": str(d / "ca.crt"), "cert": str(d / "tls.crt"), "key": str(d / "tls.key")}
    grpc_port, http_port = free_port(), free_port()
    cfg = config_file(docs, "node.yaml")
    cfg.update({
        "id": "n0", "listen": f"127.0.0.1:{grpc_port}", "advertise": f"127.0.0.1:{grpc_port}",
        "http": f"127.0.0.1:{http_port}", "registry": f"file://{tmp_path / 'registry'}", "tls": pki["node"],
    })  # fmt: skip
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(cfg))
    node = Proc("node", [*CELLTAP, "node", "--config", str(tmp_path / "node.yaml")], tmp_path)
    # The collector checks the name it would dial in the cluster: the pod's name under the headless Service.
    collector_tls = TLSConfig(**pki["collector"], server_name=f"{RELEASE}-node-0.{HEADLESS}")
    close = None
    try:
        wait_for(lambda: "celltap node n0:" in node.tail(), 30, "node serving")
        router, close = start_router(
            f"file://{tmp_path / 'registry'}", cfg["cluster"], router_config("c0", {}, collector_tls)
        )
        wait_for(lambda: list(router.members) == ["n0"], 20, "node in the ring")
        recs = make_records(np.random.default_rng(3), 1000)
        router.on_batch(make_batch(recs))
        assert router.wait_idle(20), router.stats()
        curl = require_tool("curl")
        url = f"https://{QUERY}:{http_port}/query/volume?n=1"
        base = [
            curl,
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            f"{QUERY}:{http_port}:127.0.0.1",
            "--cacert",
            pki["client"]["ca"],
        ]
        p = subprocess.run(
            [*base, "--cert", pki["client"]["cert"], "--key", pki["client"]["key"], url],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["total"]["bytes"] == int(recs["octetDeltaCount"].sum())
        p = subprocess.run(
            [*base, "-w", "%{http_code}", "-o", "/dev/null", url], capture_output=True, text=True
        )
        assert p.stdout == "403"
    finally:
        if close is not None:
            close()
        node.stop()
