"""TLS scenarios on the bed (tests/analyzers/tls_bed.py): each a real server and a real client.

`make_capture(workdir)` runs every scenario in one bed and returns the pcap plus a manifest: for
each scenario its name, the client's source port (read from the capture afterwards by tshark) is not
known in advance, so scenarios are told apart by their order of connection and by SNI / port.
What the tools themselves say (s_client's "Protocol", "Cipher", "Reused" lines) is kept in the
manifest as a second oracle next to tshark.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.analyzers.tls_bed import SERVER_IP, TlsBed, certificates, tls_bed

OLD = ["-cipher", "DEFAULT@SECLEVEL=0"]  # Debian's OpenSSL refuses TLS 1.0/1.1 at its default level


@dataclass
class Scenario:
    """One connection (or two, for resumption) between s_client and s_server."""

    name: str
    server: list[str]
    clients: list[list[str]]
    sni: str
    port: int = 443
    outputs: list[str] = field(default_factory=list)  # what s_client printed, per client run


def scenarios(c: dict[str, Path], d: Path) -> list[Scenario]:
    """The s_server/s_client scenarios; each SNI is unique so flows can be matched to scenarios."""
    leaf = [
        "-cert",
        str(c["leaf"]),
        "-key",
        str(c["leaf"].with_suffix(".key")),
        "-cert_chain",
        str(c["chain"]),
    ]
    ecleaf = [
        "-cert",
        str(c["ecleaf"]),
        "-key",
        str(c["ecleaf"].with_suffix(".key")),
        "-cert_chain",
        str(c["chain"]),
    ]
    sess12, sess13 = str(d / "sess12.pem"), str(d / "sess13.pem")
    return [
        Scenario("tls13_alpn", [*leaf, "-alpn", "h2,http/1.1"], [["-alpn", "h2,http/1.1"]], "a13.tls.test"),
        Scenario("tls12_chain", leaf, [["-tls1_2"]], "a12.tls.test"),
        Scenario("tls11", leaf + OLD, [["-tls1_1", *OLD]], "a11.tls.test"),
        Scenario("tls10", leaf + OLD, [["-tls1", *OLD]], "a10.tls.test"),
        Scenario("hrr", [*leaf, "-groups", "P-384"], [["-groups", "X25519:P-384"]], "hrr.tls.test"),
        Scenario(
            "resume12",
            leaf,
            [["-tls1_2", "-sess_out", sess12], ["-tls1_2", "-sess_in", sess12]],
            "r12.tls.test",
        ),
        Scenario(
            "resume13",
            leaf,
            [["-tls1_3", "-sess_out", sess13], ["-tls1_3", "-sess_in", sess13]],
            "r13.tls.test",
        ),
        Scenario(
            "reject12",
            leaf,
            [["-tls1_2", "-verify_return_error", "-CAfile", str(c["other"])]],
            "rej.tls.test",
        ),
        Scenario("dhe12", leaf, [["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"]], "dhe.tls.test"),
        Scenario("ecdsa12", ecleaf, [["-tls1_2"]], "ec.tls.test"),
        Scenario(
            "mutual12",
            [*leaf, "-Verify", "1", "-CAfile", str(c["root"])],
            [["-tls1_2", "-cert", str(c["client"]), "-key", str(c["client"].with_suffix(".key"))]],
            "mtls.tls.test",
        ),
    ]


def _client(bed: TlsBed, sc: Scenario, extra: list[str]) -> str:
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"{SERVER_IP}:{sc.port}",
        "-servername",
        sc.sni,
        "-ign_eof",
        *extra,
    ]
    p = subprocess.run(bed.ns("c", *argv), input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=30)
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def run_scenario(bed: TlsBed, sc: Scenario) -> None:
    """Start s_server for this scenario, run its clients one after the other, stop the server."""
    argv = [
        "openssl",
        "s_server",
        "-accept",
        str(sc.port),
        "-www",
        "-naccept",
        str(len(sc.clients)),
        *sc.server,
    ]
    srv = bed.start("s", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bed.wait_port(sc.port)
        for extra in sc.clients:
            sc.outputs.append(_client(bed, sc, extra))
            time.sleep(0.1)
    finally:
        bed.stop(srv)


def s_client_facts(output: str) -> dict:
    """What s_client says it negotiated: protocol, cipher (OpenSSL names), reuse."""
    facts: dict = {}
    m = re.search(r"^\s*Protocol\s*:\s*(\S+)", output, re.M)
    if m:
        facts["protocol"] = m.group(1)
    m = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", output, re.M)
    if m:
        facts["reused"] = m.group(1) == "Reused"
        facts["cipher_openssl"] = m.group(3)
    m = re.search(r"^ALPN protocol: (\S+)", output, re.M)
    if m:
        facts["alpn"] = m.group(1)
    return facts


# ------------------------------------------------------------------ STARTTLS with dovecot (IMAP, POP3)


def dovecot_conf(d: Path, c: dict[str, Path]) -> Path:
    """A dovecot configuration for IMAP and POP3 with STARTTLS, listening on the server address."""
    (d / "run").mkdir(parents=True, exist_ok=True)
    (d / "mail").mkdir(exist_ok=True)
    full = d / "fullchain.pem"
    full.write_text(c["leaf"].read_text() + c["chain"].read_text())
    conf = d / "dovecot.conf"
    conf.write_text(
        f"""base_dir = {d}/run
