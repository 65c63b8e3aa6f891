"""Comparisons of celltap against tshark on the test-bed captures: items per scenario, streams, frames.

Theory of operation. Everything is computed once per capture set (`Results.build`): tshark's items per
protocol and celltap's records per protocol over `all.<capture>.pcap`, each item assigned to the
scenario whose capture's time span holds it; per protocol and scenario, tshark's items must be a
sub-multiset of celltap's (found = matched count). TCP streams: tshark's `follow,tcp,raw` per scenario
capture (tests/cell/oracle.py) against the cell's reassembled streams (text interface, one cell run
over the concatenated capture), for every stream tshark has without holes. The same numbers feed the
tests and the table in docs/realnet.md (tests/realnet/report.py).
"""

from __future__ import annotations

import json
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.cell.oracle import endpoint, tshark_streams
from tests.cell.wire import parse_text, streams
from tests.realnet.adapters import ADAPTERS
from tests.realnet.analysis import REPO, celltap_records, read_logs
from tests.realnet.make_captures import pcap_frames
from tests.realnet.oracle import ORACLES, Item

EPS = 0.001
LIVE_EPS = 0.25


def pcap_span(path: Path) -> tuple[float, float] | None:
    """Time of the first and last frame of a classic pcap (µs or ns), or None if empty."""
    data = path.read_bytes()
    if len(data) <= 24:
        return None
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    rec = struct.Struct(endian + "IIII")
    pos, first, last = 24, None, None
    while pos + 16 <= len(data):
        s, frac, incl, _ = rec.unpack_from(data, pos)
        t = s + frac * scale
        first = t if first is None else first
        last = t
        pos += 16 + incl
    return (first, last) if first is not None else None


@dataclass
class Match:
    """tshark's items for one protocol in one scenario and how many celltap found."""

    expected: int
    found: int
    missing: list[tuple] = field(default_factory=list)


def match(expected: list[Item], ours: list[Item]) -> Match:
    """Multiset inclusion of tshark's (pair, key) items in celltap's."""
    want = Counter((i.pair, i.key) for i in expected)
    have = Counter((i.pair, i.key) for i in ours)
    missing = want - have
    n = sum(want.values())
    return Match(n, n - sum(missing.values()), sorted(missing.elements(), key=repr)[:20])


@dataclass
class Results:
    """Per capture kind (tcpdump / celltap): items, records and matches per (protocol, scenario)."""

    capdir: Path
    kind: str
    windows: dict[str, tuple[float, float]]
    matches: dict[tuple[str, str], Match]
    records: dict[str, list[dict]]
    expected: dict[tuple[str, str], list[Item]] = field(default_factory=dict)  # tshark's items
    ours: dict[tuple[str, str], list[Item]] = field(default_factory=dict)  # celltap's items

    @classmethod
    def build(cls, capdir: Path, kind: str, work: Path) -> Results:
        """Run tshark and celltap over `all.<kind>.pcap` and match per protocol and scenario."""
        manifest = json.loads((capdir / "manifest.json").read_text())
        cap = "tcpdump" if kind == "live" else kind  # live: the logs of `celltap analyze -i` during the run
        windows = {}
        for e in manifest["scenarios"]:
            span = pcap_span(capdir / e[cap])
            if span:
                windows[e["name"]] = span
        allpcap = capdir / f"all.{cap}.pcap"
        if kind == "live":
            records = read_logs(capdir / manifest["live"]["logs"])
        else:
            records = celltap_records(allpcap, work / f"analysis-{kind}")
        # live records carry the time the cell read the frames (see FINDINGS.md), not the capture time:
        # scenarios are >= 0.5 s apart, so a wider margin still assigns every record to its scenario
        eps = LIVE_EPS if kind == "live" else EPS
        matches, expected, found = {}, {}, {}
        for proto, oracle in ORACLES.items():
            theirs = _by_scenario(oracle(str(allpcap)), windows, EPS)
            ours = _by_scenario(ADAPTERS[proto](records[proto]), windows, eps)
            for name in windows:
                expected[(proto, name)] = theirs.get(name, [])
                found[(proto, name)] = ours.get(name, [])
                matches[(proto, name)] = match(expected[(proto, name)], found[(proto, name)])
        return cls(capdir, kind, windows, matches, records, expected, found)


def _by_scenario(
    items: list[Item], windows: dict[str, tuple[float, float]], eps: float
) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for it in items:
        for name, (t0, t1) in windows.items():
            if t0 - eps <= it.ts <= t1 + eps:
                out.setdefault(name, []).append(it)
                break
    return out


# -- TCP streams --------------------------------------------------------------------------------

STREAM_CONFIG = """global:
  home: {home}
  timeout: 60
tcp_all:
  if: default
  proto: TCP
  format: text
  body: yes
"""


@dataclass
class StreamMatch:
    """tshark's complete TCP streams of a scenario and how many the cell reassembled byte for byte."""

    complete: int  # streams tshark reassembles without holes
    exact: int
    with_holes: int
    differing: list[str] = field(default_factory=list)
    conn_found: int = 0  # complete streams with a conn.log record, originator = tshark's node 0
    conn_bytes: int = 0  # ... whose orig_bytes / resp_bytes equal tshark's byte counts
    conn_differing: list[str] = field(default_factory=list)


