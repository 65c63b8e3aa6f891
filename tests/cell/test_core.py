"""The sans-IO core on small hand-made captures: idle timeouts with partial GC scans, midstream pickup,
`body: no`, binary UDP events, the hop limit, flow table limits."""

from __future__ import annotations

import random
from sys import getsizeof

from celltap.cell.abstractor import CHUNK_MEMORY, Abstractor
from celltap.cell.sftap_config import parse_config
from celltap.cell.tcp_reassembly import OOO_BASE, RUN_SLOT
from celltap.loadgen.packets import ACK, PSH, SYN
from celltap.loadgen.scenario import EPOCH_NS

from celltap.pcap.batch import FrameBatch
from tests.cell.captures import Conv, tcp_session, udp_frame
from tests.cell.wire import parse_binary, parse_text

SEC = 1_000_000_000


def _cell(extra_global: dict | None = None, **rules) -> Abstractor:
    doc = {
        "global": {"timeout": 30, **(extra_global or {})},
        "tcp_default": {"if": "default", "proto": "TCP"},
    }
    doc.update(rules)
    return Abstractor(parse_config(doc))


def _half_open(i: int) -> list[tuple[int, bytes]]:
    """SYN, SYN-ACK, ACK and one request, then silence."""
    c = Conv(bytes((10, 1, i // 250, i % 250 + 1)), bytes((192, 0, 2, 1)), 30000 + i, 80, 1000, 5000)
    c.put(c.frame(True, 1000, 0, SYN))
    c.put(c.frame(False, 5000, 1001, SYN | ACK))
    c.put(c.frame(True, 1001, 5001, ACK))
    c.put(c.frame(True, 1001, 5001, ACK | PSH, b"hello"))
    return c.frames


def test_idle_flows_time_out_in_bounded_scans():
    a = _cell({"gc_scan": 10})
    frames = [f for i in range(100) for f in _half_open(i)]
    a.process_frames(FrameBatch.from_frames([f for _, f in frames], [t for t, _ in frames]))
    assert len(a.table) == 100
    now = max(t for t, _ in frames) + 31 * SEC
    a.collect(now)
    assert 100 - len(a.table) <= 10, "one GC call checks at most gc_scan flows"
    for _ in range(30):
        a.collect(now)
    assert len(a.table) == 0
    evs = parse_text(b"".join(a.sinks["tcp/default"].parts))
    assert [e.reason for e in evs if e.event == "DESTROYED"] == ["TIMEOUT"] * 100
    assert a.flows_destroyed == {"TIMEOUT": 100}
    assert sum(e.event == "DATA" and e.data == b"hello" for e in evs) == 100


def test_midstream_is_a_config_choice():
    conv = tcp_session(random.Random(3), 1)
    mid = conv.frames[3:]  # no handshake
    batch = FrameBatch.from_frames([f for _, f in mid], [t for t, _ in mid])
    strict = _cell({"midstream": "no"})
    strict.process_frames(batch)
    strict.finish()
    assert strict.drops["tcp_no_syn"] == len(mid) and not strict.flows_created
    loose = _cell()  # midstream pickup is the default
    loose.process_frames(batch)
    loose.finish()
    evs = parse_text(b"".join(loose.sinks["tcp/default"].parts))
    data = b"".join(e.data for e in evs if e.event == "DATA" and e.sender == 2)
    assert data == bytes(conv.sent[1]) and evs[-1].reason == "NORMAL"
    (flow,) = loose.take_ended()
    # the first packet's sender (port 20001, not a server port) originates
    assert flow.orig == 1 and flow.history.startswith("D"), flow.history


def test_body_no_and_binary_udp():
    a = _cell(
        dns={"proto": "UDP", "port": "53", "if": "dns", "format": "binary", "body": "no"},
        other={"proto": "UDP", "up": "^PING", "if": "ping", "body": "no"},
    )
    s, d = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
    frames = [
        udp_frame(s, d, 5000, 53, b"Q" * 40),
        udp_frame(d, s, 53, 5000, b"R" * 90),
        udp_frame(s, d, 6000, 7000, b"PING me"),
    ]
    a.process_frames(FrameBatch.from_frames(frames, [EPOCH_NS] * 3))
    dns = parse_binary(b"".join(a.sinks["udp/dns"].parts), body=False)
    assert [(e.event, e.sender, e.match) for e in dns] == [("DATA", 1, "none"), ("DATA", 2, "none")]
    assert len(b"".join(a.sinks["udp/dns"].parts)) == 128  # two 64-byte headers, no bodies
    ping = b"".join(a.sinks["udp/ping"].parts)
    # len says 7, no body follows; a whole second prints as SF-TAP's lexical_cast<string>(1700000000.0)
    assert ping.endswith(b"match=up,len=7,time=1700000000\n")
    assert parse_text(ping, body=False)[0].flow[6] == "udp"


def test_flow_table_limit_is_counted():
    a = _cell({"max_flows": 5})
    frames = [f for i in range(8) for _, f in _half_open(i)[:1]]
    a.process_frames(FrameBatch.from_frames(frames, [EPOCH_NS] * len(frames)))
    assert len(a.table) == 5 and a.drops["flow_table_full"] == 3


def test_hop_limit():
    a = _cell({"hop_limit": 1})
    args = (4, 6, bytes((1, 1, 1, 1)), 1, bytes((2, 2, 2, 2)), 2)
    assert a.inject("CREATED", *args, 1, 0, b"", EPOCH_NS)
    assert not a.inject("CREATED", *args, 2, 0, b"", EPOCH_NS)
    assert a.loopback_drops == {"hop_limit": 1} and not a.drops


def test_out_of_order_cap_skips_the_hole():
    conv = tcp_session(random.Random(8), 2, frozenset({"loss"}))
    a = _cell({"ooo_limit": 1000})
    a.process_frames(FrameBatch.from_frames([f for _, f in conv.frames], [t for t, _ in conv.frames]))
    held_before_end = a.tcp_stats.ooo_bytes
    a.finish()
    evs = parse_text(b"".join(a.sinks["tcp/default"].parts))
    got = {1: b"", 2: b""}
    for e in evs:
        if e.event == "DATA":
            got[e.sender] += e.data
    # one 700-byte segment lost each way: the cap forced the skip before the end of the flow
    assert held_before_end <= 1000
    assert a.tcp_stats.gap_bytes == 1400 and a.tcp_stats.ooo_bytes == 0
    assert len(got[1]) == len(conv.sent[0]) - 700 and len(got[2]) == len(conv.sent[1]) - 700
    assert evs[-1].event == "DESTROYED" and evs[-1].reason == "NORMAL"


HTTP_RULE = {
    "up": r"^[-a-zA-Z]+ .+ HTTP/1\.(0\r?\n|1\r?\n([-a-zA-Z]+: .+\r?\n)+)",
    "down": r"^HTTP/1\.[01] [1-9][0-9]{2} .+\r?\n",
    "proto": "TCP",
    "if": "http",
}


def _upload(body_len: int, answer: bool) -> tuple[list[tuple[int, bytes]], bytes]:
    """A POST of `body_len` bytes sent whole before the server says anything, then its answer."""
    c = Conv(bytes((10, 7, 0, 1)), bytes((192, 0, 2, 80)), 41000, 80, 7000, 9000)
    req = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_len + b"u" * body_len
    c.put(c.frame(True, 7000, 0, SYN))
    c.put(c.frame(False, 9000, 7001, SYN | ACK))
    seq = 7001
    for i in range(0, len(req), 1400):
        c.put(c.frame(True, seq, 9001, ACK | PSH, req[i : i + 1400]))
        seq += len(req[i : i + 1400])
    if answer:
        c.put(c.frame(False, 9001, seq, ACK | PSH, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
    return c.frames, req


def _batch(frames: list[tuple[int, bytes]]) -> FrameBatch:
    return FrameBatch.from_frames([f for _, f in frames], [t for t, _ in frames])


def test_an_upload_larger_than_the_window_waits_for_the_answer():
    """A request + response rule still sees the response when the request overflows classify_bytes."""
    frames, req = _upload(20_000, answer=True)
    a = _cell(http=HTTP_RULE)
    a.process_frames(_batch(frames))
    a.finish()
    assert a.sinks["tcp/default"].parts == []
    http = parse_text(b"".join(a.sinks["tcp/http"].parts))
    assert [e.event for e in http] == ["CREATED", "DATA", "DATA", "DESTROYED"]
    assert (http[1].sender, http[1].match, http[1].data) == (1, "up", req)
    assert (http[2].sender, http[2].match) == (2, "down") and http[2].data.startswith(b"HTTP/1.1 201")


def test_a_silent_side_is_waited_for_only_up_to_classify_hold():
    """Past the hold the flow is classified on what it has (here: the default, `down` never seen)."""
    hold = 8192
    a = _cell({"classify_bytes": 1024, "classify_hold": hold}, http=HTTP_RULE)
    frames, req = _upload(50_000, answer=False)
    a.process_frames(_batch(frames))
    # classified while the connection is still open: its events are already out
    got = parse_text(b"".join(a.sinks["tcp/default"].parts))
    assert got[0].event == "CREATED" and all(e.event != "DESTROYED" for e in got)
    first = got[1]
    assert first.event == "DATA" and first.match == "none"
    # classify_hold is real memory: k held 1400-byte segments take 1400 k bytes, k chunks' bookkeeping
    # and the classifier's 1024-byte head copy; the flow goes on with the first k that reaches the hold
    k = next(k for k in range(1, 99) if k * (1400 + CHUNK_MEMORY) + 1024 >= hold)
    assert len(first.data) == 1400 * k, "held no more than classify_hold of real memory"
    a.finish()
    every = parse_text(b"".join(a.sinks["tcp/default"].parts))
    assert b"".join(e.data for e in every if e.event == "DATA") == req
    assert a.sinks["tcp/http"].parts == []


def _holes(n: int) -> list[tuple[int, bytes]]:
    """`n` connections that each lose their first 1000 client bytes and then send 2000 more."""
    frames: list[tuple[int, bytes]] = []
    for i in range(n):
        c = Conv(bytes((10, 8, 0, i + 1)), bytes((192, 0, 2, 9)), 42000 + i, 80, 100, 900)
        c.put(c.frame(True, 100, 0, SYN))
        c.put(c.frame(False, 900, 101, SYN | ACK))
        c.put(c.frame(True, 1101, 901, ACK | PSH, b"z" * 2000))  # bytes 101..1100 never arrive
        frames += c.frames
    return frames


def test_all_flows_out_of_order_bytes_are_capped_by_ooo_memory():
    """Each flow under its own cap, together over ooo_memory: the flow that crosses it skips its hole."""
    # ooo_memory caps real memory: a flow's buffer is its 2000-byte run (a bytearray) plus bookkeeping
    per_flow = getsizeof(bytearray(2000)) + RUN_SLOT + OOO_BASE
    a = _cell({"ooo_limit": 1 << 20, "ooo_memory": 2 * per_flow + per_flow // 2})
    a.process_frames(_batch(_holes(3)))
    st = a.tcp_stats
    assert st.cap_skips == {"flow": 0, "memory": 1}
    assert st.ooo_bytes == 4000 and st.gap_bytes == 1000  # two flows still wait, one went on
    assert st.ooo_mem == 2 * per_flow
    delivered = parse_text(b"".join(a.sinks["tcp/default"].parts))
    assert [len(e.data) for e in delivered if e.event == "DATA"] == []  # held for classification
    a.finish()
    assert st.ooo_bytes == 0 and st.gap_bytes == 3000
    evs = parse_text(b"".join(a.sinks["tcp/default"].parts))
    assert sorted(len(e.data) for e in evs if e.event == "DATA") == [2000, 2000, 2000]


def test_all_flows_held_bytes_are_capped_by_classify_memory():
    """Silent servers everywhere: past classify_memory, the flow that crosses it is classified now."""
    frames: list[tuple[int, bytes]] = []
    for i in range(4):
        c = Conv(bytes((10, 9, 0, i + 1)), bytes((192, 0, 2, 80)), 43000 + i, 80, 100, 900)
        c.put(c.frame(True, 100, 0, SYN))
        c.put(c.frame(False, 900, 101, SYN | ACK))
        c.put(c.frame(True, 101, 901, ACK | PSH, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"q" * 1400))
        frames += c.frames
    # classify_memory caps real memory: per flow the 1427 bytes held, the head copy the classifier
    # reads (counted as another 1427), and the chunk's bookkeeping (CHUNK_MEMORY)
    per_flow = 2 * 1427 + CHUNK_MEMORY
    a = _cell({"classify_memory": 2 * per_flow + 100}, http=HTTP_RULE)
    a.process_frames(_batch(frames))
    assert a.classified_early == {"hold": 0, "memory": 2}  # the 3rd and the 4th flow crossed it
    assert a.held_total == 2 * 1427  # the first two still wait for their server
    assert a.held_mem == 2 * per_flow
    a.finish()
    assert a.held_total == 0 and a.held_mem == 0
    evs = parse_text(b"".join(a.sinks["tcp/default"].parts))
    assert sum(e.event == "CREATED" for e in evs) == 4
