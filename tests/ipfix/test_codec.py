"""Codec: registry, templates, batch decoding, encoding; checked against hand-packed bytes and the
independent `ipfix` package (0.9.7)."""

from __future__ import annotations

import importlib.util
import ipaddress
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celltap.ipfix import MalformedError, MessageEncoder, RecordBatch, decode_records, template_from_names
from celltap.ipfix.decode import decode_fixed
from celltap.ipfix.iana import default_registry, load_registry
from celltap.ipfix.message import V5_TEMPLATE, parse_header, split_sets
from celltap.ipfix.template import (
    Template,
    Withdrawal,
    make_fields,
    parse_template_set,
    parse_v9_template_set,
    template_from_set_bytes,
    template_set_bytes,
)

REPO = Path(__file__).resolve().parents[2]


def sets_of(msg: bytes) -> list[tuple[int, int, int]]:
    h = parse_header(msg)
    return split_sets(msg, 20 if h.version == 9 else 16, h.length, h.version == 9)


def decode_message(msg: bytes, templates: dict | None = None) -> dict[int, np.ndarray]:
    """Data of one message, templates kept in `templates` (test helper over the codec's pieces)."""
    h = parse_header(msg)
    templates = {} if templates is None else templates
    out = {}
    for sid, s, e in sets_of(msg):
        if sid in (0, 1):
            for t in parse_v9_template_set(msg, s, e, sid):
                templates[t.template_id] = t
        elif sid in (2, 3):
            for t in parse_template_set(msg, s, e, sid):
                templates[t.template_id] = t
        else:
            out[sid] = decode_records(templates[sid], msg[s:e])
    assert h.length == len(msg)
    return out


# ---------------------------------------------------------------- registry
def test_registry_has_common_elements_and_reverse_ones():
    r = default_registry()
    for eid, name, typ in [
        (1, "octetDeltaCount", "unsigned64"),
        (8, "sourceIPv4Address", "ipv4Address"),
        (27, "sourceIPv6Address", "ipv6Address"),
        (96, "applicationName", "string"),
        (136, "flowEndReason", "unsigned8"),
        (152, "flowStartMilliseconds", "dateTimeMilliseconds"),
        (34, "samplingInterval", "unsigned32"),
        (302, "selectorId", "unsigned64"),
    ]:
        ie = r.get(eid)
        assert (ie.name, ie.data_type) == (name, typ)
    rev = r.get(1, 29305)
    assert rev.name == "reverseOctetDeltaCount" and rev.data_type == "unsigned64"
    assert r.by_name("reversePacketDeltaCount").element_id == 2
    assert r.get(148, 29305).name == "ie29305_148"  # flowId has no reverse (RFC 5103 section 6.1)
    assert r.get(999, 9).name == "ie9_999"


def test_registry_agrees_with_the_ipfix_package_snapshot():
    """Names and types of every element both registries know must agree (tcpControlBits was widened)."""
    spec = Path(importlib.util.find_spec("ipfix").origin).with_name("iana.iespec")
    import re

    r = default_registry()
    checked = 0
    for line in spec.read_text().splitlines():
        m = re.match(r"(\w+)\((\d+)\)<(\w+)>", line.strip())
        if not m:
            continue
        ie = r.get(int(m.group(2)))
        assert ie.name == m.group(1)
        checked += 1
    assert checked > 380


