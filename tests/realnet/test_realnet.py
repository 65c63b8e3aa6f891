"""The test bed's "must show" (issue 13): real servers and clients in namespaces, tshark as the oracle.

Per scenario and capture kind (tcpdump's file and celltap's own capture of the same monitoring port):
* both captures hold the same frames, in the same order;
* every client exited as expected (the traffic the scenario describes really happened);
* faults are real kernel behaviour (tshark sees retransmissions under loss, out-of-order segments and
  duplicates through the middlebox);
* per protocol, everything tshark decodes is found in celltap's analyzer records (100%);
* every TCP stream tshark reassembles completely is reassembled byte for byte by the cell.

A known class of miss is an `xfail(strict=True)` naming the class and the branch fixing it: when the
fix lands the test XPASSes, fails strictly, and the marker must go.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter

import pytest

from tests.realnet.make_captures import pcap_frames, pcap_records
from tests.realnet.scenarios import SCENARIOS

pytestmark = [pytest.mark.netns, pytest.mark.tshark, pytest.mark.slow]

KINDS = ("tcpdump", "celltap", "live")  # analyze over tcpdump's file, over celltap's capture, live (-i)

# (protocol, scenario) -> the class of miss (issue 13) and the branch fixing it. Fixed and deleted since
# they merged into main: HTTP 100-continue, CRLF between pipelined requests, bare LF, leading CRLFs (http);
# SIP over TCP (dnssip); BDAT (smtp); TLS after STARTTLS (tls; found with the built-in rules, which
# classify the handed-on stream by its ClientHello); midstream pickup (tcpstate).
KNOWN_MISSES: dict[tuple[str, str], str] = {}

# the live analyzer runs for the whole run, so it saw this connection's handshake: not midstream for it
NOT_A_MISS_LIVE = {("http", "http_midstream")}


def _known_miss(proto: str, name: str, kind: str) -> list:
    if (proto, name) not in KNOWN_MISSES or (kind == "live" and (proto, name) in NOT_A_MISS_LIVE):
        return []
    return [pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[(proto, name)])]


PROTO_CASES = [
    pytest.param(
        proto, sc.name, kind, id=f"{proto}-{sc.name}-{kind}", marks=_known_miss(proto, sc.name, kind)
    )
    for sc in SCENARIOS
    for proto in sc.protocols
    if not (proto == "http" and sc.name.startswith("https"))  # HTTP inside TLS: nothing in clear to decode
    for kind in KINDS
]

NAMES = [sc.name for sc in SCENARIOS]
STREAM_MISSES: dict[str, str] = {}
TCP_SCENARIOS = [
    pytest.param(
        sc.name,
        marks=[pytest.mark.xfail(strict=True, reason=STREAM_MISSES[sc.name])]
        if sc.name in STREAM_MISSES
        else [],
    )
    for sc in SCENARIOS
    if sc.name not in ("dns_udp", "sip_udp")
]


def _entry(capdir, name: str) -> dict:
    manifest = json.loads((capdir / "manifest.json").read_text())
    found = [e for e in manifest["scenarios"] if e["name"] == name]
    if not found:
        pytest.skip(f"{capdir} was made without scenario {name} (REALNET_CAPTURES older than the scenarios)")
    return found[0]


def _summary(f: bytes) -> str:
    return f"len={len(f)} {f[12:14].hex()} {f[14:60].hex()}"


MAX_DISPLACEMENT = 8


def _displacement(window: list[bytes], theirs: list[bytes]) -> int:
    """Largest distance between a frame's position in tcpdump's capture and in celltap's."""
    where: dict[bytes, list[int]] = {}
    for pos, f in enumerate(window):
        where.setdefault(f, []).append(pos)
    seen: Counter = Counter()
    worst = 0
    for pos, f in enumerate(theirs):
        worst = max(worst, abs(where[f][seen[f]] - pos))
        seen[f] += 1
    return worst


