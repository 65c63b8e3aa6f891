"""The real servers (nginx, nsd, unbound, postfix; sipp/openssl per scenario): config in a temp dir, start.

Theory of operation. Everything a server needs lives under one directory of the bed (config, keys,
document root, zone, queue, logs, pid files); nothing under /etc is touched and no system service is
started. The servers run in the bed's namespaces as children tracked by PID (foreground modes:
`nginx -g 'daemon off;'`, `nsd -d`, `unbound -d`, `postfix start-fg`), so stopping the bed stops them.

* PKI: a root CA, an intermediate CA and two leaves (www.test.example, mail.test.example), EC P-256,
  made with the openssl CLI; servers present leaf + intermediate, clients trust the root.
* nginx on the server (80, 443 ssl; IPv4 and IPv6; 8080 with TCP Fast Open): static files (small,
  1 MiB binary, compressible text served gzip-chunked), a WebDAV PUT location (reads request bodies,
  so `Expect: 100-continue` gets its `100 Continue`).
* nsd on the auth namespace: authoritative for test.example (A, AAAA, MX, CNAME, SRV, a ~2 KB TXT).
* unbound on the server: recursive resolver with a stub zone test.example -> nsd, so a client query
  makes real resolver -> authoritative traffic (UDP, and TCP after truncation).
* postfix on the server: port 25 (STARTTLS offered, CHUNKING advertised), port 2525 (no TLS, so
  STARTTLS is refused); recipients alice/bob/carol@test.example accepted and discarded (discard
  transport), unknown users rejected (550), other domains rejected (relay denied, 554); its own log
  in `maillog`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.realnet.bed import AUTH, AUTH6, SERVER, SERVER6, SUBNET, Bed, BedError, Proc, sh

ZONE = "test.example"
WWW = f"www.{ZONE}"
MAIL = f"mail.{ZONE}"
BIG_TXT_STRINGS = 9  # 9 strings of 200 bytes: an answer far above 512 bytes, under the 1232 EDNS size x2
MAIL_USERS = ("alice", "bob", "carol")


@dataclass
class Pki:
    """Paths of the test PKI."""

    root: Path
    chain: dict[str, Path]  # leaf name -> leaf+intermediate PEM
    key: dict[str, Path]


def make_pki(d: Path) -> Pki:
    """Root CA -> intermediate CA -> leaves for www and mail (openssl CLI, EC P-256)."""
    d.mkdir(parents=True, exist_ok=True)

    def key(name: str) -> Path:
        p = d / f"{name}.key"
        sh(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(p)])
        return p

    root_key = key("root")
    root = d / "root.pem"
    sh(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            str(root_key),
            "-days",
            "3650",
            "-subj",
            "/CN=celltap test root CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            str(root),
        ]
    )
    inter_key = key("inter")
    inter_csr = d / "inter.csr"
    inter = d / "inter.pem"
    sh(
        [
            "openssl",
            "req",
            "-new",
            "-key",
            str(inter_key),
            "-subj",
            "/CN=celltap test intermediate CA",
            "-out",
            str(inter_csr),
        ]
    )
    ext = d / "inter.ext"
    ext.write_text("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n")
    sh(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(inter_csr),
            "-CA",
            str(root),
            "-CAkey",
            str(root_key),
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            str(ext),
            "-out",
            str(inter),
        ]
    )
    chains, keys = {}, {}
    for leaf in (WWW, MAIL):
        k = key(leaf)
        csr = d / f"{leaf}.csr"
        crt = d / f"{leaf}.pem"
        sh(["openssl", "req", "-new", "-key", str(k), "-subj", f"/CN={leaf}", "-out", str(csr)])
        e = d / f"{leaf}.ext"
        e.write_text(f"subjectAltName=DNS:{leaf}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        sh(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(inter),
                "-CAkey",
                str(inter_key),
                "-CAcreateserial",
                "-days",
                "825",
                "-extfile",
                str(e),
                "-out",
                str(crt),
            ]
        )
        chain = d / f"{leaf}.chain.pem"
        chain.write_text(crt.read_text() + inter.read_text())
        chains[leaf], keys[leaf] = chain, k
    return Pki(root, chains, keys)


# -- nginx --------------------------------------------------------------------------------------

NGINX_CONF = """
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 128; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  types {{ text/html html; text/plain txt; application/octet-stream bin; }}
  default_type application/octet-stream;
  keepalive_requests 1000;
  gzip on;
  gzip_types text/plain;
  gzip_min_length 1;
  server {{
    listen {v4}:80;
    listen [{v6}]:80;
    listen {v4}:443 ssl;
    listen [{v6}]:443 ssl;
    listen {v4}:8080 fastopen=16;
    server_name {www};
    ssl_certificate {chain};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    root {d}/www;
    location /upload/ {{ dav_methods PUT; client_max_body_size 20m; create_full_put_path on; }}
    location = /echo {{ return 200 "ok\\n"; }}
  }}
}}
"""


def nginx_files(d: Path, pki: Pki) -> Path:
    """Write nginx's config and document root; return the config path."""
    for sub in ("tmp", "www/upload", "tmp/body"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    www = d / "www"
    (www / "index.html").write_text("<html><body>celltap test bed</body></html>\n")
    (www / "small.txt").write_text("small\n")
    (www / "text.txt").write_text("".join(f"line {i} of a compressible text file\n" for i in range(3000)))
    (www / "large.bin").write_bytes(bytes((i * 7919 + (i >> 8)) & 0xFF for i in range(1 << 20)))
    conf = d / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(d=d, v4=SERVER, v6=SERVER6, www=WWW, chain=pki.chain[WWW], key=pki.key[WWW])
    )
    return conf


