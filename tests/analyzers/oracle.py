"""What tshark reports for a capture, and the same facts taken from our analyzers' records, keyed by
flow so the two can be compared flow for flow."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

from tests.analyzers.harness import tshark_fields


def _one(v: list[str]) -> str:
    return v[0] if v else ""


def _true(v: list[str]) -> bool:
    return _one(v) in ("1", "True", "true")


# ---------------------------------------------------------------- HTTP


def http_tshark(pcap: str) -> tuple[dict, dict]:
    """Per flow (client ip, port, server ip, port): request lines + hosts, and response status lines."""
    reqs: dict = defaultdict(list)
    resps: dict = defaultdict(list)
    for r in tshark_fields(
        pcap,
        "http.request",
        [
            "ip.src",
            "tcp.srcport",
            "ip.dst",
            "tcp.dstport",
            "http.request.method",
            "http.request.uri",
            "http.request.version",
            "http.host",
        ],
    ):
        key = (_one(r["ip.src"]), _one(r["tcp.srcport"]), _one(r["ip.dst"]), _one(r["tcp.dstport"]))
        for m, u, v in zip(
            r["http.request.method"], r["http.request.uri"], r["http.request.version"], strict=True
        ):
            reqs[key].append((m, u, v))
        reqs[(*key, "hosts")].extend(r["http.host"])
    for r in tshark_fields(
        pcap,
        "http.response",
        [
            "ip.dst",
            "tcp.dstport",
            "ip.src",
            "tcp.srcport",
            "http.response.version",
            "http.response.code",
            "http.response.phrase",
        ],
    ):
        key = (_one(r["ip.dst"]), _one(r["tcp.dstport"]), _one(r["ip.src"]), _one(r["tcp.srcport"]))
        for v, c, p in zip(
            r["http.response.version"], r["http.response.code"], r["http.response.phrase"], strict=True
        ):
            resps[key].append((v, c, p))
    return dict(reqs), dict(resps)


def http_ours(records: list[dict]) -> tuple[dict, dict]:
    """The same facts from HTTP analyzer records."""
    reqs: dict = defaultdict(list)
    resps: dict = defaultdict(list)
    for rec in records:
        if "error" in rec:
            continue
        c, s = rec["client"], rec["server"]
        key = (c["ip"], c["port"], s["ip"], s["port"])
        if "method" in c:
            m = c["method"]
            reqs[key].append((m["method"], m["uri"], m["ver"]))
            if "host" in c["header"]:
                reqs[(*key, "hosts")].append(c["header"]["host"])
        for info in rec.get("informational", []):
            resps[key].append((info["ver"], info["code"], info["msg"]))
        if "response" in s:
            r = s["response"]
            resps[key].append((r["ver"], r["code"], r["msg"]))
    return dict(reqs), dict(resps)


# ---------------------------------------------------------------- DNS


def dns_tshark(pcap: str) -> dict:
    """Per exchange (client ip, port, id, query): the dns.log fields tshark + dnspython give."""
    from tests.analyzers import dns_oracle

    return dns_oracle.expected_records(pcap)


def dns_ours(records: list[dict]) -> dict:
    """The same fields from our dns.log records."""
    from tests.analyzers import dns_oracle

    return dns_oracle.ours(records)


# ---------------------------------------------------------------- TLS


def _hexlist(v: list[str]) -> list[int]:
    return [int(x, 0) for x in v]


def _grease(x: int) -> bool:
    return (x & 0x0F0F) == 0x0A0A and (x >> 8) == (x & 0xFF)


def ja4_from_fields(
    ciphers: list[int], exts: list[int], sigs: list[int], versions: list[int], legacy: int, alpn: list[str]
) -> str:
    """JA4 computed from tshark's dissected fields, written from the FoxIO spec independently of ours."""
    vmap = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}
    vs = [v for v in versions if not _grease(v)]
    ver = vmap.get(max(vs) if vs else legacy, "00")
    cs = [c for c in ciphers if not _grease(c)]
    es = [e for e in exts if not _grease(e)]
    a = (alpn[0][0] + alpn[0][-1]) if alpn else "00"
    head = f"t{ver}{'d' if 0 in es else 'i'}{len(cs):02d}{len(es):02d}{a}"
    b = hashlib.sha256(",".join(f"{c:04x}" for c in sorted(cs)).encode()).hexdigest()[:12]
    c_text = ",".join(f"{e:04x}" for e in sorted(e for e in es if e not in (0, 16)))
    if sigs:
        c_text += "_" + ",".join(f"{s:04x}" for s in sigs)
    c = hashlib.sha256(c_text.encode()).hexdigest()[:12]
    return f"{head}_{b}_{c}"


