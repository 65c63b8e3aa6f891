"""SF-TAP text interface format: a sans-IO decoder (bytes in, events out) and an encoder.

The stream is line-framed: a header line, then `len` body bytes for DATA. A header line that does not
parse (a field without `=`, an unknown event, `from` other than 1 or 2, a non-number) costs that one
event: it is counted in `dropped` by reason and skipped; if it names a `len`, that many body bytes are
skipped with it, so the next header is found again. A line longer than MAX_HEADER_LINE is discarded
up to its newline. Nothing the peer sends raises: the stream resynchronises on the next good line.
"""

from __future__ import annotations

from collections import Counter

from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, MAX_CACHED_FLOWS, Event, FlowId, WireError

MAX_HEADER_LINE = 4096  # a real header line is ~150 bytes; anything longer means we lost framing
MAX_TIME = 1e11  # seconds since the epoch (year 5138): larger, negative, inf or nan is a bad header

_EVENT_NAMES = {b"CREATED": CREATED, b"DATA": DATA, b"DESTROYED": DESTROYED}
_MATCH_NAMES = {b"up": "up", b"down": "down", b"none": "none"}
_SENDERS = {b"from=1": 1, b"from=2": 2}


def _fields(text: bytes) -> dict[bytes, bytes]:
    """`k=v,k=v` as a dict; a part without `=` is a WireError."""
    out = {}
    for part in text.split(b","):
        key, eq, value = part.partition(b"=")
        if not eq:
            raise WireError(f"header field without '=': {part[:100]!r}")
        out[key] = value
    return out


def _parse_flow(prefix: bytes) -> FlowId:
    fields = _fields(prefix)
    try:
        flow = FlowId(
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
    if not (0 <= flow.port1 <= 0xFFFF and 0 <= flow.port2 <= 0xFFFF and 0 <= flow.hop <= 0xFF):
        raise WireError(f"port or hop out of range in header {prefix[:200]!r}")
    return flow


class TextDecoder:
    """Turn the text byte stream into Events; feed() may be called with any split of the stream.

    `body=False` reads a `body: no` interface: DATA headers carry `len` but no bytes follow, so the
    events have empty `data` and the length in `length`. Bad header lines are counted in `dropped`
    (reason -> events), which the owner drains.
    """

    def __init__(self, body: bool = True) -> None:
        self.body = body
        self._buf = bytearray()
        self._pending: Event | None = None
        self._need = 0
        self._skip = 0  # body bytes of a dropped DATA event still to discard
        self._discarding = False  # inside an over-long header line: discard up to its newline
        # The flow part of the header (everything before ",event=") is the flow key: parsing it once
        # per flow instead of once per event is most of the decoder's speed.
        self._flows: dict[bytes, FlowId] = {}
        self.dropped: Counter[str] = Counter()

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
        find = buf.find
        pending = self._pending
        need = self._need
        flows = self._flows
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
            if self._skip:
                step = min(self._skip, n - pos)
                pos += step
                self._skip -= step
                if self._skip:
                    break
            nl = find(b"\n", pos)
            if self._discarding:
                if nl < 0:
                    pos = n
                    break
                self._discarding = False
                pos = nl + 1
                continue
            if nl < 0:
                if n - pos > MAX_HEADER_LINE:
                    self.dropped["header_too_long"] += 1
                    self._discarding = True
                    pos = n
                break
            if nl - pos > MAX_HEADER_LINE:
                self.dropped["header_too_long"] += 1
                pos = nl + 1
                continue
            cut = find(b",event=", pos, nl)
            if cut >= 0:
                # Fast path for the cell's field order: DATA,from=F,match=M,len=N,time=T, a known flow
                key = bytes(buf[pos:cut])
                flow = flows.get(key)
                if flow is not None and buf[cut + 7 : cut + 17] == b"DATA,from=":
                    parts = bytes(buf[cut + 7 : nl]).rstrip(b"\r").split(b",")
                    if (
                        len(parts) == 5
                        and parts[1] in _SENDERS
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
                                _SENDERS[parts[1]],
                                b"",
                                _MATCH_NAMES.get(parts[2][6:], "none"),
                            )
                            length = int(parts[3][4:])
                        except ValueError:
                            length = -1
                        if length >= 0 and 0.0 <= ev.time < MAX_TIME:
                            pos = nl + 1
                            if length and body:
                                pending = ev
                                need = length
                            else:
                                ev.length = length
                                append(ev)
                            continue
            line = bytes(buf[pos:nl])
            pos = nl + 1
            try:
                ev, length = self._header(line)
            except WireError:
                self._drop(line)
                continue
            if ev is None:
                continue
            if length and body:
                pending = ev
                need = length
            else:
                ev.length = length
                append(ev)
        self._pending = pending
        self._need = need
        del buf[:pos]
        return out

    def _drop(self, line: bytes) -> None:
        """Count a bad header line and skip the body it announces, if it announces one."""
        stripped = line.rstrip(b"\r")
        if b",event=DATA," in stripped and b",from=" in stripped:
            sender = stripped.partition(b",from=")[2].partition(b",")[0]
            reason = "bad_from" if sender.isdigit() and int(sender) not in (1, 2) else "bad_header"
        else:
            reason = "bad_header"
        self.dropped[reason] += 1
        if self.body and b",event=DATA," in stripped:
            size = stripped.partition(b",len=")[2].partition(b",")[0]
            if size.isdigit() and len(size) < 10:
                self._skip = int(size)

    def _header(self, line: bytes) -> tuple[Event | None, int]:
        """Parse one header line into (event, len); (None, 0) for a blank line; WireError if bad."""
        cut = line.find(b",event=")
        if cut < 0:
            if not line.strip():
                return None, 0  # blank lines between events are tolerated
            raise WireError(f"header without event: {line[:200]!r}")
        key = line[:cut]
        rest = line[cut + 7 :].rstrip(b"\r")
        flows = self._flows
        flow = flows.get(key)
        if flow is None:
            flow = _parse_flow(key)
            if len(flows) >= MAX_CACHED_FLOWS:
                flows.clear()  # UDP flows never end: bound the cache, re-parsing is cheap
            flows[key] = flow
        try:
            fields = _fields(b"event=" + rest)
            kind = _EVENT_NAMES[fields[b"event"]]
            tval = fields.get(b"time")
            t = float(tval) if tval else 0.0
            if not 0.0 <= t < MAX_TIME:
                raise WireError(f"time out of range in {rest[:200]!r}")
            if kind is DATA:
                sender = int(fields[b"from"])
                ev = Event(DATA, key, flow, t, sender, b"", fields.get(b"match", b"none").decode())
                length = int(fields.get(b"len", b"0"))
                if sender not in (1, 2) or length < 0:
                    raise WireError(f"bad from or len in {rest[:200]!r}")
                return ev, length
            return Event(kind, key, flow, t, reason=fields.get(b"reason", b"").decode()), 0
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise WireError(f"bad event header {rest[:200]!r}: {exc}") from None


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
