"""IPFIX / NetFlow v9 templates: parsing, encoding and the numpy dtypes a template implies."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from celltap.ipfix.errors import MalformedError
from celltap.ipfix.iana import FIXED_SIZES, V9_VENDOR_PEN, InformationElement, Registry, default_registry

VARLEN = 65535
SET_TEMPLATE = 2
SET_OPTIONS_TEMPLATE = 3
V9_SET_TEMPLATE = 0
V9_SET_OPTIONS_TEMPLATE = 1
MAX_FIELDS = 512  # no real exporter comes close; a bound keeps a hostile template cheap to reject

# NetFlow v9 options scope field types (RFC 3954 section 6.1) have their own small namespace.
V9_SCOPE_NAMES = {
    1: "scopeSystem",
    2: "scopeInterface",
    3: "scopeLineCard",
    4: "scopeCache",
    5: "scopeTemplate",
}

_INT_TYPES = {
    "unsigned8": "u",
    "unsigned16": "u",
    "unsigned32": "u",
    "unsigned64": "u",
    "signed8": "i",
    "signed16": "i",
    "signed32": "i",
    "signed64": "i",
    "dateTimeSeconds": "u",
    "dateTimeMilliseconds": "u",
    "dateTimeMicroseconds": "u",
    "dateTimeNanoseconds": "u",
    "ipv4Address": "u",
    "boolean": "u",
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One template field: element, encoded length (65535 = variable) and the column name it decodes to."""

    ie: InformationElement
    length: int
    name: str
    scope: bool = False

    @property
    def variable(self) -> bool:
        """True for a variable-length field (RFC 7011 section 7)."""
        return self.length == VARLEN


def _wire_and_out(ie: InformationElement, length: int) -> tuple[object, object, bool]:
    """(wire dtype, output dtype, needs a per-field conversion) for a fixed-length field."""
    dt = ie.data_type
    letter = _INT_TYPES.get(dt)
    if letter is not None and length <= 8:
        full = max(FIXED_SIZES.get(dt, 8), length)
        if length in (1, 2, 4, 8):
            return f">{letter}{length}", f"{letter}{full if full in (1, 2, 4, 8) else 8}", False
        # Reduced-size encoding to an odd width (RFC 7011 section 6.2): numpy has no u3/u5.
        return ("u1", (length,)), f"{letter}8", True
    if dt in ("float32", "float64") and length in (4, 8):
        return f">f{length}", "f8" if dt == "float64" else f"f{length}", False
    if dt == "string":
        return f"S{length}", f"S{length}", False
    return f"V{length}", f"V{length}", False


def odd_width_to_int(raw: np.ndarray, signed: bool) -> np.ndarray:
    """Combine an (n, width) big-endian byte array into int64/uint64 values."""
    width = raw.shape[1]
    val = np.zeros(raw.shape[0], dtype=np.uint64)
    for i in range(width):
        val = (val << np.uint64(8)) | raw[:, i].astype(np.uint64)
    if signed:
        shift = np.uint64(64 - 8 * width)
        return ((val << shift).view(np.int64)) >> np.int64(64 - 8 * width)
    return val


