"""The test bed's scenarios: which real clients run against which real servers, under which fault.

Theory of operation. A scenario is a name, the protocols its capture exercises, an optional fault
(loss or the reordering/duplicating middlebox) and a function that runs real clients in the client
namespace (curl, wget, dig, kdig, swaks, sipp, openssl s_client, and tests/realnet/clients.py where no
Debian tool sends the case) while the bed captures. The function returns what the tools themselves
reported (exit codes, status codes), recorded in the manifest next to the capture: a second, tool-side
account of what happened, besides tshark's reading of the capture.

Scenarios that need a server of their own (sipp uas, openssl s_server) start and stop it inside the
function; the long-running servers (nginx, nsd, unbound, postfix) are shared.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.realnet.bed import CLIENT, REPO, SERVER, SERVER6, Bed
from tests.realnet.servers import WWW, ZONE, Servers


@dataclass
class Ctx:
    """What a scenario function gets: the bed, the servers, a scratch directory, `before`'s state."""

    bed: Bed
    servers: Servers
    tmp: Path
    state: dict = field(default_factory=dict)

    def client(
        self, argv: list[str], timeout: float = 60, stdin: str | None = None, expect_rc: int = 0
    ) -> dict:
        """Run a client in the client namespace; return its exit code (and the expected one), output tail."""
        p = self.bed.run("client", argv, timeout=timeout, input=stdin)
        return {"cmd": shlex.join(argv), "rc": p.returncode, "expect_rc": expect_rc, "out": p.stdout[-400:],
                "err": p.stderr[-400:]}  # fmt: skip

    def py_client(self, kind: str, host: str = SERVER) -> dict:
        """Run tests/realnet/clients.py in the client namespace."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        p = self.bed.run(
            "client", [sys.executable, "-m", "tests.realnet.clients", kind, host], timeout=60, env=env
        )
        r = {"cmd": f"clients.py {kind}", "rc": p.returncode, "expect_rc": 0, "out": p.stdout[-2000:],
             "err": p.stderr[-400:]}  # fmt: skip
        try:
            r["result"] = json.loads(r["out"].strip().splitlines()[-1])
        except (ValueError, IndexError):
            r["result"] = None
        return r


@dataclass
class Scenario:
    """One capture's worth of real traffic."""

    name: str
    protocols: tuple[str, ...]
    what: str
    run: Callable[[Ctx], list[dict]]
    fault: tuple = ()  # () | ("loss", every) | ("middlebox", seed, reorder, duplicate)
    tags: tuple[str, ...] = field(default_factory=tuple)
    before: Callable[[Ctx], None] | None = None  # runs before the captures start (midstream pickup)


def _curl(*args: str) -> list[str]:
    """curl writing every body to /dev/null (one -o per URL) and `<code> <connects>` per transfer."""
    argv = ["curl", "-sS", "-w", "%{http_code} %{num_connects}\\n", "--max-time", "30"]
    for a in args:
        argv += ["-o", "/dev/null", a] if a.startswith(("http://", "https://")) else [a]
    return argv


# -- HTTP ---------------------------------------------------------------------------------------


def http_basic(c: Ctx) -> list[dict]:
    """HTTP/1.0 and HTTP/1.1 keep-alive (three requests on one connection), HEAD, 404, wget."""
    u = f"http://{SERVER}"
    return [
        c.client(_curl("-0", f"{u}/small.txt")),
        c.client(_curl("--http1.1", f"{u}/small.txt", f"{u}/index.html", f"{u}/missing")),
        c.client(_curl("-I", f"{u}/index.html")),
        c.client(["wget", "-q", "-O", "/dev/null", f"{u}/index.html"]),
        c.client(_curl("-X", "POST", "--data", "a=1&b=2", f"{u}/echo")),
    ]


def http_pipeline(c: Ctx) -> list[dict]:
    """Three pipelined GETs in one segment, a stray CRLF between two (raw socket client)."""
    return [c.py_client("pipeline")]


def http_oddities(c: Ctx) -> list[dict]:
    """Bare-LF request, HTTP/0.9, leading CRLFs, obs-fold header (400), HEAD then GET (raw sockets)."""
    return [c.py_client("http_oddities")]


