"""Test-side stand-in for the cell: a pcap reassembled by tshark into SF-TAP interface events.

tshark dissects the capture (`tcp.payload`, `udp.payload`, `tcp.seq_raw` per frame); we keep each
direction's bytes in sequence order (dropping retransmitted bytes, holding a segment that arrives
ahead of a gap until the gap is filled: a capture on a loaded machine can reorder segments), order
endpoints as the cell does (lexicographically smaller (address bytes, port) is endpoint 1) and
encode CREATED / DATA / DESTROYED events in the documented text or binary format.
"""

from __future__ import annotations

import ipaddress
import subprocess

from celltap.cell.sdk.binary_format import encode_binary
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, FlowId
from celltap.cell.sdk.text_format import encode_text

FIELDS = [
    "frame.time_epoch",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.stream",
    "tcp.flags.syn",
    "tcp.flags.fin",
    "tcp.flags.reset",
    "tcp.seq_raw",
    "tcp.payload",
    "udp.payload",
]


def _first(v: str) -> str:
    return v.split(",", 1)[0]


def _canon(src: str, sport: int, dst: str, dport: int) -> tuple[FlowId, int]:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    l3 = "ipv4" if a.version == 4 else "ipv6"
    if (a.packed, sport) <= (b.packed, dport):
        return FlowId(str(a), str(b), sport, dport, 0, l3, "tcp"), 1
    return FlowId(str(b), str(a), dport, sport, 0, l3, "tcp"), 2


def _deliver(st: dict, flow: FlowId, sender: int, seq: int, t: float, payload: bytes, enc) -> list[bytes]:
    """DATA events for the bytes of a segment not delivered yet (none for a retransmission)."""
    expect = st["next"].get(sender, seq)
    skip = (expect - seq) & 0xFFFFFFFF
    if skip >= len(payload):
        return []  # retransmission of bytes already delivered
    payload = payload[skip:]
    st["next"][sender] = (seq + skip + len(payload)) & 0xFFFFFFFF
    return [
        enc(flow, DATA, t, sender, payload[i : i + 0xFFFF], "none") for i in range(0, len(payload), 0xFFFF)
    ]


def pcap_to_events(pcap: str, fmt: str = "text", display_filter: str = "tcp or udp") -> bytes:
    """Return the interface byte stream a cell would send for every TCP/UDP flow of `pcap`."""
    enc = encode_text if fmt == "text" else encode_binary
    cmd = [
        "tshark",
        "-r",
        pcap,
        "-n",
        "-Y",
        display_filter,
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-o",
        "tcp.relative_sequence_numbers:FALSE",
    ]
    for f in FIELDS:
        cmd += ["-e", f]
    lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    out: list[bytes] = []
    tcp: dict[str, dict] = {}
    for line in lines:
        v = dict(zip(FIELDS, line.split("\t"), strict=False))
        t = float(v["frame.time_epoch"])
        src = _first(v["ip.src"] or v["ipv6.src"])
        dst = _first(v["ip.dst"] or v["ipv6.dst"])
        if v["udp.srcport"] and not v["tcp.srcport"]:
            payload = bytes.fromhex(v["udp.payload"].replace(":", "")) if v["udp.payload"] else b""
            flow, sender = _canon(src, int(_first(v["udp.srcport"])), dst, int(_first(v["udp.dstport"])))
            flow = FlowId(flow.ip1, flow.ip2, flow.port1, flow.port2, 0, flow.l3, "udp")
            out.append(enc(flow, DATA, t, sender, payload, "none"))
            continue
        if not v["tcp.srcport"]:
            continue
        stream = v["tcp.stream"]
        flow, sender = _canon(src, int(v["tcp.srcport"]), dst, int(v["tcp.dstport"]))
        st = tcp.get(stream)
        if st is None:
            st = tcp[stream] = {"flow": flow, "next": {}, "last": t, "reason": "NORMAL"}
            out.append(enc(flow, CREATED, t))
        st["last"] = t
        seq = int(v["tcp.seq_raw"])
        if v["tcp.flags.syn"] in ("1", "True"):
            st["next"][sender] = (seq + 1) & 0xFFFFFFFF
        if v["tcp.flags.reset"] in ("1", "True"):
            st["reason"] = "RESET"
        if not v["tcp.payload"]:
            continue
        payload = bytes.fromhex(v["tcp.payload"].replace(":", ""))
        held = st.setdefault("held", {}).setdefault(sender, {})
        expect = st["next"].get(sender, seq)
        if 0 < (seq - expect) & 0xFFFFFFFF < 1 << 31:
            # ahead of the bytes expected (the capture reordered segments, or one is still to
            # come): held until the gap before it is filled, as the cell's reassembly does
            if len(payload) > len(held.get(seq, (0, b""))[1]):
                held[seq] = (t, payload)
            continue
        out += _deliver(st, flow, sender, seq, t, payload, enc)
        while held:
            nxt = st["next"][sender]
            ready = [q for q in held if (nxt - q) & 0xFFFFFFFF < 1 << 31]  # at or before nxt
            if not ready:
                break
            for q in sorted(ready, key=lambda q: (q - nxt) & 0xFFFFFFFF):
                ht, hp = held.pop(q)
                out += _deliver(st, flow, sender, q, ht, hp, enc)
    for st in tcp.values():
        out.append(enc(st["flow"], DESTROYED, st["last"], reason=st["reason"]))
    return b"".join(out)
