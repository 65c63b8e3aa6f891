"""A reordering, duplicating L2 forwarder between two interfaces (the test bed's replacement for netem).

Theory of operation. This kernel has no `tc netem`, so reordering and duplication are made by a
middlebox: two AF_PACKET sockets, one per interface, with PACKET_IGNORE_OUTGOING so that a socket never
reads back what it sent. Every frame received on one side goes out of the other, except that, driven
by a seeded RNG (one per direction, so a run is reproducible given the same frames):

* with probability `reorder` a frame is held back and sent right after the next frame of the same
  direction (or after `hold_ms` if no next frame comes: a held frame is never lost);
* with probability `duplicate` a frame is sent twice.

Only IPv4/IPv6 frames carrying TCP are faulted (ARP and ND pass untouched, so neighbours stay up).
The endpoints' TCP stacks see real out-of-order and duplicate segments and react for real (dup ACKs,
SACK, spurious retransmissions). Counters go to stderr at exit (SIGTERM).

Usage: python -m tests.realnet.middlebox IF_A IF_B --seed S --reorder P --duplicate P
"""

from __future__ import annotations

import argparse
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23


def _is_tcp(frame: bytes) -> bool:
    """Ethernet + IPv4/IPv6 + TCP (no extension headers needed for the bed's traffic)."""
    if len(frame) < 34:
        return False
    et = frame[12:14]
    if et == b"\x08\x00":
        return frame[23] == 6
    if et == b"\x86\xdd":
        return len(frame) > 20 and frame[20] == 6
    return False


class Direction:
    """One direction of the forwarder with its RNG, held frame and counters."""

    def __init__(self, out: socket.socket, rng: random.Random, reorder: float, duplicate: float) -> None:
        self.out = out
        self.rng = rng
        self.reorder = reorder
        self.duplicate = duplicate
        self.held: bytes | None = None
        self.held_at = 0.0
        self.counts = {"frames": 0, "reordered": 0, "duplicated": 0}

    def send(self, frame: bytes) -> None:
        """Send one frame (errors are counted, never raised)."""
        try:
            self.out.send(frame)
        except OSError:
            self.counts["send_errors"] = self.counts.get("send_errors", 0) + 1

    def frame(self, frame: bytes) -> None:
        """Forward a received frame, maybe holding it back or sending it twice."""
        self.counts["frames"] += 1
        faulty = _is_tcp(frame)
        if faulty and self.held is None and self.rng.random() < self.reorder:
            self.held, self.held_at = frame, time.monotonic()
            self.counts["reordered"] += 1
            return
        self.send(frame)
        if faulty and self.rng.random() < self.duplicate:
            self.send(frame)
            self.counts["duplicated"] += 1
        self.release()

    def release(self) -> None:
        """Send the held frame, if any."""
        if self.held is not None:
            held, self.held = self.held, None
            self.send(held)


def open_socket(ifname: str) -> socket.socket:
    """An AF_PACKET socket on `ifname` that never reads its own transmissions."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.bind((ifname, ETH_P_ALL))
    return s


def main(argv: list[str] | None = None) -> int:
    """Forward between two interfaces until SIGTERM; print counters."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reorder", type=float, default=0.0)
    ap.add_argument("--duplicate", type=float, default=0.0)
    ap.add_argument("--hold-ms", type=float, default=5.0)
    args = ap.parse_args(argv)
    sa, sb = open_socket(args.a), open_socket(args.b)
    dirs = {
        sa.fileno(): (sa, Direction(sb, random.Random(args.seed), args.reorder, args.duplicate)),
        sb.fileno(): (sb, Direction(sa, random.Random(args.seed + 1), args.reorder, args.duplicate)),
    }
    stop = False

    def _stop(_s: int, _f: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    hold = args.hold_ms / 1000
    while not stop:
        try:
            ready, _, _ = select.select([sa, sb], [], [], hold / 2)
        except InterruptedError:
            continue
        for s in ready:
            sock, d = dirs[s.fileno()]
            try:
                frame = sock.recv(65536)
            except OSError:
                continue
            d.frame(frame)
        now = time.monotonic()
        for _, d in dirs.values():
            if d.held is not None and now - d.held_at >= hold:
                d.release()
    for _, d in dirs.values():
        d.release()
    print(f"{args.a}->{args.b} {dirs[sa.fileno()][1].counts}", file=sys.stderr)
    print(f"{args.b}->{args.a} {dirs[sb.fileno()][1].counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
