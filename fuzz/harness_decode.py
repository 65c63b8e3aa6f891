"""Fuzz the frame decoder: the scalar path (decode_frame) and the batch path (decode_batch) must agree.

Input: byte 0 picks the link type (and bit 7 turns decapsulation off), then frames, each prefixed by
its length (u16 big-endian). Both paths decode the same frames; any field on which they disagree,
and any exception from either, is a finding (they are two implementations of one specification).
"""

from __future__ import annotations

import struct

import numpy as np

from celltap.decode import DecodeOptions, decode_batch, decode_frame
from celltap.pcap import (
    LINKTYPE_C_HDLC,
    LINKTYPE_ETHERNET,
    LINKTYPE_FDDI,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_PPP_ETHER,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    FrameBatch,
)

# Vectorised code compares numpy arrays: fuzz/run.py keeps those comparisons out of atheris's hook,
# which leaks on each (kilobytes per input here, an out-of-memory within a long run).
ARRAY_COMPARES = True

LINKTYPES = [
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
    LINKTYPE_FDDI,
    LINKTYPE_PPP,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_C_HDLC,
    LINKTYPE_PPP_ETHER,
]
OPTIONS = (DecodeOptions(), DecodeOptions(decapsulate=False))
# A frame is at most a few KB: 4 KiB inputs hold several frames (the batch path's multi-frame work);
# seeds are cut into groups that fit, so every seed frame stays in the corpus.
FUZZ_MAX_LEN = 4096


class Disagreement(AssertionError):
    """The two decode paths differ on a frame."""


def split_frames(data: bytes) -> list[bytes]:
    """Length-prefixed frames after the mode byte (a short last frame keeps what is there)."""
    frames = []
    pos = 1
    while pos + 2 <= len(data) and len(frames) < 64:
        n = struct.unpack_from(">H", data, pos)[0]
        frames.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return frames


def test_one_input(data: bytes) -> None:
    """Decode the frames both ways; raise Disagreement on the first differing field."""
    if not data:
        return
    linktype = LINKTYPES[(data[0] & 0x7F) % len(LINKTYPES)]
    options = OPTIONS[data[0] >> 7]
    frames = split_frames(data)
    if not frames:
        return
    cols = decode_batch(FrameBatch.from_frames(frames, linktype=linktype), options)
    names = cols.column_names()
    for i, frame in enumerate(frames):
        d = decode_frame(frame, linktype, options=options)
        for name in names:
            got = getattr(cols, name)[i]
            want = getattr(d, name)
            if name in ("src", "dst"):
                if not np.array_equal(got, np.frombuffer(want.ljust(16, b"\0")[:16], np.uint8)):
                    raise Disagreement(f"frame {i} {name}: batch {bytes(got).hex()} scalar {want.hex()}")
            elif int(got) != int(want):
                raise Disagreement(f"frame {i} {name}: batch {int(got)} scalar {int(want)} ({frame.hex()})")


def pack(linktype_index: int, frames: list[bytes]) -> bytes:
    """An input of this harness (for seeds and crashers)."""
    return bytes((linktype_index,)) + b"".join(struct.pack(">H", len(f)) + f for f in frames)


def _fitting(linktype_index: int, frames: list[bytes]) -> list[bytes]:
    """Inputs holding `frames` in order, each within FUZZ_MAX_LEN (a longer frame is cut to fit)."""
    out, group, size = [], [], 1
    for f in frames:
        f = f[: FUZZ_MAX_LEN - 3]
        if group and size + 2 + len(f) > FUZZ_MAX_LEN:
            out.append(pack(linktype_index, group))
            group, size = [], 1
        group.append(f)
        size += 2 + len(f)
    return out + ([pack(linktype_index, group)] if group else [])


def seeds() -> list[bytes]:
    """Frames of loadgen's scenarios (Ethernet: mixed traffic, fragments, TCP faults, tunnels)."""
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import REGISTRY, get

    out = []
    for name in sorted(REGISTRY):
        try:
            frames = [f for _, f in get(name).generate(1, 2)][:24]
        except Exception:  # a scenario that needs more than a seed and a count
            continue
        if frames:
            out += _fitting(0, frames)
            out += _fitting(0x80, frames)
            # the same packets as raw IP (LINKTYPE_RAW): strip Ethernet where it is plain IPv4/IPv6
            raw = [f[14:] for f in frames if f[12:14] in (b"\x08\x00", b"\x86\xdd")]
            if raw:
                out += _fitting(1, raw)
    return out
