"""The L7 loopback's input, sans-IO: bytes a writer sends back in, validated injections out.

Theory of operation. A loopback writer (an analyzer, a decoder of a tunnel ...) sends SF-TAP events
in the loopback7 interface's format (text or binary). Nothing it sends may end or bloat the cell: each
event is parsed and validated on its own, and a bad one costs only itself, counted in `drops` by
reason (the cell exports them as celltap_cell_loopback_dropped_events):

* `bad_header`   a text header line that is not `k=v,...` with a known event, or a binary header with
                 an unknown event / l3 code or a `from` that is neither endpoint: the line (text) or
                 the header and the body its `len` announces (binary) is skipped; framing holds.
* `header_too_long`  a text line longer than MAX_HEADER_LINE: discarded up to the next newline.
* `bad_address`  ip1 / ip2 empty, unparsable or not of the header's l3.
* `bad_port`     a port outside 0..65535 (or not an integer).
* `bad_hop`      a hop outside 0..254 (it is raised by one and must stay a byte).
* `bad_l3l4`     an l3 / l4 the cell does not carry (ipv4/ipv6, tcp/udp/icmp/icmpv6).
* `bad_len`      a DATA `len` that is not a non-negative integer: the header is skipped and, since
                 its body cannot be delimited, the bytes up to the next newline-terminated header are
                 read as headers again (they are counted as `bad_header` if they are not).
* `len_too_big`  a DATA `len` above `max_len`: its body is skipped without being buffered (the
                 stream stays framed), the event is dropped.
* `bad_time`     a time that is not a finite number >= 0: the event is kept with the cell's clock.
                 (counted, not dropped)

A parsed event is an `Injection` tuple ready for Abstractor.inject (hop already raised).
"""

from __future__ import annotations

import ipaddress
import math
import struct
from typing import NamedTuple

MAX_HEADER_LINE = 4096
DEFAULT_MAX_LEN = 1 << 20
_L3 = {"ipv4": 4, "ipv6": 6}
_L4 = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
_EVENTS = ("CREATED", "DATA", "DESTROYED")
_BIN_HEADER = struct.Struct("<16s16sqqHHBBHBBBBB3x")
_BIN_L3 = {0: 4, 41: 6}
_BIN_EVENTS = {0: "CREATED", 1: "DESTROYED", 2: "DATA"}


class Injection(NamedTuple):
    """One validated loopback event (addresses packed, hop already raised)."""

    event: str
    l3: int
    l4: int
    a1: bytes
    p1: int
    a2: bytes
    p2: int
    hop: int
    sender: int
    data: bytes
    time_ns: int  # 0: none given (the cell uses its clock)


class BadEvent(Exception):
    """An event that is dropped; args[0] is the drop reason."""


def _addr(text: str, l3: int) -> bytes:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        raise BadEvent("bad_address") from None
    if a.version != l3:
        raise BadEvent("bad_address")
    return a.packed


def _port(text: str) -> int:
    try:
        p = int(text)
    except ValueError:
        raise BadEvent("bad_port") from None
    if not 0 <= p <= 0xFFFF:
        raise BadEvent("bad_port")
    return p


def _hop(hop: int) -> int:
    if not 0 <= hop < 255:
        raise BadEvent("bad_hop")
    return hop + 1


