"""celltap's analyzer records -> the oracle's items (tests/realnet/oracle.py): one function per protocol.

Theory of operation. The comparison goes through these adapters only, so a change of record shape is a
change here. The target shape is Zeek's (see /work/wt/ANALYZERS.md): `ts`, `uid`, `id.orig_h`,
`id.orig_p`, `id.resp_h`, `id.resp_p`, then Zeek's field names (http: method/host/uri/status_code/
info_code; dns: trans_id/query/qtype_name/rcode_name/answers; ssl: server_name/version; smtp:
mailfrom/rcptto; sip: method/uri/status_code). Until every analyzer has moved, the adapters also read
the SF-TAP-era shape (`client`/`server` {"ip","port"}, `time`) so the tests measure today's analyzers
too. Records routed to another log (`_log` set, e.g. weird or x509) are not protocol records.
"""

from __future__ import annotations

from tests.realnet.oracle import QTYPES, TLS_VERSIONS, Item, Pair, pair


def _zeek(r: dict) -> bool:
    return "id.orig_h" in r


def _pair_ts(r: dict) -> tuple[Pair, float]:
    if _zeek(r):
        return pair(r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"]), float(r["ts"])
    a = r.get("client") or r.get("src")
    b = r.get("server") or r.get("dst")
    return pair(a["ip"], a["port"], b["ip"], b["port"]), float(r["time"])


def _has_conn(r: dict) -> bool:
    if _zeek(r):
        return True
    a, b = r.get("client") or r.get("src"), r.get("server") or r.get("dst")
    return isinstance(a, dict) and isinstance(b, dict) and "time" in r and "ip" in a and "ip" in b


def _own(records: list[dict]) -> list[dict]:
    """The protocol's own records with a connection (not weird/x509/files, not per-call summaries)."""
    return [r for r in records if not r.get("_log") and _has_conn(r)]


def http(records: list[dict]) -> list[Item]:
    """Requests (method, uri, host) and responses (status_code, info_code)."""
    out = []
    for r in _own(records):
        p, ts = _pair_ts(r)
        if _zeek(r):
            method, uri, host = r.get("method"), r.get("uri"), r.get("host")
            codes = [r.get("info_code"), r.get("status_code")]
        else:
            c, s = r.get("client", {}), r.get("server", {})
            m = c.get("method") or {}
            method, uri, host = m.get("method"), m.get("uri"), (c.get("header") or {}).get("host")
            codes = [(s.get("response") or {}).get("code")]
        if method:
            out.append(Item(ts, p, ("request", method, uri, host)))
        out += [Item(ts, p, ("response", int(code))) for code in codes if code not in (None, "", 0)]
    return out


def _qtype(v: object) -> str:
    if isinstance(v, int):
        return QTYPES.get(v, str(v))
    return "*" if v == "ANY" else str(v)


def dns(records: list[dict]) -> list[Item]:
    """Queries, responses (rcode_name) and answers (rdata strings)."""
    out = []
    for r in _own(records):
        p, ts = _pair_ts(r)
        if _zeek(r):
            tid, query, qtype = r.get("trans_id"), r.get("query"), _qtype(r.get("qtype_name"))
            out.append(Item(ts, p, ("query", tid, query, qtype)))
            if r.get("rcode_name") is not None:
                out.append(Item(ts, p, ("response", tid, query, qtype, r["rcode_name"])))
                out += [Item(ts, p, ("answer", tid, str(a))) for a in r.get("answers") or []]
            continue
        q = (r.get("questions") or [{}])[0]
        tid, query, qtype = r.get("id"), q.get("name"), _qtype(q.get("type"))
        if not r.get("qr"):
            out.append(Item(ts, p, ("query", tid, query, qtype)))
            continue
        out.append(Item(ts, p, ("response", tid, query, qtype, r.get("rcode"))))
        for a in r.get("answers") or []:
            if a.get("type") in ("A", "AAAA", "CNAME"):
                data = a.get("data")
                out.append(Item(ts, p, ("answer", tid, str(data).rstrip(".") if data is not None else "")))
    return out


def _tls_version(v: object) -> str | None:
    if v is None:
        return None
    if isinstance(v, int):
        return TLS_VERSIONS.get(v, str(v))
    return str(v)


def tls(records: list[dict]) -> list[Item]:
    """Per connection: server_name and the negotiated version."""
    out = []
    for r in _own(records):
        p, ts = _pair_ts(r)
        if _zeek(r):
            sni, version = r.get("server_name"), _tls_version(r.get("version"))
        else:
            ch, sh = r.get("client_hello") or {}, r.get("server_hello") or {}
            sni = ch.get("sni")
            version = _tls_version(sh.get("selected_version") or sh.get("version"))
        if sni:
            out.append(Item(ts, p, ("server_name", sni)))
        if version:
            out.append(Item(ts, p, ("version", version)))
    return out


def smtp(records: list[dict]) -> list[Item]:
    """mailfrom and every recipient (rcptto, and any other recipient list the analyzer keeps)."""
    out = []
    for r in _own(records):
        p, ts = _pair_ts(r)
        mail = r.get("mailfrom") if _zeek(r) else r.get("mail_from")
        if mail:
            out.append(Item(ts, p, ("mailfrom", mail)))
        for k, v in r.items():
            if "rcpt" in k and isinstance(v, list):
                out += [Item(ts, p, ("rcptto", a)) for a in v]
    return out


def sip(records: list[dict]) -> list[Item]:
    """Requests (method, uri) and final responses (status_code >= 200)."""
    out = []
    for r in _own(records):
        p, ts = _pair_ts(r)
        if _zeek(r):
            method, uri, code = r.get("method"), r.get("uri"), r.get("status_code")
        else:
            req, st = r.get("request") or {}, r.get("status") or {}
            method, uri, code = req.get("method"), req.get("uri"), st.get("code")
        if method:
            out.append(Item(ts, p, ("request", method, uri)))
        if code is not None and int(code) >= 200:
            out.append(Item(ts, p, ("response", int(code))))
    return out


ADAPTERS = {"http": http, "dns": dns, "tls": tls, "smtp": smtp, "sip": sip}
