"""Bad input is counted, never a crash: mutated and truncated frames of real loadgen traffic."""

from __future__ import annotations

import random

from celltap.cell.abstractor import Abstractor
from celltap.cell.sftap_config import parse_config
from hypothesis import given, settings
from hypothesis import strategies as st

from celltap.decode import decode_frame
from celltap.pcap.batch import FrameBatch

CONFIG = {
    "tcp_default": {"if": "default", "proto": "TCP"},
    "udp_default": {"if": "default", "proto": "UDP"},
    "http": {"proto": "TCP", "up": "^GET", "down": "^HTTP", "if": "http"},
    "icmp": {"if": "icmp"},
}


def _frames() -> list[tuple[int, bytes]]:
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    out = []
    for name in ("mixed", "frag", "tcpfaults"):
        out += list(get(name).generate(2, 6))
    return out


FRAMES = _frames()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.3))
def test_mutated_traffic_never_crashes(seed, rate):
    rng = random.Random(seed)
    frames, ts = [], []
    for t, f in FRAMES:
        f = bytearray(f)
        if rng.random() < rate:
            for _ in range(rng.randint(1, 4)):
                f[rng.randrange(len(f))] = rng.randrange(256)
        if rng.random() < rate:
            f = f[: rng.randrange(1, len(f) + 1)]  # snaplen-style truncation
        frames.append(bytes(f))
        ts.append(t)
    a = Abstractor(parse_config(CONFIG))
    a.process_frames(FrameBatch.from_frames(frames, ts))
    a.finish()
    a.collect(ts[-1] + 10**12)
    assert a.packets == len(frames)
    assert not a.table.flows
    for sink in a.sinks.values():
        assert sink.events >= 0


def test_truncated_payload_is_clipped_and_counted():
    frame = next(f for _t, f in FRAMES if len(f) > 200 and f[23] == 6)  # a TCP segment with payload
    cut = frame[:100]
    a = Abstractor(parse_config({"global": {"midstream": "yes"}, **CONFIG}))
    fb = FrameBatch.from_frames([cut, b"\xff" * 300], [1, 2])
    fb.wirelens[0] = len(frame)
    a.process_frames(fb)
    a.finish()
    assert a.drops["payload_truncated"] == 1
    data = b"".join(p for s in a.sinks.values() for p in s.parts)
    assert b"\xff" * 8 not in data, "payload never runs into the next frame's bytes"
    off = decode_frame(cut, 1, len(frame)).payload_off
    assert 0 < off < 100 and cut[off:] in data  # what was captured is delivered
