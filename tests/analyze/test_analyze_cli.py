"""`celltap analyze` as a user runs it: one command, a directory of logs, clear errors, live capture."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from celltap.pcap import PcapWriter, read_all
from tests.conftest import require_root, require_tool
from tests.incubator.netns import NetNS

CELLTAP = [sys.executable, "-m", "celltap.cli"]


def run(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CELLTAP, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def frames_of(path: Path) -> list[tuple[int, bytes]]:
    """(capture time ns, frame bytes) of every frame of a capture."""
    return [(int(b.ts_ns[i]), b.frame(i)) for b in read_all(str(path)) for i in range(len(b))]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("captures")
    out = d / "mixed.pcap"
    p = run("loadgen", "pcap", "mixed", str(out), "--count", "300")
    assert p.returncode == 0, p.stderr
    return out


def test_one_command_writes_one_log_per_kind_and_a_summary(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "logs"
    p = run("analyze", str(mixed), "-o", str(out))
    assert p.returncode == 0, p.stderr
    logs = {f.name for f in out.iterdir()}
    assert {"conn.log", "http.log", "dns.log", "tls.log", "smtp.log", "sip.log"} <= logs
    lines = {f: len((out / f).read_text().splitlines()) for f in logs}
    # the summary on stderr names every log with its record count
    for name, n in lines.items():
        assert f"{name} {n}" in p.stderr
    assert "Traceback" not in p.stderr


def test_conn_log_counts_equal_tsharks_per_conversation_sums(mixed: Path, tmp_path: Path) -> None:
    """Packets and IP bytes each way of every TCP/UDP conversation, against tshark's dissection."""
    tshark = require_tool("tshark")
    out = tmp_path / "logs"
    assert run("analyze", str(mixed), "-o", str(out), "--quiet").returncode == 0
    fields = [
        "ip.src",
        "ipv6.src",
        "ip.dst",
        "ipv6.dst",
        "tcp.srcport",
        "udp.srcport",
        "tcp.dstport",
        "udp.dstport",
        "ip.len",
        "ipv6.plen",
        "ip.flags.mf",
        "ip.frag_offset",
        "ipv6.fraghdr.ident",
    ]
    argv = [
        tshark,
        "-r",
        str(mixed),
        "-n",
        "-T",
        "fields",
        "-E",
        "occurrence=l",
        "-E",
        "separator=\t",
        "-o",
        "ip.defragment:FALSE",
        "-o",
        "ipv6.defragment:FALSE",
    ]
    for f in fields:
        argv += ["-e", f]
    p = subprocess.run([*argv, "tcp or udp"], capture_output=True, text=True, check=True)
    expected: dict[frozenset, Counter] = defaultdict(Counter)
    fragmented: set[frozenset] = set()  # flows with fragments: left out (the cell counts datagrams)
    for line in p.stdout.splitlines():
        s4, s6, d4, d6, tsp, usp, tdp, udp_, ip_len, v6_plen, mf, frag_off, v6frag = line.split("\t")
        src, dst = s4 or s6, d4 or d6
        sport, dport = int(tsp or usp or 0), int(tdp or udp_ or 0)
        key = frozenset({(src, sport), (dst, dport)})
        if mf in ("1", "True") or (frag_off and frag_off != "0") or v6frag:
            fragmented.add(key)
        size = int(ip_len) if ip_len else int(v6_plen) + 40
        expected[key][(src, sport, "pkts")] += 1
        expected[key][(src, sport, "bytes")] += size
    for key in fragmented:
        expected.pop(key, None)
    got: dict[frozenset, Counter] = defaultdict(Counter)
    for rec in read_log(out / "conn.log"):
        if rec["proto"] not in ("tcp", "udp"):
            continue
        o, r = (rec["id.orig_h"], rec["id.orig_p"]), (rec["id.resp_h"], rec["id.resp_p"])
        key = frozenset({o, r})
        got[key][(*o, "pkts")] += rec["orig_pkts"]
        got[key][(*o, "bytes")] += rec["orig_ip_bytes"]
        got[key][(*r, "pkts")] += rec["resp_pkts"]
        got[key][(*r, "bytes")] += rec["resp_ip_bytes"]
    assert len(expected) > 200
    for key, counts in expected.items():
        assert +got[key] == +counts, key


def test_uids_are_unique_per_connection_and_community_ids_match_the_reference(
    mixed: Path, tmp_path: Path
) -> None:
    import communityid

    out = tmp_path / "logs"
    assert run("analyze", str(mixed), "-o", str(out), "--quiet").returncode == 0
    conns = read_log(out / "conn.log")
    uids = [c["uid"] for c in conns]
    assert len(uids) == len(set(uids))
    cid = communityid.CommunityID()
    proto = {"tcp": 6, "udp": 17}
    checked = 0
    for c in conns:
        if c["proto"] not in proto:
            continue
        t = communityid.FlowTuple(
            proto[c["proto"]], c["id.orig_h"], c["id.resp_h"], c["id.orig_p"], c["id.resp_p"]
        )
        assert c["community_id"] == cid.calc(t)
        checked += 1
    assert checked > 200