def midstream_before(c: Ctx) -> None:
    """Open a keep-alive connection and finish its first request before the capture starts."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    flag = c.tmp / "go"
    proc = c.bed.spawn(
        "client",
        "midstream-client",
        [sys.executable, "-m", "tests.realnet.clients", "midstream", SERVER, str(flag)],
        env=env,
    )
    deadline = time.monotonic() + 20
    while "ready" not in proc.tail() and proc.popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    c.state.update(proc=proc, flag=flag)


def http_midstream(c: Ctx) -> list[dict]:
    """Two more requests on a connection whose handshake and first request were not captured."""
    proc = c.state["proc"]
    c.state["flag"].touch()
    rc = proc.popen.wait(30)
    c.bed.procs.remove(proc)
    out = proc.tail()
    result = json.loads(out.strip().splitlines()[-1]) if rc == 0 else None
    return [{"cmd": "clients.py midstream", "rc": rc, "expect_rc": 0, "out": out[-300:], "result": result}]


def http_bodies(c: Ctx) -> list[dict]:
    """Chunked gzip response, chunked PUT body, 1 MiB download, 300 KB PUT, Expect: 100-continue."""
    up = c.tmp / "upload.bin"
    up.write_bytes(bytes((i * 31 + 7) & 0xFF for i in range(300_000)))
    u = f"http://{SERVER}"
    return [
        c.client(_curl("--compressed", f"{u}/text.txt")),
        c.client(_curl("-T", str(up), "-H", "Transfer-Encoding: chunked", f"{u}/upload/chunked.bin")),
        c.client(_curl(f"{u}/large.bin")),
        c.client(_curl("-T", str(up), "-H", "Expect: 100-continue", f"{u}/upload/continue.bin")),
    ]


def http_tfo(c: Ctx) -> list[dict]:
    """TCP Fast Open: the first connection gets a cookie, the next ones carry the request in the SYN."""
    u = f"http://{SERVER}:8080"
    return [c.client(_curl("--tcp-fastopen", f"{u}/small.txt")) for _ in range(3)]


def http_ipv6(c: Ctx) -> list[dict]:
    """HTTP over IPv6 (keep-alive, two requests)."""
    u = f"http://[{SERVER6}]"
    return [c.client(_curl("-g", f"{u}/small.txt", f"{u}/index.html"))]


def https_nginx(c: Ctx) -> list[dict]:
    """HTTPS to nginx (TLS 1.3 and 1.2) with curl and wget, SNI www.test.example, chain of three."""
    root = str(c.servers.pki.root)
    res = f"{WWW}:443:{SERVER}"
    return [
        c.client(_curl("--cacert", root, "--resolve", res, f"https://{WWW}/small.txt")),
        c.client(_curl("--cacert", root, "--resolve", res, "--tls-max", "1.2", f"https://{WWW}/index.html")),
        c.client(
            [
                "wget",
                "-q",
                "-O",
                "/dev/null",
                f"--ca-certificate={root}",
                "--no-hsts",
                f"--header=Host: {WWW}",
                f"https://{SERVER}/small.txt",
                "--no-check-certificate",
            ]
        ),
    ]


def http_under_faults(c: Ctx) -> list[dict]:
    """A 1 MiB download and a 300 KB upload (run under loss or reordering/duplication)."""
    up = c.tmp / "fault-upload.bin"
    up.write_bytes(bytes((i * 13 + 5) & 0xFF for i in range(300_000)))
    u = f"http://{SERVER}"
    return [
        c.client(_curl(f"{u}/large.bin")),
        c.client(_curl("-T", str(up), f"{u}/upload/fault.bin")),
        c.client(_curl(f"{u}/small.txt", f"{u}/index.html")),
    ]


# -- DNS ----------------------------------------------------------------------------------------


def dns_udp(c: Ctx) -> list[dict]:
    """dig and kdig over UDP through the resolver (A, AAAA, MX, CNAME, SRV, NXDOMAIN)."""
    out = []
    for name, qtype in (
        (f"www.{ZONE}", "A"),
        (f"www.{ZONE}", "AAAA"),
        (ZONE, "MX"),
        (f"alias.{ZONE}", "A"),
        (f"_sip._udp.{ZONE}", "SRV"),
        (f"nosuch.{ZONE}", "A"),
    ):
        out.append(c.client(["dig", "+time=2", "+tries=1", f"@{SERVER}", name, qtype]))
    out.append(c.client(["kdig", "+time=2", "+retry=0", f"@{SERVER}", f"small.{ZONE}", "TXT"]))
    return out


def dns_tcp(c: Ctx) -> list[dict]:
    """DNS over TCP: dig +tcp, kdig +tcp, and dig +keepopen (several queries on one connection)."""
    return [
        c.client(["dig", "+tcp", "+time=2", f"@{SERVER}", f"www.{ZONE}", "A"]),
        c.client(["kdig", "+tcp", "+time=2", f"@{SERVER}", f"mail.{ZONE}", "A"]),
        c.client(
            [
                "dig",
                "+tcp",
                "+keepopen",
                "+time=2",
                f"@{SERVER}",
                f"www.{ZONE}",
                "AAAA",
                f"ns.{ZONE}",
                "A",
                ZONE,
                "SOA",
            ]
        ),
    ]


def dns_truncation(c: Ctx) -> list[dict]:
    """A ~1.8 KB TXT answer: truncated over UDP (bufsize 512, and 1232 resolver->nsd), retried over TCP."""
    return [
        c.client(["dig", "+time=2", "+bufsize=512", f"@{SERVER}", f"big.{ZONE}", "TXT"]),
        c.client(["kdig", "+time=2", "+bufsize=512", f"@{SERVER}", f"big.{ZONE}", "TXT"]),
        c.client(["dig", "+time=2", "+noedns", f"@{SERVER}", f"big.{ZONE}", "TXT"]),
    ]


def dns_tcp_pipeline(c: Ctx) -> list[dict]:
    """DNS over TCP to unbound: three queries in one segment, one query split across two segments."""
    return [c.py_client("dns_tcp_pipeline")]


def dns_edns(c: Ctx) -> list[dict]:
    """EDNS options (NSID, client subnet, cookie, padding) with kdig; ANY to the authoritative server."""
    return [
        c.client(
            ["kdig", "+time=2", "+nsid", "+subnet=10.77.0.0/24", "+cookie", f"@{SERVER}", f"www.{ZONE}", "A"]
        ),
        c.client(["kdig", "+time=2", "+padding=64", f"@{SERVER}", f"mail.{ZONE}", "A"]),
        c.client(["dig", "+time=2", "+tcp", f"@{SERVER}", ZONE, "ANY"]),
    ]


# -- SMTP ---------------------------------------------------------------------------------------


SWAKS_RCPT_REJECTED = 24  # swaks(1), EXIT CODES: "no RCPTs accepted"


def _swaks(*args: str) -> list[str]:
    return [
        "swaks",
        "--server",
        SERVER,
        "--from",
        "sender@client.example",
        "--helo",
        "client.test.example",
        "--timeout",
        "20",
        *args,
    ]


def smtp_plain(c: Ctx) -> list[dict]:
    """swaks in clear: one accepted message, a rejected unknown user, a relay denial."""
    return [
        c.client(_swaks("--to", f"alice@{ZONE}")),
        c.client(_swaks("--to", f"nobody@{ZONE}"), expect_rc=SWAKS_RCPT_REJECTED),
        c.client(_swaks("--to", "someone@elsewhere.example"), expect_rc=SWAKS_RCPT_REJECTED),
    ]


def smtp_starttls(c: Ctx) -> list[dict]:
    """STARTTLS accepted (port 25) and refused (port 2525: TLS off, swaks continues in clear)."""
    return [
        c.client(_swaks("--to", f"bob@{ZONE}", "--tls")),
        c.client(_swaks("--to", f"carol@{ZONE}", "--tls-optional", "--port", "2525")),
    ]


def smtp_sessions(c: Ctx) -> list[dict]:
    """Python smtplib: three transactions, RSET, mixed RCPT; raw BDAT (CHUNKING) in 3 chunks + 1 chunk."""
    return [c.py_client("smtplib"), c.py_client("bdat")]


def smtp_attach(c: Ctx) -> list[dict]:
    """swaks --attach: a multipart message with a 40 KB binary attachment."""
    att = c.tmp / "attachment.bin"
    att.write_bytes(bytes((i * 17 + 3) & 0xFF for i in range(40_000)))
    return [c.client(_swaks("--to", f"alice@{ZONE}", "--attach", str(att)))]


# -- SIP ----------------------------------------------------------------------------------------


def _sip(c: Ctx, transport: str) -> list[dict]:
    t = ["-t", transport] if transport != "u1" else []
    uas = c.bed.spawn(
        "server", f"sipp-uas-{transport}", ["sipp", "-sn", "uas", "-i", SERVER, "-p", "5060", "-nostdin", *t]
    )
    try:
        c.bed.wait_port("server", 5060, udp=transport == "u1")
        r = c.client(
            [
                "sipp",
                "-sn",
                "uac",
                f"{SERVER}:5060",
                "-i",
                CLIENT,
                "-p",
                "5061",
                "-m",
                "3",
                "-r",
                "10",
                "-l",
                "1",
                "-nostdin",
                "-timeout",
                "20s",
                "-timeout_error",
                *t,
            ],
            timeout=40,
        )
    finally:
        c.bed.stop(uas)
    r["out"] = r["out"][-200:]
    return [r]


def sip_crlf(c: Ctx) -> list[dict]:
    """A call over TCP to sipp's uas from a raw client with keep-alive CRLFs before INVITE and before BYE."""
    argv = ["sipp", "-sn", "uas", "-i", SERVER, "-p", "5060", "-nostdin", "-t", "t1"]
    uas = c.bed.spawn("server", "sipp-uas-crlf", argv)
    try:
        c.bed.wait_port("server", 5060)
        return [c.py_client("sip_crlf")]
    finally:
        c.bed.stop(uas)


