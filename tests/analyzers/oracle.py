"""What tshark reports for a capture, and the same facts taken from our analyzers' records, keyed by
flow so the two can be compared flow for flow."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections import defaultdict
from functools import lru_cache

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
    """The same facts from HTTP analyzer records (Zeek http.log shape; weird records skipped).

    Mapping: request line = (method, original_uri or uri, "HTTP/" + request_version); host = host;
    status line = ("HTTP/" + version, str(status_code), status_msg), interim 1xx ones from
    `informational`.
    """
    reqs: dict = defaultdict(list)
    resps: dict = defaultdict(list)
    for rec in records:
        if rec.get("_log"):
            continue
        key = (rec["id.orig_h"], str(rec["id.orig_p"]), rec["id.resp_h"], str(rec["id.resp_p"]))
        if "method" in rec and "request_version" in rec and "uri" in rec:
            uri = rec.get("original_uri", rec["uri"])
            reqs[key].append((rec["method"], uri, "HTTP/" + rec["request_version"]))
            if "host" in rec:
                reqs[(*key, "hosts")].append(rec["host"])
        for info in rec.get("informational", []):
            resps[key].append(("HTTP/" + info["version"], str(info["code"]), info["msg"]))
        if "status_code" in rec:
            resps[key].append(("HTTP/" + rec["version"], str(rec["status_code"]), rec["status_msg"]))
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


# Zeek's version strings, from the numbers (RFC 6101, 2246, 4346, 5246, 8446): independent of ours
ZEEK_VERSIONS = {
    0x0002: "SSLv2",
    0x0300: "SSLv3",
    0x0301: "TLSv10",
    0x0302: "TLSv11",
    0x0303: "TLSv12",
    0x0304: "TLSv13",
}


@lru_cache(maxsize=1)
def tshark_cipher_names() -> dict[int, str]:
    """tshark's own names of the cipher suites (`tshark -G values`)."""
    out = subprocess.run(["tshark", "-G", "values"], capture_output=True, text=True, check=True).stdout
    names = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0] == "V" and parts[1] == "tls.handshake.ciphersuite":
            names[int(parts[2], 0)] = parts[3]
    return names


def ja4s_from_fields(version: int, exts: list[int], alpn: str, cipher: int) -> str:
    """JA4S computed from tshark's dissected ServerHello fields, from the FoxIO spec independently of ours."""
    vmap = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}
    a = (alpn[0] + alpn[-1]) if alpn else "00"
    c = hashlib.sha256(",".join(f"{e:04x}" for e in exts).encode()).hexdigest()[:12] if exts else "0" * 12
    return f"t{vmap.get(version, '00')}{len(exts):02d}{a}_{cipher:04x}_{c}"


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
        key = (_one(r["ip.src"]), int(_one(r["tcp.srcport"])))
        ciphers = _hexlist(r["tls.handshake.ciphersuite"])
        versions = _hexlist(r["tls.handshake.extensions.supported_version"])
        exts = [int(x) for x in r["tls.handshake.extension.type"]]
        sigs = _hexlist(r["tls.handshake.sig_hash_alg"])
        out.setdefault(key, {}).update(
            {
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
        )
    names = tshark_cipher_names()
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
            "tls.handshake.version",
            "tls.handshake.extension.type",
        ],
    ):
        key = (_one(r["ip.dst"]), int(_one(r["tcp.dstport"])))
        sv = _hexlist(r["tls.handshake.extensions.supported_version"])
        cipher = int(_one(r["tls.handshake.ciphersuite"]), 0)
        version = sv[0] if sv else int(_one(r["tls.handshake.version"]), 0)
        exts = [int(x) for x in r["tls.handshake.extension.type"]]
        out.setdefault(key, {}).update(
            {
                "cipher": names.get(cipher, f"unknown-{cipher}"),
                "version": ZEEK_VERSIONS.get(version, f"unknown-{version}"),
                "ja3s": _one(r["tls.handshake.ja3s"]),
                "ja4s": ja4s_from_fields(version, exts, _one(r["tls.handshake.extensions_alpn_str"]), cipher),
                "selected_version": sv[0] if sv else None,
                "server_alpn": _one(r["tls.handshake.extensions_alpn_str"]) or None,
            }
        )
    return out


