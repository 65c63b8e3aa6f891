"""pcapng with several interfaces of different link types (crafted): each frame decodes by its own.

The section has an Ethernet interface (tunnels, PPPoE, MPLS), a BSD loopback (NULL) and an FDDI
interface, with their packets interleaved; the reader splits runs of packets by interface, so
frames are matched to tshark's rows by their (unique) timestamps.
"""

from __future__ import annotations

import struct
from pathlib import Path

from celltap.decode import Reason, decode_batch, decode_frame
from celltap.pcap import LINKTYPE_ETHERNET, LINKTYPE_FDDI, LINKTYPE_NULL, read_all
from tests.conftest import require_tool
from tests.core import frames as fr
from tests.core.test_decode_linktypes_tshark import _check, _expected_stop, _innermost_non_ip, tshark_rows


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng(path: Path, interfaces: list[int], packets: list[tuple[int, int, bytes]]) -> None:
    """Section header, one IDB per link type, EPBs of (interface, ts_us, frame)."""
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for lt in interfaces:
        out += _block(1, struct.pack("<HHI", lt, 0, 262144))
    for ifx, ts, frame in packets:
        out += _block(
            6, struct.pack("<IIIII", ifx, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame
        )
    path.write_bytes(out)


def test_interleaved_interfaces_equal_tshark(tmp_path: Path) -> None:
    tshark = require_tool("tshark")
    groups = [
        (LINKTYPE_ETHERNET, fr.encap_frames()),
        (LINKTYPE_NULL, fr.null_frames(False) + fr.null_frames(True, 30)),
        (LINKTYPE_FDDI, fr.fddi_frames()),
    ]
    packets = []
    longest = max(len(f) for _, f in groups)
    for k in range(longest):  # round robin: interfaces alternate packet by packet
        for ifx, (_lt, frames) in enumerate(groups):
            if k < len(frames):
                packets.append((ifx, 1000 * (len(packets) + 1), frames[k]))
    pcap = tmp_path / "mixed.pcapng"
    write_pcapng(pcap, [lt for lt, _ in groups], packets)
    rows = tshark_rows(tshark, pcap)
    assert len(rows) == len(packets)
    batches = read_all(str(pcap))
    assert {b.linktype for b in batches} == {lt for lt, _ in groups}
    by_ts = {}
    for b in batches:
        cols = decode_batch(b)
        for i in range(len(b)):
            by_ts[int(b.ts_ns[i])] = (cols, i)
    assert len(by_ts) == len(packets)
    ok = 0
    for (ifx, ts, frame), row in zip(packets, rows, strict=True):
        cols, i = by_ts[ts * 1000]
        assert cols.batch.linktype == groups[ifx][0] and cols.batch.frame(i) == frame
        if _innermost_non_ip(row["protos"]) or _expected_stop(row, True) < 0:
            assert int(cols.status[i]) == Reason.NON_IP, row["protos"]
        else:
            _check(cols, i, row, True)
            ok += 1
        assert int(decode_frame(frame, groups[ifx][0]).status) == int(cols.status[i])
    assert ok > len(packets) // 2


def test_unknown_interface_linktype_is_counted(tmp_path: Path) -> None:
    """An interface of a link type we do not decode: its frames are counted, the others decode."""
    pcap = tmp_path / "usb.pcapng"
    eth = fr.sample_frames()[0]
    write_pcapng(pcap, [LINKTYPE_ETHERNET, 220], [(0, 1, eth), (1, 2, b"\x01" * 64), (0, 3, eth)])
    statuses = {}
    for b in read_all(str(pcap)):
        statuses[b.linktype] = decode_batch(b).status.tolist()
    assert statuses == {LINKTYPE_ETHERNET: [Reason.OK, Reason.OK], 220: [Reason.UNSUPPORTED_LINKTYPE]}
