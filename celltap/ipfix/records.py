"""RecordBatch: decoded records of one template from one exporter and domain, and its wire form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from celltap.ipfix.decode import decode_records
from celltap.ipfix.encoder import pack_fixed, pack_variable
from celltap.ipfix.template import (
    VARLEN,
    FieldSpec,
    Template,
    template_from_set_bytes,
    template_set_bytes,
)

# NetFlow v5 records decode with a template of id 0 (v5 has none on the wire); a template set may only
# carry ids from 256 up, so the wire form to the analysis nodes gives it this one.
V5_WIRE_TEMPLATE_ID = 256


def normalized_template(template: Template) -> Template:
    """The same fields at full width (reduced-size fields widened), so scaled counters always fit; a
    template id below 256 (NetFlow v5's) becomes V5_WIRE_TEMPLATE_ID, so the set is valid IPFIX."""
    tid = template.template_id if template.template_id >= 256 else V5_WIRE_TEMPLATE_ID
    fields = []
    for f in template.fields:
        full = f.ie.default_length
        length = f.length if f.variable or full is None or f.length > full else full
        fields.append(FieldSpec(f.ie, length, f.name, f.scope))
    return Template(tid, tuple(fields), template.scope_count)


@dataclass
class RecordBatch:
    """Records of one template: `records` is a structured array whose field names are IANA names."""

    exporter: str
    domain: int
    template_id: int
    template: Template
    records: np.ndarray
    version: int = 10
    export_time: int = 0

    @property
    def fields(self) -> tuple[FieldSpec, ...]:
        """The template's field list (element, length, column name)."""
        return self.template.fields

    def __len__(self) -> int:
        return len(self.records)

    def to_wire(self) -> tuple[bytes, bytes]:
        """(template set bytes, packed records) for transport; fields are re-encoded at full width."""
        t = normalized_template(self.template)
        cols = {name: self.records[name] for name in self.records.dtype.names or ()}
        if t.record_length is not None:
            return template_set_bytes(t), pack_fixed(t, cols, len(self.records)).tobytes()
        return template_set_bytes(t), b"".join(pack_variable(t, cols, len(self.records)))

    @classmethod
    def from_wire(
        cls,
        exporter: str,
        domain: int,
        template_bytes: bytes,
        records_bytes: bytes,
        version: int = 10,
        export_time: int = 0,
    ) -> RecordBatch:
        """Rebuild a batch from `to_wire` output."""
        t = template_from_set_bytes(template_bytes)
        return cls(exporter, domain, t.template_id, t, decode_records(t, records_bytes), version, export_time)


__all__ = ["VARLEN", "RecordBatch", "normalized_template"]