# -- DNS ----------------------------------------------------------------------------------------


def zone_text() -> str:
    """The authoritative zone test.example."""
    txt = " ".join(f'"{chr(97 + i) * 200}"' for i in range(BIG_TXT_STRINGS))
    return f"""$ORIGIN {ZONE}.
$TTL 300
@     IN SOA ns.{ZONE}. hostmaster.{ZONE}. 2024010101 3600 600 86400 300
@     IN NS  ns.{ZONE}.
@     IN MX  10 {MAIL}.
ns    IN A   {AUTH}
ns    IN AAAA {AUTH6}
www   IN A   {SERVER}
www   IN AAAA {SERVER6}
mail  IN A   {SERVER}
alias IN CNAME www.{ZONE}.
_sip._udp IN SRV 10 5 5060 www.{ZONE}.
big   IN TXT {txt}
small IN TXT "hello from the test bed"
"""


def nsd_files(d: Path) -> Path:
    """nsd.conf + zone file; return the config path."""
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{ZONE}.zone").write_text(zone_text())
    conf = d / "nsd.conf"
    conf.write_text(f"""server:
  ip-address: {AUTH}
  ip-address: {AUTH6}
  port: 53
  username: ""
  chroot: ""
  zonesdir: "{d}"
  pidfile: "{d}/nsd.pid"
  database: ""
  xfrdfile: "{d}/xfrd.state"
  xfrdir: "{d}"
  zonelistfile: "{d}/zone.list"
  logfile: "{d}/nsd.log"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: {ZONE}
  zonefile: {ZONE}.zone
""")
    return conf


def unbound_files(d: Path) -> Path:
    """unbound.conf (resolver with a stub zone to nsd); return the config path."""
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "unbound.conf"
    conf.write_text(f"""server:
  interface: {SERVER}
  interface: {SERVER6}
  port: 53
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  logfile: "{d}/unbound.log"
  use-syslog: no
  verbosity: 1
  num-threads: 1
  so-reuseport: no
  access-control: {SUBNET}.0/24 allow
  access-control: fd77::/64 allow
  do-not-query-localhost: no
  module-config: "iterator"
  qname-minimisation: no
  prefetch: no
  domain-insecure: "{ZONE}"
  outgoing-interface: {SERVER}
stub-zone:
  name: "{ZONE}"
  stub-addr: {AUTH}
remote-control:
  control-enable: no
""")
    return conf


# -- postfix ------------------------------------------------------------------------------------


