"""Fixtures for the registry contract suite: the same tests run against file:// and a real etcd."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY as PROM

from celltap.registry import Registry, open_registry
from tests.fixtures_etcd import EtcdServer, etcd_factory, etcd_server  # noqa: F401  (fixtures used below)

POLL = 0.05  # file-backend watch poll interval: short keeps the suite fast


def wait_until(cond: Callable[[], object], timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll `cond` until truthy or `timeout` seconds passed; returns the last truth value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def metric(name: str, **labels: str) -> float:
    """Current value of a sample in the default Prometheus registry (0 when absent)."""
    return PROM.get_sample_value(name, labels) or 0.0


def errors_total() -> float:
    """celltap_registry_errors_total summed over every op label."""
    total = 0.0
    for family in PROM.collect():
        if family.name == "celltap_registry_errors":
            total += sum(s.value for s in family.samples if s.name == "celltap_registry_errors_total")
    return total


class Store:
    """One backing store (a directory or an etcd server) from which test clients are opened."""

    def __init__(self, backend: str, url: str, server: EtcdServer | None = None, root: str | None = None):
        self.backend = backend
        self.url = url
        self.server = server
        self.root = root
        self.clients: list[Registry] = []
        self.prefix = f"/t-{uuid.uuid4().hex[:10]}/"
        self.cluster = f"c{uuid.uuid4().hex[:8]}"

    def open(self) -> Registry:
        """A new client of this store, closed at teardown."""
        reg = open_registry(self.url)
        self.clients.append(reg)
        return reg

    def down(self) -> None:
        """Make the store unreachable for real: stop etcd, or move the directory away."""
        if self.server is not None:
            self.server.stop()
        else:
            assert self.root is not None
            os.rename(self.root, self.root + ".away")

    def up(self, wipe: bool = False) -> None:
        """Bring it back with its data, or empty (`wipe`: a registry rebuilt from scratch)."""
        if self.server is not None:
            if wipe:
                shutil.rmtree(self.server.data_dir)
            self.server.start()
        else:
            assert self.root is not None
            if wipe:
                shutil.rmtree(self.root + ".away")
                os.mkdir(self.root)
            else:
                os.rename(self.root + ".away", self.root)

    def close(self) -> None:
        for reg in self.clients:
            reg.close()


@pytest.fixture(params=["file", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store shared with other tests (etcd: the session server) under a unique key prefix."""
    if request.param == "file":
        s = Store("file", f"file://{tmp_path}/reg?poll={POLL}", root=str(tmp_path / "reg"))
    else:
        server = request.getfixturevalue("etcd_server")
        s = Store("etcd", server.url + "?timeout=2", server=server)
    yield s
    s.close()


@pytest.fixture(params=["file", "etcd"])
def private_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store of this test alone, which the test may take down and bring back."""
    if request.param == "file":
        s = Store("file", f"file://{tmp_path}/reg?poll={POLL}", root=str(tmp_path / "reg"))
    else:
        server = request.getfixturevalue("etcd_factory")()
        s = Store("etcd", server.url + "?timeout=2", server=server)
    yield s
    s.close()
