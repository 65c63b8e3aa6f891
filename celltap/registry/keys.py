"""The registry key layout fixed by DESIGN.md: /celltap/<cluster>/<kind>/<id>."""

from __future__ import annotations

ROOT = "/celltap"
KINDS = ("cells", "nodes", "collectors", "incubators")


def _part(name: str, value: str | int) -> str:
    text = str(value)
    if not text or "/" in text:
        raise ValueError(f"registry key part {name}={text!r} must be non-empty and contain no '/'")
    return text


def cluster_prefix(cluster: str) -> str:
    """Prefix of everything a cluster stores."""
    return f"{ROOT}/{_part('cluster', cluster)}/"


def kind_prefix(cluster: str, kind: str) -> str:
    """Prefix under which all members of one kind (cells, nodes, ...) register."""
    return f"{cluster_prefix(cluster)}{_part('kind', kind)}/"


def member_key(cluster: str, kind: str, member_id: str) -> str:
    """Key of one member: /celltap/<cluster>/<kind>/<id>."""
    return kind_prefix(cluster, kind) + _part("id", member_id)


def template_key(cluster: str, exporter: str, odid: int, template_id: int) -> str:
    """Key of one IPFIX template shared by all collectors."""
    return (
        f"{cluster_prefix(cluster)}templates/{_part('exporter', exporter)}/"
        f"{_part('odid', odid)}/{_part('template_id', template_id)}"
    )
