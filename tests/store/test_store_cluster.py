"""Three live cells behind the incubator keep their packets; any flow comes back cluster-wide by uid.

Real traffic (nginx, unbound, curl, wget, dig in a namespace, captured by tcpdump) is replayed by a
real incubator (mirror mode, `capture: pcap:FILE`) to three real cells over VXLAN; the cells find
each other through a file registry, as in a deployment, and register their store endpoints there.
The uids are the ones the cells themselves export in their IPFIX records (received by a real
`celltap collector`), so every retrieval is joined with a record the cluster produced. The
expected frames are tshark's extraction from the original capture by the record's 5-tuple. Frames
are compared byte for byte and by wire length; times are not: the cells stamp VXLAN frames with
their receive time (today's time contract across the incubator -> cell hop).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
import yaml

from celltap.launcher.ports import free_port, free_udp_port
from tests.cluster.procs import Proc, metric, wait_for
from tests.conftest import require_tool
from tests.ipfix.oracles import CollectorProcess
from tests.store.oracle import CELLTAP, celltap_pcap, five_tuple_filter, read_pcap, tshark_extract

CLUSTER = "st"
PROTO = {6: "tcp", 17: "udp"}


def _endpoints(rec: dict) -> tuple[str, int, str, int]:
    src = rec.get("sourceIPv4Address") or rec.get("sourceIPv6Address")
    dst = rec.get("destinationIPv4Address") or rec.get("destinationIPv6Address")
    return (
        str(ipaddress.ip_address(src)),
        rec["sourceTransportPort"],
        str(ipaddress.ip_address(dst)),
        rec["destinationTransportPort"],
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Capture, registry, collector, three cells with stores, one incubator replaying the capture."""
    require_tool("tshark")
    from tests.cluster.real_capture import make_capture

    tmp = tmp_path_factory.mktemp("storecluster")
    cap = make_capture(tmp)
    assert all(rc == 0 for _, rc in cap.client_runs), cap.client_runs
    frames = len(read_pcap(cap.pcap)[1])
    registry = f"file://{tmp}/registry"
    token = tmp / "token"
    token.write_text(os.urandom(16).hex() + "\n")
    os.chmod(token, 0o600)
    ipfix = free_udp_port()
    collector = CollectorProcess(["--listen", f"udp://127.0.0.1:{ipfix}", "--json"])
    procs: list[Proc] = []
    cells = []
    try:
        for i in range(3):
            cfg = {
                "global": {"home": str(tmp / f"home{i}"), "timeout": 3, "udp_timeout": 3},
                "tcp_default": {"if": "default"},
                "udp_default": {"if": "default"},
                "store": {"dir": str(tmp / f"store{i}"), "file_bytes": 65536, "listen": "127.0.0.1:0",
                          "token_file": str(token)},
            }  # fmt: skip
            (tmp / f"cell{i}.yaml").write_text(yaml.safe_dump(cfg))
            mport = free_port()
            args = [*CELLTAP, "cell", "--config", str(tmp / f"cell{i}.yaml"), "--cell-id", str(i),
                    "--input", f"vxlan://127.0.0.1:{free_udp_port()}", "--registry", registry,
                    "--cluster", CLUSTER, "--ipfix", f"udp://127.0.0.1:{ipfix}",
                    "--metrics-port", str(mport)]  # fmt: skip
            procs.append(Proc(f"cell{i}", args, tmp))
            cells.append(f"http://127.0.0.1:{mport}/metrics")

        def registered() -> bool:
            from celltap.cell.store.cli import cell_stores

            return len(cell_stores(registry, CLUSTER)) == 3

        wait_for(registered, 60, "three cells with stores in the registry")
        inc = {"mode": "mirror", "capture": f"pcap:{cap.pcap}", "metrics_port": free_port(),
               "registry": {"url": registry, "cluster": CLUSTER, "id": "inc-0"}}  # fmt: skip
        (tmp / "incubator.yaml").write_text(yaml.safe_dump(inc))
        procs.append(Proc("incubator", [*CELLTAP, "incubator", "--config", str(tmp / "incubator.yaml")], tmp))

        def total(name: str) -> float:
            return sum(metric(u, name) for u in cells)

        wait_for(
            lambda: total("celltap_cell_packets_total") == frames, 60, f"the cells to receive {frames} frames"
        )
        wait_for(
            lambda: (
                total("celltap_cell_flows_live") == 0
                and total("celltap_cell_ipfix_records_total") == total("celltap_cell_flows_created_total")
            ),
            60,
            "every flow to end and be exported",
        )
        shares = [metric(u, "celltap_cell_store_written_frames_total") for u in cells]
        records, _, _ = collector.stop()
        collector = None
        yield {"tmp": tmp, "pcap": cap.pcap, "registry": registry, "token": token, "records": records,
               "shares": shares, "frames": frames}  # fmt: skip
    finally:
        if collector is not None:
            collector.stop()
        for p in reversed(procs):
            p.stop()


