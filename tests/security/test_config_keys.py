"""The configuration keys the secure defaults added: their meaning and their one-line errors."""

from __future__ import annotations

import grp
from pathlib import Path

import pytest
from celltap.cell.sftap_config import ConfigError, parse_config
from celltap.collector.config import CollectorConfig, ListenAddress, config_from_dict
from celltap.collector.node_config import NodeConfigError
from celltap.collector.node_config import config_from_dict as node_config

from celltap.user_errors import METRICS_ADDR
from tests.conftest import require_tool
from tests.fixtures_etcd import make_pki


def test_collector_defaults_are_loopback() -> None:
    cfg = CollectorConfig()
    assert cfg.listen == [ListenAddress("udp", "127.0.0.1", 4739)]
    assert cfg.metrics_addr == "127.0.0.1" == METRICS_ADDR
    assert config_from_dict({"registry_tls": {}}).registry_tls == {}
    assert config_from_dict({}).registry_tls is None  # unset: etcd follows `tls`


def test_node_registry_tls_overrides_tls_for_etcd_only(tmp_path: Path) -> None:
    require_tool("openssl")
    pki = make_pki(tmp_path / "pki")
    tls = {"ca": pki.ca, "cert": pki.server_cert, "key": pki.server_key}
    same = node_config({"id": "n", "tls": tls})
    assert same.etcd_tls == same.tls and same.tls is not None
    plain = node_config({"id": "n", "tls": tls, "registry_tls": {}})
    assert plain.tls is not None and plain.etcd_tls is None
    other = node_config({"id": "n", "tls": tls, "registry_tls": {"ca": pki.ca}})
    assert other.etcd_tls is not None and other.etcd_tls.ca == pki.ca and not other.etcd_tls.mutual
    with pytest.raises(NodeConfigError, match="tls: unknown key"):
        node_config({"id": "n", "registry_tls": {"capath": "x"}})
    assert node_config({"id": "n"}).listen.startswith("127.0.0.1:")
    assert node_config({"id": "n"}).http.startswith("127.0.0.1:")


def test_socket_group_takes_a_name_or_a_gid_that_exists() -> None:
    group = grp.getgrgid(0)
    rules = {"loopback7": {"if": "loopback7"}}
    assert parse_config({"global": {"socket_group": group.gr_name}, **rules}).glob.socket_group == 0
    assert parse_config({"global": {"socket_group": 0}, **rules}).glob.socket_group == 0
    assert parse_config({**rules}).glob.socket_group is None
    with pytest.raises(ConfigError, match=r"global\.socket_group: no group 'no-such-group-xyz'"):
        parse_config({"global": {"socket_group": "no-such-group-xyz"}, **rules})
    with pytest.raises(ConfigError, match=r"global\.socket_group: expected"):
        parse_config({"global": {"socket_group": True}, **rules})