class LoopbackParser:
    """Parse one loopback connection's byte stream (text or binary); feed() takes any split."""

    def __init__(self, fmt: str = "text", max_len: int = DEFAULT_MAX_LEN) -> None:
        self.binary = fmt == "binary"
        self.max_len = max_len
        self.drops: dict[str, int] = {}
        self._buf = bytearray()
        self._pending: tuple[dict[str, str], int] | None = None  # a DATA header waiting for its body
        self._skip = 0  # body bytes still to discard (len_too_big, bad binary header)
        self._skip_line = False  # discarding an over-long line up to its newline

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def feed(self, data: bytes) -> list[Injection]:
        """Consume bytes; return the valid events they completed (bad ones are counted)."""
        buf = self._buf
        buf += data
        out: list[Injection] = []
        pos = self._feed_binary(out) if self.binary else self._feed_text(out)
        del buf[:pos]
        return out

    # ------------------------------------------------------------------ text
    def _feed_text(self, out: list[Injection]) -> int:
        buf = self._buf
        n = len(buf)
        pos = 0
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            if self._pending is not None:
                fields, need = self._pending
                if n - pos < need:
                    break
                self._pending = None
                self._emit(out, fields, bytes(buf[pos : pos + need]))
                pos += need
                continue
            nl = buf.find(b"\n", pos)
            if self._skip_line:
                if nl < 0:
                    pos = n
                    break
                self._skip_line = False
                pos = nl + 1
                continue
            if nl < 0:
                if n - pos > MAX_HEADER_LINE:
                    self._drop("header_too_long")
                    self._skip_line = True
                    pos = n
                break
            line = bytes(buf[pos:nl])
            pos = nl + 1
            if len(line) > MAX_HEADER_LINE:
                self._drop("header_too_long")
                continue
            self._text_header(out, line)
        return pos

    def _text_header(self, out: list[Injection], line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return  # blank lines between events are tolerated
        try:
            text = line.decode("ascii")
            fields = dict(part.split("=", 1) for part in text.split(","))
        except (UnicodeDecodeError, ValueError):
            self._drop("bad_header")
            return
        event = fields.get("event")
        if event not in _EVENTS:
            self._drop("bad_header")
            return
        if event != "DATA":
            self._emit(out, fields, b"")
            return
        raw = fields.get("len", "0")
        if not raw.isdigit() or not raw.isascii():
            self._drop("bad_len")
            return
        need = int(raw)
        if need > self.max_len:
            self._drop("len_too_big")
            self._skip = need
            return
        if need:
            self._pending = (fields, need)
        else:
            self._emit(out, fields, b"")

    def _emit(self, out: list[Injection], fields: dict[str, str], data: bytes) -> None:
        try:
            out.append(self._validate(fields, data))
        except BadEvent as exc:
            self._drop(exc.args[0])

    def _validate(self, f: dict[str, str], data: bytes) -> Injection:
        l3 = _L3.get(f.get("l3", "ipv4"))
        l4 = _L4.get(f.get("l4", "tcp"))
        if l3 is None or l4 is None:
            raise BadEvent("bad_l3l4")
        a1 = _addr(f.get("ip1", ""), l3)
        a2 = _addr(f.get("ip2", ""), l3)
        p1 = _port(f.get("port1", "0"))
        p2 = _port(f.get("port2", "0"))
        try:
            hop = int(f.get("hop", "0"))
        except ValueError:
            raise BadEvent("bad_hop") from None
        hop = _hop(hop)
        event = f["event"]
        sender = 0
        if event == "DATA":
            sender = {"1": 1, "2": 2}.get(f.get("from", ""), 0)
            if not sender:
                raise BadEvent("bad_header")
        return Injection(event, l3, l4, a1, p1, a2, p2, hop, sender, data, self._time(f.get("time")))

    def _time(self, raw: str | None) -> int:
        if not raw:
            return 0
        try:
            t = float(raw)
        except ValueError:
            t = -1.0
        if not math.isfinite(t) or t < 0 or t > 1e11:
            self._drop("bad_time")
            return 0
        # both formats carry microseconds: float seconds * 1e9 could cross a microsecond (another uid)
        return round(t * 1e6) * 1000

    # ------------------------------------------------------------------ binary
    def _feed_binary(self, out: list[Injection]) -> int:
        buf = self._buf
        n = len(buf)
        pos = 0
        size = _BIN_HEADER.size
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            if n - pos < size:
                break
            a1, a2, sec, usec, _p1, _p2, ev, frm, length, hop, l3c, l4c, _m, _r = _BIN_HEADER.unpack_from(
                buf, pos
            )
            event = _BIN_EVENTS.get(ev)
            l3 = _BIN_L3.get(l3c)
            body = length if event == "DATA" else 0
            bad = "bad_header" if event is None or (event == "DATA" and frm > 1) else None
            if bad or l3 is None:
                # a DATA header's body follows it whatever else the header says: skip it, stay framed
                self._drop(bad or "bad_l3l4")
                self._skip = length if ev == 2 else 0
                pos += size
                continue
            if n - pos - size < body:
                break  # (binary `len` is 16 bits: a body never exceeds 65535 bytes)
            p1, p2 = struct.unpack_from(">HH", buf, pos + 48)
            data = bytes(buf[pos + size : pos + size + body])
            pos += size + body
            l4 = l4c if l4c in (6, 17, 1, 58) else None
            if l4 is None:
                self._drop("bad_l3l4")
                continue
            if hop >= 255:
                self._drop("bad_hop")
                continue
            alen = 4 if l3 == 4 else 16
            if sec < 0 or not 0 <= usec < 1_000_000 or sec > 10**11:
                self._drop("bad_time")
                t_ns = 0
            else:
                t_ns = (sec * 1_000_000 + usec) * 1000
            sender = frm + 1 if event == "DATA" else 0
            out.append(Injection(event, l3, l4, a1[:alen], p1, a2[:alen], p2, hop + 1, sender, data, t_ns))
        return pos
