"""A real cell process stores a real capture; flows come back by uid and 5-tuple equal to tshark's.

The capture is nginx / unbound answering curl, wget and dig in a namespace, taken by tcpdump
(tests/cluster/real_capture.py). `celltap cell --read` stores it with 64 KiB files, so the bigger
transfers span many files and indexes. The uids are conn.log's, written by `celltap analyze` on the
same capture (every record of it is retrieved: the join is to real records); the expectation for
each is what tshark extracts from the original with the record's 5-tuple as display filter, frame
for frame with capture time and wire length, read back with an independent pcap reader.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from celltap.defaults import default_file
from tests.conftest import require_tool
from tests.store.oracle import CELLTAP, celltap_pcap, five_tuple_filter, read_pcap, tshark_extract


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The real capture, its conn.log, and a store a real cell process wrote from it."""
    require_tool("tshark")
    from tests.cluster.real_capture import make_capture

    tmp = tmp_path_factory.mktemp("store")
    cap = make_capture(tmp)
    assert all(rc == 0 for _, rc in cap.client_runs), cap.client_runs
    store = tmp / "store"
    cell = subprocess.run(
        [*CELLTAP, "cell", "--config", str(default_file("sftap.yaml")), "--home", str(tmp / "home"),
         "--read", str(cap.pcap), "--store", str(store), "--store-file-bytes", "65536"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cell.returncode == 0, cell.stderr
    logs = tmp / "logs"
    ana = subprocess.run([*CELLTAP, "analyze", "-r", str(cap.pcap), "-o", str(logs), "--quiet"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ana.returncode == 0, ana.stderr
    conns = [json.loads(line) for line in (logs / "conn.log").read_text().splitlines()]
    return {"tmp": tmp, "pcap": cap.pcap, "store": store, "conns": conns}


def _expected(stored: dict, rec: dict, out: Path) -> list:
    flt = five_tuple_filter(
        rec["proto"], rec["id.orig_h"], rec["id.orig_p"], rec["id.resp_h"], rec["id.resp_p"]
    )
    return tshark_extract(stored["pcap"], flt, out)


def test_store_rotates_and_indexes_every_file(stored: dict) -> None:
    """The capture is spread over several files, each with its index; the files hold every frame."""
    files = sorted(stored["store"].glob("cell0-*.pcap"))
    assert len(files) >= 5, files
    assert all(f.with_suffix(".idx").exists() for f in files)
    stored_frames = [fr for f in files for fr in read_pcap(f)[1]]
    _, orig = read_pcap(stored["pcap"])
    assert stored_frames == orig  # every frame, in order, with its capture time (written at ns)
    assert all(f.stat().st_size <= 65536 for f in files)


def test_every_conn_log_uid_retrieves_tsharks_frames(stored: dict, tmp_path: Path) -> None:
    """Each conn.log record's uid gives exactly the frames tshark filters by its 5-tuple."""
    conns = [c for c in stored["conns"] if c["proto"] in ("tcp", "udp")]
    assert len(conns) >= 12, len(conns)  # one per client run (13)
    multi_file = 0
    for i, rec in enumerate(conns):
        out = tmp_path / f"uid{i}.pcap"
        proc = celltap_pcap(["--store", str(stored["store"]), "--uid", rec["uid"]], out)
        assert proc.returncode == 0, proc.stderr
        expected = _expected(stored, rec, tmp_path / f"exp{i}.pcap")
        got = read_pcap(out)[1]
        assert got == expected, (
            f"{rec['uid']} {rec['id.orig_h']}:{rec['id.orig_p']}: {len(got)} vs {len(expected)}"
        )
        assert len(got) == rec["orig_pkts"] + rec["resp_pkts"]
        multi_file += len(got) > 200
    assert multi_file >= 1  # the 600 kB download crosses several 64 KiB files


def test_five_tuple_and_time_range(stored: dict, tmp_path: Path) -> None:
    """--flow in either order gives the same frames; --from/--to keep the frames inside the range."""
    rec = max((c for c in stored["conns"] if c["proto"] == "tcp"), key=lambda c: c["resp_pkts"])
    expected = _expected(stored, rec, tmp_path / "exp.pcap")
    a, b = f"{rec['id.orig_h']}:{rec['id.orig_p']}", f"{rec['id.resp_h']}:{rec['id.resp_p']}"
    for i, flow in enumerate((f"tcp {a} {b}", f"TCP {b} {a}")):
        out = tmp_path / f"flow{i}.pcap"
        proc = celltap_pcap(["--store", str(stored["store"]), "--flow", flow], out)
        assert proc.returncode == 0, proc.stderr
        assert read_pcap(out)[1] == expected
    lo, hi = expected[len(expected) // 3][0], expected[2 * len(expected) // 3][0]
    out = tmp_path / "range.pcap"
    span = ["--from", f"{lo // 10**9}.{lo % 10**9:09d}", "--to", f"{hi // 10**9}.{hi % 10**9:09d}"]
    proc = celltap_pcap(["--store", str(stored["store"]), "--uid", rec["uid"], *span], out)
    assert proc.returncode == 0, proc.stderr
    want = [f for f in expected if lo <= f[0] <= hi]
    assert 0 < len(want) < len(expected)
    assert read_pcap(out)[1] == want


def test_lost_index_is_rebuilt_from_the_file(stored: dict, tmp_path: Path) -> None:
    """A file whose index is missing (crash, full disk) or damaged is indexed on the fly: same answer."""
    rec = max((c for c in stored["conns"] if c["proto"] == "tcp"), key=lambda c: c["resp_pkts"])
    copy = tmp_path / "store"
    copy.mkdir()
    for f in stored["store"].iterdir():
        if not (f.suffix == ".idx" and f.stem.endswith(("1", "3"))):
            (copy / f.name).write_bytes(f.read_bytes())
        if f.suffix == ".idx" and f.stem.endswith("5"):
            (copy / f.name).write_bytes(f.read_bytes()[:300])  # a truncated zip
        if f.suffix == ".idx" and f.stem.endswith("6"):
            (copy / f.name).write_bytes(b"not an index at all" * 10)
    assert len(list(copy.glob("*.idx"))) < len(list(copy.glob("*.pcap")))
    out = tmp_path / "out.pcap"
    proc = celltap_pcap(["--store", str(copy), "--uid", rec["uid"]], out)
    assert proc.returncode == 0, proc.stderr
    assert read_pcap(out)[1] == _expected(stored, rec, tmp_path / "exp.pcap")


def test_user_errors_are_one_line(stored: dict, tmp_path: Path) -> None:
    """A bad uid, a bad 5-tuple or a missing directory: one line naming it, exit 2."""
    for args, word in (
        (["--store", str(stored["store"]), "--uid", "Cnot-a-uid!!"], "--uid"),
        (["--store", str(stored["store"]), "--flow", "tcp 10.0.0.1 10.0.0.2:80 x"], "--flow"),
        (["--store", str(tmp_path / "nothing"), "--flow", "udp 10.0.0.1:1 10.0.0.2:2"], "--store"),
    ):
        proc = celltap_pcap(args, tmp_path / "x.pcap")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and word in proc.stderr and "Traceback" not in proc.stderr
