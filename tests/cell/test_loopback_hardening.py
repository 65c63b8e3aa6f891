"""Issue #15 finding 5: bad L7 loopback input costs only itself, counted by reason (crafted headers).

The headers are crafted by hand (no tool writes them); each test derives what must be counted from the
headers it sends. The live tests run the real `celltap cell` process: on main a bad `ip1`, a negative
hop or a port of 70000 ended it, and `len=4000000000` made it buffer without bound.
"""

from __future__ import annotations

import socket
import struct

import pytest
from celltap.cell.loopback_input import MAX_HEADER_LINE, LoopbackParser

from tests.cell.runner import LiveCell, RawReader, wait_for
from tests.cell.test_live import _config, _lb_events
from tests.cell.wire import BIN, parse_text

GOOD = "ip1=10.9.0.1,ip2=10.9.0.2,port1=40000,port2=8000,hop=0,l3=ipv4,l4=tcp"
BAD_TEXT = [
    # (header line, the reason it must be counted under)
    ("ip1=,ip2=10.9.0.2,port1=1,port2=2,hop=0,l3=ipv4,l4=tcp,event=CREATED,time=1", "bad_address"),
    ("ip1=banana,ip2=10.9.0.2,port1=1,port2=2,hop=0,l3=ipv4,l4=tcp,event=CREATED,time=1", "bad_address"),
    ("ip1=::1,ip2=10.9.0.2,port1=1,port2=2,hop=0,l3=ipv4,l4=tcp,event=CREATED,time=1", "bad_address"),
    ("ip1=10.0.0.1,ip2=10.9.0.2,port1=1,port2=2,hop=-5,l3=ipv4,l4=tcp,event=CREATED,time=1", "bad_hop"),
    ("ip1=10.0.0.1,ip2=10.9.0.2,port1=1,port2=2,hop=255,l3=ipv4,l4=tcp,event=CREATED,time=1", "bad_hop"),
    ("ip1=10.0.0.1,ip2=10.9.0.2,port1=70000,port2=2,hop=0,l3=ipv4,l4=tcp,event=CREATED,time=1", "bad_port"),
    ("ip1=10.0.0.1,ip2=10.9.0.2,port1=-1,port2=2,hop=0,l3=ipv4,l4=tcp,event=CREATED,time=1", "bad_port"),
    ("ip1=10.0.0.1,ip2=10.9.0.2,port1=1,port2=2,hop=0,l3=ipx,l4=tcp,event=CREATED,time=1", "bad_l3l4"),
    (
        "ip1=10.0.0.1,ip2=10.9.0.2,port1=1,port2=2,hop=0,l3=ipv4,l4=tcp,event=DATA,from=1,len=4e9,time=1",
        "bad_len",
    ),
    ("\x00\xff garbage without fields", "bad_header"),
    ("ip1=10.0.0.1,event=EXPLODED", "bad_header"),
    (
        "ip1=10.0.0.1,ip2=10.9.0.2,port1=1,port2=2,hop=0,l3=ipv4,l4=tcp,event=DATA,from=7,len=0,time=1",
        "bad_header",
    ),
]


def _counts(parser: LoopbackParser) -> dict[str, int]:
    return dict(parser.drops)


@pytest.mark.parametrize(("line", "reason"), BAD_TEXT)
def test_each_bad_text_header_costs_only_itself(line, reason):
    p = LoopbackParser("text", max_len=1 << 20)
    good = f"{GOOD},event=CREATED,time=1.000000\n".encode()
    evs = p.feed(good + line.encode("latin-1") + b"\n" + good)
    assert _counts(p) == {reason: 1}
    assert [e.event for e in evs] == ["CREATED", "CREATED"]  # the good events around it went through
    assert evs[0].hop == 1 and evs[0].p1 == 40000 and evs[0].a1 == bytes((10, 9, 0, 1))


def test_a_huge_len_is_skipped_without_buffering():
    """len above loopback_max_len: the body is discarded as it arrives (the buffer stays small)."""
    p = LoopbackParser("text", max_len=1000)
    huge = 4_000_000_000
    p.feed(f"{GOOD},event=DATA,from=1,match=none,len={huge},time=1\n".encode())
    sent = 0
    chunk = b"z" * (1 << 20)
    for _ in range(64):
        assert p.feed(chunk) == []
        sent += len(chunk)
        assert len(p._buf) == 0  # nothing of the skipped body is held
    assert _counts(p) == {"len_too_big": 1}
    assert p._skip == huge - sent


def test_a_len_just_over_the_cap_keeps_the_stream_framed():
    p = LoopbackParser("text", max_len=10)
    body = b"0123456789A"  # 11 bytes, one over
    evs = p.feed(
        f"{GOOD},event=DATA,from=1,match=none,len=11,time=1\n".encode()
        + body
        + f"{GOOD},event=DATA,from=2,match=none,len=3,time=1\n".encode()
        + b"abc"
    )
    assert _counts(p) == {"len_too_big": 1}
    assert [(e.sender, e.data) for e in evs] == [(2, b"abc")]


def test_an_overlong_line_is_discarded_to_its_newline():
    p = LoopbackParser("text")
    evs = p.feed(b"x" * (MAX_HEADER_LINE + 10))
    evs += p.feed(b"y" * 100 + b"\n" + f"{GOOD},event=CREATED,time=1\n".encode())
    assert _counts(p) == {"header_too_long": 1}
    assert [e.event for e in evs] == ["CREATED"]