def postfix_files(d: Path, pki: Pki) -> Path:
    """A postfix instance directory (main.cf, master.cf, queue, data); return the config dir."""
    conf = d / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (d / "queue").mkdir(exist_ok=True)
    (d / "data").mkdir(exist_ok=True)
    shutil.chown(d / "data", "postfix")
    users = ", ".join(f"{u}@{ZONE}=ok" for u in MAIL_USERS)
    (conf / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {MAIL}
mydomain = {ZONE}
myorigin = {ZONE}
mydestination = {ZONE}, {MAIL}
inet_interfaces = {SERVER}, {SERVER6}
inet_protocols = all
mynetworks = 127.0.0.0/8
local_transport = discard:
default_transport = discard:
local_recipient_maps = inline:{{{users}}}
alias_maps =
alias_database =
biff = no
smtpd_banner = $myhostname ESMTP
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_cert_file = {pki.chain[MAIL]}
smtpd_tls_key_file = {pki.key[MAIL]}
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
message_size_limit = 20000000
""")
    master = (Path("/etc/postfix/master.cf")).read_text().splitlines()
    out = []
    for line in master:
        f = line.split()
        if len(f) >= 8 and not line.startswith((" ", "\t", "#")) and f[4] in ("y", "-"):
            f[4] = "n"  # no chroot: the instance's files live in our directory
            line = "  ".join(f)
        out.append(line)
    out.append(
        "2525      inet  n       -       n       -       -       smtpd -o smtpd_tls_security_level=none"
    )
    (conf / "master.cf").write_text("\n".join(out) + "\n")
    return conf


# -- the running servers ------------------------------------------------------------------------


@dataclass
class Servers:
    """The long-running servers of a bed and their files."""

    root: Path
    pki: Pki
    nginx: Proc | None = None
    nsd: Proc | None = None
    unbound: Proc | None = None
    postfix_conf: Path | None = None
    postfix: Proc | None = None

    @property
    def maillog(self) -> Path:
        return self.root / "postfix" / "maillog"


def start_servers(bed: Bed, root: Path) -> Servers:
    """Write every config, start nginx, nsd, unbound, postfix in the bed; wait until they listen."""
    pki = make_pki(root / "pki")
    s = Servers(root, pki)
    conf = nginx_files(root / "nginx", pki)
    s.nginx = bed.spawn(
        "server", "nginx", ["nginx", "-p", str(root / "nginx"), "-c", str(conf), "-g", "daemon off;"]
    )
    s.nsd = bed.spawn("auth", "nsd", ["nsd", "-d", "-c", str(nsd_files(root / "nsd"))])
    s.unbound = bed.spawn("server", "unbound", ["unbound", "-d", "-c", str(unbound_files(root / "unbound"))])
    s.postfix_conf = postfix_files(root / "postfix", pki)
    pf = ["postfix", "-c", str(s.postfix_conf)]
    r = bed.run("server", [*pf, "check"], timeout=60)
    if r.returncode != 0:
        raise BedError(f"postfix check: {r.stdout}{r.stderr}")
    s.postfix = bed.spawn("server", "postfix", [*pf, "start-fg"])
    waits = [
        ("server", 80, False),
        ("server", 443, False),
        ("server", 8080, False),
        ("auth", 53, True),
        ("auth", 53, False),
        ("server", 53, True),
        ("server", 25, False),
        ("server", 2525, False),
    ]
    for role, port, udp in waits:
        try:
            bed.wait_port(role, port, udp)
        except BedError:
            logs = {p.name: p.tail(600) for p in (s.nginx, s.nsd, s.unbound, s.postfix) if p}
            raise BedError(f"{role}:{port}: not listening; logs: {logs}") from None
    _wait_resolver(bed)
    return s


def _wait_resolver(bed: Bed, timeout: float = 15) -> None:
    """nsd loads its zone after it listens: query the authoritative server until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        r = bed.run("server", ["dig", "+short", "+time=1", "+tries=1", f"@{AUTH}", f"www.{ZONE}", "A"])
        if r.stdout.strip() == SERVER:
            return
        if time.monotonic() > deadline:
            raise BedError(f"nsd never answered for www.{ZONE}: {r.stdout} {r.stderr}")
        time.sleep(0.1)


def stop_servers(bed: Bed, s: Servers) -> None:
    """Stop postfix cleanly (its own stop), then every server by PID."""
    if s.postfix_conf is not None and s.postfix is not None:
        bed.run("server", ["postfix", "-c", str(s.postfix_conf), "stop"], timeout=30)
    for p in (s.postfix, s.unbound, s.nsd, s.nginx):
        if p is not None:
            bed.stop(p)


def tools_missing() -> list[str]:
    """External programs the bed needs that are not installed."""
    need = [
        "ip",
        "nft",
        "ethtool",
        "tcpdump",
        "tshark",
        "mergecap",
        "editcap",
        "nginx",
        "nsd",
        "unbound",
        "dig",
        "kdig",
        "postfix",
        "swaks",
        "sipp",
        "curl",
        "wget",
        "openssl",
        "ss",
        "ping",
    ]
    return [t for t in need if shutil.which(t) is None]


def run_ok(p: subprocess.CompletedProcess) -> bool:
    """A client's exit status says success."""
    return p.returncode == 0
