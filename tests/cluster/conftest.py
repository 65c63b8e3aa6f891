"""Cluster tests run a real etcd (Debian's etcd-server) through the shared fixture."""

from tests.fixtures_etcd import etcd_factory, etcd_server  # noqa: F401  (fixtures)