def test_a_bad_time_keeps_the_event_with_the_cells_clock():
    p = LoopbackParser("text")
    evs = p.feed(f"{GOOD},event=CREATED,time=nan\n{GOOD},event=CREATED,time=-3\n".encode())
    assert _counts(p) == {"bad_time": 2}
    assert [e.time_ns for e in evs] == [0, 0]


def _bin(
    event: int, frm: int, body: bytes, hop: int = 0, l3: int = 0, l4: int = 6, length: int | None = None
):
    a1, a2 = bytes((10, 9, 0, 1)).ljust(16, b"\0"), bytes((10, 9, 0, 2)).ljust(16, b"\0")
    n = len(body) if length is None else length
    head = BIN.pack(
        a1,
        a2,
        1,
        0,
        struct.pack(">H", 40000),
        struct.pack(">H", 8000),
        event,
        frm,
        n,
        hop,
        l3,
        l4,
        2,
        0,
        bytes(3),
    )
    return head + body


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_bin(9, 3, b""), "bad_header"),  # unknown event code
        (_bin(2, 5, b"abc"), "bad_header"),  # DATA from neither endpoint: its 3 bytes are skipped
        (_bin(2, 0, b"abcd", l3=7), "bad_l3l4"),  # unknown l3: its body is skipped
        (_bin(0, 3, b"", l4=200), "bad_l3l4"),
        (_bin(0, 3, b"", hop=255), "bad_hop"),
    ],
)
def test_each_bad_binary_header_costs_only_itself(frame, reason):
    p = LoopbackParser("binary")
    good = _bin(0, 3, b"")
    evs = p.feed(good + frame + good)
    assert _counts(p) == {reason: 1}
    assert [e.event for e in evs] == ["CREATED", "CREATED"]


def test_binary_stream_split_anywhere_gives_the_same_events():
    stream = (
        _bin(0, 3, b"") + _bin(2, 0, b"hello") + _bin(2, 5, b"xyz") + _bin(2, 1, b"world") + _bin(1, 3, b"")
    )
    whole = LoopbackParser("binary").feed(stream)
    for cut in range(1, len(stream)):
        p = LoopbackParser("binary")
        assert p.feed(stream[:cut]) + p.feed(stream[cut:]) == whole
    assert [e.data for e in whole] == [b"", b"hello", b"world", b""]


# ---------------------------------------------------------------------- the real cell process
@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_bad_loopback_input_never_ends_the_cell(tmp_path, fmt):
    """Every bad header in one connection, then a good re-injected flow: the cell goes on, the flow
    comes out, each bad header is counted under its reason."""
    home = tmp_path / "home"
    cfg = _config(tmp_path, home, "\n  loopback_max_len: 65536")
    cfg.write_text(cfg.read_text().replace("format: text", f"format: {fmt}", 1))
    cell = LiveCell(cfg, home)
    try:
        cell.wait_socket("loopback7")
        readers = {f"tcp/http{i}": RawReader(home / f"tcp/http{i}") for i in range(4)}
        for r in readers.values():
            r.start()
            assert r.connected.wait(10)
        lb = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lb.connect(str(home / "loopback7"))
        if fmt == "text":
            expected = {}
            for line, reason in BAD_TEXT:
                lb.sendall(line.encode("latin-1") + b"\n")
                expected[reason] = expected.get(reason, 0) + 1
            lb.sendall(f"{GOOD},event=DATA,from=1,match=none,len=4000000000,time=1\n".encode())
            lb.sendall(b"q" * 100_000)  # part of the announced body: skipped, never buffered
            expected["len_too_big"] = 1
            # the rest of the announced body would follow; a new connection carries the good flow
            lb2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lb2.connect(str(home / "loopback7"))
            lb2.sendall(_lb_events(0, 1, fmt))
        else:
            bad = [
                (_bin(9, 3, b""), "bad_header"),
                (_bin(2, 5, b"abc"), "bad_header"),
                (_bin(2, 0, b"x", l3=7), "bad_l3l4"),
            ]
            bad += [(_bin(0, 3, b"", hop=255), "bad_hop"), (_bin(0, 3, b"", l4=200), "bad_l3l4")]
            expected = {}
            for frame, reason in bad:
                lb.sendall(frame)
                expected[reason] = expected.get(reason, 0) + 1
            lb.sendall(_lb_events(0, 1, fmt))
            lb2 = None

        def got() -> list:
            return [e for r in readers.values() for e in parse_text(bytes(r.data))]

        wait_for(lambda: any(e.event == "DESTROYED" for e in got()), what="re-injected flow")
        evs = got()
        assert [e.event for e in evs] == ["CREATED", "DATA", "DATA", "DESTROYED"]
        assert evs[1].data.startswith(b"GET /inner")

        def counted() -> dict[str, float]:
            m = cell.metrics()
            pre = "celltap_cell_loopback_dropped_events_total{"
            return {k.split('reason="')[1].split('"')[0]: v for k, v in m.items() if k.startswith(pre) and v}

        wait_for(lambda: counted() == expected, what=f"drops {expected}")
        assert cell.proc.poll() is None
        lb.close()
        if lb2 is not None:
            lb2.close()
    finally:
        code, err = cell.stop()
    assert code == 0, err
