"""The analyzers' SDK decoders (cell/sdk) read what the cell writes, in both formats, split anywhere."""

from __future__ import annotations

import random

import pytest
from celltap.cell.abstractor import Abstractor
from celltap.cell.sdk.binary_format import BinaryDecoder
from celltap.cell.sdk.text_format import TextDecoder
from celltap.cell.sftap_config import parse_config

from celltap.pcap.batch import FrameBatch
from tests.cell.wire import parse_binary, parse_text


@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_sdk_decodes_cell_output(fmt):
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    frames = list(get("mixed").generate(9, 20))
    a = Abstractor(parse_config({
        "tcp_default": {"if": "default", "proto": "TCP", "format": fmt},
        "udp_default": {"if": "default", "proto": "UDP", "format": fmt},
    }))  # fmt: skip
    a.process_frames(FrameBatch.from_frames([f for _, f in frames], [t for t, _ in frames]))
    a.finish()
    for name in ("tcp/default", "udp/default"):
        stream = b"".join(a.sinks[name].parts)
        ours = parse_text(stream) if fmt == "text" else parse_binary(stream)
        assert ours
        dec = TextDecoder() if fmt == "text" else BinaryDecoder()
        rng = random.Random(1)
        got = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 3000)
            got += dec.feed(stream[pos : pos + step])
            pos += step
        assert len(got) == len(ours)
        for g, o in zip(got, ours, strict=True):
            f = g.flow
            assert (f.ip1, f.port1, f.ip2, f.port2, f.hop, f.l3, f.l4) == o.flow
            assert g.event == o.event and g.data == o.data and g.match == o.match
            if o.event == "DATA":
                assert g.sender == o.sender
            if o.event == "DESTROYED":
                assert g.reason == o.reason
            assert abs(g.time - o.time) < 1e-5


@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_sdk_reads_body_no_interfaces(fmt):
    """`body: no` keeps each DATA event's `len` and sends no bytes: the SDK reports the lengths."""
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    frames = list(get("mixed").generate(9, 20))
    batch = FrameBatch.from_frames([f for _, f in frames], [t for t, _ in frames])
    streams = {}
    for body in (True, False):
        a = Abstractor(parse_config({
            "tcp_default": {"if": "default", "proto": "TCP", "format": fmt, "body": body},
            "udp_default": {"if": "default", "proto": "UDP", "format": fmt, "body": body},
        }))  # fmt: skip
        a.process_frames(batch)
        a.finish()
        streams[body] = {n: b"".join(a.sinks[n].parts) for n in ("tcp/default", "udp/default")}
    for name in ("tcp/default", "udp/default"):
        full = (TextDecoder() if fmt == "text" else BinaryDecoder()).feed(streams[True][name])
        dec = TextDecoder(body=False) if fmt == "text" else BinaryDecoder(body=False)
        bare = streams[False][name]
        got = []
        for pos in range(0, len(bare), 777):  # split anywhere
            got += dec.feed(bare[pos : pos + 777])
        assert len(got) == len(full) and any(f.length for f in full)
        for g, f in zip(got, full, strict=True):
            same = ("event", "key", "sender", "match", "reason", "time")
            assert [getattr(g, k) for k in same] == [getattr(f, k) for k in same]
            assert g.data == b"" and g.length == len(f.data) == f.length
