"""The dns.log records a capture should give, derived without our parser: tshark finds the DNS messages
(UDP datagrams, TCP reassembled and de-framed), gives their raw bytes (`-T json -x`), its own
query/response pairing (`dns.response_to`) and round-trip time (`dns.time`); dnspython decodes each
message. The records we expect follow the field rules documented in docs/analyzers.md (Zeek's dns.log).
"""

from __future__ import annotations

import json
import subprocess

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

ZEEK_CLASSES = {1: "C_INTERNET", 3: "C_CHAOS", 4: "C_HESIOD", 254: "C_NONE", 255: "C_ANY"}


def _list(v: object) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def tshark_messages(pcap: str) -> list[dict]:
    """Every DNS message tshark finds, in capture order, with its frame facts and raw bytes."""
    out = subprocess.run(
        ["tshark", "-r", pcap, "-n", "-T", "json", "-x", "--no-duplicate-keys", "-Y", "dns"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    msgs = []
    for pkt in json.loads(out or "[]"):
        layers = pkt["_source"]["layers"]
        frame = layers["frame"]
        ip = layers.get("ip") or layers.get("ipv6")
        v6 = "ip" not in layers
        src = ip["ipv6.src" if v6 else "ip.src"]
        dst = ip["ipv6.dst" if v6 else "ip.dst"]
        if "icmp" in layers or "icmpv6" in layers:
            continue  # a DNS message quoted in an ICMP error (a reply to a closed port): not on a flow
        proto = "tcp" if "tcp" in layers else "udp"
        l4 = layers[proto]
        sport, dport = int(l4[f"{proto}.srcport"]), int(l4[f"{proto}.dstport"])
        raws = layers["dns_raw"]
        raws = raws if isinstance(raws[0], list) else [raws]
        dissected = _list(layers["dns"])
        for raw, d in zip(raws, dissected, strict=True):
            wire = bytes.fromhex(raw[0])
            if proto == "tcp":
                wire = wire[2:]  # the 2-byte length prefix is part of tshark's DNS PDU
            msgs.append(
                {
                    "frame": int(frame["frame.number"]),
                    "time": float(frame["frame.time_epoch"]),
                    "src": (src, sport),
                    "dst": (dst, dport),
                    "proto": proto,
                    "wire": wire,
                    "response_to": d.get("dns.response_to"),
                    "rtt": d.get("dns.time"),
                }
            )
    return msgs


def rdata_text(rd: object) -> str:
    """An rdata as the documented dns.log text, from dnspython's decoding."""
    t = rd.rdtype
    if t in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rd.address
    if t in (dns.rdatatype.CNAME, dns.rdatatype.NS, dns.rdatatype.PTR, dns.rdatatype.DNAME):
        return _name(rd.target)
    if t == dns.rdatatype.MX:
        return _name(rd.exchange)
    if t == dns.rdatatype.SOA:
        return _name(rd.mname)
    if t == dns.rdatatype.SRV:
        return _name(rd.target)
    if t in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        kind = "TXT" if t == dns.rdatatype.TXT else "SPF"
        return " ".join(f"{kind} {len(s)} {s.decode('utf-8', 'replace')}" for s in rd.strings)
    wire = rd.to_wire()
    return f"\\# {len(wire)} {wire.hex()}" if wire else "\\# 0"


def _type_name(t: int) -> str:
    """Zeek's names are the RFC mnemonics, `*` for ANY and `query-N` for an unknown type."""
    if t == 255:
        return "*"
    text = dns.rdatatype.to_text(t)
    return f"query-{t}" if text.startswith("TYPE") else text


def _name(n: object) -> str:
    text = n.to_text(omit_final_dot=True)
    return text if text else "<Root>"


def edns_option(opt: object) -> dict:
    """One EDNS option as documented, from dnspython's decoding."""
    code = int(opt.otype)
    wire = opt.to_wire()
    try:
        name = dns.edns.OptionType(code).name
    except ValueError:
        name = {14: "KEY_TAG"}.get(code, f"OPT{code}")
    out: dict = {"code": code, "name": name, "length": len(wire)}
    if isinstance(opt, dns.edns.ECSOption):
        out.update(
            family=opt.family, source_prefix=opt.srclen, scope_prefix=opt.scopelen, address=opt.address
        )
    elif code == 10:
        out["client"] = wire[:8].hex()
        if len(wire) > 8:
            out["server"] = wire[8:].hex()
    elif code == 3:
        out["data"] = wire.hex()
        if wire.isascii() and wire.decode().isprintable():
            out["text"] = wire.decode()
    elif code == 15 and isinstance(opt, dns.edns.EDEOption):
        out.update(info_code=int(opt.code), text=opt.text or "")
    elif code == 11 and len(wire) == 2:
        out["timeout"] = int.from_bytes(wire, "big")
    elif code != 12 and wire:
        out["data"] = wire.hex()
    return out


def _edns(m: dns.message.Message) -> dict | None:
    if m.edns < 0:
        return None
    return {
        "udp_payload_size": int(m.payload),
        "extended_rcode": (m.ednsflags >> 24) & 0xFF,
        "version": m.edns,
        "do": bool(m.ednsflags & dns.flags.DO),
        "options": [edns_option(o) for o in m.options],
    }


def _parse(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire, ignore_trailing=True, one_rr_per_rrset=True)


def _rrs(section: list) -> list[tuple[str, float]]:
    return [(rdata_text(rd), float(rrset.ttl)) for rrset in section for rd in rrset]


def expected_records(pcap: str) -> dict:
    """(orig_h, orig_p, trans_id, query) -> the dns.log fields the documented rules give."""
    msgs = tshark_messages(pcap)
    queries: dict = {}
    for m in msgs:
        m["dns"] = _parse(m["wire"])
        if not m["dns"].flags & dns.flags.QR:
            queries[(m["frame"], m["dns"].id)] = m
    out = {}
    answered = set()
    for m in msgs:
        d = m["dns"]
        if not d.flags & dns.flags.QR:
            continue
        q = queries.get((int(m["response_to"]), d.id)) if m["response_to"] else None
        if q is not None:
            answered.add((q["frame"], d.id))
        out.update(_record(q, m))
    for key, q in queries.items():
        if key not in answered:
            out.update(_record(q, None))
    return out


def _record(q: dict | None, r: dict | None) -> dict:
    first = q or r
    assert first is not None
    d = first["dns"]
    client = first["src"] if q is not None else first["dst"]
    rec: dict = {"proto": first["proto"], "trans_id": d.id}
    qd = d.question or (r["dns"].question if r is not None else [])
    name = None
    if qd:
        name = qd[0].name.to_text(omit_final_dot=True).lower() or "<Root>"
        rec.update(
            query=name,
            qclass=int(qd[0].rdclass),
            qclass_name=ZEEK_CLASSES.get(int(qd[0].rdclass)),
            qtype=int(qd[0].rdtype),
            qtype_name=_type_name(int(qd[0].rdtype)),
        )
        if len(qd) > 1:
            rec["extra_questions"] = [
                {
                    "query": q.name.to_text(omit_final_dot=True).lower() or "<Root>",
                    "qtype": int(q.rdtype),
                    "qtype_name": _type_name(int(q.rdtype)),
                    "qclass": int(q.rdclass),
                }
                for q in qd[1:]
            ]
    qflags = d.flags
    rec["RD"] = bool(qflags & dns.flags.RD)
    rec["Z"] = (qflags >> 4) & 7
    rec["AA"] = rec["TC"] = rec["RA"] = False
    rec["rejected"] = False
    if q is not None and q["dns"].edns >= 0:
        rec["query_edns"] = _edns(q["dns"])
    if r is not None:
        rd = r["dns"]
        rec.update(
            rcode=rd.rcode(),
            rcode_name=dns.rcode.to_text(rd.rcode()),
            AA=bool(rd.flags & dns.flags.AA),
            TC=bool(rd.flags & dns.flags.TC),
        )
        rec["RA"] = bool(rd.flags & dns.flags.RA)
        rec["rejected"] = rd.rcode() != 0 and not rd.question
        answers = _rrs(rd.answer)
        if answers:
            rec["answers"] = [a for a, _ in answers]
            rec["TTLs"] = [t for _, t in answers]
        auth = _rrs(rd.authority)
        if auth:
            rec["auth"] = [a for a, _ in auth]
        addl = [x for x, _ in _rrs(rd.additional)]
        if addl:
            rec["addl"] = addl
        if rd.edns >= 0:
            rec["response_edns"] = _edns(rd)
        if q is not None:
            rec["rtt"] = round(float(r["rtt"]), 6)
    rec["ts"] = round(first["time"], 6)
    return {(client[0], client[1], d.id, name): rec}


def ours(records: list[dict]) -> dict:
    """Our dns.log records keyed as `expected_records` keys them (frame numbers left out)."""
    out = {}
    for rec in records:
        if rec.get("_log"):
            continue
        fields = {k: v for k, v in rec.items() if k in FIELDS}
        fields["ts"] = round(rec["ts"], 6)
        out[(rec["id.orig_h"], rec["id.orig_p"], rec["trans_id"], rec.get("query"))] = fields
    return out


FIELDS = {
    "proto",
    "trans_id",
    "rtt",
    "query",
    "qclass",
    "qclass_name",
    "qtype",
    "qtype_name",
    "rcode",
    "rcode_name",
    "AA",
    "TC",
    "RD",
    "RA",
    "Z",
    "answers",
    "TTLs",
    "auth",
    "addl",
    "rejected",
    "query_edns",
    "response_edns",
    "extra_questions",
}


def compare(expected: dict, records: list[dict]) -> None:
    """Assert our records equal the expected ones, exchange by exchange."""
    got = ours(records)
    assert sorted(got, key=str) == sorted(expected, key=str)
    for key, rec in expected.items():
        assert got[key] == rec, key
