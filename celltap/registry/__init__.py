"""Registry client: one interface (put/get/prefix/delete, leases, prefix watches), two backends
(etcd://, file://), and a Membership helper that survives registry outages. See docs/registry.md."""

from celltap.registry.base import Lease, Registry, WatchCallback, WatchEvent, WatchHandle
from celltap.registry.errors import LeaseNotFound, RegistryConfigError, RegistryError, RegistryUnavailable
from celltap.registry.keys import KINDS, cluster_prefix, kind_prefix, member_key, template_key
from celltap.registry.membership import MemberSet, Membership, Registration
from celltap.registry.tls import TLSConfig
from celltap.registry.url import open_registry, parse_endpoints

__all__ = [
    "KINDS",
    "Lease",
    "LeaseNotFound",
    "MemberSet",
    "Membership",
    "Registration",
    "Registry",
    "RegistryConfigError",
    "RegistryError",
    "RegistryUnavailable",
    "TLSConfig",
    "WatchCallback",
    "WatchEvent",
    "WatchHandle",
    "cluster_prefix",
    "kind_prefix",
    "member_key",
    "open_registry",
    "parse_endpoints",
    "template_key",
]