@pytest.mark.parametrize("name", NAMES)
def test_celltap_capture_holds_tcpdumps_frames(capdir, name):
    """celltap's AF_PACKET capture holds tcpdump's frames (same port): the same bytes, in the same order.

    The incubator starts before tcpdump and stops after it: tcpdump's frames must be one run of
    celltap's with nothing missing and nothing extra inside, extra frames only at the edges and few
    (the link is kept quiet between scenarios). Order: celltap's file is in its socket's receive
    order (its timestamps never go back by more than concurrent delivery explains), and no frame is more than
    MAX_DISPLACEMENT positions from tcpdump's order: the two sides' frames are mirrored from
    different CPUs, and two packet sockets can see concurrent frames in different orders (seen: an
    ACK 1 to 6 positions away, timestamps 1 µs apart). Timestamps are each socket's own.
    """
    e = _entry(capdir, name)
    ours = pcap_frames(capdir / e["celltap"])
    theirs = pcap_frames(capdir / e["tcpdump"])
    assert len(theirs) > 5, f"{name}: tcpdump captured only {len(theirs)} frames"
    extra = len(ours) - len(theirs)
    assert 0 <= extra <= 3, f"{name}: celltap {len(ours)} frames, tcpdump {len(theirs)}"
    want = Counter(theirs)
    starts = [k for k in range(extra + 1) if Counter(ours[k : k + len(theirs)]) == want]
    if not starts:
        lost = [_summary(f) for f in (want - Counter(ours)).elements()][:3]
        pytest.fail(f"{name}: tcpdump's frames are not one run of celltap's; frames celltap lacks: {lost}")
    window = ours[starts[0] : starts[0] + len(theirs)]
    times = [t for t, _ in pcap_records(capdir / e["celltap"])]
    # the kernel stamps a frame before it reaches each socket: frames handed to the socket concurrently
    # from two CPUs can step back a little (seen once: the reordering middlebox); never by 1 ms
    back = [k for k in range(1, len(times)) if times[k] < times[k - 1] - 1_000_000]  # ns
    assert not back, f"{name}: celltap's capture is not in its socket's receive order at frames {back[:5]}"
    worst = _displacement(window, theirs)
    assert worst <= MAX_DISPLACEMENT, f"{name}: a frame is {worst} positions away from tcpdump's order"
    assert not [w for w in e.get("incubator", []) if "kernel dropped" in w], e["incubator"]


def test_live_analyze_stopped_cleanly(capdir):
    """`celltap analyze -i` ran on the monitoring port for the whole run and exited 0 on SIGTERM."""
    live = json.loads((capdir / "manifest.json").read_text()).get("live")
    if live is None:
        pytest.skip("captures made without the live analyzer")
    assert live["rc"] == 0, live["summary"]


@pytest.mark.parametrize("name", NAMES)
def test_clients_exited_as_expected(capdir, name):
    """Every real client of the scenario ended with the exit code its case implies (0, or swaks' 24)."""
    e = _entry(capdir, name)
    bad = [
        (t["cmd"], t["rc"], t.get("err", "")[-200:]) for t in e["tools"] if t["rc"] != t.get("expect_rc", 0)
    ]
    assert not bad, bad


def _tshark_count(pcap, display_filter: str) -> int:
    out = subprocess.run(["tshark", "-r", str(pcap), "-n", "-Y", display_filter, "-T", "fields", "-e",
                          "frame.number"], capture_output=True, text=True, check=True).stdout  # fmt: skip
    return len(out.split())


def test_faults_are_real(capdir):
    """Loss made the kernel retransmit; the middlebox made out-of-order and duplicate segments."""
    loss = capdir / _entry(capdir, "http_loss")["tcpdump"]
    lost = _tshark_count(loss, "tcp.analysis.retransmission || tcp.analysis.fast_retransmission")
    assert lost >= 10
    reorder = capdir / _entry(capdir, "http_reorder")["tcpdump"]
    assert _tshark_count(reorder, "tcp.analysis.out_of_order") >= 5
    frames = pcap_frames(reorder)
    assert len(frames) - len(set(frames)) >= 3, "no duplicated frames through the middlebox"
    # a clean scenario of the same size has fewer: a busy host does retransmit now and then (a CI run under
    # load saw 32 on a 1 MiB transfer), and two frames arriving at once on two CPUs may be captured swapped
    clean = capdir / _entry(capdir, "http_bodies")["tcpdump"]
    assert _tshark_count(clean, "tcp.analysis.retransmission || tcp.analysis.out_of_order") < lost


ORACLE_GAPS = {
    "http_oddities": "tshark decodes one response for a pipelined HEAD + GET (its HTTP dissector takes the "
    "GET's response for the HEAD's body): the oracle's gap, not celltap's",
}
HTTP_CURL = [
    pytest.param(
        sc.name,
        marks=[pytest.mark.xfail(strict=True, reason=ORACLE_GAPS[sc.name])] if sc.name in ORACLE_GAPS else [],
    )
    for sc in SCENARIOS
    if "http" in sc.protocols and not sc.name.startswith("https")
]


def test_oracle_captures_complete(capdir):
    """tcpdump (the oracle's capture) reported its kernel drops for every scenario, and they are 0."""
    manifest = json.loads((capdir / "manifest.json").read_text())
    dropped = {e["name"]: e.get("tcpdump_dropped") for e in manifest["scenarios"]}
    assert all(v == 0 for v in dropped.values()), f"tcpdump's kernel drops per scenario: {dropped}"


