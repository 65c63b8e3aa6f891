"""Findings of issue #15 on the collector's input side, one test each (each failed on the code before
the fix): a malformed datagram costs that datagram, counted, never the worker; a failing sink or worker
loop is survived and counted; the node does not trust a sender's record count.  Inputs are crafted
byte by byte from RFC 3954 / RFC 7011 layouts; expected values come from the crafted bytes."""

from __future__ import annotations

import io
import json
import struct
import time

import numpy as np
import pytest
from celltap.collector import ingest as ingest_mod
from celltap.collector.config import CollectorConfig, ListenAddress
from celltap.collector.ingest import Ingestor
from celltap.collector.json_output import JsonLinesSink
from celltap.collector.metrics import CollectorMetrics
from celltap.collector.node_state import NodeState
from celltap.collector.service import CollectorService
from celltap.collector.udp_server import UdpWorker
from celltap.proto import celltap_pb2 as pb
from prometheus_client import CollectorRegistry

from celltap.ipfix.records import RecordBatch
from tests.ipfix.oracles import free_port

V9_HDR = struct.Struct("!HHIIII")  # version, count, uptime, secs, sequence, source id


def v9(seq: int, *flowsets: bytes, source: int = 1) -> bytes:
    return V9_HDR.pack(9, len(flowsets), 1000, 1_700_000_000, seq, source) + b"".join(flowsets)


def flowset(fid: int, body: bytes) -> bytes:
    return struct.pack("!HH", fid, 4 + len(body)) + body


def v9_template(tid: int, fields: list[tuple[int, int]]) -> bytes:
    return flowset(0, struct.pack("!HH", tid, len(fields)) + b"".join(struct.pack("!HH", *f) for f in fields))


def ipfix(seq: int, *sets: bytes, odid: int = 1) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, seq, odid) + body


def ipfix_set(sid: int, body: bytes) -> bytes:
    return struct.pack("!HH", sid, 4 + len(body)) + body


# A good v9 stream: template 260 = sourceIPv4Address(8)/4, octetDeltaCount(1)/4, packetDeltaCount(2)/4.
GOOD_TEMPLATE = v9_template(260, [(8, 4), (1, 4), (2, 4)])


def good_data(first: int, n: int) -> bytes:
    return flowset(
        260, b"".join(struct.pack("!III", 0x0A000000 + i, 100 + i, 1) for i in range(first, first + n))
    )


def records(batches: list[RecordBatch], name: str = "octetDeltaCount") -> list[int]:
    return [int(v) for b in batches if name in (b.records.dtype.names or ()) for v in b.records[name]]


def test_v9_template_of_zero_length_fields_costs_its_flowset_not_the_decoder():
    """Finding 1a: a v9 template whose fields are all 0 bytes made records of 0 bytes (ZeroDivisionError)."""
    ing = Ingestor()
    zero = v9_template(300, [(1, 0), (2, 0)])
    out = ing.feed(
        [
            ("192.0.2.9", v9(0, GOOD_TEMPLATE, good_data(0, 3))),
            ("192.0.2.9", v9(1, zero, flowset(300, b"\0" * 8))),
            ("192.0.2.9", v9(2, good_data(3, 2))),
        ],
        1.0,
    )
    assert records(out) == [100, 101, 102, 103, 104]
    assert ing.stats.dropped_sets["malformed"] == 1  # the zero-length template
    assert ing.stats.dropped_sets["no_template"] == 1  # its data: that template was never accepted


def test_v9_options_template_repeating_a_scope_field_decodes_with_unique_names():
    """Finding 1b: two scope fields of one type got the same column name (numpy ValueError)."""
    ing = Ingestor()
    # options template 400: scopes System/4 twice, option samplingInterval(34)/4
    body = struct.pack("!HHH", 400, 8, 4) + struct.pack("!HHHH", 1, 4, 1, 4) + struct.pack("!HH", 34, 4)
    data = flowset(400, struct.pack("!III", 7, 8, 10))
    out = ing.feed([("192.0.2.9", v9(0, flowset(1, body), data, GOOD_TEMPLATE, good_data(0, 1)))], 1.0)
    opts = next(b for b in out if b.template_id == 400)
    assert opts.records.dtype.names == ("scopeSystem", "scopeSystem_2", "samplingInterval")
    assert [int(opts.records[n][0]) for n in opts.records.dtype.names] == [7, 8, 10]
    # The announced 1-in-10 sampling scales the data record (100 octets, 1 packet) that follows.
    assert records(out) == [1000] and records(out, "packetDeltaCount") == [10]


