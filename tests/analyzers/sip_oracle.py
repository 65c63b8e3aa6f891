"""The sip.log records a capture should give, from tshark's SIP dissection (`-T json`): every message's
headers as tshark reads them, and tshark's own pairing of each response with its request
(`sip.response-request`). The records follow the documented rules (docs/analyzers.md, Zeek's sip.log).

Requests tshark cannot see (it does not dissect a TCP segment that starts with keep-alive CRLFs) can be
added by the caller from the bytes its client sent (`extra`), placed at the frame carrying them.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict


def _list(v: object) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _find(tree: dict, key: str) -> object:
    """A field anywhere in tshark's nested tree (first found)."""
    if key in tree:
        return tree[key]
    for v in tree.values():
        if isinstance(v, dict):
            found = _find(v, key)
            if found is not None:
                return found
    return None


def tshark_messages(pcap: str) -> list[dict]:
    """Every SIP message tshark dissects, in capture order."""
    out = subprocess.run(
        ["tshark", "-r", pcap, "-n", "-T", "json", "--no-duplicate-keys", "-Y", "sip"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    msgs = []
    for pkt in json.loads(out or "[]"):
        layers = pkt["_source"]["layers"]
        frame = layers["frame"]
        ip = layers.get("ip") or layers["ipv6"]
        v = "ipv6" if "ipv6" in layers else "ip"
        proto = "tcp" if "tcp" in layers else "udp"
        l4 = layers[proto]
        for sip in _list(layers["sip"]):
            hdr = sip.get("sip.msg_hdr_tree", {})
            msg = {
                "frame": int(frame["frame.number"]),
                "time": float(frame["frame.time_epoch"]),
                "src": (ip[f"{v}.src"], int(l4[f"{proto}.srcport"])),
                "dst": (ip[f"{v}.dst"], int(l4[f"{proto}.dstport"])),
                "proto": proto,
                "headers": {k[4:].lower(): _list(val) for k, val in hdr.items() if not k.endswith("_tree")},
            }
            if "sip.Request-Line" in sip:
                tree = sip["sip.Request-Line_tree"]
                msg.update(method=tree["sip.Method"], uri=tree["sip.r-uri"])
            else:
                line = sip["sip.Status-Line"]
                tree = sip["sip.Status-Line_tree"]
                msg.update(
                    code=int(tree["sip.Status-Code"]),
                    reason=line.split(" ", 2)[2] if line.count(" ") > 1 else "",
                )
                msg["request_frame"] = _find(tree, "sip.response-request")
            msgs.append(msg)
    return msgs


def _first(msg: dict, name: str) -> str | None:
    v = msg["headers"].get(name)
    return v[0] if v else None


def _key(msg: dict) -> tuple:
    seq, _, method = _first(msg, "cseq").partition(" ")
    return (_first(msg, "call-id"), int(seq), method.strip().upper())


def expected_records(pcap: str, extra: list[dict] = ()) -> dict:
    """(Call-ID, CSeq number, CSeq method) -> the sip.log fields of that transaction."""
    msgs = tshark_messages(pcap) + list(extra)
    msgs.sort(key=lambda m: (m["time"], m["frame"]))
    depth: dict = defaultdict(int)
    open_: dict = {}
    done: set = set()
    out: dict = {}

    def put(key: tuple, rec: dict) -> None:
        assert key not in out, f"two transactions {key}"
        out[key] = rec

    for m in msgs:
        flow = (m["proto"], *sorted([m["src"], m["dst"]]))
        key = _key(m)
        if "method" in m:
            if (flow, key) in open_:
                continue  # a retransmission
            depth[flow] += 1
            t = {"req": m, "depth": depth[flow], "prov": [], "ring": None}
            if m["method"] == "ACK":
                put(key, _record(t, None))
            else:
                open_[(flow, key)] = t
            continue
        t = open_.get((flow, key))
        if t is None:
            if (flow, key) not in done:  # else a retransmitted final response
                put(key, _record(None, m))
            continue
        if m["code"] < 200:
            t["prov"].append(m["code"])
            if t["ring"] is None and 180 <= m["code"] < 190:
                t["ring"] = m["time"]
            continue
        # tshark paired this response with the request we hold, unless tshark missed the request
        assert m.get("request_frame") is None or int(m["request_frame"]) == t["req"]["frame"], (m, t)
        del open_[(flow, key)]
        done.add((flow, key))
        put(key, _record(t, m))
    for (_, key), t in open_.items():
        put(key, _record(t, None))
    return out


def _vias(msg: dict) -> list[str]:
    return [v.strip() for value in msg["headers"].get("via", []) for v in value.split(",") if v.strip()]


def _record(t: dict | None, r: dict | None) -> dict:
    req = t["req"] if t is not None else None
    first = req or r
    orig = req["src"] if req is not None else r["dst"]
    rec: dict = {
        "ts": round(first["time"], 6),
        "id.orig_h": orig[0],
        "id.orig_p": orig[1],
        "proto": first["proto"],
    }
    if req is not None:
        rec.update(trans_depth=t["depth"], method=req["method"], uri=req["uri"])
        _put(rec, "date", _first(req, "date"))
        _put(rec, "request_from", _first(req, "from"))
        _put(rec, "request_to", _first(req, "to"))
    if r is not None:
        _put(rec, "response_from", _first(r, "from"))
        _put(rec, "response_to", _first(r, "to"))
    _put(rec, "reply_to", _first(first, "reply-to"))
    rec["call_id"] = _first(first, "call-id")
    rec["seq"] = _first(first, "cseq")
    if req is not None:
        _put(rec, "subject", _first(req, "subject"))
        rec["request_path"] = _vias(req)
        _put(rec, "user_agent", _first(req, "user-agent"))
        rec["request_body_len"] = int(_first(req, "content-length") or 0)
    if r is not None:
        rec.update(response_path=_vias(r), status_code=r["code"], status_msg=r["reason"])
        _put(rec, "warning", _first(r, "warning"))
        rec["response_body_len"] = int(_first(r, "content-length") or 0)
    ctype = (_first(r, "content-type") if r is not None else None) or (
        _first(req, "content-type") if req is not None else None
    )
    _put(rec, "content_type", ctype)
    if t is not None:
        if t["prov"]:
            rec["provisional_codes"] = t["prov"]
        if req["method"] == "INVITE":
            if t["ring"] is not None:
                rec["ringing_time"] = round(t["ring"] - req["time"], 6)
            if r is not None and 200 <= r["code"] < 300:
                rec["setup_time"] = round(r["time"] - req["time"], 6)
    return rec


def _put(rec: dict, key: str, value: object) -> None:
    if value is not None:
        rec[key] = value


FIELDS = {
    "id.orig_h",
    "id.orig_p",
    "proto",
    "trans_depth",
    "method",
    "uri",
    "date",
    "request_from",
    "request_to",
    "response_from",
    "response_to",
    "reply_to",
    "call_id",
    "seq",
    "subject",
    "request_path",
    "response_path",
    "user_agent",
    "status_code",
    "status_msg",
    "warning",
    "request_body_len",
    "response_body_len",
    "content_type",
    "provisional_codes",
    "ringing_time",
    "setup_time",
}


def ours(records: list[dict]) -> dict:
    """Our sip.log records keyed by (Call-ID, CSeq number, CSeq method), with the compared fields."""
    out: dict = {}
    for rec in records:
        if rec.get("_log"):
            continue
        fields = {k: v for k, v in rec.items() if k in FIELDS}
        fields["ts"] = round(rec["ts"], 6)
        for k in ("ringing_time", "setup_time"):
            if k in fields:
                fields[k] = round(fields[k], 6)
        seq, _, method = rec["seq"].partition(" ")
        key = (rec["call_id"], int(seq), method.strip().upper())
        assert key not in out, f"two records for {key}"
        out[key] = fields
    return out


def compare(expected: dict, records: list[dict]) -> None:
    """Assert our records equal the expected ones, transaction by transaction."""
    got = ours(records)
    assert sorted(got, key=str) == sorted(expected, key=str)
    for key, rec in expected.items():
        mine = dict(got[key])
        for k in ("ringing_time", "setup_time"):  # differences of two rounded capture times
            if k in rec and k in mine and abs(rec[k] - mine[k]) <= 2e-6:
                mine[k] = rec[k]
        assert mine == rec, key
