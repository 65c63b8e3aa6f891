"""tshark as the oracle: what each protocol's messages in a capture are, as comparable items.

Theory of operation. tshark decodes the capture once per protocol (`-T json --no-duplicate-keys`, so
several messages in one frame, e.g. pipelined HTTP requests or DNS-over-TCP messages, stay separate
layer objects). Each decoded message becomes an `Item`: its time (to assign it to a scenario), the
connection as an unordered endpoint pair, and a key tuple in Zeek's vocabulary (the record shape the
analyzers emit, see /work/wt/ANALYZERS.md):

* http: ("request", method, uri, host) and ("response", status code) — 1xx included (Zeek: info_code);
* dns: ("query", trans_id, query, qtype_name) per query message, ("response", trans_id, query,
  qtype_name, rcode_name) per response, ("answer", trans_id, rdata) per A/AAAA/CNAME answer;
* tls: per connection ("server_name", sni) from the first ClientHello and ("version", "TLSv1x") from
  the ServerHello that was not a HelloRetryRequest (ssl.log is one record per connection);
* smtp: ("mailfrom", address) per MAIL command, ("rcptto", address) per RCPT command;
* sip: ("request", method, uri) per request, ("response", code) per final (>= 200) response
  (sip.log is one record per transaction and keeps the final status).

The adapters (tests/realnet/adapters.py) turn celltap's records into the same items; the comparison is
a multiset inclusion per scenario: every tshark item must be found.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

Pair = tuple[tuple[str, int], tuple[str, int]]

TLS_VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv10", 0x0302: "TLSv11", 0x0303: "TLSv12", 0x0304: "TLSv13"}
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          41: "OPT", 255: "*"}  # fmt: skip
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
HRR_RANDOM = "cf:21:ad:74:e5:9a:61:11:be:1d:8c:02:1e:65:b8:91:c2:a2:11:16:7a:bb:8c:5e:07:9e:09:e2:c8:a8:33:9c"
ADDR = re.compile(r"<([^>]*)>")
# the bed's non-default ports: postfix's second smtpd (no TLS), openssl s_server
DECODE_AS = ["-d", "tcp.port==2525,smtp", "-d", "tcp.port==4433,tls"]


@dataclass(frozen=True)
class Item:
    """One thing a decoder says is in the capture."""

    ts: float
    pair: Pair
    key: tuple


def pair(a: str, ap: int | str, b: str, bp: int | str) -> Pair:
    """The unordered endpoint pair of a connection (ports as ints)."""
    x, y = (a, int(ap)), (b, int(bp))
    return (x, y) if x <= y else (y, x)


def walk(obj: object, key: str) -> Iterator[object]:
    """Every value of `key` anywhere inside a tshark JSON object (lists flattened)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield from v if isinstance(v, list) else [v]
            else:
                yield from walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v, key)


def first(obj: object, key: str) -> object | None:
    """The first value of `key` inside obj, or None."""
    return next(walk(obj, key), None)


