"""Sans-IO IPFIX / NetFlow v9 message encoder: columns of many flows in, ready-to-send messages out."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from celltap.ipfix.message import IPFIX_HEADER, IPFIX_VERSION, V9_HEADER, V9_VERSION
from celltap.ipfix.template import (
    SET_OPTIONS_TEMPLATE,
    SET_TEMPLATE,
    V9_SET_OPTIONS_TEMPLATE,
    V9_SET_TEMPLATE,
    FieldSpec,
    Template,
)

U32 = 1 << 32


def _coerce_column(f: FieldSpec, col: object, n: int) -> np.ndarray:
    """Turn a user column (numpy array, list of str addresses, ...) into values numpy can assign."""
    arr = np.asarray(col)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    dt = f.ie.data_type
    if arr.dtype.kind in "UO" and dt in ("ipv4Address", "ipv6Address"):
        if dt == "ipv4Address":
            return np.array([int(ipaddress.IPv4Address(str(a))) for a in arr], dtype=np.uint32)
        packed = b"".join(ipaddress.IPv6Address(str(a)).packed for a in arr)
        return np.frombuffer(packed, dtype="V16")
    if arr.dtype.kind == "U" and dt == "string":
        return np.char.encode(arr, "utf-8")
    if dt in ("ipv6Address", "macAddress", "octetArray") and arr.dtype == np.uint8 and arr.ndim == 2:
        return np.ascontiguousarray(arr).view(f"V{arr.shape[1]}").reshape(-1)
    return arr


def pack_fixed(template: Template, columns: Mapping[str, object], n: int) -> np.ndarray:
    """Records of a fixed-length template as a wire-order structured array (missing columns are 0)."""
    assert template.wire_dtype is not None
    wire = np.zeros(n, dtype=template.wire_dtype)
    for f in template.fields:
        if f.name not in columns:
            continue
        col = _coerce_column(f, columns[f.name], n)
        target = wire[f.name]
        if target.ndim == 2:  # odd reduced-size width: write the low bytes big-endian
            vals = col.astype(np.uint64)
            width = target.shape[1]
            for i in range(width):
                target[:, i] = (vals >> np.uint64(8 * (width - 1 - i))) & np.uint64(0xFF)
        else:
            wire[f.name] = col
    return wire


def _varlen_prefix(length: int) -> bytes:
    return bytes((length,)) if length < 255 else b"\xff" + struct.pack("!H", length)


def pack_variable(template: Template, columns: Mapping[str, object], n: int) -> list[bytes]:
    """Records of a template with variable-length fields, one bytes object each."""
    parts: list[list[bytes]] = []
    run: list[FieldSpec] = []

    def flush_run() -> None:
        if not run:
            return
        sub = Template(template.template_id, tuple(run))
        raw = pack_fixed(sub, columns, n).tobytes()
        w = sub.record_length or 0
        parts.append([raw[i * w : (i + 1) * w] for i in range(n)])
        run.clear()

    for f in template.fields:
        if not f.variable:
            run.append(f)
            continue
        flush_run()
        col = columns.get(f.name)
        values: Sequence = [b""] * n if col is None else col  # type: ignore[assignment]
        encoded = []
        for v in values:
            b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            if len(b) > 65535 - 3:
                b = b[:65532]
            encoded.append(_varlen_prefix(len(b)) + b)
        parts.append(encoded)
    flush_run()
    return [b"".join(p) for p in zip(*parts, strict=True)] if parts else []


@dataclass
class RefreshPolicy:
    """When templates are (re)sent: UDP refreshes by time and by message count; TCP sends once."""

    seconds: float | None = 60.0
    messages: int | None = 100


class MessageEncoder:
    """Build export messages for one observation domain, tracking sequence numbers and template refresh."""

    def __init__(
        self,
        domain: int,
        templates: Sequence[Template] = (),
        version: int = IPFIX_VERSION,
        mtu: int = 1400,
        refresh: RefreshPolicy | None = None,
    ) -> None:
        if version not in (IPFIX_VERSION, V9_VERSION):
            raise ValueError(f"can only export IPFIX (10) or NetFlow v9, not {version}")
        self.domain = domain
        self.version = version
        self.mtu = mtu
        self.refresh = refresh or RefreshPolicy()
        self.templates: dict[int, Template] = {t.template_id: t for t in templates}
        self.sequence = 0  # IPFIX: data records sent; v9: packets sent
        self._last_template_time: float | None = None
        self._messages_since_templates = 0
        self.boot_time: float | None = None

    @property
    def header_size(self) -> int:
        """Bytes of a message header for this version."""
        return IPFIX_HEADER.size if self.version == IPFIX_VERSION else V9_HEADER.size

    def add_template(self, template: Template) -> None:
        """Add or replace a template; it is sent with the next message."""
        self.templates[template.template_id] = template
        self._last_template_time = None

    def templates_due(self, now: float) -> bool:
        """True if the next message must carry the templates."""
        if self._last_template_time is None:
            return True
        r = self.refresh
        if r.seconds is not None and now - self._last_template_time >= r.seconds:
            return True
        return r.messages is not None and self._messages_since_templates >= r.messages

    def template_sets(self) -> bytes:
        """Template set(s) for every known template: one for templates, one for options templates."""
        out = b""
        for options in (False, True):
            ts = [t for t in self.templates.values() if t.is_options == options]
            if not ts:
                continue
            if self.version == IPFIX_VERSION:
                body = b"".join(t.record_bytes() for t in ts)
                sid = SET_OPTIONS_TEMPLATE if options else SET_TEMPLATE
            else:
                body = b"".join(t.v9_record_bytes() for t in ts)
                sid = V9_SET_OPTIONS_TEMPLATE if options else V9_SET_TEMPLATE
            out += struct.pack("!HH", sid, 4 + len(body)) + body
        return out

    def _header(self, length: int, now: float, records: int, count: int) -> bytes:
        if self.version == IPFIX_VERSION:
            h = IPFIX_HEADER.pack(IPFIX_VERSION, length, int(now) % U32, self.sequence % U32, self.domain)
            self.sequence += records
        else:
            if self.boot_time is None:
                self.boot_time = now
            uptime = int((now - self.boot_time) * 1000) % U32
            h = V9_HEADER.pack(V9_VERSION, count, uptime, int(now) % U32, self.sequence % U32, self.domain)
            self.sequence += 1
        return h

    def _message(self, body_sets: list[bytes], now: float, records: int, with_templates: bool) -> bytes:
        tsets = self.template_sets() if with_templates else b""
        if with_templates:
            self._last_template_time = now
            self._messages_since_templates = 0
        self._messages_since_templates += 1
        body = tsets + b"".join(body_sets)
        count = records + (len(self.templates) if with_templates else 0)
        return self._header(self.header_size + len(body), now, records, count) + body

    def templates_message(self, now: float) -> bytes:
        """A message holding only the templates (TCP session start, or an explicit refresh)."""
        return self._message([], now, 0, True)

    def withdrawal_message(self, template_ids: Sequence[int], now: float) -> bytes:
        """An IPFIX message withdrawing templates (field count 0); they are forgotten locally too."""
        if self.version != IPFIX_VERSION:
            raise ValueError("NetFlow v9 has no template withdrawal")
        sets = []
        for tid in template_ids:
            t = self.templates.pop(tid, None)
            sid = SET_OPTIONS_TEMPLATE if t is not None and t.is_options else SET_TEMPLATE
            sets.append(struct.pack("!HHHH", sid, 8, tid, 0))
        return self._message(sets, now, 0, False)

    def encode(
        self, template_id: int, columns: Mapping[str, object], now: float, count: int | None = None
    ) -> list[bytes]:
        """Encode many records (columns keyed by IANA name, all of one length) into messages."""
        t = self.templates[template_id]
        if count is None:
            count = len(np.asarray(next(iter(columns.values())))) if columns else 0
        set_id = template_id
        out: list[bytes] = []
        if t.record_length is not None:
            wire = pack_fixed(t, columns, count).tobytes()
            reclen = t.record_length
            pos = 0
            while pos < count:
                due = self.templates_due(now)
                room = self.mtu - self.header_size - 4 - (len(self.template_sets()) if due else 0)
                k = max(1, room // reclen)
                chunk = wire[pos * reclen : (pos + k) * reclen]
                n = len(chunk) // reclen
                out.append(self._message([struct.pack("!HH", set_id, 4 + len(chunk)) + chunk], now, n, due))
                pos += n
            return out
        recs = pack_variable(t, columns, count)
        i = 0
        while i < len(recs):
            due = self.templates_due(now)
            room = self.mtu - self.header_size - 4 - (len(self.template_sets()) if due else 0)
            batch: list[bytes] = [recs[i]]
            size = len(recs[i])
            i += 1
            while i < len(recs) and size + len(recs[i]) <= room:
                size += len(recs[i])
                batch.append(recs[i])
                i += 1
            payload = b"".join(batch)
            out.append(
                self._message([struct.pack("!HH", set_id, 4 + len(payload)) + payload], now, len(batch), due)
            )
        return out
