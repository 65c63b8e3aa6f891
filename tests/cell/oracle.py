"""Independent oracles for the cell tests: tshark's TCP follow (raw) and tshark field extraction."""

from __future__ import annotations

import re
import subprocess

_MISSING = re.compile(rb"^\[\d+ bytes missing in capture file\]\x00?$")


def tshark_streams(tshark: str, pcap: str, count: int) -> dict[tuple[str, str], tuple[bytes, bytes, int]]:
    """Reassembled payload of TCP streams 0..count-1 as {(node0, node1): (node0 bytes, node1 bytes, holes)}.

    Node 0 is the endpoint tshark saw first (the client); "[N bytes missing]" markers are holes.
    """
    args = [tshark, "-r", pcap, "-q"]
    for i in range(count):
        args += ["-z", f"follow,tcp,raw,{i}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    streams: dict[tuple[str, str], tuple[bytes, bytes, int]] = {}
    for block in out.split("=" * 67):
        nodes = re.findall(r"^Node [01]: (\S+)$", block, re.M)
        if len(nodes) != 2:
            continue
        data = [bytearray(), bytearray()]
        holes = 0
        body = block.split(f"Node 1: {nodes[1]}", 1)[1]
        for line in body.splitlines():
            if not line.strip():
                continue
            d = 1 if line.startswith("\t") else 0
            chunk = bytes.fromhex(line.strip())
            if _MISSING.match(chunk):
                holes += 1
                continue
            data[d] += chunk
        streams[(nodes[0], nodes[1])] = (bytes(data[0]), bytes(data[1]), holes)
    return streams


def endpoint(ip: str, port: int) -> str:
    """tshark's spelling of an endpoint (IPv6 in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def tshark_tcp_rows(tshark: str, pcap: str) -> list[dict]:
    """Every TCP packet as tshark decodes it: endpoints, flags, raw seq/ack, payload length, window."""
    fields = ["ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport", "tcp.flags"]
    fields += ["tcp.seq_raw", "tcp.ack_raw", "tcp.len", "tcp.window_size_value"]
    args = [tshark, "-r", pcap, "-Y", "tcp", "-T", "fields", "-E", "separator=|"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        s4, s6, sp, d4, d6, dp, flags, seq, ack, ln, win = line.split("|")
        rows.append(
            {
                "src": endpoint(s4 or s6, int(sp)),
                "dst": endpoint(d4 or d6, int(dp)),
                "flags": int(flags, 16),
                "seq": int(seq),
                "ack": int(ack or 0),
                "len": int(ln),
                "win": int(win),
            }
        )
    return rows


def zeek_history(rows: list[dict], orig: str) -> str:
    """Zeek's history letters of one connection's packets (Zeek's documented rules), `orig` = originator.

    s h a d f r (once, or again for s h f r at a new sequence number), i q, w (logarithmic); t and
    g are not derived here (they need a reassembler).
    """
    out = []
    seen: set[tuple[str, str]] = set()
    last: dict[tuple[str, str], int] = {}
    zero: dict[str, int] = {}

    def add(code: str, who: str) -> None:
        out.append(code.upper() if who == orig else code)

    for r in rows:
        who = r["src"]
        syn, fin, rst, ack = r["flags"] & 2, r["flags"] & 1, r["flags"] & 4, r["flags"] & 16
        n = bool(syn) + bool(fin) + bool(rst)
        if n > 1:
            code = "i" if fin and rst else "q"
            if (who, code) not in seen:
                seen.add((who, code))
                add(code, who)
        elif n == 1:
            kind, code, at = (
                ("syn", "h" if ack else "s", r["seq"])
                if syn
                else ("fin", "f", (r["seq"] + r["len"]) & 0xFFFFFFFF)
                if fin
                else ("rst", "r", r["seq"])
            )
            if last.get((who, kind)) != at:
                add(code, who)
            last[(who, kind)] = at
        elif r["len"]:
            if (who, "d") not in seen:
                seen.add((who, "d"))
                add("d", who)
        elif ack and (who, "a") not in seen:
            seen.add((who, "a"))
            add("a", who)
        if r["win"] == 0 and ack and not (syn or fin or rst):
            zero[who] = zero.get(who, 0) + 1
            if zero[who] in (1, 10, 100, 1000):
                add("w", who)
    return "".join(out)
