"""`open_registry(url)`: the one place registry URLs are parsed.

file:///var/lib/celltap/registry[?poll=0.2]
etcd://host:2379[,host2:2379][?timeout=5]
etcds://host:2379[,...]?ca=/ca.pem[&cert=/c.pem&key=/c.key][&server_name=etcd.internal]
etcd://user:password@host:2379   or   ?user=NAME&password_file=/run/secrets/etcd
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from celltap.registry.base import Registry
from celltap.registry.errors import RegistryConfigError
from celltap.registry.tls import TLSConfig

_ETCD_QUERY = {"ca", "cert", "key", "server_name", "timeout", "user", "password_file"}


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def parse_endpoints(netloc: str, default_port: int = 2379) -> list[tuple[str, int]]:
    """'h1:2379,h2,[::1]:2379' -> [(host, port), ...]."""
    out: list[tuple[str, int]] = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif part.count(":") == 1:
            host, port_text = part.split(":")
        else:
            host, port_text = part, ""
        try:
            port = int(port_text) if port_text else default_port
        except ValueError as exc:
            raise RegistryConfigError(f"registry url: bad port in endpoint {part!r}") from exc
        if not host or not 0 < port < 65536:
            raise RegistryConfigError(f"registry url: bad endpoint {part!r}")
        out.append((host, port))
    if not out:
        raise RegistryConfigError("registry url: no etcd endpoint given")
    return out


def _positive(query: dict[str, list[str]], name: str, url: str) -> float | None:
    text = _single(query, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise RegistryConfigError(f"registry url {url!r}: {name} must be seconds in (0, 3600], got {text!r}")
    return value


def check_url(url: str) -> None:
    """Check a registry URL without opening it (RegistryConfigError naming what is wrong)."""
    parts = urlsplit(str(url))
    query = parse_qs(parts.query)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise RegistryConfigError(f"registry url {url!r}: file URLs take an absolute path (file:///path)")
        if not parts.path:
            raise RegistryConfigError(f"registry url {url!r}: missing directory path")
        unknown = set(query) - {"poll"}
        if unknown:
            raise RegistryConfigError(f"registry url {url!r}: unknown option(s) {', '.join(sorted(unknown))}")
        _positive(query, "poll", url)
    elif parts.scheme in ("etcd", "etcds"):
        unknown = set(query) - _ETCD_QUERY
        if unknown:
            raise RegistryConfigError(f"registry url {url!r}: unknown option(s) {', '.join(sorted(unknown))}")
        parse_endpoints(parts.netloc.rpartition("@")[2])
        _positive(query, "timeout", url)
    else:
        raise RegistryConfigError(f"registry url {url!r}: scheme must be file://, etcd:// or etcds://")


def open_registry(url: str, tls: TLSConfig | None = None) -> Registry:
    """Open a registry from its URL; `tls` (from the config's tls section) overrides URL TLS options."""
    check_url(url)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise RegistryConfigError(f"registry url {url!r}: file URLs take an absolute path (file:///path)")
        if not parts.path:
            raise RegistryConfigError(f"registry url {url!r}: missing directory path")
        unknown = set(query) - {"poll"}
        if unknown:
            raise RegistryConfigError(f"registry url {url!r}: unknown option(s) {', '.join(sorted(unknown))}")
        from celltap.registry.file_backend import FileRegistry

        poll = float(_single(query, "poll") or 0.2)
        return FileRegistry(unquote(parts.path), poll_interval=poll)

    if parts.scheme in ("etcd", "etcds"):
        unknown = set(query) - _ETCD_QUERY
        if unknown:
            raise RegistryConfigError(f"registry url {url!r}: unknown option(s) {', '.join(sorted(unknown))}")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        endpoints = parse_endpoints(hosts)
        user = password = None
        if userinfo:
            user_text, _, password_text = userinfo.partition(":")
            user, password = unquote(user_text), unquote(password_text)
        user = _single(query, "user") or user
        password_file = _single(query, "password_file")
        if password_file:
            try:
                with open(password_file, encoding="utf-8") as fh:
                    password = fh.read().strip()
            except OSError as exc:
                raise RegistryConfigError(f"registry url: cannot read password_file: {exc}") from exc
        if (user is None) != (password is None) or (user is not None and not password):
            raise RegistryConfigError(f"registry url {url!r}: etcd auth needs both user and password")
        if tls is None and any(_single(query, k) for k in ("ca", "cert", "key", "server_name")):
            tls = TLSConfig(
                ca=_single(query, "ca"),
                cert=_single(query, "cert"),
                key=_single(query, "key"),
                server_name=_single(query, "server_name"),
            )
        if parts.scheme == "etcds" and tls is None:
            tls = TLSConfig()  # server verified against the system trust store
        if parts.scheme == "etcd" and tls is not None and tls.ca is None and not tls.mutual:
            tls = None  # an empty tls section on a plain etcd:// URL means no TLS
        timeout = float(_single(query, "timeout") or 5.0)
        from celltap.registry.etcd_backend import EtcdRegistry

        return EtcdRegistry(endpoints, tls=tls, user=user, password=password, timeout=timeout)

    raise RegistryConfigError(f"registry url {url!r}: scheme must be file://, etcd:// or etcds://")
