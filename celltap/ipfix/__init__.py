"""IPFIX (RFC 7011 / 5103) and NetFlow v9 / v5 codec: templates, batch decoding into numpy, encoding."""

from celltap.ipfix.decode import decode_fixed, decode_records, decode_variable
from celltap.ipfix.encoder import MessageEncoder, RefreshPolicy
from celltap.ipfix.errors import MalformedError
from celltap.ipfix.iana import InformationElement, Registry, default_registry, load_registry
from celltap.ipfix.records import RecordBatch
from celltap.ipfix.template import FieldSpec, Template, Withdrawal, template_from_names

__all__ = [
    "FieldSpec",
    "InformationElement",
    "MalformedError",
    "MessageEncoder",
    "RecordBatch",
    "RefreshPolicy",
    "Registry",
    "Template",
    "Withdrawal",
    "decode_fixed",
    "decode_records",
    "decode_variable",
    "default_registry",
    "load_registry",
    "template_from_names",
]
