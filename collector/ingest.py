"""Sans-IO collector core: datagrams / stream messages in, RecordBatches out, every drop counted.

Templates are scoped by (exporter, observation domain); data sets that share a template within one
call of `feed` are decoded together with one numpy call.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from celltap.collector import stats as S
from celltap.collector.allowlist import AllowList
from celltap.collector.ratelog import RateLimitedLog
from celltap.collector.stats import IngestStats
from celltap.collector.template_store import TemplateStore

from celltap.ipfix.decode import decode_fixed, decode_variable
from celltap.ipfix.errors import MalformedError
from celltap.ipfix.iana import Registry, default_registry
from celltap.ipfix.message import (
    IPFIX_HEADER,
    IPFIX_VERSION,
    V5_HEADER,
    V5_TEMPLATE,
    V5_VERSION,
    V9_HEADER,
    V9_VERSION,
    Header,
    parse_header,
    split_sets,
)
from celltap.ipfix.records import RecordBatch
from celltap.ipfix.template import (
    SET_OPTIONS_TEMPLATE,
    SET_TEMPLATE,
    V9_SET_OPTIONS_TEMPLATE,
    V9_SET_TEMPLATE,
    Template,
    Withdrawal,
    parse_template_set,
    parse_v9_template_set,
    template_from_set_bytes,
    template_set_bytes,
)

log = logging.getLogger("celltap.collector")
_IPFIX_UNPACK = IPFIX_HEADER.unpack_from
_SET_UNPACK = struct.Struct("!HH").unpack_from
U32 = 1 << 32
SCALED_WORDS = ("octet", "packet")


@dataclass
class IngestConfig:
    """Knobs of the ingestion core."""

    template_expiry: float = 1800.0  # UDP templates not refreshed for this long are forgotten
    max_templates_per_domain: int = 1024
    max_domains: int = 16384
    store_miss_retry: float = 5.0  # seconds before asking the store again about a missing template


@dataclass
class _Entry:
    template: Template
    raw: bytes
    seen: float


@dataclass
class _Domain:
    templates: dict[int, _Entry] = field(default_factory=dict)
    next_seq: int | None = None
    sampling: float = 1.0
    sampler_rates: dict[int, float] = field(default_factory=dict)


def sampling_rate(records: np.ndarray) -> tuple[float | None, dict[int, float]]:
    """The sampling rate an options data batch announces (domain-wide, and per sampler/selector id)."""
    names = records.dtype.names or ()
    if not len(records):
        return None, {}
    rate = None
    if "samplingInterval" in names:
        rate = records["samplingInterval"].astype(np.float64)
    elif "samplerRandomInterval" in names:
        rate = records["samplerRandomInterval"].astype(np.float64)
    elif "samplingPacketInterval" in names and "samplingPacketSpace" in names:
        iv = records["samplingPacketInterval"].astype(np.float64)
        rate = (iv + records["samplingPacketSpace"]) / np.maximum(iv, 1)
    elif "samplingSize" in names and "samplingPopulation" in names:
        rate = records["samplingPopulation"] / np.maximum(records["samplingSize"].astype(np.float64), 1)
    elif "samplingProbability" in names:
        p = records["samplingProbability"].astype(np.float64)
        rate = np.where(p > 0, 1.0 / np.where(p > 0, p, 1), 1.0)
    if rate is None:
        return None, {}
    rate = np.maximum(rate, 1.0)
    per_id: dict[int, float] = {}
    for id_name in ("samplerId", "selectorId", "ie48"):
        if id_name in names:
            per_id = {int(i): float(r) for i, r in zip(records[id_name], rate, strict=True)}
            break
    return float(rate[-1]), per_id


def scale_counters(records: np.ndarray, template: Template, dom: _Domain) -> None:
    """Multiply octet and packet counters in place by the domain's (or record's sampler's) rate."""
    names = records.dtype.names or ()
    rate: float | np.ndarray = dom.sampling
    for id_name in ("samplerId", "selectorId"):
        if dom.sampler_rates and id_name in names:
            ids = records[id_name]
            rate = np.array([dom.sampler_rates.get(int(i), dom.sampling) for i in np.unique(ids)])
            rate = rate[np.searchsorted(np.unique(ids), ids)]
            break
    if np.isscalar(rate) and rate == 1.0:
        return
    rates = np.asarray(rate, dtype=np.float64)
    # Integral rates (the usual 1-in-N) multiply in integers: float64 would round counters above 2**53.
    integral = bool(np.all(rates == np.floor(rates)))
    for f in template.fields:
        lname = f.name.lower()
        if f.ie.semantics in ("deltaCounter", "totalCounter") and any(w in lname for w in SCALED_WORDS):
            col = records[f.name]
            if col.dtype.kind not in "ui":
                continue
            if integral:
                records[f.name] = col * rates.astype(col.dtype)
            else:
                records[f.name] = np.rint(col * rates).astype(col.dtype)


