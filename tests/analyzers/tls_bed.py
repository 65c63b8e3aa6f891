"""Real TLS traffic for the TLS analyzer's tests: openssl s_server/s_client (and dovecot, nginx/curl)
in two network namespaces joined by a veth, captured by tcpdump.

Theory of operation. `TlsBed` makes namespaces `<tag>s` (server, 10.213.0.2) and `<tag>c` (client,
10.213.0.1) with a veth pair (MTU 1500, offloads off, so frames are wire-sized and certificate chains
span several segments), and starts tcpdump on the client's veth. Each scenario runs a real server and
a real client to completion; every process is started and stopped by PID. `certificates()` makes a
3-level RSA chain (root, intermediate, leaf with DNS/IP/email/URI SANs), an ECDSA P-256 leaf, a client
certificate and an unrelated CA (for a client that rejects the server), all with the openssl CLI.
Names carry a random per-process tag so that other helpers' namespaces never collide with ours.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SERVER_IP = "10.213.0.2"
CLIENT_IP = "10.213.0.1"


def run(argv: list[str], timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command; raise naming it when it fails."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr[-600:]}")
    return p


def certificates(d: Path) -> dict[str, Path]:
    """Root -> intermediate -> leaf (RSA), an ECDSA leaf, a client certificate, an unrelated CA."""
    d.mkdir(parents=True, exist_ok=True)
    ossl = ["openssl"]

    def key(name: str, ec: bool = False) -> Path:
        p = d / f"{name}.key"
        if ec:
            run([*ossl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(p)])
        else:
            run([*ossl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(p)])
        return p

    def ext(name: str, text: str) -> Path:
        p = d / f"{name}.ext"
        p.write_text(text)
        return p

    def sign(
        name: str, subj: str, issuer: str | None, extfile: Path, ec: bool = False, days: int = 30
    ) -> None:
        k = key(name, ec)
        csr = d / f"{name}.csr"
        run([*ossl, "req", "-new", "-key", str(k), "-subj", subj, "-out", str(csr)])
        cmd = [
            *ossl,
            "x509",
            "-req",
            "-in",
            str(csr),
            "-days",
            str(days),
            "-sha256",
            "-out",
            str(d / f"{name}.pem"),
        ]
        cmd += ["-extfile", str(extfile)]
        if issuer is None:
            cmd += ["-signkey", str(k)]
        else:
            cmd += ["-CA", str(d / f"{issuer}.pem"), "-CAkey", str(d / f"{issuer}.key"), "-CAcreateserial"]
        run(cmd)

    ca = ext("ca", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    inter = ext(
        "inter", "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
    )
    leaf = ext(
        "leaf",
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:www.tls.test,DNS:tls.test,IP:10.213.0.2,"
        "email:admin@tls.test,URI:https://tls.test/\n",
    )
    client = ext("client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    sign("root", "/C=JP/O=celltap test/CN=celltap Root CA", None, ca, days=365)
    sign("inter", "/C=JP/O=celltap test/CN=celltap Intermediate CA", "root", inter, days=180)
    sign("leaf", "/C=JP/O=celltap test/OU=web/CN=www.tls.test", "inter", leaf)
    sign("ecleaf", "/O=celltap test/CN=ec.tls.test", "inter", leaf, ec=True)
    sign("client", "/O=celltap test/CN=client one", "root", client)
    sign("other", "/CN=unrelated CA", None, ca, days=365)
    (d / "chain.pem").write_text((d / "inter.pem").read_text())
    return {n: d / f"{n}.pem" for n in ("root", "inter", "leaf", "ecleaf", "client", "other", "chain")}


class TlsBed:
    """Two namespaces, a veth between them, tcpdump on the client side; processes tracked by PID."""

    def __init__(self, workdir: Path) -> None:
        self.tag = f"ct{os.getpid() % 10000}{random.randrange(1000):03d}"
        self.srv, self.cli = f"{self.tag}s", f"{self.tag}c"
        self.dir = workdir
        self.pcap = workdir / "tls.pcap"
        self.procs: list[subprocess.Popen] = []
        self.tcpdump: subprocess.Popen | None = None

    def ns(self, which: str, *argv: str) -> list[str]:
        """argv run inside the server ('s') or client ('c') namespace."""
        return ["ip", "netns", "exec", self.srv if which == "s" else self.cli, *argv]

    def up(self) -> None:
        """Create the namespaces and the veth, and start the capture."""
        run(["ip", "netns", "add", self.srv])
        run(["ip", "netns", "add", self.cli])
        a, b = f"{self.tag}a", f"{self.tag}b"
        run(["ip", "link", "add", a, "netns", self.cli, "type", "veth", "peer", "name", b, "netns", self.srv])
        for which, dev, ip in (("c", a, CLIENT_IP), ("s", b, SERVER_IP)):
            run(self.ns(which, "ip", "addr", "add", f"{ip}/24", "dev", dev))
            run(self.ns(which, "ip", "link", "set", dev, "up"))
            run(self.ns(which, "ip", "link", "set", "lo", "up"))
            run(
                self.ns(which, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off"),
                check=False,
            )
        self.tcpdump = subprocess.Popen(
            self.ns("c", "tcpdump", "-i", a, "-U", "-s", "0", "-w", str(self.pcap), "tcp"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # tcpdump says "listening on" once the socket is bound
            if self.pcap.exists() and self.pcap.stat().st_size > 0:
                break
            time.sleep(0.05)
        time.sleep(0.3)

    def start(self, which: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start a long-running process in a namespace."""
        p = subprocess.Popen(self.ns(which, *argv), **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        """Stop one process we started."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def wait_port(self, port: int, timeout: float = 10) -> None:
        """Wait until something listens on SERVER_IP:port in the server namespace."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = run(self.ns("s", "ss", "-ltnH", f"sport = :{port}"), check=False).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on port {port}")

    def finish(self) -> Path:
        """Stop the capture (after the last frames are written) and return the pcap."""
        time.sleep(0.5)
        if self.tcpdump is not None:
            self.stop(self.tcpdump)
            self.tcpdump = None
        return self.pcap

    def down(self) -> None:
        """Stop every process and remove the namespaces (and with them the veth)."""
        for p in self.procs:
            self.stop(p)
        if self.tcpdump is not None:
            self.stop(self.tcpdump)
        for n in (self.srv, self.cli):
            run(["ip", "netns", "del", n], check=False)


@contextmanager
def tls_bed(workdir: Path) -> Iterator[TlsBed]:
    """A bed that is always taken down."""
    bed = TlsBed(workdir)
    try:
        bed.up()
        yield bed
    finally:
        bed.down()
