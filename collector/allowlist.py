"""Exporter allow-list: addresses and networks whose exports are accepted."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class AllowList:
    """Accept an exporter if its address is in one of the networks (an empty list accepts all)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries]
        self._cache: dict[str, bool] = {}

    def allowed(self, exporter: str) -> bool:
        """True if exports from this address are accepted (answers are cached per address)."""
        hit = self._cache.get(exporter)
        if hit is not None:
            return hit
        if not self.networks:
            ok = True
        else:
            try:
                addr = ipaddress.ip_address(exporter)
            except ValueError:
                ok = False
            else:
                ok = any(addr in n for n in self.networks)
        if len(self._cache) > 65536:
            self._cache.clear()  # spoofed sources must not grow memory without bound
        self._cache[exporter] = ok
        return ok
