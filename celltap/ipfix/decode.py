"""Batch decoding of data sets into numpy structured arrays (fixed fast path, variable slow path)."""

from __future__ import annotations

import numpy as np

from celltap.ipfix.errors import MalformedError
from celltap.ipfix.template import Template, odd_width_to_int


def convert_wire(template: Template, wire: np.ndarray) -> np.ndarray:
    """Wire-order (big-endian, reduced-size) records -> native records with full-width columns."""
    if template.simple_cast:
        return wire.astype(template.out_dtype)
    out = np.empty(len(wire), dtype=template.out_dtype)
    for f in template.fields:
        col = wire[f.name]
        if col.ndim == 2:
            out[f.name] = odd_width_to_int(col, out.dtype[f.name].kind == "i")
        else:
            out[f.name] = col
    return out


def decode_fixed(template: Template, data: bytes | memoryview) -> np.ndarray:
    """Decode a run of fixed-length records (trailing padding shorter than a record is ignored)."""
    assert template.wire_dtype is not None and template.record_length
    n = len(data) // template.record_length
    wire = np.frombuffer(data, dtype=template.wire_dtype, count=n)
    return convert_wire(template, wire)


def _varlen_value(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value start, value end) of the variable-length field at pos (RFC 7011 section 7)."""
    if pos >= end:
        raise MalformedError("truncated_record", "variable-length field past the set")
    n = buf[pos]
    pos += 1
    if n == 255:
        if pos + 2 > end:
            raise MalformedError("truncated_record", "variable-length field length past the set")
        n = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
    if pos + n > end:
        raise MalformedError("truncated_record", "variable-length value past the set")
    return pos, pos + n


def decode_variable(template: Template, data: bytes | memoryview) -> np.ndarray:
    """Decode records of a template with variable-length fields (the slow path, a loop per record)."""
    buf = bytes(data)
    end = len(buf)
    # Split the template into runs of fixed fields and single variable fields, so fixed columns are
    # still gathered with one numpy fancy-index per run rather than one struct call per value.
    runs: list[tuple[str, list, int]] = []
    for f in template.fields:
        if f.variable:
            runs.append(("var", [f], 0))
        elif runs and runs[-1][0] == "fix":
            runs[-1][1].append(f)
            runs[-1] = ("fix", runs[-1][1], runs[-1][2] + f.length)
        else:
            runs.append(("fix", [f], f.length))
    fix_offsets: list[list[int]] = [[] for _ in runs]
    var_values: list[list] = [[] for _ in runs]
    as_text = [r[0] == "var" and r[1][0].ie.data_type == "string" for r in runs]
    pos = 0
    minimum = template.min_record_length
    while end - pos >= minimum:
        start = pos
        try:
            for k, (kind, _fields, width) in enumerate(runs):
                if kind == "fix":
                    if pos + width > end:
                        raise MalformedError("truncated_record", "fixed fields past the set")
                    fix_offsets[k].append(pos)
                    pos += width
                else:
                    a, b = _varlen_value(buf, pos, end)
                    v = buf[a:b]
                    var_values[k].append(v.decode("utf-8", "replace") if as_text[k] else v)
                    pos = b
        except MalformedError:
            # A record cut short at the end of a set is padding only if nothing remains but zeros.
            if not any(buf[start:end]):
                break
            raise
        if pos == start:
            break
    n = min(len(var_values[k]) if r[0] == "var" else len(fix_offsets[k]) for k, r in enumerate(runs))
    out = np.empty(n, dtype=template.out_dtype)
    raw = np.frombuffer(buf, dtype=np.uint8)
    for k, (kind, fields, width) in enumerate(runs):
        if kind == "var":
            col = np.empty(n, dtype=object)
            col[:] = var_values[k][:n]
            out[fields[0].name] = col
            continue
        offs = np.asarray(fix_offsets[k][:n], dtype=np.int64)
        block = raw[offs[:, None] + np.arange(width)] if n else np.zeros((0, width), np.uint8)
        sub = Template(template.template_id, tuple(fields))
        wire = np.ascontiguousarray(block).view(sub.wire_dtype).reshape(n)
        part = convert_wire(sub, wire)
        for f in fields:
            out[f.name] = part[f.name]
    return out


def decode_records(template: Template, data: bytes | memoryview) -> np.ndarray:
    """Decode a data set's payload with its template (fixed or variable path)."""
    if template.record_length is not None:
        return decode_fixed(template, data)
    return decode_variable(template, data)


def count_records(template: Template, data: bytes | memoryview) -> int:
    """Number of records in a data set payload (exact for fixed templates, a decode for variable)."""
    if template.record_length is not None:
        return len(data) // template.record_length
    return len(decode_variable(template, data))