def tls_tshark(pcap: str) -> dict:
    """Per client endpoint: SNI, ALPN, offered and chosen ciphers, versions, JA3, JA3S, JA4."""
    out: dict = {}
    for r in tshark_fields(
        pcap,
        "tls.handshake.type == 1",
        [
            "ip.src",
            "tcp.srcport",
            "tls.handshake.extensions_server_name",
            "tls.handshake.extensions_alpn_str",
            "tls.handshake.ciphersuite",
            "tls.handshake.ja3",
            "tls.handshake.extensions.supported_version",
            "tls.handshake.extension.type",
            "tls.handshake.sig_hash_alg",
            "tls.handshake.version",
        ],
    ):
        key = (_one(r["ip.src"]), _one(r["tcp.srcport"]))
        ciphers = _hexlist(r["tls.handshake.ciphersuite"])
        versions = _hexlist(r["tls.handshake.extensions.supported_version"])
        exts = [int(x) for x in r["tls.handshake.extension.type"]]
        sigs = _hexlist(r["tls.handshake.sig_hash_alg"])
        out[key] = {
            "sni": _one(r["tls.handshake.extensions_server_name"]) or None,
            "alpn": r["tls.handshake.extensions_alpn_str"],
            "ciphers": ciphers,
            "versions": versions,
            "ja3": _one(r["tls.handshake.ja3"]),
            "ja4": ja4_from_fields(
                ciphers,
                exts,
                sigs,
                versions,
                int(_one(r["tls.handshake.version"]), 0),
                r["tls.handshake.extensions_alpn_str"],
            ),
        }
    for r in tshark_fields(
        pcap,
        "tls.handshake.type == 2",
        [
            "ip.dst",
            "tcp.dstport",
            "tls.handshake.ciphersuite",
            "tls.handshake.ja3s",
            "tls.handshake.extensions.supported_version",
            "tls.handshake.extensions_alpn_str",
        ],
    ):
        key = (_one(r["ip.dst"]), _one(r["tcp.dstport"]))
        sv = _hexlist(r["tls.handshake.extensions.supported_version"])
        out.setdefault(key, {}).update(
            {
                "cipher": int(_one(r["tls.handshake.ciphersuite"]), 0),
                "ja3s": _one(r["tls.handshake.ja3s"]),
                "selected_version": sv[0] if sv else None,
                "server_alpn": _one(r["tls.handshake.extensions_alpn_str"]) or None,
            }
        )
    return out


def tls_ours(records: list[dict]) -> dict:
    """The same facts from TLS analyzer records."""
    out: dict = {}
    for rec in records:
        if "error" in rec:
            continue
        key = (rec["client"]["ip"], rec["client"]["port"])
        ch, sh = rec.get("client_hello"), rec.get("server_hello")
        d: dict = {}
        if ch:
            d.update(
                {
                    "sni": ch.get("sni"),
                    "alpn": ch.get("alpn", []),
                    "ciphers": ch["cipher_suites"],
                    "versions": ch["supported_versions"],
                    "ja3": ch["ja3"],
                    "ja4": ch["ja4"],
                }
            )
        if sh:
            d.update(
                {
                    "cipher": sh["cipher_suite"],
                    "ja3s": sh["ja3s"],
                    "selected_version": sh.get("selected_version"),
                    "server_alpn": sh.get("alpn"),
                }
            )
        out[key] = d
    return out


# ---------------------------------------------------------------- SMTP


def _angle(param: str) -> str:
    m = re.search(r"<([^>]*)>", param)
    return m.group(1) if m else param.split(":", 1)[-1].strip()


def smtp_tshark(pcap: str) -> dict:
    """Per client endpoint: HELO, STARTTLS, and per message envelope + IMF headers."""
    out: dict = {}
    rows = tshark_fields(
        pcap,
        "smtp.req or imf",
        [
            "ip.src",
            "tcp.srcport",
            "smtp.req.command",
            "smtp.req.parameter",
            "imf.from",
            "imf.to",
            "imf.subject",
            "imf.message_id",
        ],
    )
    for r in rows:
        key = (_one(r["ip.src"]), _one(r["tcp.srcport"]))
        s = out.setdefault(key, {"helo": None, "starttls": False, "messages": [], "cur": {"rcpt": []}})
        for cmd, param in zip(r["smtp.req.command"], r["smtp.req.parameter"] + [""] * 10, strict=False):
            # tshark 4.0 takes 4 characters as the verb and drops the next: "STARTTLS" -> "STAR", "TLS"
            verb = "STARTTLS" if (cmd.upper(), param.upper()) == ("STAR", "TLS") else cmd.upper()
            if verb in ("HELO", "EHLO"):
                s["helo"] = param
            elif verb == "MAIL":
                s["cur"] = {"mail_from": _angle(param), "rcpt": []}
            elif verb == "RCPT":
                s["cur"]["rcpt"].append(_angle(param))
            elif verb == "STARTTLS":
                s["starttls"] = True
        if r["imf.from"] or r["imf.subject"]:
            unfold = lambda v: re.sub(r"(\\r\\n|\r\n)[ \t]+", " ", _one(v))  # noqa: E731
            s["messages"].append(
                {
                    "mail_from": s["cur"].get("mail_from"),
                    "rcpt_to": s["cur"]["rcpt"],
                    "from": unfold(r["imf.from"]),
                    "to": unfold(r["imf.to"]),
                    "subject": unfold(r["imf.subject"]),
                    "message-id": _one(r["imf.message_id"]),
                }
            )
    for s in out.values():
        del s["cur"]
    return out


def smtp_ours(records: list[dict]) -> dict:
    """The same facts from SMTP analyzer records."""
    out: dict = {}
    for rec in records:
        key = (rec["client"]["ip"], rec["client"]["port"])
        s = out.setdefault(key, {"helo": rec["helo"], "starttls": rec["starttls"], "messages": []})
        s["starttls"] = s["starttls"] or rec["starttls"]
        if rec.get("type") == "message":
            h = rec["headers"]
            s["messages"].append(
                {
                    "mail_from": rec["mail_from"],
                    "rcpt_to": rec["rcpt_to"],
                    "from": h.get("from"),
                    "to": h.get("to"),
                    "subject": h.get("subject"),
                    "message-id": h.get("message-id"),
                }
            )
    return out


# ---------------------------------------------------------------- SIP


def sip_tshark(pcap: str) -> dict:
    """Per transaction (Call-ID, CSeq number, method): the sip.log fields tshark's dissection gives."""
    from tests.analyzers import sip_oracle

    return sip_oracle.expected_records(pcap)


def sip_ours(records: list[dict]) -> dict:
    """The same fields from our sip.log records."""
    from tests.analyzers import sip_oracle

    return sip_oracle.ours(records)