def test_refresh_script_converts_iana_layout(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import refresh_iana_ipfix as refresh
    finally:
        sys.path.pop(0)
    text = (
        "ElementID,Name,Abstract Data Type,Data Type Semantics,Status,Description,Units,Range,"
        "Additional Information,Reference,Revision,Date\n"
        '1,octetDeltaCount,unsigned64,deltaCounter,current,"The number, of octets",octets,,,'
        "[RFC5102],0,\n"
        "105-127,Assigned for NetFlow v9 compatibility,,,,,,,,[RFC3954],,\n"
        "96,applicationName,string,default,current,name,,,,[RFC6759],0,\n"
    )
    rows = refresh.convert(text)
    assert rows == [
        ["1", "octetDeltaCount", "unsigned64", "deltaCounter", "octets"],
        ["96", "applicationName", "string", "default", ""],
    ]
    p = tmp_path / "r.csv"
    p.write_text(
        "ElementID,Name,Abstract Data Type,Data Type Semantics,Units\n"
        + "\n".join(",".join(r) for r in rows)
        + "\n"
    )
    reg = load_registry(p)
    assert reg.get(96).name == "applicationName" and reg.get(1, 29305).name == "reverseOctetDeltaCount"


# ---------------------------------------------------------------- hand-packed messages
def ipfix_msg(odid: int, seq: int, sets: list[bytes]) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), 1700000000, seq, odid) + body


def a_set(set_id: int, payload: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(payload)) + payload


def test_variable_length_first_field_enterprise_and_reduced_size():
    """applicationName first (the ipfix package drops such records), a PEN element, 3-byte counter."""
    tmpl = a_set(
        2,
        struct.pack("!HH", 400, 5)
        + struct.pack("!HH", 96, 65535)  # applicationName, variable
        + struct.pack("!HH", 8, 4)  # sourceIPv4Address
        + struct.pack("!HHI", 0x8000 | 1, 8, 29305)  # reverseOctetDeltaCount
        + struct.pack("!HHI", 0x8000 | 77, 2, 9)  # Cisco enterprise element 77
        + struct.pack("!HH", 1, 3),
    )  # octetDeltaCount, reduced to 3 bytes
    long_name = b"z" * 300
    recs = (
        b"\x04http"
        + bytes([10, 0, 0, 1])
        + struct.pack("!Q", 2**40 + 5)
        + b"\x00\x07"
        + b"\x01\x00\x01"
        + b"\xff"
        + struct.pack("!H", 300)
        + long_name
        + bytes([10, 0, 0, 2])
        + struct.pack("!Q", 9)
        + b"\xbe\xef"
        + b"\xff\xff\xff"
        + b"\x00"
        + bytes([10, 0, 0, 3])
        + struct.pack("!Q", 0)
        + b"\x00\x00"
        + b"\x00\x00\x00"
    )
    msg = ipfix_msg(5, 0, [tmpl, a_set(400, recs + b"\x00\x00")])  # 2 bytes of padding at the end
    r = decode_message(msg)[400]
    assert r.dtype.names == (
        "applicationName",
        "sourceIPv4Address",
        "reverseOctetDeltaCount",
        "ie9_77",
        "octetDeltaCount",
    )
    assert list(r["applicationName"]) == ["http", long_name.decode(), ""]
    assert [str(ipaddress.IPv4Address(int(x))) for x in r["sourceIPv4Address"]] == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]
    assert list(r["reverseOctetDeltaCount"]) == [2**40 + 5, 9, 0]
    assert list(r["octetDeltaCount"]) == [65537, 0xFFFFFF, 0]
    assert r["octetDeltaCount"].dtype == np.uint64
    assert [bytes(x) for x in r["ie9_77"]] == [b"\x00\x07", b"\xbe\xef", b"\x00\x00"]


def test_fixed_set_is_one_numpy_array_and_padding_ignored():
    t = template_from_names(
        300,
        [
            ("sourceIPv4Address", None),
            ("octetDeltaCount", 4),
            ("protocolIdentifier", None),
            ("ingressInterface", 2),
            ("bgpSourceAsNumber", 3),
        ],
    )
    assert t.record_length == 4 + 4 + 1 + 2 + 3
    raw = (
        b"".join(
            struct.pack("!IIBH", 0x0A000000 + i, i * 7, 17, i) + (i * 1000).to_bytes(3, "big")
            for i in range(1000)
        )
        + b"\0" * 5
    )
    r = decode_fixed(t, raw)
    assert len(r) == 1000
    assert (r["octetDeltaCount"] == np.arange(1000) * 7).all() and r["octetDeltaCount"].dtype == np.uint64
    assert (r["ingressInterface"] == np.arange(1000)).all() and r["ingressInterface"].dtype == np.uint32
    assert (r["bgpSourceAsNumber"] == np.arange(1000) * 1000).all()


