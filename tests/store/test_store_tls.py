"""The store endpoint over mutual TLS: only a client with a certificate the store's CA signed gets frames.

Certificates come from docker/gen_certs.py (the one-host cluster's CA); the cell serves HTTPS with
the node certificate and requires client certificates (`store.tls.ca`), with no token. Traffic is
loadgen's `cps` (crafted) over VXLAN; the expected frames are tshark's extraction of one 5-tuple
from the crafted capture (bytes and wire lengths; the cell stamps receive times).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml
from celltap.cell.store.cli import cell_stores

from celltap.launcher.ports import free_port, free_udp_port
from tests.cluster.procs import Proc, metric, wait_for
from tests.conftest import require_tool
from tests.store.live import vxlan
from tests.store.oracle import CELLTAP, celltap_pcap, five_tuple_filter, read_pcap, tshark_extract

ROOT = Path(__file__).resolve().parents[2]


def test_mutual_tls_store_endpoint_crafted(tmp_path: Path) -> None:
    require_tool("tshark")
    certs = tmp_path / "certs"
    gen = [sys.executable, str(ROOT / "docker/gen_certs.py"), "--out", str(certs), "--node-names=127.0.0.1"]
    subprocess.run(gen, check=True, capture_output=True, timeout=60)
    pcap = tmp_path / "cps.pcap"
    subprocess.run([*CELLTAP, "loadgen", "pcap", "cps", str(pcap), "--count", "40"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    frames = read_pcap(pcap)[1]
    registry = f"file://{tmp_path}/registry"
    udp, mport = free_udp_port(), free_port()
    cfg = {
        "global": {"home": str(tmp_path / "home")},
        "tcp_default": {"if": "default"},
        "store": {"dir": str(tmp_path / "store"), "listen": "127.0.0.1:0",
                  "tls": {"cert": str(certs / "node/tls.crt"), "key": str(certs / "node/tls.key"),
                          "ca": str(certs / "ca.crt")}},
    }  # fmt: skip
    (tmp_path / "cell.yaml").write_text(yaml.safe_dump(cfg))
    cell = Proc("cell", [*CELLTAP, "cell", "--config", str(tmp_path / "cell.yaml"), "--input",
                         f"vxlan://127.0.0.1:{udp}", "--registry", registry, "--cluster", "tls",
                         "--metrics-port", str(mport)], tmp_path)  # fmt: skip
    try:
        wait_for(lambda: len(cell_stores(registry, "tls")) == 1, 60, "the cell's store in the registry")
        url = next(iter(cell_stores(registry, "tls").values()))
        assert url.startswith("https://127.0.0.1:")
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _, _, f in frames:
            sock.sendto(vxlan(f), ("127.0.0.1", udp))
            time.sleep(0.0005)
        sock.close()
        metrics = f"http://127.0.0.1:{mport}/metrics"
        wait_for(lambda: metric(metrics, "celltap_cell_store_written_frames_total") == len(frames), 30,
                 "every frame stored")  # fmt: skip
        f0 = frames[0][2]  # the first SYN: Ethernet, IPv4, TCP
        src, dst = ".".join(map(str, f0[26:30])), ".".join(map(str, f0[30:34]))
        sport, dport = int.from_bytes(f0[34:36], "big"), int.from_bytes(f0[36:38], "big")
        flow = f"tcp {src}:{sport} {dst}:{dport}"
        want = tshark_extract(pcap, five_tuple_filter("tcp", src, sport, dst, dport), tmp_path / "want.pcap")
        assert len(want) >= 5
        base = ["--registry", registry, "--cluster", "tls", "--flow", flow, "--tls-ca", str(certs / "ca.crt")]
        client = ["--tls-cert", str(certs / "client/tls.crt"), "--tls-key", str(certs / "client/tls.key")]
        proc = celltap_pcap([*base, *client], tmp_path / "got.pcap")
        assert proc.returncode == 0, proc.stderr
        assert [(w, b) for _, w, b in read_pcap(tmp_path / "got.pcap")[1]] == [(w, b) for _, w, b in want]
        # no client certificate: refused (403), said on stderr, exit 1, an empty capture
        token = tmp_path / "token"
        token.write_text("anything\n")
        proc = celltap_pcap([*base, "--token-file", str(token)], tmp_path / "no-cert.pcap")
        assert proc.returncode == 1 and "HTTP 403" in proc.stderr, proc.stderr
        assert read_pcap(tmp_path / "no-cert.pcap")[1] == []
        # a client that does not trust the store's CA: refused by the client (certificate verify failed)
        proc = celltap_pcap(["--registry", registry, "--cluster", "tls", "--flow", flow, *client],
                            tmp_path / "no-ca.pcap")  # fmt: skip
        assert proc.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in proc.stderr, proc.stderr
    finally:
        cell.stop()