def test_unexpected_decoder_exception_costs_one_message_counted(monkeypatch):
    """Finding 1c: Ingestor.feed caught only MalformedError; any other exception ended the worker.
    The fault is injected (no real input raises it any more): the decoder fails on one message only."""
    real = ingest_mod.decode_variable

    def failing(t, payload):
        if bytes(payload[:1]) == b"\x09":
            raise IndexError("injected decoder bug")
        return real(t, payload)

    monkeypatch.setattr(ingest_mod, "decode_variable", failing)
    ing = Ingestor()
    # IPFIX template 310: sourceIPv4Address/4, applicationName(96)/variable
    tpl = ipfix_set(2, struct.pack("!HHHHHH", 310, 2, 8, 4, 96, 65535))

    def data(app: bytes) -> bytes:
        return ipfix_set(310, struct.pack("!I", 0x0A000001) + bytes([len(app)]) + app)

    out = ing.feed(
        [("192.0.2.7", ipfix(0, tpl, data(b"dns"))), ("192.0.2.7", ipfix(1, ipfix_set(310, b"\x09" * 6))),
         ("192.0.2.7", ipfix(1, data(b"http")))],
        1.0,
    )  # fmt: skip
    assert [list(b.records["applicationName"]) for b in out] == [["dns", "http"]]
    assert ing.stats.dropped_messages["internal_error"] == 1
    assert isinstance(ing.last_internal_error, IndexError)


def test_json_sink_prints_elements_sent_at_a_length_their_type_does_not_have():
    """Fuzzing finding: flowStartNanoseconds (156) sent as 12 bytes crashed `collector --json`."""
    ing = Ingestor()
    tpl = ipfix_set(2, struct.pack("!HHHHHH", 311, 2, 156, 12, 8, 4))
    value = bytes(range(1, 13))
    out = ing.feed([("192.0.2.7", ipfix(0, tpl, ipfix_set(311, value + bytes([10, 0, 0, 1]))))], 1.0)
    buf = io.StringIO()
    JsonLinesSink(buf)(out)
    rec = json.loads(buf.getvalue())
    assert rec["flowStartNanoseconds_octets"] == value.hex() and rec["sourceIPv4Address"] == "10.0.0.1"


def test_v5_records_survive_the_wire_form_to_the_nodes():
    """Fuzzing finding: v5 batches (template id 0) were serialised as a template set the node rejects."""
    hdr = struct.pack("!HHIIIIBBH", 5, 1, 5000, 1_700_000_000, 0, 41, 1, 2, 0)
    rec = struct.pack("!IIIHHIIIIHHBBBBHHBBH", 0x0A000001, 0xC0A80001, 0, 3, 4, 10, 1000, 100, 200, 1234, 80,
                      0, 0x1B, 6, 0, 65000, 65001, 24, 16, 0)  # fmt: skip
    (batch,) = Ingestor().feed([("192.0.2.5", hdr + rec)], 1.0)
    tb, rb = batch.to_wire()
    back = RecordBatch.from_wire("192.0.2.5", 1, tb, rb)
    assert int(back.records["octetDeltaCount"][0]) == 1000 and int(back.records["packetDeltaCount"][0]) == 10


def _service(hook, **kw):
    port = free_port()
    cfg = CollectorConfig(listen=[ListenAddress("udp", "127.0.0.1", port)], workers=1, metrics_port=0, **kw)
    metrics = CollectorMetrics(CollectorRegistry())
    svc = CollectorService(cfg, hook, metrics=metrics, processes=False)
    svc.start()
    return svc, port, metrics


def _wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _send(port: int, *msgs: bytes) -> None:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for m in msgs:
            s.sendto(m, ("127.0.0.1", port))
    finally:
        s.close()


def test_thread_worker_is_restarted_and_counted_when_its_loop_fails(monkeypatch):
    """Finding 1d: a thread-mode worker that died was never restarted, and the gauge still said 1.
    The failure is injected into the worker loop (no real input can raise there any more)."""
    real = UdpWorker.report
    state = {"failed": False}

    def report_once_failing(self):
        if not state["failed"]:
            state["failed"] = True
            raise RuntimeError("injected worker failure")
        return real(self)

    monkeypatch.setattr(UdpWorker, "report", report_once_failing)
    got: list = []
    svc, port, metrics = _service(lambda i: got.extend)
    try:
        _send(port, v9(0, GOOD_TEMPLATE, good_data(0, 4)))
        _wait(lambda: state["failed"] and svc.restarts == 1)
        _send(port, v9(1, good_data(4, 3)))
        _wait(lambda: len(records(got)) == 7)
        time.sleep(1.2)  # one stats interval: the gauge is refreshed
        assert metrics.workers._value.get() == 1
    finally:
        svc.stop()
    assert records(got) == [100 + i for i in range(7)]
    assert metrics.worker_restarts._value.get() == 1


def test_failing_sink_costs_its_batch_counted_and_the_worker_goes_on():
    calls = {"n": 0}
    got: list = []

    def factory(index):
        def sink(batches):
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError("injected: the consumer of records failed")
            got.extend(batches)

        return sink

    svc, port, _ = _service(factory)
    try:
        _send(port, v9(0, GOOD_TEMPLATE, good_data(0, 4)))
        _wait(lambda: calls["n"] == 1)
        _send(port, v9(1, good_data(4, 3)))
        _wait(lambda: len(records(got)) == 3)
    finally:
        svc.stop()
    assert records(got) == [104, 105, 106]
    assert svc.totals.dropped_records["sink_error"] == 4