def layers(pcap: str, display_filter: str, proto: str) -> Iterator[tuple[float, Pair, str, tuple, dict]]:
    """(time, pair, l4, (src, sport, dst, dport), layer object) for each `proto` layer of matching frames."""
    out = subprocess.run(
        ["tshark", "-r", pcap, "-n", *DECODE_AS, "-Y", display_filter, "-T", "json", "--no-duplicate-keys",
         "-J", f"frame ip ipv6 tcp udp {proto}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for pkt in json.loads(out or "[]"):
        ly = pkt["_source"]["layers"]
        ts = float(_one(ly["frame"]["frame.time_epoch"]))
        ip = ly.get("ip") or ly.get("ipv6")
        l4 = "tcp" if "tcp" in ly else "udp"
        t = ly.get(l4)
        if ip is None or t is None:
            continue
        v = "ip" if "ip" in ly else "ipv6"
        src, dst = _one(ip[f"{v}.src"]), _one(ip[f"{v}.dst"])
        sport, dport = int(_one(t[f"{l4}.srcport"])), int(_one(t[f"{l4}.dstport"]))
        objs = ly.get(proto)
        for obj in objs if isinstance(objs, list) else [objs]:
            if isinstance(obj, dict):
                yield ts, pair(src, sport, dst, dport), l4, (src, sport, dst, dport), obj


def _one(v: object) -> str:
    return v[0] if isinstance(v, list) else v  # type: ignore[return-value]


def http_items(pcap: str) -> list[Item]:
    """Requests (method, uri, host) and responses (status code) that tshark decodes."""
    items = []
    for ts, p, _l4, _ends, obj in layers(pcap, "http", "http"):
        method = first(obj, "http.request.method")
        if method is not None:
            items.append(
                Item(ts, p, ("request", method, first(obj, "http.request.uri"), first(obj, "http.host")))
            )
        code = first(obj, "http.response.code")
        if code is not None:
            items.append(Item(ts, p, ("response", int(code))))
    return items


def dns_items(pcap: str) -> list[Item]:
    """Queries, responses (rcode) and A/AAAA/CNAME answers that tshark decodes."""
    items = []
    for ts, p, _l4, _ends, obj in layers(pcap, "dns", "dns"):
        tid = int(str(first(obj, "dns.id")), 16)
        flags = obj.get("dns.flags_tree", {})
        is_resp = str(first(flags, "dns.flags.response")) == "1"
        queries = obj.get("Queries", {})
        name = first(queries, "dns.qry.name")
        qtype = QTYPES.get(int(first(queries, "dns.qry.type") or 0), str(first(queries, "dns.qry.type")))
        if not is_resp:
            items.append(Item(ts, p, ("query", tid, name, qtype)))
            continue
        rcode = RCODES.get(int(first(flags, "dns.flags.rcode") or 0), "?")
        items.append(Item(ts, p, ("response", tid, name, qtype, rcode)))
        answers = obj.get("Answers", {})
        for key in ("dns.a", "dns.aaaa", "dns.cname"):
            for rdata in walk(answers, key):
                items.append(Item(ts, p, ("answer", tid, str(rdata))))
    return items


def tls_items(pcap: str) -> list[Item]:
    """Per connection: the first ClientHello's SNI and the negotiated version (not from a HRR)."""
    seen: dict[Pair, dict] = {}
    items = []
    for ts, p, _l4, _ends, obj in layers(pcap, "tls.handshake.type == 1 || tls.handshake.type == 2", "tls"):
        for hs in walk(obj, "tls.handshake"):
            if not isinstance(hs, dict):
                continue
            htype = str(first(hs, "tls.handshake.type"))
            state = seen.setdefault(p, {})
            if htype == "1" and "sni" not in state:
                state["sni"] = True
                sni = first(hs, "tls.handshake.extensions_server_name")
                if sni is not None:
                    items.append(Item(ts, p, ("server_name", sni)))
            elif htype == "2" and first(hs, "tls.handshake.random") != HRR_RANDOM and "version" not in state:
                state["version"] = True
                v = first(hs, "tls.handshake.extensions.supported_version") or first(
                    hs, "tls.handshake.version"
                )
                items.append(Item(ts, p, ("version", TLS_VERSIONS.get(int(str(v), 16), str(v)))))
    return items


def smtp_items(pcap: str) -> list[Item]:
    """The address of every MAIL FROM and RCPT TO command tshark decodes."""
    items = []
    for ts, p, _l4, _ends, obj in layers(pcap, "smtp.req", "smtp"):
        cmds = list(walk(obj, "smtp.req.command"))
        params = list(walk(obj, "smtp.req.parameter"))
        lines = list(walk(obj, "smtp.command_line"))
        # pair each command with its own line (DATA/QUIT have no parameter, so zip the lines, not params)
        for cmd, line in zip(cmds, lines or params, strict=False):
            kind = {"MAIL": "mailfrom", "RCPT": "rcptto"}.get(str(cmd).upper())
            m = ADDR.search(str(line))
            if kind and m:
                items.append(Item(ts, p, (kind, m.group(1))))
    return items


def sip_items(pcap: str) -> list[Item]:
    """Every SIP request (method, Request-URI) and final response (code >= 200) tshark decodes."""
    items = []
    for ts, p, _l4, _ends, obj in layers(pcap, "sip", "sip"):
        method = first(obj, "sip.Method")
        rline = obj.get("sip.Request-Line_tree")
        if method is not None and rline is not None:
            items.append(Item(ts, p, ("request", method, first(rline, "sip.r-uri"))))
        code = first(obj, "sip.Status-Code")
        if code is not None and int(code) >= 200:
            items.append(Item(ts, p, ("response", int(code))))
    return items


ORACLES = {"http": http_items, "dns": dns_items, "tls": tls_items, "smtp": smtp_items, "sip": sip_items}
