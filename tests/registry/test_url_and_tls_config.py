"""Registry URL parsing and TLS configuration errors (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from celltap.registry import RegistryConfigError, TLSConfig, open_registry, parse_endpoints
from celltap.registry.etcd_backend import EtcdRegistry
from celltap.registry.file_backend import FileRegistry


def test_parse_endpoints() -> None:
    assert parse_endpoints("a:1,b,[::1]:2380, c:3") == [("a", 1), ("b", 2379), ("::1", 2380), ("c", 3)]
    for bad in ("", "a:x", "a:0", ":5"):
        with pytest.raises(RegistryConfigError):
            parse_endpoints(bad)


def test_file_url(tmp_path: Path) -> None:
    reg = open_registry(f"file://{tmp_path}/r?poll=0.5")
    assert isinstance(reg, FileRegistry)
    assert reg.root == str(tmp_path / "r") and reg.poll_interval == 0.5
    reg.close()
    for bad in ("file://host/path", "file://", f"file://{tmp_path}?nope=1"):
        with pytest.raises(RegistryConfigError):
            open_registry(bad)


def test_etcd_urls(tmp_path: Path) -> None:
    reg = open_registry("etcd://u:p%40ss@h1:2379,h2:2380?timeout=3")
    assert isinstance(reg, EtcdRegistry)
    assert reg.endpoints == [("h1", 2379), ("h2", 2380)]
    assert (reg.user, reg.password, reg.timeout, reg.tls) == ("u", "p@ss", 3.0, None)
    reg.close()
    secure = open_registry("etcds://h1")
    assert isinstance(secure, EtcdRegistry) and secure.tls == TLSConfig()
    secure.close()
    with pytest.raises(RegistryConfigError, match="user and password"):
        open_registry("etcd://h1?user=root")
    with pytest.raises(RegistryConfigError, match="unknown option"):
        open_registry("etcd://h1?tls=yes")
    with pytest.raises(RegistryConfigError, match="scheme"):
        open_registry("http://h1:2379")


def test_tls_config_errors_name_the_key(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    with pytest.raises(RegistryConfigError, match="'cert' and 'key'"):
        TLSConfig(ca=str(pem), cert=str(pem))
    with pytest.raises(RegistryConfigError, match=r"tls\.ca"):
        TLSConfig(ca=str(tmp_path / "missing.pem"))
    with pytest.raises(RegistryConfigError, match="unknown key"):
        TLSConfig.from_mapping({"ca": str(pem), "verify": False})
    assert TLSConfig.from_mapping(None) is None
    cfg = TLSConfig.from_mapping({"ca": str(pem), "server_name": "etcd.internal"})
    assert cfg is not None and cfg.channel_options() == [("grpc.ssl_target_name_override", "etcd.internal")]
    assert not cfg.mutual