def test_signed_reduced_size_sign_extends():
    t = Template(301, make_fields([(434, 3, 0)]))  # mibObjectValueInteger, signed32 sent in 3 bytes
    r = decode_fixed(t, b"\xff\xff\xfe" + b"\x00\x00\x05")
    assert list(r["mibObjectValueInteger"]) == [-2, 5]


def test_withdrawal_and_malformed_templates():
    items = parse_template_set(struct.pack("!HH", 300, 0) + struct.pack("!HH", 2, 0), 0, 8, 2)
    assert items == [Withdrawal(300, False), Withdrawal(2, False)]
    with pytest.raises(MalformedError):  # 65535 fields cannot fit in a set
        parse_template_set(struct.pack("!HH", 300, 65535) + struct.pack("!HH", 8, 4), 0, 8, 2)
    with pytest.raises(MalformedError):  # declared fields run past the set
        parse_template_set(struct.pack("!HH", 300, 3) + struct.pack("!HH", 8, 4), 0, 8, 2)
    with pytest.raises(MalformedError):  # options template with scope count 0
        parse_template_set(struct.pack("!HHH", 300, 1, 0) + struct.pack("!HH", 8, 4), 0, 10, 3)
    with pytest.raises(MalformedError):  # v9 template with zero fields
        parse_v9_template_set(struct.pack("!HH", 300, 0), 0, 4, 0)
    with pytest.raises(MalformedError):  # set length past the message
        split_sets(a_set(2, b"\0" * 8)[:4] + b"\0" * 4, 0, 8)
    with pytest.raises(MalformedError):
        parse_header(ipfix_msg(1, 0, [])[:10])


def test_v9_templates_options_and_scope_fields():
    tmpl = struct.pack("!HH", 260, 3) + struct.pack("!HHHHHH", 8, 4, 1, 4, 2, 4)
    opt = struct.pack("!HHH", 261, 4, 8) + struct.pack("!HH", 1, 4) + struct.pack("!HHHH", 34, 4, 35, 1)
    opt += b"\0\0"  # padding to a 4-byte boundary
    data = struct.pack("!III", 0x0A000001, 1500, 3) + struct.pack("!III", 0x0A000002, 40, 1)
    odata = struct.pack("!IIB", 0x0A0000FE, 100, 2) + b"\0\0\0"
    body = a_set(0, tmpl) + a_set(1, opt) + a_set(260, data) + a_set(261, odata)
    msg = struct.pack("!HHIIII", 9, 4, 1000, 1700000000, 7, 99) + body
    h = parse_header(msg)
    assert (h.version, h.sequence, h.domain) == (9, 7, 99)
    out = decode_message(msg)
    assert list(out[260]["octetDeltaCount"]) == [1500, 40] and list(out[260]["packetDeltaCount"]) == [3, 1]
    assert out[261].dtype.names == ("scopeSystem", "samplingInterval", "samplingAlgorithm")
    assert int(out[261]["samplingInterval"][0]) == 100


def test_v5_records():
    hdr = struct.pack("!HHIIIIBBH", 5, 2, 5000, 1700000000, 0, 41, 1, 2, (1 << 14) | 64)
    rec = [
        struct.pack(
            "!IIIHHIIIIHHBBBBHHBBH",
            0x0A000001 + i,
            0xC0A80001,
            0,
            3,
            4,
            10 + i,
            1000 + i,
            100,
            200,
            1234,
            80,
            0,
            0x1B,
            6,
            0,
            65000,
            65001,
            24,
            16,
            0,
        )
        for i in range(2)
    ]
    msg = hdr + b"".join(rec)
    h = parse_header(msg)
    assert (h.sequence, h.domain, h.sampling) == (41, 0x0102, 64)
    r = decode_fixed(V5_TEMPLATE, msg[24:])
    assert list(r["packetDeltaCount"]) == [10, 11] and list(r["octetDeltaCount"]) == [1000, 1001]
    assert list(r["bgpDestinationAsNumber"]) == [65001, 65001] and list(r["tcpControlBits"]) == [0x1B, 0x1B]
    with pytest.raises(MalformedError):
        parse_header(hdr[:2] + struct.pack("!H", 31) + hdr[4:] + b"".join(rec))