class Ingestor:
    """The collector's state machine for any number of exporters (sans-IO)."""

    def __init__(
        self,
        config: IngestConfig | None = None,
        store: TemplateStore | None = None,
        stats: IngestStats | None = None,
        allow: AllowList | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.config = config or IngestConfig()
        self.store = store
        self.stats = stats or IngestStats()
        self.allow = allow or AllowList()
        self.registry = registry or default_registry()
        self._domains: dict[tuple[str, int], _Domain] = {}
        self._store_misses: dict[tuple[str, int, int], float] = {}
        self._rlog = RateLimitedLog(log)
        # Per feed() call: data slices waiting to be decoded together, keyed by (exporter, domain, tid).
        self._pending: dict[tuple[str, int, int], list] = {}
        self._out: list[RecordBatch] = []

    # ------------------------------------------------------------------ state
    def template_count(self) -> int:
        """Templates known across all exporters and domains."""
        return sum(len(d.templates) for d in self._domains.values())

    def _domain(self, exporter: str, domain: int) -> _Domain | None:
        key = (exporter, domain)
        d = self._domains.get(key)
        if d is not None:
            return d
        if len(self._domains) >= self.config.max_domains:
            return None
        d = self._domains[key] = _Domain()
        return d

    def forget_exporter(self, exporter: str) -> None:
        """Drop the state of an exporter (a TCP session ended: its templates end with it)."""
        for key in [k for k in self._domains if k[0] == exporter]:
            self._flush_domain(key)
            del self._domains[key]

    def expire(self, now: float) -> int:
        """Forget UDP templates not refreshed within the expiry; returns how many expired."""
        n = 0
        for (exporter, domain), d in self._domains.items():
            for tid in [t for t, e in d.templates.items() if now - e.seen > self.config.template_expiry]:
                del d.templates[tid]
                self.stats.template_events[(exporter, "expired")] += 1
                if self.store is not None:
                    self.store.delete(exporter, domain, tid)
                n += 1
        return n

    # ------------------------------------------------------------------ templates
    def _add_template(self, exporter: str, domain: int, dom: _Domain, t: Template, now: float) -> None:
        raw = template_set_bytes(t)
        old = dom.templates.get(t.template_id)
        if old is not None and old.raw == raw:
            old.seen = now
            self.stats.template_events[(exporter, "refreshed")] += 1
            return
        if old is None and len(dom.templates) >= self.config.max_templates_per_domain:
            self.stats.template_events[(exporter, "rejected")] += 1
            self.stats.dropped_sets[S.TOO_MANY_TEMPLATES] += 1
            self._rlog.warn(
                "template_flood",
                f"exporter {exporter} domain {domain}: more than "
                f"{self.config.max_templates_per_domain} templates; "
                f"template {t.template_id} rejected",
            )
            return
        self._flush_key((exporter, domain, t.template_id))
        dom.templates[t.template_id] = _Entry(t, raw, now)
        self.stats.template_events[(exporter, "updated" if old is not None else "added")] += 1
        if self.store is not None:
            self.store.put(exporter, domain, t.template_id, raw)

    def _withdraw(self, exporter: str, domain: int, dom: _Domain, w: Withdrawal) -> None:
        if w.template_id in (SET_TEMPLATE, SET_OPTIONS_TEMPLATE):  # "all (options) templates"
            ids = [tid for tid, e in dom.templates.items() if e.template.is_options == w.options]
        else:
            ids = [w.template_id] if w.template_id in dom.templates else []
            if not ids:
                self.stats.template_events[(exporter, "withdrawn_unknown")] += 1
        for tid in ids:
            self._flush_key((exporter, domain, tid))
            del dom.templates[tid]
            self.stats.template_events[(exporter, "withdrawn")] += 1
            if self.store is not None:
                self.store.delete(exporter, domain, tid)

    def _lookup(
        self, exporter: str, domain: int, dom: _Domain, tid: int, now: float, expires: bool
    ) -> Template | None:
        e = dom.templates.get(tid)
        if e is not None:
            if expires and now - e.seen > self.config.template_expiry:
                self._flush_key((exporter, domain, tid))
                del dom.templates[tid]
                self.stats.template_events[(exporter, "expired")] += 1
                if self.store is not None:
                    self.store.delete(exporter, domain, tid)
                return None
            return e.template
        if self.store is None:
            return None
        key = (exporter, domain, tid)
        last = self._store_misses.get(key)
        if last is not None and now - last < self.config.store_miss_retry:
            return None
        raw = self.store.get(exporter, domain, tid)
        if raw is None:
            if len(self._store_misses) > 65536:
                self._store_misses.clear()
            self._store_misses[key] = now
            return None
        try:
            t = template_from_set_bytes(raw, self.registry)
        except MalformedError as exc:
            self._rlog.warn("store", f"stored template {key} unreadable: {exc}")
            return None
        dom.templates[tid] = _Entry(t, bytes(raw), now)
        self.stats.template_events[(exporter, "restored")] += 1
        return t

    # ------------------------------------------------------------------ data
    def _drop_message(self, reason: str, nbytes: int, exporter: str, detail: str, cause: str = "") -> None:
        self.stats.dropped_messages[reason] += 1
        self.stats.dropped_bytes[reason] += nbytes
        # One log line per (reason, cause) and interval: causes are a small fixed set of codec reasons.
        self._rlog.warn(f"message:{reason}:{cause}", f"dropped message from {exporter}: {reason}: {detail}")

    def _drop_set(self, reason: str, nbytes: int, exporter: str, detail: str, cause: str = "") -> None:
        self.stats.dropped_sets[reason] += 1
        self.stats.dropped_bytes[reason] += nbytes
        self._rlog.warn(f"set:{reason}:{cause}", f"dropped set from {exporter}: {reason}: {detail}")

    def _add_data(
        self,
        exporter: str,
        domain: int,
        dom: _Domain,
        t: Template,
        payload: memoryview,
        version: int,
        export_time: int,
    ) -> int:
        """Queue a data set's payload; return its record count (raises MalformedError)."""
        key = (exporter, domain, t.template_id)
        if t.record_length is not None:
            n = len(payload) // t.record_length
            if n == 0:
                return 0
            chunk: object = payload[: n * t.record_length]
        else:
            chunk = decode_variable(t, payload)
            n = len(chunk)  # type: ignore[arg-type]
            if n == 0:
                return 0
        if t.is_options:
            arr = decode_fixed(t, chunk) if t.record_length is not None else chunk  # type: ignore[arg-type]
            rate, per_id = sampling_rate(arr)  # type: ignore[arg-type]
            if rate is not None:
                if rate != dom.sampling or per_id:
                    self._flush_domain((exporter, domain))  # data before this announcement keeps the old rate
                dom.sampling = rate
                dom.sampler_rates.update(per_id)
            self._out.append(RecordBatch(exporter, domain, t.template_id, t, arr, version, export_time))
            return n
        group = self._pending.get(key)
        if group is None:
            self._pending[key] = [t, version, export_time, chunk]
        else:
            group.append(chunk)
            group[2] = export_time
        return n

    def _flush_key(self, key: tuple[str, int, int]) -> None:
        group = self._pending.pop(key, None)
        if group is None:
            return
        t, version, export_time, *chunks = group
        if t.record_length is not None:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            records = decode_fixed(t, data)
        else:
            records = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        dom = self._domains.get((key[0], key[1]))
        if dom is not None:
            scale_counters(records, t, dom)
        self._out.append(RecordBatch(key[0], key[1], key[2], t, records, version, export_time))

    def _flush_domain(self, dkey: tuple[str, int]) -> None:
        for key in [k for k in self._pending if k[:2] == dkey]:
            self._flush_key(key)

    def _check_sequence(
        self, exporter: str, domain: int, dom: _Domain, seq: int, advance: int | None, unit: str
    ) -> None:
        expected = dom.next_seq
        if expected is not None:
            diff = (seq - expected) % U32
            if diff:
                if diff < U32 // 2:
                    self.stats.sequence_gaps[(exporter, domain)] += 1
                    self.stats.sequence_lost[(exporter, domain, unit)] += diff
                else:
                    self.stats.sequence_reordered[(exporter, domain)] += 1
        dom.next_seq = None if advance is None else (seq + advance) % U32

    def _ipfix_fast(self, exporter: str, buf: memoryview, now: float, expires: bool) -> int:
        """The common case without allocations beyond the queue entry: an IPFIX message holding only
        data sets of known, fresh, fixed-length templates.  Returns -1 (having changed nothing) for
        anything else, which the general path then handles."""
        _, length, etime, seq, odid = _IPFIX_UNPACK(buf, 0)
        if length > len(buf) or length < 16:
            return -1
        dom = self._domains.get((exporter, odid))
        if dom is None:
            return -1
        templates = dom.templates
        expiry = self.config.template_expiry
        found = []
        pos = 16
        while pos < length:
            if length - pos < 4:
                return -1
            sid, slen = _SET_UNPACK(buf, pos)
            e = templates.get(sid)
            if (
                slen < 4
                or pos + slen > length
                or e is None
                or e.template.record_length is None
                or e.template.scope_count
                or (expires and now - e.seen > expiry)
            ):
                return -1
            found.append((e.template, pos + 4, pos + slen))
            pos += slen
        records = 0
        pending = self._pending
        for t, start, end in found:
            reclen = t.record_length
            n = (end - start) // reclen
            if not n:
                continue
            records += n
            key = (exporter, odid, t.template_id)
            group = pending.get(key)
            chunk = buf[start : start + n * reclen]
            if group is None:
                pending[key] = [t, IPFIX_VERSION, etime, chunk]
            else:
                group.append(chunk)
                group[2] = etime
        if dom.next_seq == seq:
            dom.next_seq = (seq + records) % U32
        else:
            self._check_sequence(exporter, odid, dom, seq, records, "records")
        return records

    def _message(self, exporter: str, buf: memoryview, now: float, expires: bool) -> int:
        """Process one message; return how many records it held."""
        if len(buf) >= 16 and buf[1] == IPFIX_VERSION and buf[0] == 0:
            n = self._ipfix_fast(exporter, buf, now, expires)
            if n >= 0:
                return n
        h: Header = parse_header(buf)
        version = h.version
        dom = self._domain(exporter, h.domain)
        if dom is None:
            self._drop_message(
                S.TOO_MANY_DOMAINS,
                len(buf),
                exporter,
                f"more than {self.config.max_domains} exporter domains",
            )
            return 0
        if version == V5_VERSION:
            n = (h.length - V5_HEADER.size) // V5_TEMPLATE.record_length  # type: ignore[operator]
            dom.sampling = float(max(h.sampling, 1))
            self._add_data(
                exporter, h.domain, dom, V5_TEMPLATE, buf[V5_HEADER.size : h.length], version, h.export_time
            )
            self._check_sequence(exporter, h.domain, dom, h.sequence, n, "records")
            return n
        v9 = version == V9_VERSION
        sets = split_sets(buf, V9_HEADER.size if v9 else IPFIX_HEADER.size, h.length, v9)
        records = 0
        complete = True
        tpl_ids = (V9_SET_TEMPLATE, V9_SET_OPTIONS_TEMPLATE) if v9 else (SET_TEMPLATE, SET_OPTIONS_TEMPLATE)
        for sid, start, end in sets:
            if sid in tpl_ids:
                try:
                    if v9:
                        items: list = parse_v9_template_set(buf, start, end, sid, self.registry)
                    else:
                        items = parse_template_set(buf, start, end, sid, self.registry)
                except MalformedError as exc:
                    self.stats.template_events[(exporter, "malformed")] += 1
                    self._drop_set(S.MALFORMED, end - start + 4, exporter, str(exc), exc.reason)
                    continue
                for item in items:
                    if isinstance(item, Withdrawal):
                        self._withdraw(exporter, h.domain, dom, item)
                    else:
                        self._add_template(exporter, h.domain, dom, item, now)
            elif sid >= 256:
                t = self._lookup(exporter, h.domain, dom, sid, now, expires)
                if t is None:
                    complete = False
                    self._drop_set(
                        S.NO_TEMPLATE, end - start + 4, exporter, f"domain {h.domain} template {sid} unknown"
                    )
                    continue
                try:
                    records += self._add_data(
                        exporter, h.domain, dom, t, buf[start:end], version, h.export_time
                    )
                except MalformedError as exc:
                    complete = False
                    self._drop_set(
                        S.MALFORMED, end - start + 4, exporter, f"template {sid}: {exc}", exc.reason
                    )
            else:
                self._drop_set(S.RESERVED_SET, end - start + 4, exporter, f"set id {sid}")
        if v9:
            self._check_sequence(exporter, h.domain, dom, h.sequence, 1, "packets")
        else:
            self._check_sequence(
                exporter, h.domain, dom, h.sequence, records if complete else None, "records"
            )
        return records

    def feed(
        self, messages: Sequence[tuple[str, bytes | memoryview]], now: float, expires: bool = True
    ) -> list[RecordBatch]:
        """Decode a batch of (exporter address, message) pairs; `expires` is False for TCP sessions."""
        stats = self.stats
        for exporter, data in messages:
            buf = data if isinstance(data, memoryview) else memoryview(data)
            if not self.allow.allowed(exporter):
                self._drop_message(S.NOT_ALLOWED, len(buf), exporter, "exporter not in the allow-list")
                continue
            try:
                n = self._message(exporter, buf, now, expires)
            except MalformedError as exc:
                self._drop_message(S.MALFORMED, len(buf), exporter, str(exc), exc.reason)
                continue
            stats.messages[exporter] += 1
            stats.records[exporter] += n
            stats.bytes[exporter] += len(buf)
        for key in list(self._pending):
            self._flush_key(key)
        out, self._out = self._out, []
        return out


__all__ = ["IngestConfig", "Ingestor", "sampling_rate", "scale_counters"]
