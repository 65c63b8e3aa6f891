"""The per-flow path for connections that open and close inside one batch.

`whole_connections` is checked on hand-made segment lists (what qualifies and what must not), and
the abstractor with the path on is compared with the same abstractor with it off (the per-packet
path, which the tshark tests validate) over every TCP-bearing loadgen scenario, in the text, binary
and `body: no` formats, with batch sizes that cut connections at batch edges: every flow's events
and every flow record must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from celltap.cell.abstractor import Abstractor
from celltap.cell.sftap_config import parse_config
from celltap.cell.whole_connections import whole_connections
from celltap.loadgen.packets import ACK, FIN, PSH, RST, SYN
from celltap.loadgen.scenario import get

from celltap.pcap.batch import FrameBatch
from tests.cell.captures import Conv
from tests.cell.wire import parse_binary, parse_text

M32 = 0xFFFFFFFF


def _segments(rows: list[tuple[int, bool, int, int, int]]) -> tuple[np.ndarray, ...]:
    """(flow hash, from server, flags, seq, payload length) rows -> the arrays whole_connections takes."""
    h = np.array([r[0] for r in rows], np.uint64)
    sw = np.array([r[1] for r in rows], bool)
    l4 = np.full(len(rows), 6, np.uint8)
    fl = np.array([r[2] for r in rows], np.uint8)
    seq = np.array([r[3] & M32 for r in rows], np.uint32)
    pl = np.array([r[4] for r in rows], np.int64)
    return h, sw, l4, fl, seq, pl


def _clean(h: int, c_isn: int = 1000, s_isn: int = 5000) -> list[tuple[int, bool, int, int, int]]:
    return [
        (h, False, SYN, c_isn, 0),
        (h, True, SYN | ACK, s_isn, 0),
        (h, False, ACK | PSH, c_isn + 1, 100),
        (h, True, ACK | PSH, s_isn + 1, 50),
        (h, False, ACK | PSH, c_isn + 101, 10),
        (h, False, FIN | ACK, c_isn + 111, 0),
        (h, True, FIN | ACK, s_isn + 51, 0),
    ]


def _selected(rows) -> list[int]:
    starts, _ends, _close, _codes = whole_connections(*_segments(rows))
    return [rows[i][0] for i in starts.tolist()]


def test_clean_connections_qualify_including_sequence_wrap():
    rows = _clean(1) + _clean(2, c_isn=M32 - 20, s_isn=M32)  # both sides wrap
    assert _selected(rows) == [1, 2]
    _starts, ends, close, _codes = whole_connections(*_segments(rows))
    assert ends.tolist() == [7, 14] and close.tolist() == [6, 13]


@pytest.mark.parametrize(
    "fault",
    [
        "retransmission",
        "gap",
        "rst",
        "data_after_own_fin",
        "fin_with_data",
        "no_synack",
        "second_syn",
        "open",
    ],
)
def test_anything_unusual_is_left_to_the_per_packet_path(fault):
    rows = _clean(7)
    if fault == "retransmission":
        rows.insert(3, (7, False, ACK | PSH, 1001, 100))
    elif fault == "gap":
        rows[2] = (7, False, ACK | PSH, 1002, 99)
    elif fault == "rst":
        rows[-1] = (7, True, RST | ACK, 5051, 0)
    elif fault == "data_after_own_fin":
        rows.insert(6, (7, False, ACK | PSH, 1111, 5))
    elif fault == "fin_with_data":
        rows[5] = (7, False, FIN | ACK | PSH, 1111, 3)
    elif fault == "no_synack":
        del rows[1]
    elif fault == "second_syn":
        rows.insert(5, (7, False, SYN, 1000, 0))
    elif fault == "open":
        rows = rows[:-1]  # the second FIN comes in a later batch
    assert _selected(_clean(1) + rows) == [1]


def test_half_close_still_qualifies():
    """Data from the side that has not sent its FIN yet, after the other side's FIN, is in order."""
    rows = [
        (3, False, SYN, 10, 0),
        (3, True, SYN | ACK, 90, 0),
        (3, False, FIN | ACK, 11, 0),
        (3, True, ACK | PSH, 91, 40),
        (3, True, FIN | ACK, 131, 0),
    ]
    assert _selected(rows) == [3]


def _flows(a: Abstractor) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for name, sink in a.sinks.items():
        stream = b"".join(sink.parts)
        evs = parse_text(stream, sink.body) if sink.fmt == "text" else parse_binary(stream, sink.body)
        for e in evs:
            out.setdefault((name, e.flow), []).append((e.event, e.sender, e.match, e.reason, e.time, e.data))
    return out


def _records(flows) -> list[tuple]:
    return sorted(
        (
            f.key, f.l3, f.addr1, f.addr2, f.port1, f.port2, f.pkts1, f.pkts2, f.octets1, f.octets2,
            f.start_ns, f.end_ns, f.last_ns, f.end_reason, f.ipfix_end, f.init_dir,
            f.rule.name if f.rule else None, f.match1, f.match2, f.nxt1, f.nxt2, f.fin1, f.fin2,
            f.orig, f.history, f.conn_state(), f.missed_bytes, f.hbits, f.tstate, f.syns, f.rsts, f.hcount,
        )
        for f in flows
    )  # fmt: skip