@pytest.mark.parametrize("claimed", [11, 10**9, 2**32 - 1])
def test_node_counts_only_records_a_rejected_batch_really_held(claimed):
    """Finding 8: rejected_records trusted the sender's claimed count (it reached 2.8e11)."""
    state = NodeState("n1", [])
    t = ipfix_set(2, struct.pack("!HHHHHH", 300, 2, 8, 4, 1, 8))  # 12-byte records
    msg = pb.RecordBatchMsg(collector="c", sequence=1, origin="n1", exporter="192.0.2.1", domain=1,
                            template=t, records=b"\0" * 120, count=claimed, keys=["src"])  # fmt: skip
    ack = state.handle(msg)
    counts = state.status()["counts"]
    assert ack.error
    assert counts["rejected_records"] == 10  # 120 bytes of 12-byte records
    assert counts["overclaimed_records"] == claimed - 10
    junk = pb.RecordBatchMsg(
        collector="c", sequence=2, origin="n1", template=b"junk", records=b"abc", count=claimed
    )
    state.handle(junk)
    assert state.status()["counts"]["rejected_records"] == 13  # at most one record per byte


def test_ingest_accounting_returns_to_zero_after_everything_expires():
    ing = Ingestor()
    msgs = [("192.0.2.9", v9(i, GOOD_TEMPLATE, good_data(0, 1), source=i)) for i in range(20)]
    ing.feed(msgs, 1.0)
    assert ing.state_bytes > 20 * ingest_mod.DOMAIN_COST
    ing.expire(1.0 + 10 * 86400, force=True)
    assert ing.state_bytes == 0 and not ing._domains and not ing._exporters
    assert np.isclose(ing.stats.domain_events[("192.0.2.9", "expired")], 20)


def test_ipfix_template_whose_generated_names_collide_decodes():
    """Finding 1b (IPFIX): unknown element 500 twice is named ie500, ie500_2, and enterprise 500's element
    2 is also called ie500_2: the names collided (numpy ValueError)."""
    t = (
        struct.pack("!HH", 312, 3)
        + struct.pack("!HHHH", 500, 2, 500, 2)
        + struct.pack("!HHI", 0x8002, 2, 500)
    )
    out = Ingestor().feed([("192.0.2.7", ipfix(0, ipfix_set(2, t), ipfix_set(312, bytes(range(6)))))], 1.0)
    (batch,) = out
    assert len(set(batch.records.dtype.names)) == 3
    assert [bytes(batch.records[n][0]) for n in batch.records.dtype.names] == [b"\0\1", b"\2\3", b"\4\5"]


def test_v9_vendor_field_type_survives_the_wire_form_to_the_nodes():
    """Fuzzing finding: a v9 field type >= 32768 (vendor range, e.g. Cisco NSEL) was re-encoded as an IPFIX
    enterprise field without its enterprise number; the node could not parse the template."""
    tpl = v9_template(261, [(8, 4), (40001, 4)])
    data = flowset(261, struct.pack("!II", 0x0A000001, 0xC0A80001))
    (batch,) = Ingestor().feed([("192.0.2.9", v9(0, tpl, data))], 1.0)
    tb, rb = batch.to_wire()
    back = RecordBatch.from_wire("192.0.2.9", 1, tb, rb)
    assert back.records.dtype.names == ("sourceIPv4Address", "ie40001")
    assert bytes(back.records["ie40001"][0]) == bytes([192, 168, 0, 1])


def test_node_takes_a_batch_whose_counter_has_a_length_its_type_cannot_have():
    """Fuzzing finding (gRPC batch): a template declaring packetDeltaCount as variable-length made an
    app's numeric conversion raise out of NodeState.handle.  The field is kept as bytes under another
    name; the apps see no packet counter, and the batch is applied."""
    from celltap.collector.apps.base import make_app

    state = NodeState("n1", [make_app("mix", {"kind": "app_mix", "key": "flow"})])
    t = ipfix_set(2, struct.pack("!HHHHHHHH", 300, 3, 8, 4, 1, 8, 2, 65535))
    rec = struct.pack("!IQ", 0x0A000001, 500) + b"\x03htt"
    msg = pb.RecordBatchMsg(collector="c", sequence=1, origin="n1", exporter="192.0.2.1", domain=1,
                            template=t, records=rec, count=1, keys=["flow"])  # fmt: skip
    ack = state.handle(msg)
    assert not ack.error, ack.error
    assert state.status()["counts"]["records_primary"] == 1
    batch = RecordBatch.from_wire("192.0.2.1", 1, t, rec)
    assert batch.records.dtype.names == ("sourceIPv4Address", "octetDeltaCount", "packetDeltaCount_octets")
    assert bytes(batch.records["packetDeltaCount_octets"][0]) == b"htt"
