"""TcpConversation: a realistic TCP connection (handshake with options, MSS-sized data segments
with correct seq/ack both ways, delayed ACKs, FIN or RST teardown) as timestamped frames."""

from __future__ import annotations

import random

from celltap.loadgen.link import Link
from celltap.loadgen.packets import ACK, FIN, PROTO_TCP, PSH, RST, SYN, tcp, tcp_options

_MASK = 0xFFFFFFFF


class TcpConversation:
    """Build one TCP connection's frames; `frames` holds (ts_ns relative to start, frame bytes).

    Index 0 of the per-side lists is the client, 1 the server. `wrap=True` puts the client's
    ISN just below 2**32 so its sequence numbers wrap within the first few kilobytes."""

    def __init__(
        self,
        link: Link,
        cport: int,
        sport: int,
        rng: random.Random,
        *,
        start_ns: int = 0,
        rtt_ns: int | None = None,
        timestamps: bool = True,
        sack: bool = True,
        wscale: int | None = 7,
        mss: int | None = None,
        wrap: bool = False,
    ) -> None:
        self.link, self.ports, self.rng = link, (cport, sport), rng
        self.frames: list[tuple[int, bytes]] = []
        self.t = start_ns
        self.rtt = rtt_ns if rtt_ns is not None else rng.randint(2_000_000, 60_000_000)
        c_isn = (_MASK + 1 - rng.randint(600, 2000)) if wrap else rng.getrandbits(32)
        self.nxt = [c_isn, rng.getrandbits(32)]
        self.ts_base = [rng.getrandbits(31), rng.getrandbits(31)]
        self.use_ts, self.sack, self.wscale = timestamps, sack, wscale
        self.mss = mss if mss is not None else 1500 - link.l3_header_len - 20
        self.seg_size = self.mss - (12 if timestamps else 0)
        self._last_dir: bool | None = None
        self.peer_ts = [0, 0]

    # --- low level -------------------------------------------------------------------------------

    def _advance(self, from_client: bool) -> None:
        if self._last_dir is None:
            pass
        elif self._last_dir == from_client:
            self.t += self.rng.randint(5_000, 120_000)
        else:
            self.t += self.rtt // 2 + self.rng.randint(0, 200_000)
        self._last_dir = from_client

    def _tsval(self, d: int) -> int:
        return (self.ts_base[d] + self.t // 1_000_000) & _MASK

    def segment(
        self,
        from_client: bool,
        flags: int,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        options: bytes | None = None,
        window: int | None = None,
    ) -> bytes:
        """One frame in that direction at the current state (seq/ack default to the live values)."""
        return self.link.frame(
            from_client,
            PROTO_TCP,
            self.tcp_bytes(from_client, flags, payload, seq=seq, ack=ack, options=options, window=window),
        )

    def tcp_bytes(
        self,
        from_client: bool,
        flags: int,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        options: bytes | None = None,
        window: int | None = None,
    ) -> bytes:
        """The TCP segment alone (for callers that fragment it), with the same defaults as `segment`."""
        d = 0 if from_client else 1
        src, dst = self.link.addrs(from_client)
        sp, dp = self.ports if from_client else self.ports[::-1]
        if options is None:
            options = b""
            if self.use_ts:
                options = (
                    b"\x01\x01\x08\x0a"
                    + self._tsval(d).to_bytes(4, "big")
                    + self.peer_ts[d].to_bytes(4, "big")
                )
        if seq is None:
            seq = self.nxt[d]
        if ack is None:
            ack = self.nxt[1 - d] if flags & ACK else 0
        if window is None:
            window = 502 if self.wscale is not None else 64240
        return tcp(src, dst, sp, dp, seq, ack, flags, payload, window=window, options=options)

    def _record(self, from_client: bool, frame: bytes) -> None:
        d = 0 if from_client else 1
        self.frames.append((self.t, frame))
        self.peer_ts[1 - d] = self._tsval(d)

    def emit(self, from_client: bool, frame: bytes) -> None:
        """Append a prebuilt frame at the next plausible time for that direction."""
        self._advance(from_client)
        self._record(from_client, frame)

    def put(
        self,
        from_client: bool,
        flags: int,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
    ) -> bytes:
        """Emit a segment with explicit seq/ack (faults, reordering); sequence state is untouched."""
        self._advance(from_client)
        frame = self.segment(from_client, flags, payload, seq=seq, ack=ack)
        self._record(from_client, frame)
        return frame

    def send_segment(self, from_client: bool, flags: int, payload: bytes = b"") -> None:
        """Emit one segment with live seq/ack and advance the sender's sequence number."""
        self._advance(from_client)
        self._record(from_client, self.segment(from_client, flags, payload))
        d = 0 if from_client else 1
        self.nxt[d] = (self.nxt[d] + len(payload) + (1 if flags & (SYN | FIN) else 0)) & _MASK

    # --- high level ------------------------------------------------------------------------------

    def handshake(self) -> None:
        """SYN (MSS, SACK-permitted, timestamps, window scale), SYN-ACK, ACK."""
        for from_client, flags in ((True, SYN), (False, SYN | ACK)):
            d = 0 if from_client else 1
            self._advance(from_client)
            opts = tcp_options(
                mss=self.mss,
                sack_permitted=self.sack,
                wscale=self.wscale,
                timestamps=(self._tsval(d), self.peer_ts[d]) if self.use_ts else None,
            )
            self._record(
                from_client,
                self.segment(from_client, flags, options=opts, window=64240 if from_client else 65160),
            )
            self.nxt[d] = (self.nxt[d] + 1) & _MASK
        self.send_segment(True, ACK)

    def chunks(self, data: bytes) -> list[bytes]:
        """`data` cut into MSS-sized segment payloads."""
        n = self.seg_size
        return [data[i : i + n] for i in range(0, len(data), n)] or [b""]

    def send(self, from_client: bool, data: bytes, *, peer_ack: bool = True) -> None:
        """Send `data` as MSS-sized segments (PSH on the last); the peer ACKs every second one
        and, if `peer_ack`, the tail (otherwise its next data segment carries the ACK)."""
        parts = self.chunks(data)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            self.send_segment(from_client, ACK | (PSH if last else 0), part)
            if i % 2 == 1 and not last:
                self.send_segment(not from_client, ACK)
        if peer_ack:
            self.send_segment(not from_client, ACK)

    def ack(self, from_client: bool) -> None:
        """A pure ACK from that side."""
        self.send_segment(from_client, ACK)

    def fin(self, from_client: bool = True) -> None:
        """Orderly close: FIN/ACK, FIN/ACK from the peer, final ACK."""
        self.send_segment(from_client, FIN | ACK)
        self.send_segment(not from_client, FIN | ACK)
        self.send_segment(from_client, ACK)

    def rst(self, from_client: bool = True) -> None:
        """Abort with RST/ACK from that side."""
        self.send_segment(from_client, RST | ACK)