def test_every_cell_stored_its_share(cluster: dict) -> None:
    """The incubator spread the flows; the three stores together hold every frame once."""
    assert sum(cluster["shares"]) == cluster["frames"]
    assert sum(1 for s in cluster["shares"] if s > 0) >= 2, cluster["shares"]


def test_uid_from_the_cells_records_retrieves_the_flow_cluster_wide(cluster: dict, tmp_path: Path) -> None:
    """Each IPFIX record's celltapUid, asked of the whole cluster, gives tshark's frames of its 5-tuple."""
    recs = [r for r in cluster["records"] if r.get("protocolIdentifier") in PROTO and r.get("celltapUid")]
    assert len(recs) >= 12, len(recs)
    checked = 0
    for i, rec in enumerate(recs):
        src, sport, dst, dport = _endpoints(rec)
        proto = PROTO[rec["protocolIdentifier"]]
        out = tmp_path / f"uid{i}.pcap"
        args = [
            "--registry",
            cluster["registry"],
            "--cluster",
            CLUSTER,
            "--token-file",
            str(cluster["token"]),
        ]
        proc = celltap_pcap([*args, "--uid", rec["celltapUid"]], out)
        assert proc.returncode == 0, proc.stderr
        got = read_pcap(out)[1]
        want = tshark_extract(
            cluster["pcap"], five_tuple_filter(proto, src, sport, dst, dport), tmp_path / f"e{i}"
        )
        assert [(w, b) for _, w, b in got] == [(w, b) for _, w, b in want], rec["celltapUid"]
        assert [t for t, _, _ in got] == sorted(t for t, _, _ in got)
        packets = rec["packetDeltaCount"] + rec.get("reversePacketDeltaCount", 0)
        assert len(got) == packets
        checked += 1
    assert checked == len(recs)


def test_five_tuple_cluster_wide_and_bad_token(cluster: dict, tmp_path: Path) -> None:
    """--flow asks every cell too; a wrong token is refused by every cell and said so (exit 1)."""
    rec = max((r for r in cluster["records"] if r.get("protocolIdentifier") == 6),
              key=lambda r: r["packetDeltaCount"])  # fmt: skip
    src, sport, dst, dport = _endpoints(rec)
    args = ["--registry", cluster["registry"], "--cluster", CLUSTER, "--token-file", str(cluster["token"])]
    out = tmp_path / "flow.pcap"
    proc = celltap_pcap([*args, "--flow", f"tcp {dst}:{dport} {src}:{sport}"], out)
    assert proc.returncode == 0, proc.stderr
    want = tshark_extract(
        cluster["pcap"], five_tuple_filter("tcp", src, sport, dst, dport), tmp_path / "e.pcap"
    )
    assert [(w, b) for _, w, b in read_pcap(out)[1]] == [(w, b) for _, w, b in want]
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token\n")
    proc = celltap_pcap(["--registry", cluster["registry"], "--cluster", CLUSTER, "--token-file", str(bad),
                         "--flow", f"tcp {dst}:{dport} {src}:{sport}"], tmp_path / "x.pcap")  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("HTTP 401") == 3, proc.stderr
    assert read_pcap(tmp_path / "x.pcap")[1] == []
