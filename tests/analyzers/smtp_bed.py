"""Real SMTP traffic: postfix (cyrus SASL, TLS) in one network namespace, swaks and Python clients in
another, tcpdump on the veth between them.

postfix runs from its own config directory (`postfix -c DIR start-fg`) with three smtpd services:
port 25 (STARTTLS, AUTH PLAIN/LOGIN/CRAM-MD5 against a sasldb, PIPELINING and CHUNKING as postfix
advertises them by default), 2525 (no TLS: STARTTLS answered 502; hard error limit 3, so errors end
in 421) and 2526 (certificate missing: STARTTLS answered 454). Recipients `nobody@` (554) and
`later@` (450) and the sender `badsender@` are refused by access maps; a message whose Subject is
`reject-me` is refused at the end of data by header_checks; accepted mail goes to postfix's discard
transport. postfix's own log (`maillog_file = /dev/stdout`) is kept as an oracle.

Each scenario runs from its own client address (10.25.0.<n>), so a test finds its flow by address.
Messages swaks sends are generated first with `swaks --dump-mail` and then sent with `--data @FILE`,
so the exact bytes sent are on disk for Python's `email` package to parse.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER = "10.25.0.1"
DOMAIN = "test.example"
PASSWORD = "secret"
USER = f"alice@{DOMAIN}"

# scenario -> last octet of its client address
CLIENTS = {
    "attach": 11,
    "rejects": 12,
    "badsender": 13,
    "norcpt": 14,
    "tls": 15,
    "tls502": 16,
    "tls454": 17,
    "auth_plain": 18,
    "auth_login": 19,
    "auth_cram": 20,
    "auth_fail": 21,
    "bdat": 22,
    "multi": 23,
    "split": 24,
    "rejected_msg": 25,
    "closed": 26,
}
ATTACHMENTS = [  # (file name, MIME type, size): swaks base64-encodes each
    ("notes.txt", "text/plain", 3000),
    ("picture.png", "image/png", 20000),
    ("report.pdf", "application/pdf", 7777),
    ("blob.bin", None, 1),
]


@dataclass
class Bed:
    """What the bed produced: the capture, postfix's log and the messages as sent, per scenario."""

    pcap: str
    maillog: str
    workdir: Path
    messages: dict[str, list[Path]] = field(default_factory=dict)
    transcripts: dict[str, str] = field(default_factory=dict)

    def client(self, scenario: str) -> str:
        """The client address a scenario used."""
        return f"10.25.0.{CLIENTS[scenario]}"


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def _postfix_config(d: Path, conf: Path) -> None:
    conf.mkdir()
    (conf / "sasl").mkdir()
    for sub in ("queue", "data"):
        (d / sub).mkdir()
    shutil.chown(d / "data", "postfix")
    shutil.copy("/etc/postfix/master.cf", conf / "master.cf")
    _run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
         "-out", str(d / "cert.pem"), "-subj", "/CN=mx.test.example", "-days", "2"]
    )  # fmt: skip
    rcpt_access = "{nobody@test.example = REJECT no such user here}, {later@test.example = DEFER try later}"
    (conf / "main.cf").write_text(
        f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{DOMAIN}
mydomain = {DOMAIN}
mydestination =
relay_domains = {DOMAIN}
inet_interfaces = {SERVER}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
maillog_file = /dev/stdout
smtpd_delay_reject = no
smtpd_sender_restrictions = check_sender_access inline:{{{{badsender@{DOMAIN} = REJECT sender refused}}}}
smtpd_recipient_restrictions = check_recipient_access inline:{{{rcpt_access}}}, reject_unauth_destination
smtpd_relay_restrictions = reject_unauth_destination
relay_transport = discard:relayed
default_transport = discard:default
header_checks = regexp:{conf}/header_checks
smtpd_tls_cert_file = {d}/cert.pem
smtpd_tls_key_file = {d}/key.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
alias_maps =
alias_database =
biff = no
"""
    )
    (conf / "header_checks").write_text("/^Subject: reject-me/ REJECT message content rejected by policy\n")
    # Debian's postfix reads cyrus SASL's smtpd.conf from <config_directory>/sasl/
    (conf / "sasl" / "smtpd.conf").write_text(
        "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN CRAM-MD5\n"
        f"sasldb_path: {d}/sasldb2\n"
    )
    _run(["saslpasswd2", "-c", "-p", "-f", str(d / "sasldb2"), "-u", DOMAIN, "alice"], input=PASSWORD)
    os.chmod(d / "sasldb2", 0o644)
    pc = ["postconf", "-c", str(conf)]
    _run([*pc, "-M#", "smtp/inet"])
    _run([*pc, "-M", f"{SERVER}:25/inet = {SERVER}:25 inet n - n - - smtpd"])
    _run(
        [
            *pc,
            "-M",
            f"{SERVER}:2525/inet = {SERVER}:2525 inet n - n - - smtpd -o smtpd_tls_security_level=none"
            " -o smtpd_hard_error_limit=3 -o smtpd_sasl_auth_enable=no",
        ]
    )
    _run(
        [
            *pc,
            "-M",
            f"{SERVER}:2526/inet = {SERVER}:2526 inet n - n - - smtpd"
            " -o smtpd_tls_cert_file=/nonexistent/cert.pem -o smtpd_tls_key_file=/nonexistent/key.pem",
        ]
    )
    _run([*pc, "-F", "*/*/chroot = n"])


class _Namespaces:
    """A server and a client namespace joined by a veth, names unique to this process."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(0x100, 0xFFF):x}"
        self.server, self.client = f"ctsS{tag}", f"ctsC{tag}"
        self.sif, self.cif = f"vS{tag}", f"vC{tag}"
        _run(["ip", "netns", "add", self.server])
        _run(["ip", "netns", "add", self.client])
        _run(["ip", "link", "add", self.sif, "type", "veth", "peer", "name", self.cif])
        _run(["ip", "link", "set", self.sif, "netns", self.server])
        _run(["ip", "link", "set", self.cif, "netns", self.client])
        _run(["ip", "-n", self.server, "addr", "add", f"{SERVER}/24", "dev", self.sif])
        for n in CLIENTS.values():
            _run(["ip", "-n", self.client, "addr", "add", f"10.25.0.{n}/24", "dev", self.cif])
        for ns, ifname in ((self.server, self.sif), (self.client, self.cif)):
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def close(self) -> None:
        for ns in (self.server, self.client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _swaks_cases(d: Path) -> dict[str, list[str]]:
    """swaks argument lists per scenario (the message file is made first for those that send one)."""
    base = ["--server", SERVER, "--from", "alice@client.example", "--helo", "swaks.client.example"]
    auth = ["--auth-user", USER, "--to", f"bob@{DOMAIN}"]
    return {
        "attach": [*base, "--to", f"bob@{DOMAIN},carol@{DOMAIN}", "--pipeline"],
        "rejects": [*base, "--to", f"bob@{DOMAIN},nobody@{DOMAIN},later@{DOMAIN}", "--pipeline"],
        "badsender": ["--server", SERVER, "--from", f"badsender@{DOMAIN}", "--to", f"bob@{DOMAIN}"],
        "norcpt": [*base, "--to", f"nobody@{DOMAIN}", "--pipeline"],
        "tls": [*base, "--to", f"bob@{DOMAIN}", "--tls"],
        "tls454": [*base, "--to", f"bob@{DOMAIN}", "--tls-optional", "--port", "2526"],
        "auth_plain": base + auth + ["--auth", "PLAIN", "--auth-password", PASSWORD],
        "auth_login": base + auth + ["--auth", "LOGIN", "--auth-password", PASSWORD],
        "auth_cram": base + auth + ["--auth", "CRAM-MD5", "--auth-password", PASSWORD],
        "auth_fail": base + auth + ["--auth", "LOGIN", "--auth-password", "wrong"],
        "rejected_msg": [*base, "--to", f"bob@{DOMAIN}"],
    }


def _attach_args(d: Path) -> list[str]:
    args: list[str] = []
    rng = random.Random(25)
    for name, mime, size in ATTACHMENTS:
        path = d / name
        path.write_bytes(rng.randbytes(size) if mime != "text/plain" else b"some notes\n" * (size // 11))
        if mime:
            args += ["--attach-type", mime]
        args += ["--attach-name", name, "--attach", f"@{path}"]
    return args


def _headers(scenario: str) -> list[str]:
    if scenario == "attach":
        return [
            "--header", "Subject: attachments of four types",
            "--header", "Cc: Carol <carol@test.example>, \"Doe, John\" <john@test.example>",
            "--header", "Reply-To: replies@client.example",
            "--header", "In-Reply-To: <earlier@client.example>",
            "--header", "X-Originating-IP: [192.0.2.77]",
            "--header", "User-Agent: SquirrelMail/1.4.22",
            "--header", "Received: from relay2.example (relay2.example [198.51.100.2]) by mx.test.example",
            "--header", "Received: from origin.example (origin.example [203.0.113.9]) by relay2.example",
        ]  # fmt: skip
    if scenario == "rejected_msg":
        return ["--header", "Subject: reject-me please"]
    return ["--header", f"Subject: scenario {scenario}"]


def build(workdir: Path | None = None) -> Bed:
    """Run postfix and every scenario, capture the traffic, and return what the tests need."""
    # postfix's unprivileged daemons must reach their queue: every parent directory must be searchable
    # (pytest's /tmp/pytest-of-root is not), hence a directory of our own under /tmp by default
    d = Path(workdir or tempfile.mkdtemp(prefix="ctsmtp-"))
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    conf = d / "conf"
    _postfix_config(d, conf)
    ns = _Namespaces()
    maillog = d / "maillog"
    pcap = d / "smtp.pcap"
    bed = Bed(str(pcap), str(maillog), d)
    master = dump = None
    try:
        with open(maillog, "ab") as log:  # O_APPEND: postlogd reopens /dev/stdout and writes too
            master = subprocess.Popen(
                ["ip", "netns", "exec", ns.server, "postfix", "-c", str(conf), "start-fg"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_listening(ns.server, master)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {maillog.read_text(errors='replace')[-1500:]}") from None
        dump = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns.server,
                "tcpdump",
                "--immediate-mode",  # hand each packet over at once: none left in the ring at SIGINT
                "-B",
                "65536",  # 64 MiB of kernel buffer: a loaded machine must not drop the oracle's packets
                "-i",
                ns.sif,
                "-U",
                "-s",
                "0",
                "-w",
                str(pcap),
                "tcp",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait_tcpdump(dump)
        _run_scenarios(bed, ns)
        time.sleep(1.0)  # let the last segments reach tcpdump and postfix finish logging
    finally:
        if dump is not None:
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
            assert dump.stderr is not None
            _check_tcpdump_complete(dump.stderr.read().decode(errors="replace"))
        if master is not None:
            subprocess.run(
                ["ip", "netns", "exec", ns.server, "postfix", "-c", str(conf), "stop"], capture_output=True
            )
            try:
                master.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(master.pid, signal.SIGKILL)
        ns.close()
    return bed


def _wait_listening(server_ns: str, master: subprocess.Popen) -> None:
    for _ in range(100):
        out = subprocess.run(
            ["ip", "netns", "exec", server_ns, "ss", "-ltn"], capture_output=True, text=True
        ).stdout
        if all(f"{SERVER}:{p}" in out for p in (25, 2525, 2526)):
            return
        if master.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError("postfix did not start listening (see its log)")


def _check_tcpdump_complete(stats: str) -> None:
    """The bed's capture is the tests' input: a packet tcpdump's kernel buffer dropped would look
    like a gap in the traffic, so say so instead of letting the analyzer be blamed."""
    m = re.search(r"(\d+) packets? dropped by kernel", stats)
    if m and int(m.group(1)):
        raise RuntimeError(f"the SMTP bed's tcpdump dropped {m.group(1)} packets in the kernel: {stats!r}")


def _wait_tcpdump(dump: subprocess.Popen) -> None:
    assert dump.stderr is not None
    line = dump.stderr.readline()
    if "listening on" not in line.decode(errors="replace"):
        raise RuntimeError(f"tcpdump did not start: {line!r}")


def _run_scenarios(bed: Bed, ns: _Namespaces) -> None:
    d = bed.workdir
    attach = _attach_args(d)
    env = dict(os.environ)
    for scenario, args in _swaks_cases(d).items():
        src = ["--local-interface", bed.client(scenario)]
        if scenario not in ("badsender",):
            eml = d / f"{scenario}-1.eml"
            extra = attach if scenario == "attach" else []
            made = _run(["swaks", "--dump-mail", *args, *_headers(scenario), *extra])
            eml.write_bytes(made.stdout.encode())
            args = [*args, "--data", f"@{eml}"]
            bed.messages[scenario] = [eml]
        proc = subprocess.run(
            ["ip", "netns", "exec", ns.client, "swaks", *args, *src],
            capture_output=True,
            text=True,
            timeout=60,
        )
        bed.transcripts[scenario] = proc.stdout + proc.stderr
    for scenario in ("bdat", "multi", "tls502", "split", "closed"):
        proc = subprocess.run(
            ["ip", "netns", "exec", ns.client, sys.executable, "-m", "tests.analyzers.smtp_clients", scenario,
             SERVER, bed.client(scenario), str(d)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"client {scenario} failed: {proc.stderr[-1500:]}")
        bed.messages[scenario] = sorted(d.glob(f"{scenario}-*.eml"))
