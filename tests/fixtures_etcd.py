"""Reusable pytest fixtures that run a real etcd server (Debian's etcd-server, /usr/bin/etcd).

Use from any test directory::

    from tests.fixtures_etcd import etcd_factory, etcd_server  # noqa: F401  (fixtures)

    def test_x(etcd_server):
        reg = open_registry(etcd_server.url)

`etcd_server` is one plain server shared by a whole session (use unique key prefixes);
`etcd_factory(tls=None)` starts private servers (restartable, optionally TLS) stopped at teardown.
`make_pki(dir)` writes a CA, a server and a client certificate with the openssl CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Short raft timings make etcd's minimum lease TTL 1 s (it is derived from the election timeout).
_FAST_RAFT = ["--heartbeat-interval", "50", "--election-timeout", "250"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PKI:
    """Paths of a throw-away CA and the server/client certificates it signed."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_pki(directory: str | Path, openssl: str = "openssl") -> PKI:
    """Create a CA plus server (SAN 127.0.0.1, localhost) and client certificates (EC P-256)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subj = ["-subj", "/CN=celltap test CA"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", *subj)
    exts = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        "client": "subjectAltName=DNS:celltap-client\nextendedKeyUsage=clientAuth\n",
    }
    for name, ext in exts.items():
        (d / f"{name}.ext").write_text(ext)
        subj = ["-subj", f"/CN=celltap-{name}"]
        run("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", *subj)
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    return PKI(
        ca=str(d / "ca.pem"),
        server_cert=str(d / "server.pem"),
        server_key=str(d / "server.key"),
        client_cert=str(d / "client.pem"),
        client_key=str(d / "client.key"),
    )


class EtcdServer:
    """One single-member etcd on loopback ports that stay the same across restarts."""

    def __init__(
        self,
        binary: str,
        data_dir: str,
        pki: PKI | None = None,
        client_cert_auth: bool = True,
        extra_args: tuple[str, ...] = (),
    ):
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.data_dir = data_dir
        self.pki = pki
        self.client_cert_auth = client_cert_auth
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(os.path.dirname(data_dir), os.path.basename(data_dir) + ".log")

    @property
    def scheme(self) -> str:
        """http or https, as etcd listens."""
        return "https" if self.pki else "http"

    @property
    def endpoint(self) -> str:
        """host:port of the client listener."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """Registry URL (no TLS options; pass a TLSConfig for TLS servers)."""
        return ("etcds://" if self.pki else "etcd://") + self.endpoint

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd and wait until /health says true."""
        client_url = f"{self.scheme}://{self.endpoint}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary, "--name", "t", "--data-dir", self.data_dir,
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"t={peer_url}", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-level", "warn", *_FAST_RAFT, *self.extra_args,
        ]  # fmt: skip
        if self.pki:
            args += ["--cert-file", self.pki.server_cert, "--key-file", self.pki.server_key]
            args += ["--trusted-ca-file", self.pki.ca]
            if self.client_cert_auth:
                args.append("--client-cert-auth")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; log: {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy after {timeout}s; log: {self.log_tail()}")

    def healthy(self) -> bool:
        """True when GET /health answers {"health": "true"}."""
        context = None
        if self.pki:
            context = ssl.create_default_context(cafile=self.pki.ca)
            context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        try:
            with urllib.request.urlopen(
                f"{self.scheme}://{self.endpoint}/health", timeout=1, context=context
            ) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop etcd (SIGTERM by default, SIGKILL for a crash) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, wipe: bool = False) -> None:
        """Stop and start again on the same ports; `wipe` starts from an empty data dir (a lost cluster)."""
        self.stop()
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()

    def log_tail(self, n: int = 2000) -> str:
        """The end of etcd's log, for failure messages."""
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _etcd_binary() -> str:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if path is None:
        pytest.skip("etcd is not installed (Debian etcd-server); scripts/setup.sh --system installs it")
    return path


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """A plain etcd shared by the session; tests must use their own key prefixes."""
    binary = _etcd_binary()
    tmp = tempfile.mkdtemp(prefix="celltap-etcd-")
    server = EtcdServer(binary, os.path.join(tmp, "data"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdServer]]:
    """Start private etcd servers: `etcd_factory(pki=None, client_cert_auth=True, extra_args=())`;
    all are stopped at teardown."""
    binary = _etcd_binary()
    servers: list[EtcdServer] = []

    def make(pki: PKI | None = None, client_cert_auth: bool = True, extra_args: tuple[str, ...] = ()):
        server = EtcdServer(binary, str(tmp_path / f"etcd{len(servers)}"), pki, client_cert_auth, extra_args)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
