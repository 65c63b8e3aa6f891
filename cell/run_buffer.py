"""Out-of-order bytes as sorted runs, sans-IO: the shared store of TCP reassembly and IP defragmentation.

Theory of operation. Bytes that arrived ahead of the position a consumer waits for are kept as
disjoint *runs*: `starts` (sorted run start positions, plain ints in an unbounded coordinate the
caller chooses) and `runs` (one bytearray per run), in parallel lists. Runs never overlap; two runs
may touch (a run is extended in place when new bytes continue it, and merged with the following run
only when that one is small, so no insertion ever copies more than `MERGE_MAX` old bytes).

Overlap policy is "first wins": bytes already held are never replaced; an added piece contributes
only the bytes no run covers yet (the caller learns how many were new). Finding where a piece goes
is a bisect (O(log n)); inserting a run shifts list slots (a C memmove of 8-byte pointers, bounded
because every run costs real memory the caller caps). The consumer takes runs from the front
(`head` index; the lists are compacted when the consumed prefix is large), so draining n runs is
O(n) and skipping holes costs nothing per hole beyond the run that ends it.

Memory is accounted as allocated, not as payload: each run's `sys.getsizeof` (object header plus
the bytearray's capacity, over-allocation included) plus RUN_SLOT for its int start and its two
list slots. `mem` is what the caller's caps compare against; `payload` counts the bytes held.
"""

from __future__ import annotations

from bisect import bisect_right
from sys import getsizeof

RUN_SLOT = 32 + 2 * 8  # the run's start (an int object) and its slots in `starts` and `runs`
BUFFER_BASE = getsizeof([]) * 2 + 128  # two empty lists and the buffer object itself (measured ~ 200 B)
MERGE_MAX = 1 << 16  # a piece that touches the next run absorbs it only when it is at most this long
_COMPACT_AT = 256


class RunBuffer:
    """Disjoint byte runs sorted by start; first-wins on overlap; real-memory accounting."""

    __slots__ = ("head", "mem", "payload", "runs", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.runs: list[bytearray] = []
        self.head = 0  # runs before it were consumed
        self.mem = BUFFER_BASE
        self.payload = 0

    def __len__(self) -> int:
        return len(self.starts) - self.head

    def first_start(self) -> int:
        """Start of the lowest run (the buffer must not be empty)."""
        return self.starts[self.head]

    def end(self) -> int:
        """End of the highest run (the buffer must not be empty)."""
        return self.starts[-1] + len(self.runs[-1])

    def single(self) -> tuple[int, bytearray] | None:
        """(start, bytes) when exactly one run is held."""
        if len(self.starts) - self.head == 1:
            return self.starts[-1], self.runs[-1]
        return None

    def add(self, start: int, data: bytes | memoryview) -> int:
        """Add bytes at `start`; only bytes not yet covered are stored. Returns how many were new."""
        n = len(data)
        if not n:
            return 0
        end = start + n
        starts, runs, head = self.starts, self.runs, self.head
        j = bisect_right(starts, start, head)  # first run starting after `start`
        pos = start
        if j > head:
            pe = starts[j - 1] + len(runs[j - 1])
            if pe > pos:
                pos = pe  # the run before covers the beginning
        new = 0
        while pos < end:
            if j < len(starts) and starts[j] <= pos:
                pe = starts[j] + len(runs[j])  # covered by run j
                if pe > pos:
                    pos = pe
                j += 1
                continue
            stop = starts[j] if j < len(starts) and starts[j] < end else end
            piece = data[pos - start : stop - start]
            if j > head and starts[j - 1] + len(runs[j - 1]) == pos:
                new += self._grow(j - 1, piece)  # continues run j-1 (which may absorb run j)
                pos = starts[j - 1] + len(runs[j - 1])
            else:
                new += self._insert(j, pos, piece)
                pos = starts[j] + len(runs[j])
                j += 1
        return new

    def _grow(self, i: int, piece: bytes | memoryview) -> int:
        run = self.runs[i]
        before = getsizeof(run)
        run += piece
        self.mem += getsizeof(run) - before
        self.payload += len(piece)
        self._absorb_next(i)
        return len(piece)

    def _insert(self, j: int, pos: int, piece: bytes | memoryview) -> int:
        run = bytearray(piece)
        self.starts.insert(j, pos)
        self.runs.insert(j, run)
        self.mem += getsizeof(run) + RUN_SLOT
        n = len(run)
        self.payload += n
        self._absorb_next(j)
        return n

    def _absorb_next(self, i: int) -> None:
        """Merge run i+1 into run i when they touch and run i+1 is small (bounded copy)."""
        k = i + 1
        starts, runs = self.starts, self.runs
        if k < len(starts) and starts[i] + len(runs[i]) == starts[k] and len(runs[k]) <= MERGE_MAX:
            run, nxt = runs[i], runs[k]
            before = getsizeof(run) + getsizeof(nxt) + RUN_SLOT
            run += nxt
            del starts[k], runs[k]
            self.mem += getsizeof(run) - before

    def pop_first(self) -> tuple[int, bytearray]:
        """Remove and return the lowest run (start, bytes)."""
        h = self.head
        start, run = self.starts[h], self.runs[h]
        self.runs[h] = None  # type: ignore[call-overload]  # free the bytes now; the slot goes at compaction
        self.head = h + 1
        self.mem -= getsizeof(run) + RUN_SLOT
        self.payload -= len(run)
        if self.head >= _COMPACT_AT and self.head * 2 >= len(self.starts):
            del self.starts[: self.head], self.runs[: self.head]
            self.head = 0
        return start, run