@dataclass
class Template:
    """A (options) template: id, fields and derived record layout."""

    template_id: int
    fields: tuple[FieldSpec, ...]
    scope_count: int = 0
    wire_dtype: np.dtype | None = field(init=False, default=None)
    out_dtype: np.dtype = field(init=False)
    record_length: int | None = field(init=False, default=None)
    min_record_length: int = field(init=False, default=0)
    simple_cast: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        wire, out = [], []
        self.simple_cast = True
        minimum = 0
        for f in self.fields:
            if f.variable:
                out.append((f.name, object))
                minimum += 1
                continue
            w, o, convert = _wire_and_out(f.ie, f.length)
            wire.append((f.name, w))
            out.append((f.name, o))
            minimum += f.length
            if convert:
                self.simple_cast = False
        self.out_dtype = np.dtype(out)
        self.min_record_length = minimum
        if any(f.variable for f in self.fields):
            self.wire_dtype = None
            self.record_length = None
        else:
            self.wire_dtype = np.dtype(wire)
            self.record_length = self.wire_dtype.itemsize

    @property
    def is_options(self) -> bool:
        """True for an options template (it has scope fields)."""
        return self.scope_count > 0

    @property
    def names(self) -> list[str]:
        """Column names in template order."""
        return [f.name for f in self.fields]

    def record_bytes(self) -> bytes:
        """The IPFIX template record (header + field specifiers), as sent in a set."""
        out = bytearray()
        if self.is_options:
            out += struct.pack("!HHH", self.template_id, len(self.fields), self.scope_count)
        else:
            out += struct.pack("!HH", self.template_id, len(self.fields))
        for f in self.fields:
            if f.ie.enterprise:
                out += struct.pack("!HHI", f.ie.element_id | 0x8000, f.length, f.ie.enterprise)
            else:
                out += struct.pack("!HH", f.ie.element_id, f.length)
        return bytes(out)

    def set_bytes(self) -> bytes:
        """A complete IPFIX template (or options template) set holding only this template."""
        rec = self.record_bytes()
        sid = SET_OPTIONS_TEMPLATE if self.is_options else SET_TEMPLATE
        return struct.pack("!HH", sid, 4 + len(rec)) + rec

    def v9_record_bytes(self) -> bytes:
        """The NetFlow v9 template record (options templates use v9's scope layout)."""
        if self.is_options:
            n = self.scope_count
            scope = b"".join(struct.pack("!HH", f.ie.element_id, f.length) for f in self.fields[:n])
            opts = b"".join(struct.pack("!HH", _v9_type(f.ie), f.length) for f in self.fields[n:])
            return struct.pack("!HHH", self.template_id, len(scope), len(opts)) + scope + opts
        body = b"".join(struct.pack("!HH", _v9_type(f.ie), f.length) for f in self.fields)
        return struct.pack("!HH", self.template_id, len(self.fields)) + body


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_2`, `base_3`... whichever is not yet in `taken` (which it joins).

    Column names must be unique for numpy; a template may repeat an element, and a hostile one may
    also name a field like the suffixed form of another (A, A, A_2), so a plain counter is not enough.
    """
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def make_fields(
    specs: list[tuple[int, int, int]],
    registry: Registry | None = None,
    scope_count: int = 0,
    taken: set[str] | None = None,
) -> tuple[FieldSpec, ...]:
    """FieldSpecs from (element id, length, enterprise) triples, with unique column names."""
    reg = registry or default_registry()
    taken = set() if taken is None else taken
    out = []
    for i, (eid, length, pen) in enumerate(specs):
        ie = reg.get(eid, pen)
        if not length_fits(ie, length):
            # Sent at a length its type cannot have (a counter of 16 bytes or of variable length): keep
            # the bytes, but not under the element's name, which every consumer reads as a number.
            ie = reg.as_octets(ie)
        out.append(FieldSpec(ie, length, unique_name(ie.name, taken), scope=i < scope_count))
    return tuple(out)


def length_fits(ie: InformationElement, length: int) -> bool:
    """Whether an element of this type can be encoded in `length` bytes (reduced-size included)."""
    dt = ie.data_type
    if dt in _INT_TYPES:
        return 1 <= length <= 8
    if dt in ("float32", "float64"):
        return length in (4, 8)
    if dt == "ipv6Address":
        return length == 16
    if dt == "macAddress":
        return length == 6
    return True


def template_from_names(
    template_id: int,
    columns: list[tuple[str, int | None]],
    registry: Registry | None = None,
    scope_count: int = 0,
) -> Template:
    """Build a template from (IANA name, length or None for the element's full/variable length)."""
    reg = registry or default_registry()
    specs = []
    for name, length in columns:
        ie = reg.by_name(name)
        if length is None:
            length = ie.default_length if ie.default_length is not None else VARLEN
        specs.append((ie.element_id, length, ie.enterprise))
    return Template(template_id, make_fields(specs, reg, scope_count), scope_count)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A template withdrawal (field count 0); template_id 2/3 withdraws all (options) templates."""

    template_id: int
    options: bool


def parse_template_set(
    buf: bytes | memoryview, start: int, end: int, set_id: int, registry: Registry | None = None
) -> list[Template | Withdrawal]:
    """Parse the records of an IPFIX (2) or options (3) template set between start and end."""
    reg = registry or default_registry()
    options = set_id == SET_OPTIONS_TEMPLATE
    out: list[Template | Withdrawal] = []
    pos = start
    while end - pos >= 4:
        tid, count = struct.unpack_from("!HH", buf, pos)
        pos += 4
        if count == 0:
            out.append(Withdrawal(tid, options))
            continue
        if tid < 256:
            raise MalformedError("bad_template", f"template id {tid} < 256")
        if count > MAX_FIELDS:
            raise MalformedError("bad_template", f"template {tid} declares {count} fields")
        scope = 0
        if options:
            if end - pos < 2:
                raise MalformedError("truncated_template", f"options template {tid}")
            (scope,) = struct.unpack_from("!H", buf, pos)
            pos += 2
            if scope == 0 or scope > count:
                raise MalformedError("bad_template", f"options template {tid} scope count {scope}")
        specs = []
        for _ in range(count):
            if end - pos < 4:
                raise MalformedError("truncated_template", f"template {tid} runs past its set")
            eid, length = struct.unpack_from("!HH", buf, pos)
            pos += 4
            pen = 0
            if eid & 0x8000:
                if end - pos < 4:
                    raise MalformedError("truncated_template", f"template {tid} enterprise number")
                (pen,) = struct.unpack_from("!I", buf, pos)
                pos += 4
                eid &= 0x7FFF
            if length == 0:
                raise MalformedError("bad_template", f"template {tid} field {eid} has length 0")
            specs.append((eid, length, pen))
        out.append(Template(tid, make_fields(specs, reg, scope), scope))
    return out


def v9_spec(field_type: int, length: int) -> tuple[int, int, int]:
    """(element id, length, enterprise) of a v9 field: vendor types (>= 32768) map to V9_VENDOR_PEN."""
    if field_type & 0x8000:
        return field_type & 0x7FFF, length, V9_VENDOR_PEN
    return field_type, length, 0


def _v9_type(ie: InformationElement) -> int:
    return ie.element_id | 0x8000 if ie.enterprise == V9_VENDOR_PEN else ie.element_id


def _check_v9_lengths(tid: int, specs: list[tuple[int, int, int]]) -> None:
    """A v9 field of 0 bytes carries nothing (RFC 7011 forbids it in IPFIX), and a template of only such
    fields would make records of 0 bytes, which no data set can be divided into: reject it."""
    for eid, length, _ in specs:
        if length == 0:
            raise MalformedError("bad_template", f"v9 template {tid} field {eid} has length {length}")


def parse_v9_template_set(
    buf: bytes | memoryview, start: int, end: int, set_id: int, registry: Registry | None = None
) -> list[Template]:
    """Parse a NetFlow v9 template (0) or options template (1) flowset."""
    reg = registry or default_registry()
    out: list[Template] = []
    pos = start
    if set_id == V9_SET_TEMPLATE:
        while end - pos >= 4:
            tid, count = struct.unpack_from("!HH", buf, pos)
            pos += 4
            if tid < 256 or count == 0 or count > MAX_FIELDS:
                raise MalformedError("bad_template", f"v9 template {tid} with {count} fields")
            if end - pos < 4 * count:
                raise MalformedError("truncated_template", f"v9 template {tid} runs past its flowset")
            specs = [v9_spec(*struct.unpack_from("!HH", buf, pos + 4 * i)) for i in range(count)]
            pos += 4 * count
            _check_v9_lengths(tid, specs)
            out.append(Template(tid, make_fields(specs, reg), 0))
        return out
    while end - pos >= 6:
        tid, scope_len, opt_len = struct.unpack_from("!HHH", buf, pos)
        pos += 6
        if tid < 256 or scope_len % 4 or opt_len % 4 or scope_len == 0:
            raise MalformedError("bad_template", f"v9 options template {tid}")
        if end - pos < scope_len + opt_len:
            raise MalformedError("truncated_template", f"v9 options template {tid}")
        n_scope, n_opt = scope_len // 4, opt_len // 4
        if n_scope + n_opt > MAX_FIELDS:
            raise MalformedError(
                "bad_template", f"v9 options template {tid} declares {n_scope + n_opt} fields"
            )
        raw = [struct.unpack_from("!HH", buf, pos + 4 * i) for i in range(n_scope + n_opt)]
        pos += scope_len + opt_len
        _check_v9_lengths(tid, [(t, ln, 0) for t, ln in raw])
        fields = []
        taken: set[str] = set()
        for t, ln in raw[:n_scope]:
            # v9 scope types are not IANA ids: give them their own names and an integer/bytes type.
            kind = "unsigned32" if ln in (1, 2, 4, 8) else "octetArray"
            ie = InformationElement(t, -1, V9_SCOPE_NAMES.get(t, f"scope{t}"), kind)
            fields.append(FieldSpec(ie, ln, unique_name(ie.name, taken), scope=True))
        fields.extend(make_fields([v9_spec(t, ln) for t, ln in raw[n_scope:]], reg, taken=taken))
        out.append(Template(tid, tuple(fields), n_scope))
        if end - pos < 4:
            break  # the rest is padding
    return out


def template_set_bytes(template: Template) -> bytes:
    """A self-describing set for storage and transport: IPFIX (ids 2/3) unless it has v9 scope fields."""
    if any(f.ie.enterprise < 0 for f in template.fields):
        rec = template.v9_record_bytes()
        return struct.pack("!HH", V9_SET_OPTIONS_TEMPLATE, 4 + len(rec)) + rec
    return template.set_bytes()


def template_from_set_bytes(data: bytes, registry: Registry | None = None) -> Template:
    """Inverse of template_set_bytes: the single template held in a stored set."""
    set_id, length = struct.unpack_from("!HH", data, 0)
    if length > len(data):
        raise MalformedError("truncated_template", "stored template set")
    if set_id in (V9_SET_TEMPLATE, V9_SET_OPTIONS_TEMPLATE):
        items: list = parse_v9_template_set(data, 4, length, set_id, registry)
    else:
        items = parse_template_set(data, 4, length, set_id, registry)
    if len(items) != 1 or not isinstance(items[0], Template):
        raise MalformedError("bad_template", "stored set must hold exactly one template")
    return items[0]