# ---------------------------------------------------------------- encoder round trips
def biflow_columns(n: int) -> dict:
    rng = np.random.default_rng(3)
    return {
        "sourceIPv4Address": rng.integers(0, 2**32, n, dtype=np.uint32),
        "destinationIPv4Address": rng.integers(0, 2**32, n, dtype=np.uint32),
        "sourceTransportPort": rng.integers(0, 65536, n, dtype=np.uint16),
        "destinationTransportPort": rng.integers(0, 65536, n, dtype=np.uint16),
        "protocolIdentifier": rng.integers(0, 256, n, dtype=np.uint8),
        "octetDeltaCount": rng.integers(0, 2**63, n, dtype=np.uint64),
        "packetDeltaCount": rng.integers(0, 2**40, n, dtype=np.uint64),
        "reverseOctetDeltaCount": rng.integers(0, 2**63, n, dtype=np.uint64),
        "reversePacketDeltaCount": rng.integers(0, 2**40, n, dtype=np.uint64),
        "flowStartMilliseconds": rng.integers(1.6e12, 1.8e12, n, dtype=np.uint64),
        "flowEndMilliseconds": rng.integers(1.6e12, 1.8e12, n, dtype=np.uint64),
        "flowEndReason": rng.integers(1, 6, n, dtype=np.uint8),
        "applicationName": [f"app{i}" * (i % 7) for i in range(n)],
    }


def test_biflow_export_roundtrip_many_messages():
    from celltap.ipfix.export import biflow_templates

    enc = MessageEncoder(9, biflow_templates(), mtu=512)
    cols = biflow_columns(500)
    msgs = enc.encode(256, cols, 1700000000.0)
    assert len(msgs) > 10 and all(len(m) <= 512 for m in msgs)
    seqs = [parse_header(m).sequence for m in msgs]
    parts, templates = [], {}
    for m in msgs:
        for sid, s, e in sets_of(m):
            if sid == 2:
                templates.update({t.template_id: t for t in parse_template_set(m, s, e, sid)})
            else:
                parts.append(decode_records(templates[sid], m[s:e]))
    r = np.concatenate(parts)
    assert seqs == list(np.cumsum([0] + [len(p) for p in parts])[:-1])  # IPFIX counts records before
    for name, col in cols.items():
        assert list(r[name]) == list(col), name


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    (1, 8),
                    (1, 4),
                    (1, 2),
                    (1, 3),
                    (2, 8),
                    (2, 5),
                    (8, 4),
                    (4, 1),
                    (96, 65535),
                    (95, 65535),
                    (27, 16),
                    (56, 6),
                    (152, 8),
                    (434, 4),
                    (7, 2),
                ]
            ),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 40),
    st.integers(0, 2**32),
)
def test_property_roundtrip_any_template(fields, n, seed):
    """Any mix of fixed, reduced-size, variable and reverse fields survives encode -> decode -> to_wire."""
    specs = [(eid, ln, 29305 if rev and eid not in (95, 96) else 0) for (eid, ln), rev in fields]
    t = Template(500, make_fields(specs))
    rng = np.random.default_rng(seed)
    cols: dict = {}
    for f in t.fields:
        if f.variable:
            cols[f.name] = [
                bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8)) for _ in range(n)
            ]
            if f.ie.data_type == "string":
                cols[f.name] = ["é" * int(rng.integers(0, 5)) for _ in range(n)]
        elif f.ie.data_type in ("ipv6Address", "macAddress"):
            cols[f.name] = rng.integers(0, 256, (n, f.length), dtype=np.uint8)
        else:
            signed = f.ie.data_type.startswith("signed")
            bits = 8 * f.length - (1 if signed else 0)
            lo = -(2**bits) if signed else 0
            if bits >= 63:
                cols[f.name] = rng.integers(0, 2**63, n, dtype=np.uint64)
            else:
                cols[f.name] = rng.integers(lo, 2**bits, n, dtype=np.int64)
    enc = MessageEncoder(1, [t], mtu=1400)
    msgs = enc.encode(500, cols, 0.0, count=n)
    known: dict = {}
    parts = [d[500] for d in (decode_message(m, known) for m in msgs) if 500 in d]
    r = np.concatenate(parts) if parts else np.empty(0, t.out_dtype)
    assert len(r) == n

    for f in t.fields:
        if f.ie.data_type in ("ipv6Address", "macAddress"):
            assert [bytes(x) for x in r[f.name]] == [bytes(x) for x in cols[f.name]]
        else:
            assert list(r[f.name]) == list(cols[f.name]), f.name
    b = RecordBatch("192.0.2.1", 1, 500, t, r)
    again = RecordBatch.from_wire("192.0.2.1", 1, *b.to_wire())
    for f in t.fields:
        assert [bytes(x) if isinstance(x, np.void) else x for x in again.records[f.name]] == [
            bytes(x) if isinstance(x, np.void) else x for x in r[f.name]
        ], f.name