def test_several_captures_are_read_in_time_order(mixed: Path, tmp_path: Path) -> None:
    """Splitting a capture in two interleaved files and giving both gives the single file's logs."""
    frames = frames_of(mixed)
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    with PcapWriter(str(a)) as wa, PcapWriter(str(b)) as wb:
        for i, (ts, data) in enumerate(frames):
            (wa if (i // 7) % 2 else wb).write(ts, data)
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run("analyze", str(mixed), "-o", str(whole), "--quiet").returncode == 0
    p = run("analyze", str(b), "-r", str(a), "-o", str(split), "--quiet")
    assert p.returncode == 0, p.stderr
    for name in ("conn.log", "http.log", "dns.log", "tls.log"):
        assert sorted((whole / name).read_text().splitlines()) == sorted(
            (split / name).read_text().splitlines()
        )


def test_one_log_on_stdout(mixed: Path, tmp_path: Path) -> None:
    files = tmp_path / "logs"
    assert run("analyze", str(mixed), "-o", str(files), "--quiet").returncode == 0
    p = run("analyze", "-r", str(mixed), "--json", "dns", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.splitlines()) == sorted((files / "dns.log").read_text().splitlines())
    assert not list(tmp_path.glob("*.log"))  # nothing else written


def test_rotation_by_size_keeps_every_record(mixed: Path, tmp_path: Path) -> None:
    whole, rotated = tmp_path / "whole", tmp_path / "rotated"
    assert run("analyze", str(mixed), "-o", str(whole), "--quiet").returncode == 0
    assert run("analyze", str(mixed), "-o", str(rotated), "--quiet", "--rotate-size", "4k").returncode == 0
    parts = sorted(rotated.glob("conn.*.log"))
    assert len(parts) >= 3
    lines = []
    for f in [*parts, rotated / "conn.log"]:
        if f.exists():
            lines += f.read_text().splitlines()
    assert sorted(lines) == sorted((whole / "conn.log").read_text().splitlines())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pcap"], "no such capture file: missing.pcap"),
        (["{mixed}", "-o", "/nonexistent-dir/logs"], "output directory /nonexistent-dir/logs"),
        (["{mixed}", "--config", "missing.yaml"], "no such configuration file: missing.yaml"),
        (["{mixed}", "--config", "{mixed}"], "not a YAML text file"),
        (["{mixed}", "--analyzer", "http"], "--analyzer: expected IF=NAME"),
        (["{mixed}", "--analyzer", "http=nope"], "unknown analyzer 'nope'"),
        (["-i", "nosuchif0"], "no network interface named 'nosuchif0'"),
        (["{notpcap}"], "bad capture file"),
        ([], "nothing to analyze"),
        (["{mixed}", "-i", "lo"], "not both"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    mixed: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    notpcap = tmp_path / "notes.txt"
    notpcap.write_text("this is not a capture\n")
    argv = [a.format(mixed=mixed, notpcap=notpcap) for a in args]
    p = run("analyze", *argv, cwd=tmp_path)
    assert p.returncode == 2
    assert message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_a_damaged_capture_still_logs_what_came_before_the_damage(mixed: Path, tmp_path: Path) -> None:
    data = mixed.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2] + b"\xff" * 64)  # a record header with an absurd length
    p = run("analyze", str(cut), "-o", str(tmp_path / "logs"))
    assert p.returncode in (0, 2)
    assert "Traceback" not in p.stderr
    assert len(read_log(tmp_path / "logs" / "conn.log")) > 50


SERVER = """
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("10.77.0.2", 8080))
srv.listen(8)
print("ready", flush=True)
for i in range(5):
    s, _ = srv.accept()
    s.recv(1000)
    s.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    s.recv(1000)
    s.close()
"""


@pytest.mark.netns
def test_live_capture_until_sigterm_loses_nothing(tmp_path: Path) -> None:
    """Real TCP exchanges and UDP datagrams between two namespaces; SIGTERM; every one is logged."""
    require_root()
    tcpdump = require_tool("tcpdump")
    out = tmp_path / "logs"
    with NetNS("anc") as client, NetNS("ans") as server:
        client.veth("an0", "an1", other=server)
        client.ip("addr", "add", "10.77.0.1/24", "dev", "an0")
        server.ip("addr", "add", "10.77.0.2/24", "dev", "an1")
        proc = client.exec(
            *CELLTAP, "analyze", "-i", "an0", "-o", str(out), stderr=subprocess.PIPE, text=True
        )
        dump = client.exec(
            tcpdump, "-i", "an0", "-w", str(tmp_path / "ref.pcap"), "-U", "-B", "16384",
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        srv = server.exec(sys.executable, "-c", SERVER, stdout=subprocess.PIPE, text=True)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        # both captures are bound once they say so
        assert proc.stderr is not None and "capturing on an0" in proc.stderr.readline()
        assert dump.stderr is not None and "listening on an0" in dump.stderr.readline()

        def traffic() -> None:
            for i in range(5):
                c = socket.create_connection(("10.77.0.2", 8080), timeout=10)
                c.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                c.recv(1000)
                c.close()
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(3):
                u.sendto(b"datagram %d" % i, ("10.77.0.2", 9000 + i))
            u.close()

        client.call(traffic)
        srv.wait(timeout=10)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        dump.send_signal(signal.SIGTERM)
        dump.wait(timeout=10)
    assert proc.returncode == 0, err
    conns = read_log(out / "conn.log")
    tcp = [c for c in conns if c["proto"] == "tcp" and c["id.resp_p"] == 8080]
    udp = [c for c in conns if c["proto"] == "udp" and 9000 <= c["id.resp_p"] < 9003]
    assert len(tcp) == 5 and len(udp) == 3
    assert all(c["id.orig_h"] == "10.77.0.1" for c in tcp + udp)
    ref = frames_of(tmp_path / "ref.pcap")

    def port_8080(f: bytes) -> bool:
        if len(f) < 38 or f[12:14] != b"\x08\x00" or f[23] != 6:
            return False
        return 8080 in (int.from_bytes(f[34:36], "big"), int.from_bytes(f[36:38], "big"))

    assert sum(c["orig_pkts"] + c["resp_pkts"] for c in tcp) == sum(map(port_8080, (f for _, f in ref)))
    assert len(read_log(out / "http.log")) == 5


def test_help_lists_analyze() -> None:
    p = run("--help")
    assert "analyze" in p.stdout


def test_conn_payload_bytes_equal_tsharks_sequence_span(mixed: Path, tmp_path: Path) -> None:
    """orig_bytes / resp_bytes of TCP connections: tshark's relative sequence span of each direction."""
    tshark = require_tool("tshark")
    out = tmp_path / "logs"
    assert run("analyze", str(mixed), "-o", str(out), "--quiet").returncode == 0
    argv = [tshark, "-r", str(mixed), "-n", "-T", "fields", "-E", "separator=\t", "-E", "occurrence=l"]
    for f in ("ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport", "tcp.seq", "tcp.len",
              "tcp.flags.syn"):  # fmt: skip
        argv += ["-e", f]
    p = subprocess.run([*argv, "tcp"], capture_output=True, text=True, check=True)
    span: Counter = Counter()  # (src, sport, dst, dport) -> highest relative seq + len
    syn: set = set()
    for line in p.stdout.splitlines():
        s4, s6, sp, d4, d6, dp, seq, ln, is_syn = line.split("\t")
        key = (s4 or s6, int(sp), d4 or d6, int(dp))
        if is_syn in ("1", "True"):
            syn.add(key)
        if int(ln):  # relative seq 1 is the first data byte; FIN and pure ACKs carry none
            span[key] = max(span[key], int(seq) + int(ln) - 1)
    checked = 0
    for c in read_log(out / "conn.log"):
        fwd = (c["id.orig_h"], c["id.orig_p"], c["id.resp_h"], c["id.resp_p"])
        rev = (c["id.resp_h"], c["id.resp_p"], c["id.orig_h"], c["id.orig_p"])
        if c["proto"] != "tcp" or fwd not in syn or rev not in syn or c["missed_bytes"]:
            continue
        assert (c["orig_bytes"], c["resp_bytes"]) == (span[fwd], span[rev]), c
        checked += 1
    assert checked > 100


def test_conn_vlan_tags_equal_tsharks(tmp_path: Path) -> None:
    """conn.log's vlan / inner_vlan: the 802.1Q/QinQ tags tshark reads on each flow's first packet."""
    tshark = require_tool("tshark")
    pcap = tmp_path / "vlan.pcap"
    assert run("loadgen", "pcap", "vlan", str(pcap), "--count", "42").returncode == 0
    out = tmp_path / "logs"
    assert run("analyze", str(pcap), "-o", str(out), "--quiet").returncode == 0
    argv = [tshark, "-r", str(pcap), "-n", "-T", "fields", "-E", "separator=\t", "-E", "aggregator=,"]
    for f in ("ip.src", "ipv6.src", "tcp.srcport", "udp.srcport", "ieee8021ad.id", "vlan.id"):
        argv += ["-e", f]
    p = subprocess.run([*argv, "tcp or udp"], capture_output=True, text=True, check=True)
    first: dict[tuple, list[int]] = {}
    for line in p.stdout.splitlines():
        s4, s6, tp, up, svids, vids = line.split("\t")  # an 802.1ad service tag is the outer one
        tags = [int(v) for v in f"{svids},{vids}".split(",") if v]
        first.setdefault((s4 or s6, int(tp or up or 0)), tags)
    checked = 0
    for c in read_log(out / "conn.log"):
        tags = first.get((c["id.orig_h"], c["id.orig_p"]))
        if tags is None:
            continue
        assert [c.get("vlan", 0), c.get("inner_vlan", 0)] == [*tags, 0, 0][:2], (c, tags)
        checked += 1
    assert checked >= 30
