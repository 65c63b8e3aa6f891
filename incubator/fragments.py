"""IP fragment tracker: every fragment of a datagram goes to the cell of the datagram's flow.

The first fragment (offset 0) carries the ports, so it is routed like any packet of its flow and
its datagram key -- v4: (src, dst, protocol, id); v6: (src, dst, id) -- is remembered with that
cell.  Later fragments look the key up.  Fragments that arrive before their first fragment are
copied into a bounded waiting room (time, real memory and datagram count) and released, in arrival
order, when the first fragment shows up. `max_bytes` caps real memory, not payload: a waiting frame
costs its bytes plus FRAME_OVERHEAD (its bytes object's header, the (time, frame) tuple, the time,
the list slot), a waiting datagram DATAGRAM_OVERHEAD (its entry, key and list); 42-byte fragments
cost ~4x their payload, which the payload count let through.  What leaves the waiting room
unreleased is counted by reason.  Fragments are rare, so this is a scalar path; it is sans-IO: it
only sees bytes and times and returns decisions.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

DatagramKey = tuple[int, bytes, bytes, int, int]  # (l3, src, dst, proto or 0 for v6, frag id)

# Drop reasons (metric label values).
EXPIRED = "frag_timeout"
OVERFLOW_BYTES = "frag_overflow_bytes"
OVERFLOW_DATAGRAMS = "frag_overflow_datagrams"
# Real memory besides the frame's bytes (tracemalloc, tests/incubator/test_fragments.py: ~105-135
# bytes a frame and ~250 a datagram plus its key's ~200)
FRAME_OVERHEAD = 152
DATAGRAM_OVERHEAD = 512


def datagram_key(l3: int, src: bytes, dst: bytes, proto: int, frag_id: int) -> DatagramKey:
    """The key shared by all fragments of one datagram."""
    return (l3, src, dst, proto if l3 == 4 else 0, frag_id)


@dataclass
class Waiting:
    """Fragments of one datagram whose first fragment has not been seen yet."""

    first_seen_ns: int
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (ts_ns, frame)
    nbytes: int = 0  # payload
    mem: int = DATAGRAM_OVERHEAD  # real memory (what max_bytes caps)


@dataclass
class Released:
    """Held fragments released to a cell slot."""

    slot: int
    frames: list[tuple[int, bytes]]


class FragmentTracker:
    """Maps datagram keys to cell slots and holds early fragments, bounded in time and memory."""

    def __init__(
        self,
        timeout_s: float = 30.0,
        max_bytes: int = 16 << 20,
        max_datagrams: int = 65536,
        max_known: int = 262144,
    ) -> None:
        self.timeout_ns = int(timeout_s * 1e9)
        self.max_bytes = max_bytes
        self.max_datagrams = max_datagrams
        self.max_known = max_known
        self.known: OrderedDict[DatagramKey, tuple[int, int]] = OrderedDict()  # key -> (slot, expiry)
        self.waiting: OrderedDict[DatagramKey, Waiting] = OrderedDict()
        self.waiting_bytes = 0  # payload of the waiting frames
        self.waiting_mem = 0  # their real memory, with the datagrams' (what max_bytes caps)
        self.waiting_frames = 0

    def first_fragment(self, key: DatagramKey, slot: int, now_ns: int) -> Released | None:
        """Record where a datagram's first fragment went; release its waiting fragments."""
        self.known[key] = (slot, now_ns + self.timeout_ns)
        self.known.move_to_end(key)
        while len(self.known) > self.max_known:
            self.known.popitem(last=False)  # oldest datagram: its later fragments would wait
        w = self.waiting.pop(key, None)
        if w is None:
            return None
        self.waiting_bytes -= w.nbytes
        self.waiting_mem -= w.mem
        self.waiting_frames -= len(w.frames)
        return Released(slot, w.frames)

    def later_fragment(
        self, key: DatagramKey, ts_ns: int, frame: bytes, now_ns: int, drops: dict[str, int]
    ) -> int:
        """Slot of a non-first fragment; -1 when it now waits, -2 when dropped (counted in `drops`)."""
        hit = self.known.get(key)
        if hit is not None and hit[1] > now_ns:
            return hit[0]
        w = self.waiting.get(key)
        if w is None:
            if len(self.waiting) >= self.max_datagrams:
                drops[OVERFLOW_DATAGRAMS] = drops.get(OVERFLOW_DATAGRAMS, 0) + 1
                return -2
            w = self.waiting[key] = Waiting(now_ns)
            self.waiting_mem += w.mem
        cost = len(frame) + FRAME_OVERHEAD
        if self.waiting_mem + cost > self.max_bytes:
            drops[OVERFLOW_BYTES] = drops.get(OVERFLOW_BYTES, 0) + 1
            if not w.frames:
                del self.waiting[key]
                self.waiting_mem -= w.mem
            return -2
        w.frames.append((ts_ns, frame))
        w.nbytes += len(frame)
        w.mem += cost
        self.waiting_bytes += len(frame)
        self.waiting_mem += cost
        self.waiting_frames += 1
        return -1

    def expire(self, now_ns: int, drops: dict[str, int]) -> None:
        """Drop waiting fragments older than the timeout (counted) and forget old datagrams."""
        while self.waiting:
            key, w = next(iter(self.waiting.items()))
            if w.first_seen_ns + self.timeout_ns > now_ns:
                break
            self._drop_waiting(key, EXPIRED, drops)
        while self.known:
            key, (_slot, expiry) = next(iter(self.known.items()))
            if expiry > now_ns:
                break
            self.known.popitem(last=False)

    def flush(self, drops: dict[str, int]) -> None:
        """End of input: everything still waiting will never see its first fragment."""
        for key in list(self.waiting):
            self._drop_waiting(key, EXPIRED, drops)

    def _drop_waiting(self, key: DatagramKey, reason: str, drops: dict[str, int]) -> None:
        w = self.waiting.pop(key)
        drops[reason] = drops.get(reason, 0) + len(w.frames)
        self.waiting_bytes -= w.nbytes
        self.waiting_mem -= w.mem
        self.waiting_frames -= len(w.frames)