state_dir = {d}/run
log_path = {d}/dovecot.log
protocols = imap pop3
listen = {SERVER_IP}
ssl = yes
ssl_cert = <{full}
ssl_key = <{c["leaf"].with_suffix(".key")}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = static
  args = password=secret
}}
userdb {{
  driver = static
  args = uid=root gid=root home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 143
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 110
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""
    )
    return conf


def run_dovecot(bed: TlsBed, d: Path, c: dict[str, Path]) -> list[str]:
    """`openssl s_client -starttls imap` and `-starttls pop3` against a real dovecot."""
    conf = dovecot_conf(d, c)
    srv = bed.start(
        "s",
        [shutil.which("dovecot") or "/usr/sbin/dovecot", "-F", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    outs = []
    try:
        bed.wait_port(143)
        bed.wait_port(110)
        for proto, port, bye in (("imap", 143, b"a2 LOGOUT\r\n"), ("pop3", 110, b"QUIT\r\n")):
            argv = [
                "openssl",
                "s_client",
                "-starttls",
                proto,
                "-connect",
                f"{SERVER_IP}:{port}",
                "-servername",
                f"{proto}.tls.test",
                "-ign_eof",
                "-tls1_2",
            ]
            p = subprocess.run(bed.ns("c", *argv), input=bye, capture_output=True, timeout=30)
            outs.append(p.stdout.decode(errors="replace"))
    finally:
        bed.stop(srv)
    return outs


def make_capture(workdir: Path) -> tuple[Path, list[Scenario], dict[str, str]]:
    """Run every scenario in one bed; return the pcap, the s_server/s_client scenarios (with
    s_client's output) and the other clients' outputs by name (curl13, curl12, imap, pop3, ftp, smtp,
    sslv2)."""
    c = certificates(workdir / "certs")
    scs = scenarios(c, workdir)
    others: dict[str, str] = {}
    with tls_bed(workdir) as bed:
        for sc in scs:
            run_scenario(bed, sc)
        if shutil.which("nginx") and shutil.which("curl"):
            others["curl13"], others["curl12"] = run_nginx(bed, workdir / "nginx", c)
        if shutil.which("dovecot"):
            others["imap"], others["pop3"] = run_dovecot(bed, workdir / "dovecot", c)
        if shutil.which("vsftpd"):
            others["ftp"] = run_vsftpd(bed, workdir / "vsftpd", c)
        others["sslv2"] = run_sslv2(bed, c)
        if shutil.which("postfix"):
            # postfix's unprivileged daemons must reach the queue: pytest's 0700 tree would not do
            pdir = Path(tempfile.mkdtemp(prefix="celltap-tls-postfix-"))
            try:
                os.chmod(pdir, 0o755)
                others["smtp"] = run_postfix(bed, pdir, c)
                shutil.copy(pdir / "maillog", workdir / "postfix-maillog")
            finally:
                shutil.rmtree(pdir, ignore_errors=True)
        pcap = bed.finish()
    return pcap, scs, others


# ------------------------------------------------------------------ SSLv2-format ClientHello (crafted)

# No tool on this system sends one any more (OpenSSL 1.1 removed it from s_client): the client's
# bytes are crafted, the server's answer is real (s_server accepts the SSLv2-compatible form).
SSL2_SPECS = [0x00002F, 0x000035, 0x00000A, 0x010080, 0x0700C0, 0x0000FF]
SSL2_CHALLENGE = bytes(range(1, 33))


def sslv2_client_hello(version: int = 0x0301) -> bytes:
    """An SSLv2-format CLIENT-HELLO (RFC 6101 E.2 / RFC 5246 E.2): crafted."""
    specs = b"".join(s.to_bytes(3, "big") for s in SSL2_SPECS)
    body = bytes([1]) + version.to_bytes(2, "big") + len(specs).to_bytes(2, "big") + (0).to_bytes(2, "big")
    body += len(SSL2_CHALLENGE).to_bytes(2, "big") + specs + SSL2_CHALLENGE
    return (0x8000 | len(body)).to_bytes(2, "big") + body


SSL2_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
s.sendall(bytes.fromhex(sys.argv[3]))
got = b""
try:
    while len(got) < 4000:
        d = s.recv(65536)
        if not d:
            break
        got += d
except OSError:
    pass
s.close()
print(len(got))
"""


def run_sslv2(bed: TlsBed, c: dict[str, Path], port: int = 4433) -> str:
    """A crafted SSLv2-format ClientHello sent to a real s_server; returns how many bytes it answered."""
    leaf = [
        "-cert",
        str(c["leaf"]),
        "-key",
        str(c["leaf"].with_suffix(".key")),
        "-cert_chain",
        str(c["chain"]),
    ]
    srv = bed.start(
        "s",
        ["openssl", "s_server", "-accept", str(port), "-www", "-naccept", "1", "-tls1", *OLD, *leaf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        bed.wait_port(port)
        p = subprocess.run(
            bed.ns("c", sys.executable, "-c", SSL2_CLIENT, SERVER_IP, str(port), sslv2_client_hello().hex()),
            capture_output=True,
            text=True,
            timeout=20,
        )
        return p.stdout.strip()
    finally:
        bed.stop(srv)


# ------------------------------------------------------------------ STARTTLS with postfix (SMTP)


def postfix_conf(d: Path, c: dict[str, Path]) -> Path:
    """A postfix instance of our own: config dir, queue, TLS with the test chain, no chroot."""
    etc = d / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    full = d / "fullchain.pem"
    full.write_text(c["leaf"].read_text() + c["chain"].read_text())
    master = Path("/etc/postfix/master.cf").read_text().splitlines()
    out = []
    for line in master:  # column 5 (chroot) -> n: our queue directory has no chroot files
        parts = line.split()
        if len(parts) >= 8 and not line[0].isspace() and not line.startswith("#"):
            parts[4] = "n"
            line = "  ".join(parts)
        out.append(line)
    (etc / "master.cf").write_text("\n".join(out) + "\n")
    (etc / "main.cf").write_text(
        f"""compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.tls.test
mydestination =
relay_domains =
local_recipient_maps =
inet_interfaces = {SERVER_IP}
inet_protocols = ipv4
mynetworks = 10.213.0.0/24
smtpd_tls_cert_file = {full}
smtpd_tls_key_file = {c["leaf"].with_suffix(".key")}
smtpd_tls_security_level = may
maillog_file = /dev/stdout
alias_maps =
alias_database =
smtputf8_enable = no
"""
    )
    return etc


def run_postfix(bed: TlsBed, d: Path, c: dict[str, Path]) -> str:
    """`openssl s_client -starttls smtp` against a real postfix (master in the foreground, by PID)."""
    etc = postfix_conf(d, c)
    for sub in ("spool", "data"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "postfix", str(d / "data")], check=False)
    log = (d / "maillog").open("wb")  # start-fg: master in the foreground, logging to stdout
    srv = bed.start("s", ["postfix", "-c", str(etc), "start-fg"], stdout=log, stderr=subprocess.STDOUT)
    try:
        bed.wait_port(25, timeout=20)
        argv = [
            "openssl",
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            f"{SERVER_IP}:25",
            "-servername",
            "smtp.tls.test",
            "-ign_eof",
            "-tls1_2",
        ]
        p = subprocess.run(bed.ns("c", *argv), input=b"QUIT\r\n", capture_output=True, timeout=30)
        return p.stdout.decode(errors="replace")
    finally:
        # start-fg runs master as a child of postfix-script: stop master (its PID file) first
        pidfile = d / "spool" / "pid" / "master.pid"
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
            time.sleep(0.5)
        except (OSError, ValueError, IndexError):
            pass
        bed.stop(srv)
        log.close()


# ------------------------------------------------------------------ curl against nginx


def run_nginx(bed: TlsBed, d: Path, c: dict[str, Path]) -> list[str]:
    """curl (TLS 1.3, and TLS 1.2 where the server's ALPN choice is visible) against a real nginx."""
    d.mkdir(parents=True, exist_ok=True)
    full = d / "fullchain.pem"
    full.write_text(c["leaf"].read_text() + c["chain"].read_text())
    conf = d / "nginx.conf"
    conf.write_text(
        f"""daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen {SERVER_IP}:443 ssl http2;
    server_name www.tls.test;
    ssl_certificate {full};
    ssl_certificate_key {c["leaf"].with_suffix(".key")};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ return 200 "hello from nginx\\n"; }}
  }}
}}
"""
    )
    srv = bed.start("s", ["nginx", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outs = []
    try:
        bed.wait_port(443)
        for extra in (["--tlsv1.3"], ["--tls-max", "1.2"]):
            argv = [
                "curl",
                "-sS",
                "-v",
                "--resolve",
                f"www.tls.test:443:{SERVER_IP}",
                "--cacert",
                str(c["root"]),
                *extra,
                "https://www.tls.test/",
            ]
            p = subprocess.run(bed.ns("c", *argv), capture_output=True, text=True, timeout=30)
            outs.append(p.stdout + p.stderr)
            time.sleep(0.1)
    finally:
        bed.stop(srv)
    return outs


# ------------------------------------------------------------------ FTP AUTH TLS with vsftpd


def run_vsftpd(bed: TlsBed, d: Path, c: dict[str, Path]) -> str:
    """`openssl s_client -starttls ftp` (AUTH TLS) against a real vsftpd in the foreground."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty").mkdir(exist_ok=True)
    full = d / "fullchain.pem"
    full.write_text(c["leaf"].read_text() + c["chain"].read_text())
    conf = d / "vsftpd.conf"
    conf.write_text(
        f"""listen=YES
listen_ipv6=NO
listen_address={SERVER_IP}
background=NO
anonymous_enable=YES
anon_root={d}/empty
allow_anon_ssl=YES
no_anon_password=YES
local_enable=NO
ssl_enable=YES
rsa_cert_file={full}
rsa_private_key_file={c["leaf"].with_suffix(".key")}
ssl_tlsv1=YES
require_ssl_reuse=NO
secure_chroot_dir={d}/empty
vsftpd_log_file={d}/vsftpd.log
xferlog_enable=NO
seccomp_sandbox=NO
"""
    )
    srv = bed.start("s", ["vsftpd", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bed.wait_port(21)
        argv = [
            "openssl",
            "s_client",
            "-starttls",
            "ftp",
            "-connect",
            f"{SERVER_IP}:21",
            "-servername",
            "ftp.tls.test",
            "-ign_eof",
            "-tls1_2",
        ]
        p = subprocess.run(bed.ns("c", *argv), input=b"QUIT\r\n", capture_output=True, timeout=30)
        return p.stdout.decode(errors="replace")
    finally:
        bed.stop(srv)
