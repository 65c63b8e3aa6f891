"""Scenario contents as tshark sees them: the protocols, fields and reassemblies each one promises."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.loadgen.oracle import fields, follow_tcp, tshark, values, write_scenario

pytestmark = pytest.mark.tshark


def test_http_keepalive_pipelining_chunked_head_continue(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "http.pcap", "http", 30)
    reqs = fields(
        pcap, ["tcp.stream", "http.request.method", "http.host", "http.request.uri"], "http.request"
    )
    assert len({r[0] for r in reqs}) == 30, "every connection carries requests"
    per_conn = Counter(r[0] for r in reqs)
    assert min(per_conn.values()) >= 2, "keep-alive: several requests per connection"
    methods = {r[1] for r in reqs}
    assert {"GET", "HEAD", "PUT"} <= methods and methods & {"POST", "DELETE", "PATCH", "OPTIONS"}
    assert all(re.fullmatch(r"[a-z]+\.example(\.(com|net|org))?", r[2]) for r in reqs)
    assert all(r[3].startswith("/") for r in reqs)
    agents = set(values(pcap, "http.user_agent"))
    assert len(agents) >= 3
    resp = fields(
        pcap,
        [
            "tcp.stream",
            "http.response.code",
            "http.transfer_encoding",
            "http.chunk_size",
            "http.content_length",
        ],
        "http.response",
    )
    codes = Counter(c for r in resp for c in r[1].split(","))
    assert codes["100"] >= 1 and codes["200"] >= 1 and len(codes) >= 4
    expects = fields(pcap, ["http.request.line"], 'http.request.line contains "Expect: 100-continue"')
    assert codes["100"] == len(expects), "every Expect: 100-continue gets a 100 Continue"
    chunked = [r for r in resp if "chunked" in r[2]]
    assert chunked and all(r[3].split(",")[-1] == "0" for r in chunked), "chunked bodies end with a 0 chunk"
    assert any(r[4] for r in resp), "Content-Length bodies"
    # Pipelining: a frame whose reassembled response answers two requests.
    assert any("," in r[1] for r in resp)
    head_streams = {r[0] for r in reqs if r[1] == "HEAD"}
    assert head_streams


def test_dns_types_edns_tcp_nxdomain(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "dns.pcap", "dns", 40)
    resp = fields(
        pcap,
        ["dns.qry.name", "dns.resp.type", "dns.flags.rcode", "tcp.stream", "dns.resp.name"],
        "dns.flags.response == 1",
    )
    assert len(resp) == 40
    types = {int(t) for r in resp for t in r[1].split(",") if t}
    assert {1, 28, 5, 2, 15, 16, 6, 12, 33, 41} <= types  # A AAAA CNAME NS MX TXT SOA PTR SRV OPT
    assert any(r[2] == "3" for r in resp), "NXDOMAIN"
    assert any(r[3] for r in resp), "some over TCP"
    queries = values(pcap, "dns.qry.name", "dns.flags.response == 0")
    assert len(queries) == 40
    # Answers are written with compression pointers; tshark expanding them back to the question
    # name proves the pointers are right.
    for r in resp:
        if r[1].startswith("1,") or r[1] == "1":
            assert r[4].split(",")[0] == r[0]
    raw = open(pcap, "rb").read()
    assert b"\xc0\x0c" in raw


def test_tls_hellos(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "tls.pcap", "tls", 24)
    ch = fields(
        pcap,
        [
            "tcp.stream",
            "tls.handshake.extensions_server_name",
            "tls.handshake.extensions_alpn_str",
            "tls.handshake.extensions.supported_version",
            "tls.handshake.ciphersuite",
            "tls.handshake.extensions_supported_group",
            "tls.handshake.sig_hash_alg",
            "tls.handshake.extensions_key_share_group",
            "tcp.segment.count",
        ],
        "tls.handshake.type == 1",
    )
    assert len(ch) == 24
    assert all(r[1].endswith((".com", ".net", ".org")) for r in ch)
    assert all("http/1.1" in r[2] for r in ch) and any("h2" in r[2] for r in ch)
    v13 = [r for r in ch if "0x0304" in r[3]]
    assert 0 < len(v13) < 24, "both TLS 1.3 and 1.2-only hellos"
    grease = re.compile(r"0x([0-9a-f])a\1a")
    assert all(grease.match(r[4].split(",")[0]) for r in ch), "GREASE first in cipher suites"
    assert all(r[5] and r[6] for r in ch)
    assert all("29" in r[7].split(",") for r in v13), "x25519 key share"
    assert any(r[8] == "2" for r in ch), "some ClientHellos reassembled from two segments"
    sh = fields(
        pcap,
        [
            "tls.handshake.ciphersuite",
            "tls.handshake.extensions.supported_version",
            "tls.handshake.extensions_alpn_str",
        ],
        "tls.handshake.type == 2",
    )
    assert len(sh) == 24
    assert any(r[1] == "0x0304" for r in sh) and any(r[2] in ("h2", "http/1.1") for r in sh)
    assert values(pcap, "tls.app_data", "tls.record.content_type == 23")


def test_smtp_sessions(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "smtp.pcap", "smtp", 10)
    cmds = fields(pcap, ["tcp.stream", "smtp.req.command", "smtp.req.parameter"], "smtp.req.command")
    per = defaultdict(list)
    for stream, cmd, _ in cmds:
        per[stream].append(cmd)
    assert len(per) == 10
    for seq in per.values():
        assert seq[0] == "EHLO" and seq[1] == "MAIL" and seq[-2:] == ["DATA", "QUIT"]
        assert set(seq[2:-2]) == {"RCPT"}
    assert any(seq.count("RCPT") > 1 for seq in per.values())
    assert "STARTTLS" in values(pcap, "smtp.rsp.parameter")
    msgs = fields(pcap, ["imf.from", "imf.to", "imf.subject", "imf.message_id", "imf.date"], "imf")
    assert len(msgs) == 10 and all(all(f for f in m) for m in msgs)


def test_sip_calls_and_registers(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "sip.pcap", "sip", 12)
    rows = fields(pcap, ["sip.Method", "sip.Status-Code", "sip.Call-ID", "sip.CSeq", "sdp.media"], "sip")
    by_call = defaultdict(list)
    for method, status, call, _, _ in rows:
        by_call[call].append(method or status)
    assert len(by_call) == 12
    invites = [v for v in by_call.values() if v[0] == "INVITE"]
    registers = [v for v in by_call.values() if v[0] == "REGISTER"]
    assert invites and registers
    for v in invites:
        assert v == ["INVITE", "100", "180", "200", "ACK", "BYE", "200"]
    assert all(v == ["REGISTER", "200"] for v in registers)
    assert len([r for r in rows if r[4]]) == 2 * len(invites), "SDP offer and answer per call"


def test_ssh_kex(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "ssh.pcap", "ssh", 6)
    banners = values(pcap, "ssh.protocol")
    assert len(banners) == 12 and all(b.startswith("SSH-2.0-") for b in banners)
    codes = Counter(values(pcap, "ssh.message_code"))
    assert codes["20"] == 12 and codes["30"] == 6 and codes["31"] == 6 and codes["21"] == 12
    assert set(values(pcap, "tcp.dstport", "tcp.flags.syn == 1 && tcp.flags.ack == 0")) == {"22"}


def test_torrent_tracker_announces(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "tt.pcap", "torrent_tracker", 8)
    dec = ("-d", "tcp.port==6969,http")
    reqs = fields(pcap, ["tcp.dstport", "http.request.uri"], "http.request", *dec)
    assert len(reqs) == 8
    assert {r[0] for r in reqs} == {"6969", "80"}
    for _, uri in reqs:
        assert re.match(r"/announce\?info_hash=(%[0-9A-F]{2}|[A-Za-z0-9_.~-]){20}&peer_id=", uri), uri
    # tshark has no bencode "decode as" for HTTP bodies: take its reassembled stream and decode here.
    streams = sorted({int(s) for s in values(pcap, "tcp.stream")})
    for _, s2c in follow_tcp(pcap, streams).values():
        head, body = s2c.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK")
        reply, rest = _bdecode(body)
        assert rest == b""
        assert set(reply) == {b"complete", b"incomplete", b"interval", b"min interval", b"peers"}
        assert reply[b"interval"] == 1800 and len(reply[b"peers"]) % 6 == 0


def _bdecode(data: bytes) -> tuple[object, bytes]:
    """A minimal bencode decoder (test-side, independent of the generator's encoder)."""
    c = data[:1]
    if c == b"i":
        end = data.index(b"e")
        return int(data[1:end]), data[end + 1 :]
    if c in (b"l", b"d"):
        items, data = [], data[1:]
        while data[:1] != b"e":
            item, data = _bdecode(data)
            items.append(item)
        if c == b"l":
            return items, data[1:]
        return dict(zip(items[::2], items[1::2], strict=True)), data[1:]
    colon = data.index(b":")
    n = int(data[:colon])
    return data[colon + 1 : colon + 1 + n], data[colon + 1 + n :]


def test_cps_connections(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "cps.pcap", "cps", 200)
    rows = fields(
        pcap, ["tcp.stream", "tcp.flags", "tcp.len", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport"]
    )
    per = defaultdict(list)
    for r in rows:
        per[r[0]].append(r)
    assert len(per) == 200
    tuples = set()
    for rs in per.values():
        flags = [int(r[1], 16) for r in rs]
        assert flags[0] == 0x02 and flags[1] == 0x12 and flags[2] == 0x10
        assert [int(r[2]) for r in rs if int(r[2])] == [1400, 1400]
        assert sum(1 for f in flags if f & 0x01) == 2  # FIN each way
        tuples.add(tuple(rs[0][3:]))
    assert len(tuples) == 200


def test_small_frames(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "small.pcap", "small", 8000)
    lens = Counter(values(pcap, "frame.len"))
    assert lens == {"60": 8000}
    conv = tshark(pcap, "-q", "-z", "conv,udp", "-z", "conv,tcp")
    flows = sum(1 for line in conv.splitlines() if "<->" in line)
    assert 990 <= flows <= 1000  # 1000 flows, 8 frames each on average
    pcap2 = write_scenario(tmp_path / "small2.pcap", "small", 2000, flows=10)
    conv = tshark(pcap2, "-q", "-z", "conv,udp", "-z", "conv,tcp")
    assert sum(1 for line in conv.splitlines() if "<->" in line) == 10


def _frag_payload(i: int, size: int) -> bytes:
    text = "".join(f"celltap frag {i} line {k}\n" for k in range(size // 10 + 1))
    return text.encode()[:size]


def test_frag_reassembled_by_tshark(tmp_path: Path) -> None:
    from celltap.loadgen.scenarios.frag import CASES

    pcap = write_scenario(tmp_path / "frag.pcap", "frag", len(CASES))
    udp = fields(
        pcap,
        [
            "echo.data",
            "udp.length",
            "ip.fragment.overlap",
            "ip.fragment.overlap.conflict",
            "ipv6.fragment.overlap",
            "ip.fragment.count",
            "ipv6.fragment.count",
        ],
        "udp",
    )
    assert len(udp) == sum(1 for c in CASES if "udp" in c)
    seen = set()
    for data_hex, length, ov4, conflict, ov6, n4, n6 in udp:
        data = bytes.fromhex(data_hex)
        i = int(data.split(b" ")[2])
        case = CASES[i]
        seen.add(case)
        assert data == _frag_payload(i, int(length) - 8), case
        overlap = (ov4 or ov6) == "1"
        assert overlap == ("overlap" in case or "duplicate" in case), case
        assert (conflict == "1") == case.endswith("conflict"), case
        assert int(n4 or n6) >= 3
    assert seen == {c for c in CASES if "udp" in c}
    tcp_streams = sorted({int(s) for s in values(pcap, "tcp.stream")})
    followed = follow_tcp(pcap, tcp_streams)
    assert len(followed) == sum(1 for c in CASES if "tcp" in c)
    for c2s, _ in followed.values():
        i = int(c2s.split(b" ")[2])
        assert "tcp" in CASES[i]
        assert c2s == _frag_payload(i, len(c2s)) and len(c2s) > 2900


def test_vlan_tags(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "vlan.pcap", "vlan", 21)
    rows = fields(
        pcap,
        ["vlan.id", "ieee8021ad.id", "eth.type", "frame.protocols", "tls.handshake.extensions_server_name"],
    )
    col = [{v for r in rows for v in r[k].split(",") if v} for k in range(5)]
    assert {10, 20, 30, 40, 100, 300, 4000} <= {int(v) for v in col[0]}
    assert col[1] == {"100"}
    assert "0x9100" in col[2]
    protos = col[3]
    assert any(":vlan:ethertype:ip:tcp:http" in p for p in protos)
    assert any(":ieee8021ad:ethertype:vlan:ethertype:ip:" in p for p in protos)
    assert any("vlan:ethertype:ip:udp:dns" in p for p in protos)
    assert col[4]


def test_ipv6_extension_headers(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "v6.pcap", "ipv6", 20)
    rows = fields(pcap, ["ipv6.routing.type", "frame.protocols", "ip.src"])
    assert {r[0] for r in rows if r[0]} == {"4"}
    protos = " ".join(r[1] for r in rows)
    for p in ("ipv6:tcp", "ipv6.hopopts", "ipv6.routing", "ipv6.dstopts", ":dns", ":http", ":tls", "icmpv6"):
        assert p in protos, p
    assert not any(r[2] for r in rows), "only IPv6"


def _tcpfaults_payload(seed: int, i: int, size: int) -> bytes:
    lines = [f"tcpfaults seed={seed} flow={i} line={k:06d}\n" for k in range(size // 30 + 1)]
    return "".join(lines).encode()[:size]


def test_tcpfaults_payload_recoverable(tmp_path: Path) -> None:
    from celltap.loadgen.scenarios.tcpfaults import CASES

    pcap = write_scenario(tmp_path / "tf.pcap", "tcpfaults", 2 * len(CASES), seed=5)
    ports = {int(r[0]): int(r[1]) for r in fields(pcap, ["tcp.stream", "tcp.srcport"], "tcp.flags == 0x002")}
    followed = follow_tcp(pcap, sorted(ports))
    expert = fields(
        pcap,
        [
            "tcp.srcport",
            "tcp.dstport",
            "tcp.analysis.out_of_order",
            "tcp.analysis.retransmission",
            "tcp.analysis.lost_segment",
            "tcp.flags.reset",
            "tcp.seq_raw",
        ],
    )
    flags_by_flow: dict[int, set[str]] = defaultdict(set)
    seqs: dict[int, list[int]] = defaultdict(list)
    for sp, dp, ooo, rtx, lost, rst, seq in expert:
        i = (int(sp) if sp != "9" else int(dp)) - 20000
        for name, v in (("out_of_order", ooo), ("retransmission", rtx), ("lost", lost)):
            if v:
                flags_by_flow[i].add(name)
        if rst == "1":
            flags_by_flow[i].add("rst")
        if sp != "9":
            seqs[i].append(int(seq))
    for stream, port in ports.items():
        i = port - 20000
        case = CASES[i % len(CASES)]
        c2s, s2c = followed[stream]
        assert s2c == f"tcpfaults reply seed=5 flow={i}\n".encode()
        expected = _tcpfaults_payload(5, i, len(c2s))
        if case == "loss":
            # tshark marks the hole where data segment 3 (1448 bytes with timestamps) was not captured.
            marker = b"[1448 bytes missing in capture file]\x00"
            full = _tcpfaults_payload(5, i, len(c2s) - len(marker) + 1448)
            assert c2s == full[: 3 * 1448] + marker + full[4 * 1448 :]
            assert "lost" in flags_by_flow[i]
        else:
            assert c2s == expected, case
        if case == "reorder":
            assert "out_of_order" in flags_by_flow[i]
        if case in ("retransmit", "overlap"):
            assert "retransmission" in flags_by_flow[i]
        if case == "rst":
            assert "rst" in flags_by_flow[i]
        if case == "wrap":
            s = seqs[i]
            assert max(s) > 2**32 - 3000 and min(s) < 20000, "sequence numbers wrap"
        if case in ("wrap", "rst"):
            assert not flags_by_flow[i] & {"out_of_order", "retransmission", "lost"}, (case, flags_by_flow[i])


def test_icmp_and_sctp(tmp_path: Path) -> None:
    icmp = write_scenario(tmp_path / "icmp.pcap", "icmp", 6)
    rows = fields(icmp, ["icmp.resp_to", "icmpv6.resp_to", "ip.opt.type"])
    assert any(r[0] for r in rows) and any(r[1] for r in rows)
    assert any("7" in r[2].split(",") for r in rows), "ping -R: Record Route option"
    sctp = write_scenario(tmp_path / "sctp.pcap", "sctp", 4)
    rows = fields(sctp, ["sctp.chunk_type", "sctp.checksum.status"])
    chunks = Counter(c for r in rows for c in r[0].split(","))
    assert all(chunks[t] == 4 for t in ("1", "2", "10", "11", "6"))
    assert {r[1] for r in rows} == {"1"}


def test_mixed_is_interleaved(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "mixed.pcap", "mixed", 150)
    rows = fields(pcap, ["frame.protocols", "ip.src", "ipv6.src"])
    protos = [r[0] for r in rows]
    first_half = " ".join(protos[: len(protos) // 2])
    for p in (":http", ":dns", ":tls", ":smtp", ":sip", ":ssh"):
        assert p in first_half, f"{p} missing from the first half: scenarios are not interleaved"
    assert any("vlan" in p for p in protos) and any("ipv6" in p for p in protos)
    nets = {r[1].split(".")[1] for r in rows if r[1].startswith("10.")}
    assert len(nets) >= 8, "flows of different scenarios use different client subnets"
