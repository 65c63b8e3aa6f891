"""A small capture of real servers and clients: nginx and unbound answering curl, wget and dig.

Everything runs inside one network namespace made for the purpose (its loopback, MTU 1500 so
segments are Ethernet-sized, with one server and three client addresses), and tcpdump captures that
loopback. Nothing leaves the namespace: unbound only answers from its own local zone. This is the
self-contained stand-in for the test bed of tests/realnet/ (branch `testbed`), kept small on purpose.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require_root, require_tool

SERVER = "10.{n}.0.2"
CLIENTS = ("10.{n}.0.1", "10.{n}.0.3", "10.{n}.0.4")
ZONE = "celltap.test"

NGINX_CONF = """
user root root;
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  access_log {tmp}/nginx-access.log;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 100;
  server {{
    listen {server}:80;
    root {tmp}/www;
  }}
}}
"""

UNBOUND_CONF = """
server:
  interface: {server}
  port: 53
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{tmp}"
  pidfile: "{tmp}/unbound.pid"
  use-syslog: no
  logfile: "{tmp}/unbound.log"
  do-ip6: no
  access-control: 10.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "{zone}." static
  local-data: "www.{zone}. 300 IN A {server}"
  local-data: "mail.{zone}. 300 IN A {server}"
  local-data: "www.{zone}. 300 IN AAAA 2001:db8::2"
  local-data: "{zone}. 300 IN MX 10 mail.{zone}."
  local-data: "{zone}. 300 IN TXT \\"celltap test zone\\""
remote-control:
  control-enable: no
"""


@dataclass
class RealCapture:
    """The capture and what the clients did (exit codes, so a failed client fails the test)."""

    pcap: Path
    server: str
    clients: tuple[str, ...]
    client_runs: list[tuple[list[str], int]] = field(default_factory=list)


def _sh(*args: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"


def _listening(ns: str, proto: str, port: int) -> bool:
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", flag, f"sport = :{port}"], capture_output=True,
                         text=True).stdout  # fmt: skip
    return bool(out.strip())


def _wait(pred, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _web_root(root: Path) -> None:
    rng = random.Random(3)
    root.mkdir(parents=True)
    (root / "index.html").write_text("<html><body>celltap</body></html>\n")
    for name, size in (("small.bin", 700), ("medium.bin", 48_000), ("large.bin", 600_000)):
        (root / name).write_bytes(rng.randbytes(size))


def _clients(ns: str, server: str, clients: tuple[str, ...]) -> list[list[str]]:
    a, b, c = clients
    base = f"http://{server}"
    return [
        ["curl", "-sS", "-o", "/dev/null", "--interface", a, f"{base}/index.html", f"{base}/small.bin"],
        ["curl", "-sS", "-o", "/dev/null", "--interface", a, f"{base}/large.bin"],
        ["curl", "-sS", "-o", "/dev/null", "--interface", b, "--http1.0", f"{base}/medium.bin"],
        ["curl", "-sS", "-o", "/dev/null", "--interface", b, "-I", f"{base}/index.html"],
        ["curl", "-sS", "-o", "/dev/null", "--interface", c, f"{base}/missing"],
        ["curl", "-sS", "-o", "/dev/null", "--interface", c, "-X", "POST", "--data-binary", "x" * 3000,
         f"{base}/index.html"],
        ["wget", "-q", "-O", "/dev/null", "--bind-address", c, f"{base}/medium.bin"],
        ["dig", "+tries=1", "+time=3", "-b", a, f"@{server}", f"www.{ZONE}", "A"],
        ["dig", "+tries=1", "+time=3", "-b", a, f"@{server}", f"www.{ZONE}", "AAAA"],
        ["dig", "+tries=1", "+time=3", "-b", b, f"@{server}", ZONE, "MX"],
        ["dig", "+tries=1", "+time=3", "-b", c, f"@{server}", ZONE, "TXT"],
        ["dig", "+tries=1", "+time=3", "-b", c, f"@{server}", f"nothing.{ZONE}", "A"],
        ["dig", "+tcp", "+tries=1", "+time=3", "-b", b, f"@{server}", f"mail.{ZONE}", "A"],
    ]  # fmt: skip


def make_capture(tmp: Path) -> RealCapture:
    """Run the servers and clients in a fresh namespace and return tcpdump's capture of it all."""
    require_root()
    for tool in ("ip", "ss", "ethtool", "tcpdump", "nginx", "unbound", "curl", "wget", "dig"):
        require_tool(tool)
    n = random.Random(os.getpid() ^ time.time_ns()).randrange(100, 250)
    ns = f"ctp{os.getpid() % 10000}{n}"
    server, clients = SERVER.format(n=n), tuple(c.format(n=n) for c in CLIENTS)
    work = tmp / "servers"
    _web_root(work / "www")
    (work / "nginx.conf").write_text(NGINX_CONF.format(tmp=work, server=server))
    (work / "unbound.conf").write_text(UNBOUND_CONF.format(tmp=work, server=server, zone=ZONE))
    pcap = tmp / "real.pcap"
    procs: list[subprocess.Popen] = []
    runs: list[tuple[list[str], int]] = []
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "-n", ns, "link", "set", "lo", "mtu", "1500")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        # No segmentation offload: the capture shows wire-sized segments, as a SPAN port would.
        _sh("ip", "netns", "exec", ns, "ethtool", "-K", "lo", "tso", "off", "gso", "off", "gro", "off")
        for addr in (server, *clients):
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", "lo")
        in_ns = ["ip", "netns", "exec", ns]
        dump_log = open(tmp / "tcpdump.log", "wb")
        dump = subprocess.Popen([*in_ns, "tcpdump", "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w",
                                 str(pcap)],
                                stdout=dump_log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(dump)
        _wait(lambda: b"listening on" in (tmp / "tcpdump.log").read_bytes(), "tcpdump to listen")
        procs.append(subprocess.Popen([*in_ns, "nginx", "-c", str(work / "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        procs.append(subprocess.Popen([*in_ns, "unbound", "-d", "-c", str(work / "unbound.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        _wait(lambda: _listening(ns, "tcp", 80), "nginx to listen")
        _wait(lambda: _listening(ns, "udp", 53) and _listening(ns, "tcp", 53), "unbound to listen")
        for cmd in _clients(ns, server, clients):
            done = subprocess.run([*in_ns, *cmd], capture_output=True, timeout=30)
            runs.append((cmd, done.returncode))
        time.sleep(1.0)  # the last FIN/ACKs reach the capture
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if p is not procs[0] else signal.SIGINT)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return RealCapture(pcap, server, clients, runs)
