"""Issue #15 finding 6: the capture readers never trust a length (crafted corrupt captures).

Every capture here is crafted: valid records built from the pcap / pcapng layouts with struct, then
one record whose length lies. What must happen is derived from the construction: the records before
the damage are read, the error names the damaged record's file offset, and every command that reads
captures exits non-zero with one line naming the file and that offset.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from celltap.pcap import CaptureFormatError, open_capture

ROOT = Path(__file__).resolve().parents[2]
EPOCH = 1_700_000_000


def _udp_frame(i: int) -> bytes:
    """An Ethernet / IPv4 / UDP frame with 8 payload bytes (checksums 0)."""
    udp = struct.pack(">HHHH", 40000 + i, 53, 16, 0) + b"%08d" % i
    ip = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    )
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + udp


def _shb() -> bytes:
    body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    return struct.pack("<II", 0x0A0D0D0A, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def _idb(options: bytes = b"") -> bytes:
    body = struct.pack("<HHI", 1, 0, 65535) + options
    return struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def _epb(frame: bytes, caplen: int | None = None, blen: int | None = None, tail: int | None = None) -> bytes:
    pad = b"\0" * (-len(frame) % 4)
    n = 32 + len(frame) + len(pad)
    body = struct.pack("<IIIII", 0, 0, 0, len(frame) if caplen is None else caplen, len(frame)) + frame + pad
    return (
        struct.pack("<II", 6, n if blen is None else blen)
        + body
        + struct.pack("<I", n if tail is None else tail)
    )


def _pcap_head() -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def _pcap_rec(frame: bytes, caplen: int | None = None) -> bytes:
    return struct.pack("<IIII", EPOCH, 0, len(frame) if caplen is None else caplen, len(frame)) + frame


def _good(n: int) -> list[bytes]:
    return [_udp_frame(i) for i in range(n)]


# (name, capture bytes, offset of the damage, frames readable before it)
def _cases() -> list[tuple[str, bytes, int, int]]:
    head = _shb() + _idb()
    good = b"".join(_epb(f) for f in _good(3))
    at = len(head) + len(good)
    frame = _udp_frame(9)
    cases = [
        # the case: a packet block claims 4 GB of packet data in a 60-byte block
        ("pcapng caplen 4 GB", head + good + _epb(frame, caplen=4_000_000_000), at, 3),
        ("pcapng caplen past its block", head + good + _epb(frame, caplen=len(frame) + 8), at, 3),
        ("pcapng trailing length differs", head + good + _epb(frame, tail=999), at, 3),
        ("pcapng block length 4 GB", head + good + _epb(frame, blen=0xFFFFFFF0), at, 3),
        ("pcapng block length not a multiple of 4", head + good + _epb(frame, blen=61), at, 3),
        (
            "pcapng interface block too short",
            head + good + struct.pack("<III", 1, 12, 12) + _epb(frame),
            at,
            3,
        ),
        (
            "pcapng packet of an undescribed interface",
            head + good + _epb(frame)[:8] + struct.pack("<I", 5) + _epb(frame)[12:],
            at,
            3,
        ),
        (
            "pcapng if_tsresol 10^-100",
            _shb() + _idb(struct.pack("<HHB3x", 9, 1, 100) + b"\0" * 4),
            len(_shb()),
            0,
        ),
    ]
    # found by fuzz/harness_pcap.py (an IndexError): an option whose length runs past its block
    cases.append(
        ("pcapng option past its block", _shb() + _idb(struct.pack("<HH", 9, 40) + b"\0" * 4), len(_shb()), 0)
    )
    pcap_good = _pcap_head() + b"".join(_pcap_rec(f) for f in _good(3))
    cases.append(("pcap caplen 4 GB", pcap_good + _pcap_rec(frame, caplen=4_000_000_000), len(pcap_good), 3))
    cases.append(("pcap truncated record", pcap_good + _pcap_rec(frame)[:-5], len(pcap_good), 3))
    return cases


CASES = _cases()


@pytest.mark.parametrize(("name", "data", "at", "before"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("via", ["file", "pipe"])
def test_reader_stops_at_the_damage_with_its_offset_crafted(tmp_path, name, data, at, before, via):
    frames: list[bytes] = []
    if via == "file":
        p = tmp_path / "bad.pcapng"
        p.write_bytes(data)
        src: object = str(p)
    else:
        src = io.BufferedReader(io.BytesIO(data))  # no fileno: the streaming path
    with pytest.raises(CaptureFormatError) as err:
        with open_capture(src) as cap:  # type: ignore[arg-type]
            for b in cap:
                frames += [b.frame(i) for i in range(len(b))]
    assert err.value.offset == at, str(err.value)
    assert f"at byte {at}" in str(err.value)
    assert frames == _good(before)
    if via == "file":
        assert err.value.path == src


def test_many_records_before_the_damage_are_all_read_crafted(tmp_path):
    """A run of equal records (the walker's speculative path) ending in a lying record."""
    good = [_udp_frame(1)] * 5000
    data = _pcap_head() + b"".join(_pcap_rec(f) for f in good)
    at = len(data)
    data += _pcap_rec(_udp_frame(2), caplen=1 << 30)
    got = 0
    with pytest.raises(CaptureFormatError) as err:
        with open_capture(io.BufferedReader(io.BytesIO(data))) as cap:
            for b in cap:
                got += len(b)
    assert got == 5000 and err.value.offset == at


# ---------------------------------------------------------------------- the commands
def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "celltap.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp,
    )


def _cell_config(tmp: Path) -> Path:
    p = tmp / "cell.yaml"
    p.write_text(f"global:\n  home: {tmp / 'home'}\ntcp_default:\n  if: default\n  proto: TCP\n")
    return p


COMMANDS = {
    "cell": lambda t, p: ["cell", "--config", str(_cell_config(t)), "--read", str(p)],
    "collector": lambda t, p: ["collector", "--read-pcap", str(p), "--json"],
    "incubator": lambda t, p: [
        "incubator",
        "--read",
        str(p),
        "--cells",
        "2",
        "--write-dir",
        str(t / "split"),
    ],
    "analyze": lambda t, p: ["analyze", str(p), "-o", str(t / "logs"), "--quiet"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_commands_exit_non_zero_naming_file_and_offset_crafted(tmp_path, command):
    _name, data, at, _before = CASES[0]  # the 4 GB caplen
    p = tmp_path / "corrupt.pcapng"
    p.write_bytes(data)
    proc = _run(COMMANDS[command](tmp_path, p), tmp_path)
    assert proc.returncode != 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    named = [ln for ln in lines if str(p) in ln and f"byte {at}" in ln]
    assert len(named) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_analyze_still_logs_the_frames_before_the_damage_crafted(tmp_path):
    """3 DNS-port UDP datagrams before the damage: conn.log has their flows (the reader gave them)."""
    _name, data, _at, before = CASES[0]
    p = tmp_path / "corrupt.pcapng"
    p.write_bytes(data)
    proc = _run(COMMANDS["analyze"](tmp_path, p), tmp_path)
    assert proc.returncode != 0
    conn = (tmp_path / "logs" / "conn.log").read_text().splitlines()
    ports = sorted(int(x.split('"id.orig_p":')[1].split(",")[0]) for x in conn if '"id.orig_p"' in x)
    assert ports == [40000 + i for i in range(before)]
