"""UdpExchange: datagrams between the two ends of a Link with plausible timing."""

from __future__ import annotations

import random

from celltap.loadgen.link import Link
from celltap.loadgen.packets import PROTO_UDP, udp


class UdpExchange:
    """Frames of one UDP conversation; `frames` holds (ts_ns relative to start, frame bytes)."""

    def __init__(
        self,
        link: Link,
        cport: int,
        sport: int,
        rng: random.Random,
        *,
        rtt_ns: int | None = None,
        start_ns: int = 0,
    ) -> None:
        self.link, self.ports, self.rng = link, (cport, sport), rng
        self.rtt = rtt_ns if rtt_ns is not None else rng.randint(1_000_000, 40_000_000)
        self.t = start_ns
        self.frames: list[tuple[int, bytes]] = []
        self._last: bool | None = None

    def datagram(self, from_client: bool, payload: bytes) -> bytes:
        """The UDP segment (not yet a frame) in that direction."""
        src, dst = self.link.addrs(from_client)
        sp, dp = self.ports if from_client else self.ports[::-1]
        return udp(src, dst, sp, dp, payload)

    def send(self, from_client: bool, payload: bytes, *, delay_ns: int | None = None) -> None:
        """Emit one datagram; the default gap is half an RTT when the direction turns."""
        if delay_ns is not None:
            self.t += delay_ns
        elif self._last is not None:
            self.t += self.rtt // 2 if self._last != from_client else self.rng.randint(10_000, 200_000)
        self._last = from_client
        self.frames.append(
            (self.t, self.link.frame(from_client, PROTO_UDP, self.datagram(from_client, payload)))
        )
