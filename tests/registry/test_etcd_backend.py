"""etcd-only behaviour against real etcd servers: TLS/mTLS, auth, endpoint failover, event order,
and no acknowledged write lost across an etcd crash."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pyetcd
import pytest
from pyetcd import etcdrpc

from celltap.registry import RegistryError, RegistryUnavailable, TLSConfig, WatchEvent, open_registry
from tests.conftest import require_tool
from tests.fixtures_etcd import make_pki

from .conftest import metric, wait_until


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_every_event_of_a_burst_arrives_in_order(etcd_server) -> None:
    reg = open_registry(etcd_server.url)
    prefix = f"/burst-{os.getpid()}-{time.monotonic_ns()}/"
    got: list[WatchEvent] = []
    handle = reg.watch_prefix(prefix, got.append)
    assert handle.wait_synced(5)
    expected: list[WatchEvent] = []
    for i in range(150):
        key = f"{prefix}k{i % 5}"
        reg.put(key, str(i))
        expected.append(WatchEvent("put", key, str(i).encode()))
        if i % 4 == 3:
            reg.delete(key)
            expected.append(WatchEvent("delete", key, None))
    assert wait_until(lambda: len(got) >= len(expected), timeout=10)
    assert got == expected
    reg.close()


def test_no_acknowledged_write_lost_when_etcd_crashes_mid_stream(etcd_factory) -> None:
    server = etcd_factory()
    writer = open_registry(server.url + "?timeout=1")
    watcher = open_registry(server.url + "?timeout=1")
    prefix = "/celltap/crash/records/"
    seen: dict[str, bytes] = {}

    def on_event(event: WatchEvent) -> None:
        if event.type == "put":
            assert event.value is not None
            seen[event.key] = event.value
        else:
            seen.pop(event.key, None)

    assert watcher.watch_prefix(prefix, on_event).wait_synced(5)
    acked: list[str] = []
    retries = 0
    stop = threading.Event()

    def write() -> None:
        nonlocal retries
        i = 0
        while not stop.is_set():
            key = f"{prefix}{i:06d}"
            try:
                writer.put(key, {"seq": i})
            except RegistryUnavailable:
                retries += 1
                time.sleep(0.05)
                continue  # the same record again: it was not acknowledged
            acked.append(key)
            i += 1

    thread = threading.Thread(target=write)
    thread.start()
    assert wait_until(lambda: len(acked) > 50, timeout=10)
    server.stop(signal.SIGKILL)  # a crash, not a clean shutdown
    time.sleep(0.7)
    server.start()
    n_at_restart = len(acked)
    assert wait_until(lambda: len(acked) > n_at_restart + 50, timeout=15)
    stop.set()
    thread.join(timeout=10)
    assert retries > 0  # the outage was real and the writer saw it
    stored = watcher.get_prefix(prefix)
    assert set(acked) <= set(stored)
    assert wait_until(lambda: set(acked) <= set(seen), timeout=10)
    assert seen == stored or wait_until(lambda: seen == watcher.get_prefix(prefix), timeout=5)
    writer.close()
    watcher.close()


def test_failover_to_the_next_endpoint(etcd_server) -> None:
    dead = _closed_port()
    reg = open_registry(f"etcd://127.0.0.1:{dead},{etcd_server.endpoint}?timeout=1")
    before = metric("celltap_registry_errors_total", op="put")
    reg.put("/failover/k", b"v")  # the first endpoint refuses; the second answers
    assert reg.get("/failover/k") == b"v"
    assert metric("celltap_registry_errors_total", op="put") == before  # recovered within the call
    reg.close()
    only_dead = open_registry(f"etcd://127.0.0.1:{dead}?timeout=1")
    with pytest.raises(RegistryUnavailable):
        only_dead.get("/failover/k")
    assert metric("celltap_registry_errors_total", op="get") >= 1
    assert metric("celltap_registry_connected") == 0
    only_dead.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    require_tool("openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_mutual_tls(etcd_factory, pki, tmp_path: Path) -> None:
    server = etcd_factory(pki=pki)  # --cert-file --key-file --trusted-ca-file --client-cert-auth
    mtls = TLSConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    reg = open_registry(server.url + "?timeout=2", tls=mtls)
    events: list[WatchEvent] = []
    assert reg.watch_prefix("/tls/", events.append).wait_synced(5)
    lease = reg.lease(1)
    reg.put("/tls/k", {"secure": True}, lease=lease)
    assert reg.get_json("/tls/k") == {"secure": True}
    assert wait_until(lambda: events == [WatchEvent("put", "/tls/k", b'{"secure":true}')])
    reg.close()

    # The same through URL options only.
    url = f"etcds://{server.endpoint}?ca={pki.ca}&cert={pki.client_cert}&key={pki.client_key}&timeout=2"
    via_url = open_registry(url)
    assert via_url.get_json("/tls/k") == {"secure": True}
    via_url.close()

    # The certificate is checked against server_name when given.
    named_tls = dataclasses.replace(mtls, server_name="localhost")
    named = open_registry(server.url + "?timeout=2", tls=named_tls)
    assert named.get("/tls/k") is not None
    named.close()


def test_tls_rejections(etcd_factory, pki, tmp_path: Path) -> None:
    server = etcd_factory(pki=pki)
    other = make_pki(tmp_path / "other")
    cases = {
        "no client certificate": TLSConfig(ca=pki.ca),
        "untrusted client certificate": TLSConfig(ca=pki.ca, cert=other.client_cert, key=other.client_key),
        "server not trusted": TLSConfig(ca=other.ca, cert=pki.client_cert, key=pki.client_key),
        "wrong server name": TLSConfig(
            ca=pki.ca, cert=pki.client_cert, key=pki.client_key, server_name="not-etcd.example"
        ),
    }
    for why, tls in cases.items():
        reg = open_registry(server.url + "?timeout=2", tls=tls)
        with pytest.raises(RegistryError):
            reg.get("/tls/k")
            pytest.fail(f"connected despite: {why}")
        reg.close()
    plain = open_registry(f"etcd://{server.endpoint}?timeout=2")
    with pytest.raises(RegistryError):
        plain.get("/tls/k")
    plain.close()


def _enable_auth(endpoint: str, password: str) -> None:
    host, port = endpoint.split(":")
    admin = pyetcd.client(host, int(port))
    admin.authstub.RoleAdd(etcdrpc.AuthRoleAddRequest(name="root"))
    admin.authstub.UserAdd(etcdrpc.AuthUserAddRequest(name="root", password=password))
    admin.authstub.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user="root", role="root"))
    admin.authstub.AuthEnable(etcdrpc.AuthEnableRequest())
    admin.close()


def test_user_password_auth(etcd_factory, tmp_path: Path) -> None:
    server = etcd_factory()
    _enable_auth(server.endpoint, "s3cret")
    reg = open_registry(f"etcd://root:s3cret@{server.endpoint}?timeout=2")
    events: list[WatchEvent] = []
    assert reg.watch_prefix("/auth/", events.append).wait_synced(5)
    lease = reg.lease(2)
    reg.put("/auth/k", b"v", lease=lease)
    assert reg.get("/auth/k") == b"v"
    assert wait_until(lambda: len(events) == 1)
    reg.close()

    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    from_file = open_registry(f"etcd://{server.endpoint}?user=root&password_file={secret}&timeout=2")
    assert from_file.get("/auth/k") == b"v"
    from_file.close()

    for url in (f"etcd://{server.endpoint}?timeout=2", f"etcd://root:wrong@{server.endpoint}?timeout=2"):
        reg = open_registry(url)
        with pytest.raises(RegistryError) as info:
            reg.get("/auth/k")
        assert not isinstance(info.value, RegistryUnavailable)  # a refusal, not an outage
        reg.close()


def test_expired_auth_token_is_renewed(etcd_factory) -> None:
    server = etcd_factory(extra_args=("--auth-token-ttl", "1"))
    _enable_auth(server.endpoint, "pw")
    reg = open_registry(f"etcd://root:pw@{server.endpoint}?timeout=2")
    reg.put("/auth/t", b"1")
    time.sleep(2.5)  # the idle token expires on the server
    assert reg.get("/auth/t") == b"1"
    reg.close()