def sip_udp(c: Ctx) -> list[dict]:
    """SIPp uac -> uas over UDP: three calls (INVITE/100/180/200/ACK/BYE/200)."""
    return _sip(c, "u1")


def sip_tcp(c: Ctx) -> list[dict]:
    """SIPp uac -> uas over TCP (one connection): three calls."""
    return _sip(c, "t1")


# -- TLS with openssl s_server / s_client -------------------------------------------------------


def _s_server(c: Ctx, name: str, *opts: str) -> object:
    pki = c.servers.pki
    leaf = pki.chain[WWW].with_name(f"{WWW}.pem")
    inter = pki.root.with_name("inter.pem")
    p = c.bed.spawn(
        "server",
        f"s_server-{name}",
        [
            "openssl",
            "s_server",
            "-accept",
            f"{SERVER}:4433",
            "-cert",
            str(leaf),
            "-cert_chain",
            str(inter),
            "-key",
            str(pki.key[WWW]),
            "-www",
            *opts,
        ],
        stdin=None,
    )
    c.bed.wait_port("server", 4433)
    return p


def _s_client(c: Ctx, *opts: str) -> dict:
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"{SERVER}:4433",
        "-servername",
        WWW,
        "-CAfile",
        str(c.servers.pki.root),
        "-ign_eof",
        *opts,
    ]
    r = c.client(argv, timeout=20, stdin="GET / HTTP/1.0\r\n\r\n")
    proto = [ln.strip() for ln in (r["out"] + r["err"]).splitlines() if "Protocol" in ln]
    r["out"] = r["out"][-150:]
    r["protocol"] = proto[-1] if proto else ""
    return r


