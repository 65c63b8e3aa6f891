"""SF-TAP text interface format: a sans-IO decoder (bytes in, events out) and an encoder."""

from __future__ import annotations

from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, MAX_CACHED_FLOWS, Event, FlowId, WireError

MAX_HEADER_LINE = 4096  # a real header line is ~150 bytes; anything longer means we lost framing

_EVENT_NAMES = {b"CREATED": CREATED, b"DATA": DATA, b"DESTROYED": DESTROYED}
_MATCH_NAMES = {b"up": "up", b"down": "down", b"none": "none"}


def _parse_flow(prefix: bytes) -> FlowId:
    fields = dict(part.split(b"=", 1) for part in prefix.split(b","))
    try:
        return FlowId(
            ip1=fields[b"ip1"].decode(),
            ip2=fields[b"ip2"].decode(),
            port1=int(fields.get(b"port1", b"0")),  # ICMP headers have no ports
            port2=int(fields.get(b"port2", b"0")),
            hop=int(fields.get(b"hop", b"0")),
            l3=fields.get(b"l3", b"ipv4").decode(),
            l4=fields.get(b"l4", b"tcp").decode(),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"bad flow fields in header {prefix[:200]!r}: {exc}") from None


class TextDecoder:
    """Turn the text byte stream into Events; feed() may be called with any split of the stream.

    `body=False` reads a `body: no` interface: DATA headers carry `len` but no bytes follow, so the
    events have empty `data` and the length in `length`.
    """

    def __init__(self, body: bool = True) -> None:
        self.body = body
        self._buf = bytearray()
        self._pending: Event | None = None
        self._need = 0
        # The flow part of the header (everything before ",event=") is the flow key: parsing it once
        # per flow instead of once per event is most of the decoder's speed.
        self._flows: dict[bytes, FlowId] = {}

    def forget(self, key: bytes) -> None:
        """Drop the cached identity of a finished flow."""
        self._flows.pop(key, None)

    def feed(self, data: bytes) -> list[Event]:
        """Consume bytes and return every event completed by them."""
        buf = self._buf
        buf += data
        out: list[Event] = []
        append = out.append
        pos = 0
        n = len(buf)
        flows = self._flows
        find = buf.find
        pending = self._pending
        need = self._need
        body = self.body
        while True:
            if pending is not None:
                if n - pos < need:
                    break
                pending.data = bytes(buf[pos : pos + need])
                pending.length = need
                pos += need
                append(pending)
                pending = None
            nl = find(b"\n", pos)
            if nl < 0:
                if n - pos > MAX_HEADER_LINE:
                    raise WireError(f"header line longer than {MAX_HEADER_LINE} bytes")
                break
            if nl - pos > MAX_HEADER_LINE:
                raise WireError(f"header line longer than {MAX_HEADER_LINE} bytes")
            cut = find(b",event=", pos, nl)
            if cut < 0:
                line = bytes(buf[pos:nl]).strip()
                pos = nl + 1
                if not line:
                    continue  # blank lines between events are tolerated
                raise WireError(f"header without event: {line[:200]!r}")
            key = bytes(buf[pos:cut])
            rest = bytes(buf[cut + 7 : nl]).rstrip(b"\r")
            pos = nl + 1
            flow = flows.get(key)
            if flow is None:
                if len(flows) >= MAX_CACHED_FLOWS:
                    flows.clear()  # UDP flows never end: bound the cache, re-parsing is cheap
                flow = flows[key] = _parse_flow(key)
            if rest[:10] == b"DATA,from=":
                # Fast path for the cell's field order: DATA,from=F,match=M,len=N,time=T
                parts = rest.split(b",")
                if (
                    len(parts) == 5
                    and parts[2][:6] == b"match="
                    and parts[3][:4] == b"len="
                    and parts[4][:5] == b"time="
                ):
                    try:
                        ev = Event(
                            DATA,
                            key,
                            flow,
                            float(parts[4][5:]),
                            int(parts[1][5:]),
                            b"",
                            _MATCH_NAMES.get(parts[2][6:], "none"),
                        )
                        length = int(parts[3][4:])
                    except ValueError as exc:
                        raise WireError(f"bad event header {rest[:200]!r}: {exc}") from None
                    if length and body:
                        pending = ev
                        need = length
                    else:
                        ev.length = length
                        append(ev)
                    continue
            try:
                fields = dict(part.split(b"=", 1) for part in (b"event=" + rest).split(b","))
                kind = _EVENT_NAMES[fields[b"event"]]
                tval = fields.get(b"time")
                t = float(tval) if tval else 0.0
                if kind is DATA:
                    ev = Event(
                        DATA, key, flow, t, int(fields[b"from"]), b"", fields.get(b"match", b"none").decode()
                    )
                    length = int(fields.get(b"len", b"0"))
                    if length and body:
                        pending = ev
                        need = length
                    else:
                        ev.length = length
                        append(ev)
                else:
                    append(Event(kind, key, flow, t, reason=fields.get(b"reason", b"").decode()))
            except (KeyError, ValueError, UnicodeDecodeError) as exc:
                raise WireError(f"bad event header {rest[:200]!r}: {exc}") from None
        self._pending = pending
        self._need = need
        del buf[:pos]
        return out


def encode_text(
    flow: FlowId,
    event: str,
    time: float,
    sender: int = 0,
    data: bytes = b"",
    match: str = "none",
    reason: str = "NORMAL",
) -> bytes:
    """Encode one event in the text format (the cell's job; used by tests, benches and replays).

    As SF-TAP writes it: no ports for ICMP, `time` printed with %.17g.
    """
    ports = f"port1={flow.port1},port2={flow.port2}," if flow.l4 in ("tcp", "udp") else ""
    head = f"ip1={flow.ip1},ip2={flow.ip2},{ports}hop={flow.hop},l3={flow.l3},l4={flow.l4},event={event}"
    if event == DATA:
        return f"{head},from={sender},match={match},len={len(data)},time={time:.17g}\n".encode() + data
    if event == DESTROYED:
        return f"{head},reason={reason},time={time:.17g}\n".encode()
    return f"{head},time={time:.17g}\n".encode()