def test_template_set_bytes_roundtrip_including_v9_scope():
    t = template_from_names(260, [("observationDomainId", None), ("samplingInterval", None)], scope_count=1)
    assert template_from_set_bytes(template_set_bytes(t)).record_bytes() == t.record_bytes()
    raw = struct.pack("!HHH", 261, 4, 4) + struct.pack("!HHHH", 1, 4, 34, 4)
    v9 = parse_v9_template_set(raw, 0, 14, 1)[0]
    again = template_from_set_bytes(template_set_bytes(v9))
    assert again.names == ["scopeSystem", "samplingInterval"] and again.scope_count == 1


# ---------------------------------------------------------------- independent decoder
def test_ipfix_package_decodes_our_export():
    """The `ipfix` package (its own parser and registry) reads what our encoder writes."""
    import ipfix.ie
    import ipfix.message

    ipfix.ie.clear_infomodel()
    ipfix.ie.use_iana_default()
    ipfix.ie.use_5103_default()
    t = template_from_names(
        256,
        [
            ("sourceIPv4Address", None),
            ("destinationIPv4Address", None),
            ("sourceTransportPort", None),
            ("protocolIdentifier", None),
            ("octetDeltaCount", None),
            ("reverseOctetDeltaCount", None),
            ("packetDeltaCount", 4),
            ("flowEndMilliseconds", None),
            ("applicationName", None),
        ],
    )
    enc = MessageEncoder(17, [t])
    cols = biflow_columns(60)
    msgs = enc.encode(256, cols, 1700000000.0)
    got = []
    mb = ipfix.message.MessageBuffer()  # one buffer: it keeps templates from message to message
    for m in msgs:
        mb.from_bytes(m)
        assert mb.odid == 17
        got.extend(mb.namedict_iterator())
    assert len(got) == 60
    for i, rec in enumerate(got):
        assert int(ipaddress.IPv4Address(rec["sourceIPv4Address"])) == cols["sourceIPv4Address"][i]
        assert rec["octetDeltaCount"] == cols["octetDeltaCount"][i]
        assert rec["reverseOctetDeltaCount"] == cols["reverseOctetDeltaCount"][i]
        assert rec["packetDeltaCount"] == cols["packetDeltaCount"][i] % 2**32
        assert rec["applicationName"] == cols["applicationName"][i]
        assert int(rec["flowEndMilliseconds"].timestamp() * 1000) == cols["flowEndMilliseconds"][i]