def _tls_versions(c: Ctx, versions: list[tuple[str, str]]) -> list[dict]:
    out = []
    for flag, name in versions:
        srv = _s_server(c, name, "-cipher", "DEFAULT@SECLEVEL=0", flag)
        try:
            out.append(_s_client(c, flag, "-cipher", "DEFAULT@SECLEVEL=0"))
        finally:
            c.bed.stop(srv)
    return out


def tls_versions(c: Ctx) -> list[dict]:
    """openssl s_client/s_server with TLS 1.0, 1.1, 1.2 and 1.3 (SECLEVEL=0 for the old ones)."""
    return _tls_versions(
        c, [("-tls1", "tls10"), ("-tls1_1", "tls11"), ("-tls1_2", "tls12"), ("-tls1_3", "tls13")]
    )


def tls_hrr(c: Ctx) -> list[dict]:
    """HelloRetryRequest: the server only takes P-384, the client offers an X25519 key share first."""
    srv = _s_server(c, "hrr", "-groups", "P-384")
    try:
        return [_s_client(c, "-tls1_3", "-groups", "X25519:P-384")]
    finally:
        c.bed.stop(srv)


def tls_resume(c: Ctx) -> list[dict]:
    """Session resumption: TLS 1.3 ticket (PSK) and TLS 1.2 session, each a full then a resumed handshake."""
    out = []
    for flag in ("-tls1_3", "-tls1_2"):
        sess = c.tmp / f"sess{flag}.pem"
        srv = _s_server(c, f"resume{flag}", flag)
        try:
            out.append(_s_client(c, flag, "-sess_out", str(sess)))
            out.append(_s_client(c, flag, "-sess_in", str(sess)))
        finally:
            c.bed.stop(srv)
    return out


