"""Sans-IO collector core: datagrams / stream messages in, RecordBatches out, every drop counted.

Templates are scoped by (exporter, observation domain); data sets that share a template within one
call of `feed` are decoded together with one numpy call.

Nothing an exporter sends can stop the core: a malformed message, set or record costs that unit and is
counted by reason; an unexpected exception inside the decoder (a bug) costs the one message that
raised it and is counted as `internal_error`.

State is bounded in real memory.  Every template is charged what its Python and numpy structures
really cost (`template_cost`, calibrated with tracemalloc in tests/collector/test_state_limits.py),
every domain a fixed amount; the charge is held against a per-process budget and a per-exporter
budget, so one exporter (or one spoofed source address) cannot take the room of the others.
Domains silent for `domain_expiry` seconds are forgotten with their templates and sequence state.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from celltap.collector import stats as S
from celltap.collector.allowlist import AllowList
from celltap.collector.ratelog import RateLimitedLog
from celltap.collector.seq_state import SequenceState
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
    max_state_bytes: int = 256 << 20  # templates + domains of this process, in real memory
    max_exporter_bytes: int = 32 << 20  # the share one exporter address may hold
    max_domains_per_exporter: int = 1024
    domain_expiry: float = 3600.0  # a domain silent this long is forgotten (templates, sequence)


# What state really costs (bytes of Python and numpy objects), measured with tracemalloc: a template
# costs about 250 bytes per field for each numpy dtype it builds (the output dtype, and the wire dtype
# of a fixed-length template) plus its FieldSpecs, and about 1 KB of fixed overhead (Template,
# _Entry, dict slot).  tests/collector/test_state_limits.py checks the estimate against tracemalloc.
# A field whose element is not one the registry holds (an unknown id or enterprise element, a v9
# scope field) also pays for its own InformationElement and name: about 230 bytes more.
TEMPLATE_BASE_COST = 1024
TEMPLATE_FIELD_COST = 256
UNSHARED_ELEMENT_COST = 320
DOMAIN_COST = 1024  # _Domain, its dicts, the domain table slot and the exporter's entry
# A full process makes room by forgetting a domain silent this long (oldest created first, at most
# EVICT_SCAN looked at per new domain or template): see Ingestor._evict_idle.
EVICT_IDLE = 60.0
EVICT_SCAN = 64


def template_cost(t: Template, raw: bytes, registry: Registry | None = None) -> int:
    """Bytes of memory one stored template holds (an upper estimate, see the constants above)."""
    reg = registry or default_registry()
    dtypes = 2 if t.record_length is not None else 1
    unshared = sum(1 for f in t.fields if not reg.is_shared(f.ie))
    return (
        TEMPLATE_BASE_COST
        + TEMPLATE_FIELD_COST * dtypes * len(t.fields)
        + UNSHARED_ELEMENT_COST * unshared
        + len(raw)
    )


@dataclass
class _Entry:
    template: Template
    raw: bytes
    seen: float
    cost: int = 0


@dataclass
class _Domain:
    templates: dict[int, _Entry] = field(default_factory=dict)
    next_seq: int | None = None
    sampling: float = 1.0
    sampler_rates: dict[int, float] = field(default_factory=dict)
    last: float = 0.0  # time of the last message (idle expiry)
    unit: str = "records"  # what its sequence numbers count: records (IPFIX, v5) or packets (v9)


@dataclass
class _Exporter:
    """What one exporter address holds: its domains and the bytes charged for them."""

    domains: int = 0
    cost: int = 0


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
        seq_state: SequenceState | None = None,
    ) -> None:
        self.config = config or IngestConfig()
        self.store = store
        self.stats = stats or IngestStats()
        self.allow = allow or AllowList()
        self.registry = registry or default_registry()
        self._domains: dict[tuple[str, int], _Domain] = {}
        self._exporters: dict[str, _Exporter] = {}
        self.state_bytes = 0  # charged for all templates and domains (see template_cost)
        self.last_internal_error: BaseException | None = None  # for fuzzing harnesses and tests
        self.seq_state = seq_state
        self._touched: set[tuple[str, int]] = set()  # domains whose sequence moved since checkpoint()
        self._next_expire = 0.0
        if seq_state is not None:
            self._restore_sequences(seq_state)  # seq_state.load() was called by whoever made it
        self._store_misses: dict[tuple[str, int, int], float] = {}
        self._rlog = RateLimitedLog(log)
        # Per feed() call: data slices waiting to be decoded together, keyed by (exporter, domain, tid).
        self._pending: dict[tuple[str, int, int], list] = {}
        self._out: list[RecordBatch] = []

    # ------------------------------------------------------------------ state
    def template_count(self) -> int:
        """Templates known across all exporters and domains."""
        return sum(len(d.templates) for d in self._domains.values())

    def _charge(self, exporter: str, nbytes: int) -> str | None:
        """Charge nbytes to an exporter and the process; the drop reason if a budget would overflow."""
        ex = self._exporters.get(exporter)
        if nbytes > 0:
            if (ex.cost if ex else 0) + nbytes > self.config.max_exporter_bytes:
                return S.EXPORTER_LIMIT
            if self.state_bytes + nbytes > self.config.max_state_bytes:
                return S.MEMORY_LIMIT
        if ex is None:
            ex = self._exporters[exporter] = _Exporter()
        ex.cost += nbytes
        self.state_bytes += nbytes
        return None

    def _domain(self, exporter: str, domain: int, now: float) -> tuple[_Domain | None, str]:
        """The domain's state (created if the limits allow), or None and the reason it is refused."""
        key = (exporter, domain)
        d = self._domains.get(key)
        if d is not None:
            d.last = now
            return d, ""
        ex = self._exporters.get(exporter)
        if ex is not None and ex.domains >= self.config.max_domains_per_exporter:
            return None, S.EXPORTER_LIMIT
        if len(self._domains) >= self.config.max_domains and not self._evict_idle(now, exporter):
            return None, S.TOO_MANY_DOMAINS
        refused = self._charge(exporter, DOMAIN_COST)
        if refused == S.MEMORY_LIMIT and self._evict_idle(now, exporter):
            refused = self._charge(exporter, DOMAIN_COST)
        if refused:
            return None, refused
        self._exporters[exporter].domains += 1
        d = self._domains[key] = _Domain(last=now)
        return d, ""

    def _evict_idle(self, now: float, for_exporter: str) -> bool:
        """Make room in a full process by forgetting the oldest domain silent for EVICT_IDLE seconds.

        Only the first EVICT_SCAN domains (the oldest created) are looked at, so a flood of new domains
        costs constant work each.  A flood from many spoofed addresses fills the table with domains that
        never speak again: they give way to an exporter that does, within EVICT_IDLE seconds instead of
        the domain expiry.  Another exporter's live domains are never taken."""
        for key in itertools.islice(self._domains, EVICT_SCAN):
            d = self._domains[key]
            if key[0] != for_exporter and now - d.last > EVICT_IDLE:
                self._drop_domain(key)
                self.stats.domain_events[(key[0], "evicted")] += 1
                return True
        return False

    def _drop_domain(self, key: tuple[str, int]) -> None:
        """Forget a domain and its templates (their memory is credited back)."""
        self._flush_domain(key)
        d = self._domains.pop(key)
        exporter = key[0]
        for tid in list(d.templates):
            self._remove_template(exporter, key[1], d, tid, None)
        ex = self._exporters[exporter]
        ex.domains -= 1
        self._charge(exporter, -DOMAIN_COST)
        if ex.domains <= 0:
            del self._exporters[exporter]
        self._touched.discard(key)
        if self.seq_state is not None:
            self.seq_state.forget(exporter, key[1])

    def _remove_template(
        self, exporter: str, domain: int, dom: _Domain, tid: int, event: str | None, persist: bool = True
    ) -> None:
        """Forget one template; `event` (expired, withdrawn) is counted, the store forgets it too."""
        self._flush_key((exporter, domain, tid))
        e = dom.templates.pop(tid)
        self._charge(exporter, -e.cost)
        if event is not None:
            self.stats.template_events[(exporter, event)] += 1
        if persist and self.store is not None:
            self.store.delete(exporter, domain, tid)

    def forget_exporter(self, exporter: str) -> None:
        """Drop the state of an exporter (a TCP session ended: its templates end with it)."""
        for key in [k for k in self._domains if k[0] == exporter]:
            d = self._domains[key]
            for tid in list(d.templates):
                self._remove_template(exporter, key[1], d, tid, None, persist=False)
            self._drop_domain(key)

    def expire(self, now: float, force: bool = False) -> int:
        """Forget UDP templates not refreshed within the expiry and domains idle past theirs; returns how
        many templates expired.  The full scan runs at most every few seconds (lookups expire lazily)."""
        if not force and now < self._next_expire:
            return 0
        cfg = self.config
        self._next_expire = now + min(10.0, cfg.template_expiry / 10, cfg.domain_expiry / 10)
        n = 0
        for key, d in list(self._domains.items()):
            if now - d.last > cfg.domain_expiry:
                n += len(d.templates)
                for _tid in d.templates:
                    self.stats.template_events[(key[0], "expired")] += 1
                self._drop_domain(key)
                self.stats.domain_events[(key[0], "expired")] += 1
                continue
            for tid in [t for t, e in d.templates.items() if now - e.seen > cfg.template_expiry]:
                self._remove_template(key[0], key[1], d, tid, "expired")
                n += 1
        if len(self._store_misses) > 4096:
            self._store_misses = {
                k: t for k, t in self._store_misses.items() if now - t < cfg.store_miss_retry
            }
        return n

    def reset_pending(self) -> None:
        """Forget half-built output (after a failure outside feed(), before the worker loop resumes)."""
        self._pending.clear()
        self._out.clear()

    def close(self) -> None:
        """Save the sequence state and let the template store write what it holds (bounded in time)."""
        try:
            self.checkpoint()
        finally:
            if self.seq_state is not None:
                self.seq_state.close()
            close = getattr(self.store, "close", None)
            if callable(close):
                close()
            self.count_store_drops()

    def count_store_drops(self) -> None:
        """Move the template store's give-ups since the last call into the stats."""
        drops = getattr(self.store, "drops", None)
        if not isinstance(drops, dict):
            return
        seen = self.__dict__.setdefault("_store_drops_seen", {})
        for reason, n in drops.items():
            if n > seen.get(reason, 0):
                self.stats.store_dropped[reason] += n - seen.get(reason, 0)
                seen[reason] = n

    # ------------------------------------------------------------------ sequence state across restarts
    def _restore_sequences(self, state: SequenceState) -> None:
        """Take the sequence numbers a previous run saved, so what was lost while down is counted."""
        self.restore_sequences(state.loaded())

    def restore_sequences(self, entries: dict[tuple[str, int], tuple[int, str, float]]) -> None:
        """Take saved sequence numbers {(exporter, domain): (next, unit, seen)}; where a domain has one
        already (another copy of the state), the later of the two in sequence-number order wins."""
        for (exporter, domain), (next_seq, unit, seen) in entries.items():
            if time.time() - seen > self.config.domain_expiry:
                continue  # it would have expired: the domain starts fresh
            known = self._domains.get((exporter, domain))
            if known is not None and known.next_seq is not None and known.unit == unit:
                if (next_seq - known.next_seq) % U32 >= U32 // 2:
                    continue  # ours is later
            d, _ = self._domain(exporter, domain, seen)
            if d is None:
                continue  # beyond the limits: that domain starts fresh, as without saved state
            if known is None:
                self.stats.domain_events[(exporter, "restored")] += 1
            d.next_seq = next_seq
            d.unit = unit
            self._touched.add((exporter, domain))

    def checkpoint(self) -> None:
        """Save the sequence state of the domains that moved (call after their records were delivered)."""
        self.save_checkpoint(self.checkpoint_items())

    def checkpoint_items(self) -> list[tuple[str, int, int, str, float]]:
        """The sequence state of the domains that moved since the last call (a snapshot to save once
        the records decoded so far are safe: delivered, or journaled by the cluster router)."""
        if self.seq_state is None or not self._touched:
            return []
        doms = self._domains
        items = []
        for key in self._touched:
            d = doms.get(key)
            if d is not None and d.next_seq is not None:
                items.append((key[0], key[1], d.next_seq, d.unit, d.last))
        self._touched.clear()
        return items

    def save_checkpoint(self, items: list[tuple[str, int, int, str, float]]) -> None:
        """Save a snapshot from checkpoint_items() (thread-safe: the router may call it)."""
        if items and self.seq_state is not None:
            self.seq_state.save(items)

    # ------------------------------------------------------------------ templates
    def _add_template(self, exporter: str, domain: int, dom: _Domain, t: Template, now: float) -> None:
        raw = template_set_bytes(t)
        old = dom.templates.get(t.template_id)
        if old is not None and old.raw == raw:
            old.seen = now
            self.stats.template_events[(exporter, "refreshed")] += 1
            return
        cost = template_cost(t, raw, self.registry)
        refused = self._charge(exporter, cost - (old.cost if old is not None else 0))
        while refused == S.MEMORY_LIMIT and self._evict_idle(now, exporter):
            refused = self._charge(exporter, cost - (old.cost if old is not None else 0))
        if refused:
            self.stats.template_events[(exporter, "rejected")] += 1
            self.stats.dropped_sets[refused] += 1
            self._rlog.warn(
                f"template_memory:{refused}",
                f"exporter {exporter} domain {domain}: template {t.template_id} rejected ({refused}: "
                f"{self.state_bytes} bytes held, exporter limit {self.config.max_exporter_bytes}, "
                f"process limit {self.config.max_state_bytes})",
            )
            return
        if old is None and len(dom.templates) >= self.config.max_templates_per_domain:
            self._charge(exporter, -cost)
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
        dom.templates[t.template_id] = _Entry(t, raw, now, cost)
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
            self._remove_template(exporter, domain, dom, tid, "withdrawn")

    def _lookup(
        self, exporter: str, domain: int, dom: _Domain, tid: int, now: float, expires: bool
    ) -> Template | None:
        e = dom.templates.get(tid)
        if e is not None:
            if expires and now - e.seen > self.config.template_expiry:
                self._remove_template(exporter, domain, dom, tid, "expired")
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
        except Exception as exc:  # a store is written by other processes: never trust it blindly
            self._rlog.warn("store", f"stored template {key} unreadable: {exc}")
            return None
        if t.template_id != tid or (len(dom.templates) >= self.config.max_templates_per_domain):
            return None
        cost = template_cost(t, bytes(raw), self.registry)
        if self._charge(exporter, cost):
            return None
        dom.templates[tid] = _Entry(t, bytes(raw), now, cost)
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
        dom.unit = unit
        self._touched.add((exporter, domain))

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
        dom.last = now
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
            self._touched.add((exporter, odid))
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
        dom, refused = self._domain(exporter, h.domain, now)
        if dom is None:
            cfg = self.config
            self._drop_message(
                refused,
                len(buf),
                exporter,
                f"domain {h.domain} refused: limits are {cfg.max_domains} domains, "
                f"{cfg.max_domains_per_exporter} per exporter, {cfg.max_exporter_bytes} bytes per exporter, "
                f"{cfg.max_state_bytes} bytes in all ({self.state_bytes} held)",
            )
            return -1
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
            except Exception as exc:  # a decoder bug costs this one message, never the worker
                self._internal_error(exporter, len(buf), exc)
                continue
            if n < 0:
                continue  # refused (limits) and counted
            stats.messages[exporter] += 1
            stats.records[exporter] += n
            stats.bytes[exporter] += len(buf)
        for key in list(self._pending):
            try:
                self._flush_key(key)
            except Exception as exc:
                self._pending.pop(key, None)
                self.stats.dropped_sets[S.INTERNAL_ERROR] += 1
                self._internal_error(key[0], 0, exc, message=False)
        out, self._out = self._out, []
        return out

    def _internal_error(self, exporter: str, nbytes: int, exc: Exception, message: bool = True) -> None:
        """Count (and log, rate-limited, with the traceback) an exception the decoder did not expect."""
        self.last_internal_error = exc
        if message:
            self.stats.dropped_messages[S.INTERNAL_ERROR] += 1
            self.stats.dropped_bytes[S.INTERNAL_ERROR] += nbytes
        self._rlog.warn(
            f"internal:{type(exc).__name__}",
            f"decoder error on a message from {exporter} (dropped, counted as internal_error): {exc!r}",
            exc_info=exc,
        )


__all__ = ["IngestConfig", "Ingestor", "sampling_rate", "scale_counters"]
