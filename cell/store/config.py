"""The `store:` section of a cell's configuration (opt-in: without it the cell keeps no packets).

```
store:
  dir: /var/lib/celltap/store     # required
  file_bytes: 67108864            # rotate when the open file reaches this size (64 MiB)
  file_seconds: 60                # ... or when it has been open this long
  max_bytes: 1073741824           # retention: capture files + indexes on disk, oldest removed first
  max_age: 86400                  # retention: files closed longer ago than this are removed (0: no limit)
  queue_bytes: 67108864           # frames waiting for the writer thread; beyond it, frames are dropped
  listen: 0.0.0.0:9700            # serve retrieval over HTTP (optional)
  token_file: /etc/celltap/store-token   # bearer token the HTTP endpoint requires
  tls: {cert: tls.crt, key: tls.key, ca: ca.crt}   # HTTPS; with `ca`, clients need a certificate it signed
                                  # (listen needs token_file, or tls with ca, or both)
  advertise: http://10.1.2.3:9700 # what the registry tells clients (default: from listen)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celltap.registry.tls import TLSConfig

STORE_KEYS = (
    "dir", "file_bytes", "file_seconds", "max_bytes", "max_age", "queue_bytes", "listen", "token_file",
    "advertise", "tls",
)  # fmt: skip
MAX_FILE_BYTES = (1 << 32) - 1  # index offsets are 32-bit


class StoreConfigError(ValueError):
    """A bad `store` section; the message names the key."""


@dataclass
class StoreConfig:
    """Where and how much a cell stores."""

    dir: str
    file_bytes: int = 64 << 20
    file_seconds: float = 60.0
    max_bytes: int = 1 << 30
    max_age: float = 86400.0
    queue_bytes: int = 64 << 20
    listen: str | None = None
    token_file: str | None = None
    advertise: str | None = None
    tls: TLSConfig | None = None  # server certificate; `ca`: client certificates required (mutual TLS)


def _num(value: Any, where: str, lo: float, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise StoreConfigError(f"{where}: expected a number, got {value!r}")
    try:
        x = int(value) if integer else float(value)
    except ValueError:
        raise StoreConfigError(
            f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}"
        ) from None
    if x < lo:
        raise StoreConfigError(f"{where}: must be at least {lo}, got {x}")
    return x


def parse_store(section: Any) -> StoreConfig:
    """Validate the `store` section."""
    if not isinstance(section, dict):
        raise StoreConfigError("store: expected a map of keys")
    for key in section:
        if key not in STORE_KEYS:
            raise StoreConfigError(f"store.{key}: unknown key (known: {', '.join(STORE_KEYS)})")
    if not section.get("dir"):
        raise StoreConfigError("store.dir: missing (the directory the capture files go to)")
    cfg = StoreConfig(dir=str(section["dir"]))
    for key in ("file_bytes", "max_bytes", "queue_bytes"):
        if key in section:
            setattr(cfg, key, int(_num(section[key], f"store.{key}", 65536, True)))
    for key in ("file_seconds", "max_age"):
        if key in section:
            setattr(
                cfg, key, float(_num(section[key], f"store.{key}", 0 if key == "max_age" else 0.1, False))
            )
    for key in ("listen", "token_file", "advertise"):
        if section.get(key) is not None:
            setattr(cfg, key, str(section[key]))
    if section.get("tls"):
        if not isinstance(section["tls"], dict):
            raise StoreConfigError("store.tls: expected a map of cert, key, ca")
        try:
            cfg.tls = TLSConfig.from_mapping(section["tls"])
        except ValueError as exc:
            raise StoreConfigError(f"store.{exc}") from None
        if cfg.tls is not None and cfg.tls.cert is None:
            raise StoreConfigError("store.tls: the endpoint needs 'cert' and 'key'")
    check_store(cfg)
    return cfg


def check_store(cfg: StoreConfig) -> None:
    """Cross-key rules (also applied to command-line overrides)."""
    if cfg.file_bytes > MAX_FILE_BYTES:
        raise StoreConfigError(f"store.file_bytes: at most {MAX_FILE_BYTES} (32-bit index offsets)")
    if cfg.max_bytes < 2 * cfg.file_bytes:
        raise StoreConfigError(
            f"store.max_bytes: must be at least twice file_bytes ({2 * cfg.file_bytes}), got {cfg.max_bytes}"
        )
    if cfg.listen and not cfg.token_file and not (cfg.tls and cfg.tls.ca):
        raise StoreConfigError(
            "store.token_file: required with store.listen (the endpoint needs a token, or tls with a ca)"
        )
    if cfg.listen:
        _host, sep, port = cfg.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise StoreConfigError(f"store.listen: expected HOST:PORT, got {cfg.listen!r}")