SCENARIOS: list[Scenario] = [
    Scenario("http_basic", ("http",), "HTTP/1.0, 1.1 keep-alive, HEAD, 404, POST; curl and wget", http_basic),
    Scenario("http_pipeline", ("http",), "pipelined GETs + stray CRLF (raw socket)", http_pipeline),
    Scenario(
        "http_oddities", ("http",), "bare LF, HTTP/0.9, leading CRLFs, obs-fold, HEAD+GET", http_oddities
    ),
    Scenario("http_bodies", ("http",), "chunked gzip, chunked PUT, 1 MiB GET, 100-continue PUT", http_bodies),
    Scenario(
        "http_midstream",
        ("http",),
        "keep-alive connection picked up midstream (no SYN captured)",
        http_midstream,
        before=midstream_before,
    ),
    Scenario("http_tfo", ("http",), "curl --tcp-fastopen x3 to nginx fastopen (data in the SYN)", http_tfo),
    Scenario("http_ipv6", ("http",), "HTTP over IPv6", http_ipv6),
    Scenario("https_nginx", ("tls", "http"), "curl/wget HTTPS to nginx, TLS 1.3 and 1.2", https_nginx),
    Scenario(
        "http_loss",
        ("http",),
        "1 MiB GET + 300 KB PUT, every 11th TCP frame dropped",
        http_under_faults,
        fault=("loss", 11),
        tags=("fault",),
    ),
    Scenario(
        "http_reorder",
        ("http",),
        "1 MiB GET + 300 KB PUT through the reordering/duplicating middlebox",
        http_under_faults,
        fault=("middlebox", 7, 0.08, 0.04),
        tags=("fault",),
    ),
    Scenario("dns_truncation", ("dns",), "big TXT: UDP truncated (512 / 1232), TCP retry", dns_truncation),
    Scenario("dns_udp", ("dns",), "dig/kdig UDP: A AAAA MX CNAME SRV NXDOMAIN TXT", dns_udp),
    Scenario("dns_tcp", ("dns",), "dig/kdig TCP, several queries on one connection", dns_tcp),
    Scenario(
        "dns_tcp_pipeline", ("dns",), "3 DNS queries in one TCP segment, 1 split over 2", dns_tcp_pipeline
    ),
    Scenario("dns_edns", ("dns",), "kdig EDNS options (NSID, ECS, cookie, padding), ANY over TCP", dns_edns),
    Scenario("smtp_plain", ("smtp",), "swaks: accepted, unknown user 550, relay denied 554", smtp_plain),
    Scenario("smtp_starttls", ("smtp", "tls"), "STARTTLS accepted (25) and refused (2525)", smtp_starttls),
    Scenario(
        "smtp_sessions", ("smtp",), "smtplib 3 transactions + RSET + rejected RCPT; BDAT", smtp_sessions
    ),
    Scenario("smtp_attach", ("smtp",), "swaks --attach 40 KB binary", smtp_attach),
    Scenario(
        "smtp_attach_loss",
        ("smtp",),
        "swaks --attach 40 KB, every 7th TCP frame dropped",
        smtp_attach,
        fault=("loss", 7),
        tags=("fault",),
    ),
    Scenario("sip_udp", ("sip",), "SIPp uac/uas over UDP, 3 calls", sip_udp),
    Scenario("sip_tcp", ("sip",), "SIPp uac/uas over TCP, 3 calls", sip_tcp),
    Scenario("sip_crlf", ("sip",), "SIP call over TCP with keep-alive CRLFs before INVITE and BYE", sip_crlf),
    Scenario("tls_versions", ("tls",), "openssl TLS 1.0, 1.1, 1.2, 1.3", tls_versions),
    Scenario(
        "https_reorder",
        ("tls", "http"),
        "curl/wget HTTPS through the reordering/duplicating middlebox",
        https_nginx,
        fault=("middlebox", 11, 0.15, 0.08),
        tags=("fault",),
    ),
    Scenario("tls_hrr", ("tls",), "TLS 1.3 HelloRetryRequest (server P-384 only)", tls_hrr),
    Scenario("tls_resume", ("tls",), "TLS 1.3 ticket and TLS 1.2 session resumption", tls_resume),
]


def by_name(names: list[str] | None) -> list[Scenario]:
    """The scenarios selected by name (all when `names` is empty)."""
    if not names:
        return list(SCENARIOS)
    known = {s.name: s for s in SCENARIOS}
    missing = [n for n in names if n not in known]
    if missing:
        raise SystemExit(f"unknown scenario(s): {', '.join(missing)}; known: {', '.join(known)}")
    return [known[n] for n in names]