def cell_streams(pcap: Path, work: Path) -> dict[tuple, tuple[bytes, bytes, float]]:
    """The cell's reassembled TCP streams: flow -> (bytes from endpoint 1, from endpoint 2, first time)."""
    from tests.cell.runner import run_cell

    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    cfg = work / "streams.yaml"
    cfg.write_text(STREAM_CONFIG.format(home=home))
    proc, out = run_cell(cfg, pcap, home, ["tcp/default"], timeout=240)
    if proc.returncode != 0:
        raise RuntimeError(f"celltap cell exited {proc.returncode}: {proc.stderr[-2000:]}")
    events = parse_text(out["tcp/default"])
    first: dict[tuple, float] = {}
    for e in events:
        first.setdefault(e.flow, e.time)
    return {flow: (a, b, first[flow]) for flow, (a, b) in streams(events).items()}


def tcp_connections(pcap: Path) -> int:
    """Distinct TCP endpoint pairs in a capture (Ethernet, IPv4/IPv6 without extension headers)."""
    seen = set()
    for f in pcap_frames(pcap):
        et = f[12:14]
        if et == b"\x08\x00" and len(f) >= 38 and f[23] == 6:
            ihl = (f[14] & 0x0F) * 4
            a, b = f[26:30], f[30:34]
            t = f[14 + ihl : 14 + ihl + 4]
        elif et == b"\x86\xdd" and len(f) >= 58 and f[20] == 6:
            a, b = f[22:38], f[38:54]
            t = f[54:58]
        else:
            continue
        seen.add(frozenset(((a, t[:2]), (b, t[2:4]))))
    return len(seen)


def stream_matches(
    capdir: Path, kind: str, work: Path, conn: list[dict] | None = None
) -> dict[str, StreamMatch]:
    """Per scenario: tshark's hole-free TCP streams vs the cell's, both directions byte for byte; and,
    given `celltap analyze`'s conn.log records, vs conn.log (record, originator, orig/resp bytes)."""
    conns = {
        (endpoint(r["id.orig_h"], r["id.orig_p"]), endpoint(r["id.resp_h"], r["id.resp_p"])): r
        for r in conn or []
        if r.get("proto") == "tcp"
    }
    manifest = json.loads((capdir / "manifest.json").read_text())
    ours = cell_streams(capdir / f"all.{kind}.pcap", work / f"streams-{kind}")
    out = {}
    for e in manifest["scenarios"]:
        pcap = capdir / e[kind]
        span = pcap_span(pcap)
        n = tcp_connections(pcap)
        if not n or span is None:
            out[e["name"]] = StreamMatch(0, 0, 0)
            continue
        # a few indices more than endpoint pairs (a pair reused after a close is a new stream for
        # tshark); indices past the last stream come back as "Node 0: :0" and are dropped
        theirs = {k: v for k, v in tshark_streams("tshark", str(pcap), n + 3).items() if k[0] != ":0"}
        local = {f: v for f, v in ours.items() if span[0] - EPS <= v[2] <= span[1] + EPS}
        by_ends = {}
        for f, (a, b, _t) in local.items():
            e1, e2 = endpoint(f[0], f[1]), endpoint(f[2], f[3])
            by_ends[(e1, e2)] = (a, b)
            by_ends[(e2, e1)] = (b, a)
        m = StreamMatch(0, 0, 0)
        for (n0, n1), (d0, d1, holes) in theirs.items():
            if holes:
                m.with_holes += 1
                continue
            m.complete += 1
            o = by_ends.get((n0, n1))
            if o is not None and o == (d0, d1):
                m.exact += 1
            else:
                why = (
                    "missing" if o is None else f"{len(o[0])}/{len(o[1])} bytes vs tshark {len(d0)}/{len(d1)}"
                )
                m.differing.append(f"{n0} -> {n1}: {why}")
            _conn_match(m, conns, n0, n1, d0, d1)
        out[e["name"]] = m
    return out


def _conn_match(m: StreamMatch, conns: dict, n0: str, n1: str, d0: bytes, d1: bytes) -> None:
    rec = conns.get((n0, n1))
    if rec is None:
        why = "originator reversed" if (n1, n0) in conns else "no conn.log record"
        m.conn_differing.append(f"{n0} -> {n1}: {why}")
        return
    m.conn_found += 1
    if (rec.get("orig_bytes"), rec.get("resp_bytes")) == (len(d0), len(d1)):
        m.conn_bytes += 1
    else:
        m.conn_differing.append(
            f"{n0} -> {n1}: orig_bytes/resp_bytes {rec.get('orig_bytes')}/{rec.get('resp_bytes')} "
            f"vs tshark {len(d0)}/{len(d1)}"
        )


def main(argv: list[str]) -> int:
    """Print the matches for a capture directory (debugging aid)."""
    capdir = Path(argv[0])
    work = Path(argv[1]) if len(argv) > 1 else Path("/tmp/realnet-compare")
    res = Results.build(capdir, "tcpdump", work)
    for (proto, name), m in sorted(res.matches.items()):
        if m.expected:
            print(f"{proto:5} {name:16} {m.found}/{m.expected}  {m.missing[:3]}")
    for name, s in stream_matches(capdir, "tcpdump", work, res.records.get("conn")).items():
        print(f"streams {name:16} {s.exact}/{s.complete} (holes {s.with_holes}) {s.differing[:2]}")
        print(f"conn    {name:16} {s.conn_found}/{s.complete} bytes {s.conn_bytes} {s.conn_differing[:2]}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
