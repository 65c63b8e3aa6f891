"""The event model shared by the text and binary decoders: flow identity plus one abstracted TCP/UDP event."""

from __future__ import annotations

from dataclasses import dataclass, field

CREATED = "CREATED"
DATA = "DATA"
DESTROYED = "DESTROYED"


@dataclass(frozen=True, slots=True)
class FlowId:
    """A flow as the cell names it: endpoint 1 is the lexicographically smaller (address, port)."""

    ip1: str
    ip2: str
    port1: int
    port2: int
    hop: int
    l3: str  # "ipv4" | "ipv6"
    l4: str  # "tcp" | "udp" | "icmp" | "icmpv6"
    uid: str = ""  # the connection's uid (celltap.flowid): set by the cell in-process, else by FlowTable
    # the connection's first-packet time (seconds) the uid was derived from; not part of the identity.
    # The L7 loopback writer re-injects a handed-on stream with it, so the stream keeps the uid.
    start: float = field(default=0.0, compare=False)

    def endpoint(self, which: int) -> tuple[str, int]:
        """Return (ip, port) of endpoint 1 or 2."""
        return (self.ip1, self.port1) if which == 1 else (self.ip2, self.port2)


class Event:
    """One interface event; `key` is an opaque hashable flow key, `flow` its decoded identity."""

    __slots__ = ("data", "event", "flow", "key", "length", "match", "reason", "sender", "time")

    def __init__(
        self,
        event: str,
        key: bytes,
        flow: FlowId,
        time: float,
        sender: int = 0,
        data: bytes = b"",
        match: str = "none",
        reason: str = "",
        length: int = -1,
    ) -> None:
        self.event = event
        self.key = key
        self.flow = flow
        self.time = time
        self.sender = sender  # 1 or 2 for DATA: which endpoint sent the bytes
        self.data = data
        self.match = match
        self.reason = reason
        # the DATA event's `len`: the size of `data`, or of the bytes a `body: no` interface left out
        self.length = len(data) if length < 0 else length

    def __repr__(self) -> str:
        return (
            f"Event({self.event}, {self.flow.ip1}:{self.flow.port1}<->{self.flow.ip2}:{self.flow.port2},"
            f" from={self.sender}, len={self.length}, reason={self.reason!r})"
        )


class WireError(ValueError):
    """The byte stream from the interface is not in the documented format (the connection must reset)."""


MAX_CACHED_FLOWS = 200_000