@pytest.mark.parametrize("name", HTTP_CURL)
def test_tshark_sees_what_the_clients_got(capdir, results, name):
    """The oracle checked against the tools: every status code curl (-w %{http_code}) or the raw client
    reported is among tshark's decoded responses of the scenario."""
    e = _entry(capdir, name)
    got: Counter = Counter()
    for t in e["tools"]:
        if t["cmd"].startswith("curl"):
            got.update(int(m.group(1)) for m in re.finditer(r"^(\d{3}) \d+$", t["out"], re.M))
        for key in ("status_codes",):
            got.update((t.get("result") or {}).get(key, []))
    if not got:
        pytest.skip(f"{name}: no client reports status codes")
    theirs = Counter(i.key[1] for i in results["tcpdump"].expected[("http", name)] if i.key[0] == "response")
    dropped = e.get("tcpdump_dropped")
    assert not got - theirs, (
        f"{name}: clients got {dict(got)}, tshark decodes {dict(theirs)}; tcpdump dropped {dropped}"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_sip_requests_after_keepalive_crlfs(capdir, results, kind):
    """Requests the raw SIP client sent (its own transcript; sipp answered them) are all in celltap's
    records, also those tshark does not decode (INVITE after leading CRLFs, BYE after a CRLF ping)."""
    e = _entry(capdir, "sip_crlf")
    sent = Counter(e["tools"][0]["result"]["sent"])
    assert e["tools"][0]["result"]["sip_codes"] == [180, 200, 200], "sipp's uas did not complete the call"
    ours = Counter(i.key[1] for i in results[kind].ours.get(("sip", "sip_crlf"), []) if i.key[0] == "request")
    assert not sent - ours, f"sent {dict(sent)}, celltap reports {dict(ours)}"


@pytest.mark.parametrize(("proto", "name", "kind"), PROTO_CASES)
def test_everything_tshark_decodes_is_found(results, proto, name, kind):
    """tshark's items (Zeek vocabulary) of this protocol in this scenario are all in celltap's records."""
    if (proto, name) not in results[kind].matches:
        pytest.skip(f"the captures were made without scenario {name}")
    m = results[kind].matches[(proto, name)]
    assert m.expected > 0, f"tshark decodes no {proto} in {name}: the scenario did not make its traffic"
    assert m.found == m.expected, f"{proto}/{name}: found {m.found} of {m.expected}; missing {m.missing}"


@pytest.mark.parametrize("name", TCP_SCENARIOS)
def test_tcp_streams_byte_exact(streams, name):
    """Every TCP stream tshark reassembles without holes: the cell's bytes equal tshark's, both directions.

    On tcpdump's capture; celltap's holds the same frames (test above).
    """
    if name not in streams:
        pytest.skip(f"the captures were made without scenario {name}")
    s = streams[name]
    assert s.complete > 0, f"{name}: no complete TCP stream"
    assert s.exact == s.complete, f"{name}: {s.exact}/{s.complete} exact; {s.differing}"


@pytest.mark.parametrize("name", TCP_SCENARIOS)
def test_conn_log_has_every_tcp_connection(streams, name):
    """`celltap analyze`'s conn.log: one record per TCP stream tshark reassembles, originator = its client."""
    if name not in streams:
        pytest.skip(f"the captures were made without scenario {name}")
    s = streams[name]
    assert s.conn_found == s.complete, f"{name}: {s.conn_found}/{s.complete}; {s.conn_differing}"


def test_conn_log_bytes_equal_tsharks_streams(streams):
    """conn.log's orig_bytes / resp_bytes equal the byte counts of tshark's complete streams, everywhere."""
    found = sum(s.conn_found for s in streams.values())
    same = sum(s.conn_bytes for s in streams.values())
    assert found > 30
    assert same == found, [d for s in streams.values() for d in s.conn_differing][:5]


def test_live_records_carry_capture_times(results):
    """`celltap analyze -i`: every HTTP request record's ts equals (within 1 ms) the one the same analysis
    gives from tcpdump's file of the same frames: records carry the kernel's capture times, not read
    times. (Compared with tshark's item times instead, two of the requests differed by 3-4 ms in both
    analyses; not yet explained, noted in docs/realnet.md.)"""
    offline = {}
    for (proto, _name), items in results["tcpdump"].ours.items():
        if proto == "http":
            for i in items:
                if i.key[0] == "request":
                    offline.setdefault((i.pair, i.key), i.ts)
    off = []
    for (proto, _name), items in results["live"].ours.items():
        if proto == "http":
            off += [abs(i.ts - offline[(i.pair, i.key)]) for i in items if (i.pair, i.key) in offline]
    assert len(off) > 10
    assert max(off) < 0.001, f"live request times off by up to {max(off) * 1000:.1f} ms: {sorted(off)[-8:]}"