def _run(doc: dict, frames: list[tuple[int, bytes]], batch: int, whole: bool) -> tuple[Abstractor, list]:
    a = Abstractor(parse_config(doc))
    a.use_whole_connections = whole
    ended = []
    for i in range(0, len(frames), batch):
        part = frames[i : i + batch]
        a.process_frames(FrameBatch.from_frames([f for _, f in part], [t for t, _ in part]))
        ended += a.take_ended()
    a.finish()
    ended += a.take_ended()
    return a, ended


CONFIGS = {
    "text": {
        "http": {
            "up": r"^[-a-zA-Z]+ .+ HTTP/1\.(0\r?\n|1\r?\n([-a-zA-Z]+: .+\r?\n)+)",
            "down": r"^HTTP/1\.[01] [1-9][0-9]{2} .+\r?\n",
            "proto": "TCP",
            "if": "http",
        },
        "tcp_default": {"if": "default", "proto": "TCP"},
    },
    "binary": {"tcp_default": {"if": "default", "proto": "TCP", "format": "binary"}},
    "no_body": {"tcp_default": {"if": "default", "proto": "TCP", "body": False}},
}


@pytest.mark.parametrize("batch", [97, 2000])  # small batches cut most connections at their edges
@pytest.mark.parametrize("fmt", sorted(CONFIGS))
@pytest.mark.parametrize("scenario", ["cps", "http", "tcpfaults", "mixed", "smtp", "tls", "ssh", "ipv6"])
def test_same_events_and_records_as_the_per_packet_path(scenario, fmt, batch):
    frames = list(get(scenario).generate(1, 120 if scenario != "cps" else 600))
    doc = {"global": {"timeout": 30}, **CONFIGS[fmt]}
    fast, fast_ended = _run(doc, frames, batch, True)
    slow, slow_ended = _run(doc, frames, batch, False)
    assert slow.whole_flows == 0
    assert _flows(fast) == _flows(slow)
    assert _records(fast_ended) == _records(slow_ended)
    assert fast.flows_created == slow.flows_created and fast.flows_destroyed == slow.flows_destroyed
    assert fast.drops == slow.drops and fast.unrouted_bytes == slow.unrouted_bytes
    assert fast.classifier.counts == slow.classifier.counts
    if scenario in ("cps", "http", "smtp", "tls") and batch == 2000:
        assert fast.whole_flows >= 20, "connections that fit in one batch take the per-flow path"


def test_a_lingering_key_reused_by_a_new_connection_goes_the_per_packet_way():
    """Port reuse: the old flow's record must be complete before the new connection starts."""
    c = Conv(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 40000, 80, 1000, 5000)
    for isn in (1000, 90000):
        c.put(c.frame(True, isn, 0, SYN))
        c.put(c.frame(False, 5000, isn + 1, SYN | ACK))
        c.put(c.frame(True, isn + 1, 5001, ACK | PSH, b"GET / HTTP/1.0\r\n\r\n"))
        c.put(c.frame(True, isn + 19, 5001, FIN | ACK))
        c.put(c.frame(False, 5001, isn + 20, FIN | ACK))
    doc = {"global": {"timeout": 30}, **CONFIGS["text"]}
    for whole in (True, False):
        a, ended = _run(doc, c.frames, 5, whole)
        assert len(ended) == 2 and a.flows_created == {"tcp": 2}
        assert a.whole_flows == (1 if whole else 0)  # the second one finds the first still lingering


@pytest.mark.parametrize("seed", range(12))
def test_same_result_on_randomly_damaged_captures(seed):
    """Lost, duplicated and swapped packets (what the per-flow path must recognise and leave alone)."""
    import random

    rng = random.Random(seed)
    frames = list(get("cps" if seed % 2 else "http").generate(seed, 150))
    damaged: list[tuple[int, bytes]] = []
    for ts_frame in frames:
        roll = rng.random()
        if roll < 0.03:
            continue  # lost
        damaged.append(ts_frame)
        if roll > 0.97:
            damaged.append(ts_frame)  # duplicated
    for _ in range(len(damaged) // 30):
        i = rng.randrange(len(damaged) - 1)
        damaged[i], damaged[i + 1] = damaged[i + 1], damaged[i]  # reordered
    doc = {"global": {"timeout": 30}, **CONFIGS["text"]}
    batch = rng.choice([200, 700, 3000])
    fast, fast_ended = _run(doc, damaged, batch, True)
    slow, slow_ended = _run(doc, damaged, batch, False)
    assert fast.whole_flows > 0
    assert _flows(fast) == _flows(slow)
    assert _records(fast_ended) == _records(slow_ended)
    assert fast.drops == slow.drops and fast.tcp_stats.gap_bytes == slow.tcp_stats.gap_bytes
    assert fast.tcp_stats.retrans_bytes == slow.tcp_stats.retrans_bytes
