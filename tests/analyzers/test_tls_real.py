"""The TLS analyzer on real handshakes: openssl s_server/s_client (TLS 1.0-1.3, HelloRetryRequest,
resumption, ALPN, a 3-certificate chain, an ECDSA leaf, DHE, a client certificate, a client that
rejects the server), dovecot's IMAP and POP3 STARTTLS, and one crafted SSLv2-format ClientHello
answered by a real s_server. Captured by tcpdump on a veth (tests/analyzers/tls_bed.py).

Oracles: tshark (hello fields, cipher and group names, alerts, certificates' bytes), s_client's own
report (protocol, cipher, reuse), the openssl CLI for the certificates (x509 -text), OpenSSL's
`-stdname` list for cipher names. Both paths: the real cell (`celltap cell --read`) and tshark's
reassembly into interface events.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from celltap.cell.analyzers.tls_starttls import StartTls
from celltap.cell.sdk.client import run_socket
from celltap.cell.sdk.events import FlowId
from celltap.cell.sdk.flows import FlowAnalyzer

from tests.analyzers import cell_path, oracle
from tests.analyzers.harness import analyzer_cmd, run_analyzer, tshark_fields
from tests.analyzers.pcap_events import pcap_to_events
from tests.analyzers.tls_scenarios import make_capture, s_client_facts
from tests.cell.runner import LiveCell, wait_for
from tests.conftest import require_root, require_tool

pytestmark = pytest.mark.tshark

SERVER_PORTS = (443, 4433, 143, 110, 25, 21)
S_CLIENT_VERSIONS = {"TLSv1": "TLSv10", "TLSv1.1": "TLSv11", "TLSv1.2": "TLSv12", "TLSv1.3": "TLSv13"}
# RFC 8446 6.2 names of the alerts these scenarios provoke (tshark reports the number)
ALERT_NAMES = {
    48: "unknown_ca",
    42: "bad_certificate",
    40: "handshake_failure",
    0: "close_notify",
    50: "decode_error",
}


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list[str]]:
    require_root()
    for tool in ("tshark", "tcpdump", "openssl", "ip", "ss"):
        require_tool(tool)
    return make_capture(tmp_path_factory.mktemp("tlsreal"))


@pytest.fixture(scope="module", params=["tshark", "cell"])
def records(request: pytest.FixtureRequest, capture, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    pcap = str(capture[0])
    tmp = tmp_path_factory.mktemp(f"tlsrec-{request.param}")
    if request.param == "tshark":
        return run_analyzer("tls", pcap_to_events(pcap, "text", "tcp"), tmp, "text")
    mp = pytest.MonkeyPatch()
    mp.setitem(cell_path.RULES, "tls", [("TCP", "443,4433,143,110,25,21", None, None)])
    try:
        return cell_path.cell_records("tls", pcap, tmp, "text")
    finally:
        mp.undo()


def _ssl(records: list[dict]) -> dict[str, list[dict]]:
    """ssl records by SNI (each scenario has its own), in connection order."""
    out: dict[str, list[dict]] = {}
    for r in sorted((r for r in records if not r.get("_log")), key=lambda r: r["ts"]):
        out.setdefault(r.get("server_name", ""), []).append(r)
    return out


def test_hello_fields_match_tshark(capture, records: list[dict]) -> None:
    """SNI, ALPN, offered ciphers and versions, JA3/JA3S/JA4, chosen cipher and version, per flow."""
    theirs = oracle.tls_tshark(str(capture[0]))
    ours = oracle.tls_ours(records)
    assert len(theirs) >= 16
    v2 = _by_resp_port(records, 4433)  # the crafted SSLv2 hello: tshark decodes port 4433 only when told
    ours.pop((v2["id.orig_h"], v2["id.orig_p"]))
    theirs.pop((v2["id.orig_h"], v2["id.orig_p"]), None)  # tshark: an SSLv2 hello, no TLS fields
    for key in set(theirs) | set(ours):
        assert ours.get(key) == theirs.get(key), key


def test_versions_ciphers_reuse_match_s_client(capture, records: list[dict]) -> None:
    """What s_client says it negotiated: protocol, cipher (via OpenSSL's IANA names), session reuse."""
    stdnames = _openssl_stdnames()
    by_sni = _ssl(records)
    _, scenarios, _ = capture
    for sc in scenarios:
        recs = by_sni[sc.sni]
        assert len(recs) == len(sc.outputs), sc.name
        for rec, out in zip(recs, sc.outputs, strict=True):
            facts = s_client_facts(out)
            assert rec["version"] == S_CLIENT_VERSIONS[facts["protocol"]], sc.name
            if facts["cipher_openssl"] != "(NONE)":
                assert rec["cipher"] == stdnames[facts["cipher_openssl"]], sc.name
                assert rec["established"] is True, sc.name
            else:
                assert rec["established"] is False, sc.name
            assert rec["resumed"] is facts["reused"], sc.name


def test_zeek_fields_of_the_scenarios(capture, records: list[dict]) -> None:
    """HelloRetryRequest, curves, alerts, ALPN (1.2 and 1.3), certificates per scenario, from tshark."""
    pcap = str(capture[0])
    by_sni = _ssl(records)
    groups = _tshark_values("tls.handshake.extensions_supported_group")
    hellos = tshark_fields(pcap, "tls.handshake.type == 1", ["tls.handshake.extensions_server_name"])
    count = {}
    for h in hellos:
        sni = h["tls.handshake.extensions_server_name"][0]
        count[sni] = count.get(sni, 0) + 1
    assert count["hrr.tls.test"] == 2
    hrr = by_sni["hrr.tls.test"][0]
    assert hrr["hello_retry"] is True and hrr["client_hellos"] == 2 and hrr["established"] is True
    assert hrr["ssl_history"].count("C") == 2 and "j" in hrr["ssl_history"]
    # curve: TLS 1.3 from the (last) ServerHello key_share, TLS <= 1.2 from ServerKeyExchange
    for r in tshark_fields(
        pcap,
        "tls.handshake.type == 2 || tls.handshake.type == 12",
        [
            "tcp.srcport",
            "tcp.dstport",
            "tls.handshake.extensions_key_share_group",
            "tls.handshake.server_named_curve",
        ],
    ):
        if int(r["tcp.srcport"][0]) == 4433 or int(r["tcp.dstport"][0]) == 4433:
            continue  # the SSLv2 flow's own test reads it
        value = (
            r["tls.handshake.extensions_key_share_group"] or r["tls.handshake.server_named_curve"] or [None]
        )
        if value[-1] is None:
            continue
        rec = _by_port(records, int(r["tcp.dstport"][0]))
        assert rec["curve"] == groups[int(value[-1], 0)], rec["server_name"]
    assert "curve" not in by_sni["dhe.tls.test"][0]  # finite-field DHE: no named group
    alerts = tshark_fields(
        pcap, "tls.alert_message.desc", ["tcp.srcport", "tcp.dstport", "tls.alert_message.desc"]
    )
    assert alerts, "the rejecting client sent no plaintext alert"
    for a in alerts:
        sport, dport = int(a["tcp.srcport"][0]), int(a["tcp.dstport"][0])
        rec = _by_port(records, dport if sport in SERVER_PORTS else sport)
        assert rec["last_alert"] == ALERT_NAMES[int(a["tls.alert_message.desc"][-1])]
        assert rec["established"] is False
    # ALPN: in TLS 1.3 the server's choice is in the encrypted EncryptedExtensions (tshark sees none)
    assert by_sni["a13.tls.test"][0]["orig_alpn"] == ["h2", "http/1.1"]
    assert "next_protocol" not in by_sni["a13.tls.test"][0]


def test_certificates_match_tshark_and_openssl(capture, records: list[dict]) -> None:
    """cert_chain_fps, subject/issuer and every x509 record against the openssl CLI's reading of the
    certificates tshark extracted from the capture."""
    pcap = str(capture[0])
    rows = tshark_fields(
        pcap, "tls.handshake.type == 11", ["tcp.srcport", "tcp.dstport", "tls.handshake.certificate"]
    )
    assert rows
    x509 = [r for r in records if r.get("_log") == "x509"]
    seen = 0
    for row in rows:
        ders = [bytes.fromhex(h.replace(":", "")) for h in row["tls.handshake.certificate"]]
        if not ders:
            continue  # an empty client Certificate (vsftpd asks, s_client has none): no fields
        sport, dport = int(row["tcp.srcport"][0]), int(row["tcp.dstport"][0])
        server_sent = sport in SERVER_PORTS
        rec = _by_port(records, dport if server_sent else sport)
        fps = [hashlib.sha256(d).hexdigest() for d in ders]
        assert rec["cert_chain_fps" if server_sent else "client_cert_chain_fps"] == fps
        first = _openssl_x509(ders[0])
        assert rec["subject" if server_sent else "client_subject"] == first["certificate.subject"]
        assert rec["issuer" if server_sent else "client_issuer"] == first["certificate.issuer"]
        for der, fp in zip(ders, fps, strict=True):
            mine = [x for x in x509 if x["fingerprint"] == fp and x["uid"] == rec["uid"]]
            assert len(mine) == 1
            expected = _openssl_x509(der)
            got = {k: v for k, v in mine[0].items() if k in expected}
            assert got == expected, fp
            assert mine[0]["host_cert"] is server_sent and mine[0]["client_cert"] is not server_sent
            seen += 1
    assert seen >= 20


@pytest.mark.parametrize(("name", "port"), [("imap", 143), ("pop3", 110), ("smtp", 25), ("ftp", 21)])
def test_starttls_dovecot_and_postfix(capture, records: list[dict], name: str, port: int) -> None:
    """dovecot's STARTTLS (IMAP) and STLS (POP3), postfix's STARTTLS (SMTP), vsftpd's AUTH TLS (FTP),
    driven by `openssl s_client -starttls`: the TLS after the switch is found by the scanner and
    matches s_client."""
    _, _, others = capture
    if name not in others:
        server = {"smtp": "postfix", "ftp": "vsftpd"}.get(name, "dovecot (dovecot-imapd, dovecot-pop3d)")
        pytest.skip(f"{server} is not installed (scripts/system-packages.txt)")
    rec = _ssl(records)[f"{name}.tls.test"][0]
    facts = s_client_facts(others[name])
    assert rec["starttls"] is True and rec["id.resp_p"] == port
    assert rec["version"] == S_CLIENT_VERSIONS[facts["protocol"]]
    assert rec["cipher"] == _openssl_stdnames()[facts["cipher_openssl"]]
    assert rec["established"] is True and rec["cert_chain_fps"]


def test_curl_against_nginx(capture, records: list[dict]) -> None:
    """curl's own report (-v) of two handshakes with nginx: protocol, cipher, ALPN offered and accepted
    (visible to a passive observer in TLS 1.2 only)."""
    _, _, others = capture
    if "curl13" not in others:
        pytest.skip("nginx or curl is not installed (scripts/system-packages.txt)")
    stdnames = _openssl_stdnames()
    recs = _ssl(records)["www.tls.test"]
    assert len(recs) == 2
    for rec, out in zip(recs, (others["curl13"], others["curl12"]), strict=True):
        m = re.search(r"SSL connection using (\S+) / (\S+)", out)
        assert m, out[-500:]
        assert rec["version"] == S_CLIENT_VERSIONS[m.group(1)]
        assert rec["cipher"] == stdnames.get(m.group(2), m.group(2))
        offered = re.search(r"ALPN: offers (\S+)", out).group(1).split(",")
        accepted = re.search(r"ALPN: server accepted (\S+)", out).group(1)
        assert rec["orig_alpn"] == offered
        assert rec.get("next_protocol") == (accepted if rec["version"] != "TLSv13" else None)
        assert rec["established"] is True and rec["server_name"] == "www.tls.test"


def test_crafted_sslv2_client_hello_answered_by_real_server(capture, records: list[dict]) -> None:
    """crafted: an SSLv2-format ClientHello (no tool sends one) to a real s_server, which answers TLS 1.0."""
    pcap = str(capture[0])
    out = subprocess.run(
        [
            "tshark",
            "-r",
            pcap,
            "-n",
            "-d",
            "tcp.port==4433,tls",
            "-Y",
            "tcp.port == 4433 && tls",
            "-T",
            "fields",
            "-E",
            "aggregator=;",
            "-e",
            "tls.record.version",
            "-e",
            "tls.handshake.version",
            "-e",
            "tls.handshake.cipherspec",
            "-e",
            "tls.handshake.ciphersuite",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ch, sh = out[0].split("\t"), out[1].split("\t")
    assert ch[0] == "0x0002"  # tshark: an SSLv2 record
    rec = _by_resp_port(records, 4433)
    assert rec["sslv2_client_hello"] is True
    assert rec["client_ciphers"] == [int(x, 0) for x in ch[2].split(";")]
    assert rec["client_version"] == int(ch[1], 0)
    assert rec["version"] == oracle.ZEEK_VERSIONS[int(sh[1].split(";")[0], 0)]
    assert rec["cipher"] == oracle.tshark_cipher_names()[int(sh[3], 0)]
    assert rec["ssl_history"].startswith("Cs")


# ------------------------------------------------------------------ helpers


def _connected(path: Path) -> bool:
    """Has a reader connected to the cell's interface socket (an accepted connection on its path)?"""
    out = subprocess.run(["ss", "-xH"], capture_output=True, text=True).stdout
    return sum(str(path) in line for line in out.splitlines()) >= 1 and any(
        str(path) in line and "ESTAB" in line for line in out.splitlines()
    )


def _by_port(records: list[dict], client_port: int) -> dict:
    recs = [r for r in records if not r.get("_log") and r["id.orig_p"] == client_port]
    assert len(recs) == 1, client_port
    return recs[0]


def _by_resp_port(records: list[dict], port: int) -> dict:
    recs = [r for r in records if not r.get("_log") and r["id.resp_p"] == port]
    assert len(recs) == 1, port
    return recs[0]


def _tshark_values(field: str) -> dict[int, str]:
    out = subprocess.run(["tshark", "-G", "values"], capture_output=True, text=True, check=True).stdout
    names = {}
    for line in out.splitlines():
        p = line.split("\t")
        if len(p) == 4 and p[0] == "V" and p[1] == field:
            names[int(p[2], 0)] = p[3]
    return names


def _openssl_stdnames() -> dict[str, str]:
    out = subprocess.run(
        ["openssl", "ciphers", "-V", "-stdname", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {}
    for line in out.splitlines():
        m = re.match(r"\s*0x..,0x.. - (\S+)\s+- (\S+)", line)
        if m:
            names[m.group(2)] = m.group(1)
    return names


def _openssl_x509(der: bytes) -> dict:
    """Zeek's x509 fields of one certificate as the openssl CLI reads it (RFC 2253 names)."""
    return dict(_openssl_x509_once(der))


@functools.cache
def _openssl_x509_once(der: bytes) -> dict:
    # The servers hand out the same few certificates on every connection: read each one once.

    def run(*args: str) -> str:
        return subprocess.run(
            ["openssl", "x509", "-inform", "DER", "-noout", *args], input=der, capture_output=True, check=True
        ).stdout.decode()

    text = run("-text", "-nameopt", "RFC2253")
    out: dict = {
        "fingerprint": run("-fingerprint", "-sha256").split("=", 1)[1].strip().replace(":", "").lower()
    }
    out["certificate.serial"] = run("-serial").split("=", 1)[1].strip()
    out["certificate.subject"] = run("-subject", "-nameopt", "RFC2253").split("=", 1)[1].strip()
    out["certificate.issuer"] = run("-issuer", "-nameopt", "RFC2253").split("=", 1)[1].strip()
    out["certificate.version"] = int(re.search(r"Version: (\d+)", text).group(1))
    for key, opt in (
        ("certificate.not_valid_before", "-startdate"),
        ("certificate.not_valid_after", "-enddate"),
    ):
        stamp = run(opt).split("=", 1)[1].strip()
        out[key] = datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC).timestamp()
    out["certificate.sig_alg"] = re.search(r"Signature Algorithm: (\S+)", text).group(1)
    out["certificate.key_alg"] = re.search(r"Public Key Algorithm: (\S+)", text).group(1)
    out["certificate.key_length"] = int(re.search(r"Public-Key: \((\d+) bit\)", text).group(1))
    if out["certificate.key_alg"] == "rsaEncryption":
        out["certificate.key_type"] = "rsa"
        out["certificate.exponent"] = re.search(r"Exponent: (\d+)", text).group(1)
    elif out["certificate.key_alg"] == "id-ecPublicKey":
        out["certificate.key_type"] = "ecdsa"
        out["certificate.curve"] = re.search(r"ASN1 OID: (\S+)", text).group(1)
    m = re.search(r"X509v3 Basic Constraints:.*?\n\s*CA:(TRUE|FALSE)(?:, pathlen:(\d+))?", text)
    if m:
        out["basic_constraints.ca"] = m.group(1) == "TRUE"
        if m.group(2):
            out["basic_constraints.path_len"] = int(m.group(2))
    m = re.search(r"X509v3 Subject Alternative Name:.*?\n\s*(.+)", text)
    if m:
        for part in m.group(1).split(", "):
            kind, _, value = part.partition(":")
            key = {"DNS": "san.dns", "IP Address": "san.ip", "email": "san.email", "URI": "san.uri"}[kind]
            out.setdefault(key, []).append(value)
    return out


# ------------------------------------------------------------------ the L7 loopback (socket mode)


class _ImapHandOn(FlowAnalyzer):
    """A stand-in for an analyzer that hands TLS on (as the SMTP and HTTP analyzers do): it finds
    IMAP's STARTTLS switch with the TLS analyzer's own scanner and hands every later byte on."""

    name = "imap_handon"

    def __init__(self) -> None:
        super().__init__()
        self.flows: list[FlowId] = []

    def stream(self, flow: FlowId, time: float) -> _ImapStream:
        self.flows.append(flow)
        return _ImapStream(self, flow)


class _ImapStream:
    def __init__(self, analyzer: _ImapHandOn, flow: FlowId) -> None:
        self.analyzer, self.flow, self.scan, self.tls = analyzer, flow, StartTls(), False

    def data(self, sender: int, data: bytes, time: float) -> None:
        if self.tls:
            self.analyzer.hand_on(self.flow, sender, data, time)
            return
        switched = self.scan.feed(sender, data)
        if switched is not None:
            self.tls = True
            for d, rest in sorted(switched.items(), key=lambda kv: kv[0] != self.scan.server):
                if rest:
                    self.analyzer.hand_on(self.flow, d, rest, time)

    def end(self, reason: str, time: float) -> None:
        pass


def test_starttls_handed_on_through_the_l7_loopback(capture, tmp_path: Path) -> None:
    """An analyzer hands IMAP's post-STARTTLS bytes on; the SDK writes them to the cell's loopback7;
    the cell classifies them anew (hop 1) to the TLS analyzer, whose record has the IMAP flow's uid."""
    pcap, _, others = capture
    if "imap" not in others:
        pytest.skip("dovecot is not installed (scripts/system-packages.txt: dovecot-imapd, dovecot-pop3d)")
    home = tmp_path / "home"
    cfg = {
        "global": {"home": str(home), "timeout": 60},
        "loopback7": {"if": "loopback7", "format": "text"},
        "pcap": {"if": "pcap"},
        # the TLS rule first (nice 5): the hop-1 stream on port 143 must not go back to imap
        "tls": {"proto": "TCP", "up": "^\\x16\\x03[\\x00-\\x04]..\\x01", "if": "tls", "nice": 5},
        "imap": {"proto": "TCP", "port": "143", "if": "imap", "nice": 10},
    }
    (tmp_path / "cell.yaml").write_text(yaml.safe_dump(cfg))
    cell = LiveCell(tmp_path / "cell.yaml", home)
    stop = threading.Event()
    imap = _ImapHandOn()
    out = tmp_path / "tls.jsonl"
    tls = None
    try:
        for s in ("tcp/tls", "tcp/imap", "loopback7", "pcap"):
            cell.wait_socket(s)
        tls = subprocess.Popen(analyzer_cmd("tls", str(home / "tcp/tls"), str(out), "text", "--exit-on-eof"))
        th = threading.Thread(
            target=run_socket,
            args=(str(home / "tcp/imap"), imap, lambda r: None),
            kwargs={"exit_on_eof": True, "stop": stop},
            daemon=True,
        )
        th.start()
        for s in ("tcp/tls", "tcp/imap"):  # the cell drops the events of an interface without a reader
            wait_for(lambda s=s: _connected(home / s), timeout=30, what=f"a reader on {s}")
        cell.inject_pcap(pcap)

        def imap_records() -> list[dict]:
            if not out.exists():
                return []
            return [
                r
                for r in map(json.loads, out.read_text().splitlines())
                if r.get("server_name") == "imap.tls.test"
            ]

        wait_for(lambda: imap_records(), timeout=30, what="the TLS record of the handed-on IMAP stream")
        m = cell.metrics()
        assert next(v for k, v in m.items() if k.startswith("celltap_cell_loopback_events_total")) > 0
    finally:
        code, err = cell.stop()
        stop.set()
        if tls is not None:
            tls.wait(30)
    assert code == 0, err
    [rec] = imap_records()
    [flow] = [f for f in imap.flows if f.port1 == 143 or f.port2 == 143]
    assert rec["uid"] == flow.uid and rec["uid"], (flow, rec["ts"], imap.flows)
    assert (
        rec["id.resp_p"] == 143 and "starttls" not in rec
    )  # plain TLS to the analyzer: the switch was upstream
    facts = s_client_facts(others["imap"])
    assert rec["version"] == S_CLIENT_VERSIONS[facts["protocol"]] and rec["established"] is True


def test_celltap_analyze_tls_and_x509_join_conn(capture, tmp_path: Path) -> None:
    """`celltap analyze` on the capture (default rules): every tls and x509 record joins exactly one
    conn record by uid and Community ID; the IMAP/POP3/FTP connections' TLS is found through the
    default tls_starttls rule. (SMTP's TLS reaches tls.log only once the SMTP analyzer hands it on.)"""
    pcap, scenarios, others = capture
    out = tmp_path / "logs"
    proc = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "analyze", str(pcap), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    conn = [json.loads(line) for line in (out / "conn.log").read_text().splitlines()]
    by_uid = {c["uid"]: c for c in conn}
    assert len(by_uid) == len(conn)
    tls = [json.loads(line) for line in (out / "tls.log").read_text().splitlines()]
    x509 = [json.loads(line) for line in (out / "x509.log").read_text().splitlines()]
    for rec in tls + x509:
        c = by_uid[rec["uid"]]
        assert rec["community_id"] == c["community_id"]
        assert (rec["id.orig_h"], rec["id.orig_p"], rec["id.resp_h"], rec["id.resp_p"]) == (
            c["id.orig_h"],
            c["id.orig_p"],
            c["id.resp_h"],
            c["id.resp_p"],
        )
    snis = {r.get("server_name") for r in tls}
    assert {sc.sni for sc in scenarios} <= snis
    for name in ("imap", "pop3", "ftp"):
        if name in others:
            assert f"{name}.tls.test" in snis
