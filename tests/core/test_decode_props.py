"""Scalar and batch decoders agree on well-formed, random and mutated frames; neither raises."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from celltap.decode import Reason, decode_batch, decode_frame
from celltap.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW, FrameBatch
from tests.core.frames import sample_frames

SAMPLES = sample_frames()


def assert_agree(frames: list[bytes], linktype: int = LINKTYPE_ETHERNET) -> None:
    """Decode `frames` both ways and compare every field of every frame."""
    batch = FrameBatch.from_frames(frames, linktype=linktype)
    cols = decode_batch(batch)
    for i, frame in enumerate(frames):
        d = decode_frame(frame, linktype)
        for name in cols.column_names():
            got = getattr(cols, name)[i]
            want = getattr(d, name)
            if name in ("src", "dst"):
                want = np.frombuffer(want.ljust(16, b"\0"), np.uint8)
                assert np.array_equal(got, want), (i, name, frame.hex())
            else:
                assert int(got) == int(want), (i, name, int(got), int(want), frame.hex())


def test_samples_decode_cleanly() -> None:
    statuses = [decode_frame(f).status for f in SAMPLES]
    assert statuses.count(Reason.NON_IP) == 1
    assert all(s in (Reason.OK, Reason.NON_IP) for s in statuses), statuses
    assert_agree(SAMPLES)


def test_known_fields() -> None:
    d = decode_frame(SAMPLES[0])
    assert (d.l3, d.l4, d.sport, d.dport, d.payload_len) == (4, 6, 40000, 80, 18)
    assert d.src == bytes([10, 0, 0, 1])
    qinq = decode_frame(SAMPLES[8])
    assert (qinq.vlan, qinq.vlan_inner, qinq.l3_off) == (200, 300, 22)
    later_frag = decode_frame(SAMPLES[14])
    assert later_frag.is_frag and later_frag.frag_off == 24 and later_frag.payload_off == -1
    assert later_frag.frag_id == 0xABCD and later_frag.sport == 0
    padded = decode_frame(SAMPLES[-1])
    assert padded.payload_len == 0  # Ethernet padding is not payload


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=20),
    st.sampled_from([LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL]),
)
def test_random_bytes_agree(frames: list[bytes], linktype: int) -> None:
    assert_agree(frames, linktype)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_frames_agree(data: st.DataObject) -> None:
    frames = []
    for _ in range(data.draw(st.integers(1, 12))):
        frame = bytearray(data.draw(st.sampled_from(SAMPLES)))
        for _ in range(data.draw(st.integers(0, 4))):
            if not frame:
                break
            pos = data.draw(st.integers(0, len(frame) - 1))
            frame[pos] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(frame)))
        frames.append(bytes(frame[:cut] if data.draw(st.booleans()) else frame))
    assert_agree(frames)
