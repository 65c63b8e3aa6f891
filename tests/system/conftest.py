"""System tests use the shared etcd fixture (Debian's etcd-server) for `celltap up` on etcd://."""

from tests.fixtures_etcd import etcd_server  # noqa: F401  (fixture)