def tls_ours(records: list[dict]) -> dict:
    """The same facts from TLS analyzer (ssl.log) records."""
    out: dict = {}
    for rec in records:
        if rec.get("_log"):
            continue
        key = (rec["id.orig_h"], rec["id.orig_p"])
        d: dict = {}
        if "client_ciphers" in rec:
            d.update(
                {
                    "sni": rec.get("server_name"),
                    "alpn": rec.get("orig_alpn", []),
                    "ciphers": rec["client_ciphers"],
                    "versions": rec.get("client_supported_versions", []),
                    "ja3": rec["ja3"],
                    "ja4": rec["ja4"],
                }
            )
        if "ja3s" in rec:
            d.update(
                {
                    "cipher": rec["cipher"],
                    "version": rec["version"],
                    "ja3s": rec["ja3s"],
                    "ja4s": rec["ja4s"],
                    "selected_version": rec.get("server_supported_version"),
                    "server_alpn": rec.get("next_protocol"),
                }
            )
        out[key] = d
    return out


# ---------------------------------------------------------------- SMTP


def _angle(param: str) -> str:
    m = re.search(r"<([^>]*)>", param)
    return m.group(1) if m else param.split(":", 1)[-1].strip().split(" ", 1)[0]


def _unfold(v: list[str]) -> str:
    """An IMF header value as tshark prints it, unfolded (RFC 5322: the CRLF before whitespace removed)."""
    return re.sub(r"(\\r\\n|\r\n)(?=[ \t])", "", _one(v)).strip()


def smtp_tshark(pcap: str) -> dict:
    """Per client endpoint: HELO, accepted STARTTLS, and per message the envelope the server accepted
    (commands paired with tshark's reply codes in order, as PIPELINING requires) + IMF headers."""
    out: dict = {}
    pending: dict = defaultdict(list)  # client endpoint -> commands awaiting their reply
    rows = tshark_fields(
        pcap,
        "smtp or imf",
        [
            "ip.src",
            "tcp.srcport",
            "ip.dst",
            "tcp.dstport",
            "smtp.req.command",
            "smtp.req.parameter",
            "smtp.response.code",
            "imf.from",
            "imf.to",
            "imf.subject",
            "imf.message_id",
        ],
    )
    for r in rows:
        if r["smtp.response.code"]:
            key = (_one(r["ip.dst"]), _one(r["tcp.dstport"]))
            queue = pending[key]
            s = out.get(key)
            for code in map(int, r["smtp.response.code"]):
                if not queue or s is None:
                    continue
                verb, param = queue.pop(0)
                if verb == "DATA" and code == 354:
                    queue.insert(0, (".", ""))  # the next reply answers the end of data
                elif verb == "MAIL" and code < 300:
                    s["cur"] = {"mail_from": _angle(param), "rcpt": []}
                elif verb == "RCPT" and code < 300:
                    s["cur"]["rcpt"].append(_angle(param))
                elif verb == "STARTTLS" and code == 220:
                    s["starttls"] = True
            continue
        key = (_one(r["ip.src"]), _one(r["tcp.srcport"]))
        s = out.setdefault(key, {"helo": None, "starttls": False, "messages": [], "cur": {"rcpt": []}})
        for cmd, param in zip(r["smtp.req.command"], r["smtp.req.parameter"] + [""] * 10, strict=False):
            # tshark 4.0 takes 4 characters as the verb and drops the next: "STARTTLS" -> "STAR", "TLS"
            verb = "STARTTLS" if (cmd.upper(), param.upper()) == ("STAR", "TLS") else cmd.upper()
            if verb in ("HELO", "EHLO"):
                s["helo"] = param
            pending[key].append((verb, param))
        if r["imf.from"] or r["imf.subject"]:
            s["messages"].append(
                {
                    "mail_from": s["cur"].get("mail_from"),
                    "rcpt_to": s["cur"]["rcpt"],
                    "from": _unfold(r["imf.from"]),
                    "to": [a.strip() for a in _unfold(r["imf.to"]).split(",")],
                    "subject": _unfold(r["imf.subject"]),
                    "message-id": _one(r["imf.message_id"]),
                }
            )
    for s in out.values():
        del s["cur"]
    return out


def smtp_ours(records: list[dict]) -> dict:
    """The same facts from SMTP analyzer records (smtp.log records; files/weird records skipped)."""
    out: dict = {}
    for rec in records:
        if "_log" in rec:
            continue
        key = (rec["id.orig_h"], str(rec["id.orig_p"]))
        s = out.setdefault(key, {"helo": rec.get("helo"), "starttls": False, "messages": []})
        s["starttls"] = s["starttls"] or rec["tls"]
        if "msg_size" in rec:
            s["messages"].append(
                {
                    "mail_from": rec.get("mailfrom"),
                    "rcpt_to": rec.get("rcptto", []),
                    "from": rec.get("from"),
                    "to": rec.get("to"),
                    "subject": rec.get("subject"),
                    "message-id": rec.get("msg_id"),
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
