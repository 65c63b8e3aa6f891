"""Per-user accounting (DARTA): traffic mapped from IP addresses to users.

The mapping comes from a file (`users_file`: lines "ADDRESS[/PREFIX] USER", '#' comments) and/or
the registry (`/celltap/<cluster>/users/<address>` -> {"user": NAME}, watched by the node and
handed in through `set_registry_mapping`).  Traffic from a user's address counts as that user's
output, traffic to it as input; unmapped addresses count under "(unmapped)".
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from celltap.collector.apps.base import App, AppConfigError, register_kind
from celltap.collector.apps.columns import address_keys, directed_counters, key_address, key_text, sums_by_key

UNMAPPED = "(unmapped)"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_user_map(text: str, source: str = "users file") -> dict[Network, str]:
    """Parse 'ADDRESS[/PREFIX] USER' lines into {network: user}."""
    out: dict[Network, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise AppConfigError(f"{source}:{lineno}: expected 'ADDRESS[/PREFIX] USER', got {line!r}")
        try:
            out[ipaddress.ip_network(parts[0], strict=False)] = parts[1]
        except ValueError as exc:
            raise AppConfigError(f"{source}:{lineno}: {exc}") from exc
    return out


class UserMap:
    """Address -> user with longest-prefix match.

    IPv4 keys are matched in bulk: one masked `searchsorted` per prefix length in the mapping;
    IPv6 keys take a cached per-address path.
    """

    def __init__(self) -> None:
        self._static: dict[Network, str] = {}
        self._dynamic: dict[Network, str] = {}
        self._cache: dict[int, str] = {}
        self._lock = threading.Lock()
        self._compile()

    def _compile(self) -> None:
        merged = {**self._static, **self._dynamic}  # the registry wins for the same network
        names = [UNMAPPED, *sorted(set(merged.values()) - {UNMAPPED})]
        index = {n: i for i, n in enumerate(names)}
        by_len: dict[int, list[tuple[int, int]]] = {}
        for net, user in merged.items():
            if net.version == 4:
                by_len.setdefault(net.prefixlen, []).append((int(net.network_address), index[user]))
        tables = []
        for plen in sorted(by_len, reverse=True):
            rows = sorted(by_len[plen])
            mask = np.uint64((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
            nets = np.array([r[0] for r in rows], dtype=np.uint64)
            tables.append((mask, nets, np.array([r[1] for r in rows], dtype=np.int64)))
        self._compiled = (names, index, tables)
        self._cache = {}

    def set_static(self, mapping: dict[Network, str]) -> None:
        """Replace the file mapping."""
        with self._lock:
            self._static = dict(mapping)
            self._compile()

    def set_dynamic(self, mapping: dict[Network, str]) -> None:
        """Replace the registry mapping (it wins over the file for the same network)."""
        with self._lock:
            self._dynamic = dict(mapping)
            self._compile()

    def users_of(self, keys: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(user names, per-key index into them) for an array of address keys."""
        names, index, tables = self._compiled
        if keys.dtype != np.uint64:
            return names, np.array([index.get(self.lookup(int(k)), 0) for k in keys], dtype=np.int64)
        out = np.zeros(len(keys), dtype=np.int64)
        if not tables:
            return names, out
        open_ = (keys >> np.uint64(32)) == np.uint64(4)
        addr = keys & np.uint64(0xFFFFFFFF)
        for mask, nets, users in tables:  # longest prefix first
            masked = addr & mask
            pos = np.minimum(np.searchsorted(nets, masked), len(nets) - 1)
            hit = open_ & (nets[pos] == masked)
            out[hit] = users[pos[hit]]
            open_ &= ~hit
        return names, out

    def lookup(self, key: int) -> str:
        """User of one address key, longest prefix first."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        user = UNMAPPED
        addr = key_address(key)
        if addr is not None:
            best = -1
            with self._lock:
                tables = (self._static, self._dynamic)
            for table in tables:
                for net, name in table.items():
                    if net.version == addr.version and addr in net and net.prefixlen >= best:
                        best, user = net.prefixlen, name
        if len(self._cache) > 1_000_000:
            self._cache.clear()
        self._cache[key] = user
        return user


@register_kind
class UserAccountingApp(App):
    """Bytes and packets per user, out (as source) and in (as destination)."""

    kind = "user_accounting"
    allowed_keys = ("src", "dst", "flow")

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.users = UserMap()
        path = self.options.get("users_file")
        if path:
            try:
                with open(str(path), encoding="utf-8") as fh:
                    self.users.set_static(parse_user_map(fh.read(), str(path)))
            except OSError as exc:
                raise AppConfigError(f"apps.{name}.users_file: {exc}") from exc
        self.accounts: dict[str, list[int]] = {}  # user -> [bytes out, packets out, bytes in, packets in]

    def empty(self) -> App:
        """A fresh instance sharing this one's user mapping."""
        other = type(self)(self.name, {k: v for k, v in self.options.items() if k != "users_file"})
        other.users = self.users
        return other

    def _account(self, side: str, records: np.ndarray) -> None:
        names, idx = self.users.users_of(address_keys(records, side))
        fwd_b, rev_b, fwd_p, rev_p = directed_counters(records)
        # a source sent the forward direction and received the reverse one; a destination the opposite
        sent_b, recv_b, sent_p, recv_p = (
            (fwd_b, rev_b, fwd_p, rev_p) if side == "src" else (rev_b, fwd_b, rev_p, fwd_p)
        )
        users, sums = sums_by_key(idx, sent_b, sent_p, recv_b, recv_p)
        for u, *vals in zip(users, *sums, strict=True):
            t = self.accounts.setdefault(names[u], [0, 0, 0, 0])
            for i, v in enumerate(vals):
                t[i] += v

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Account the batch to the users of its source and destination addresses, both directions."""
        self._account("src", records)
        self._account("dst", records)

    def partial(self) -> dict[str, Any]:
        """{"accounts": {user: [bytes_out, packets_out, bytes_in, packets_in]}}."""
        return {"accounts": self.accounts}

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Add another node's accounts."""
        for user, vals in partial.get("accounts", {}).items():
            t = self.accounts.setdefault(user, [0, 0, 0, 0])
            for i in range(4):
                t[i] += vals[i]

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Users ordered by total bytes (or packets)."""
        by = str(params.get("by", "bytes"))
        if by not in ("bytes", "packets"):
            raise ValueError(f"by must be bytes or packets, not {by!r}")
        i = 0 if by == "bytes" else 1
        n = int(params.get("n", 10))
        rows = sorted(self.accounts.items(), key=lambda kv: (-(kv[1][i] + kv[1][i + 2]), kv[0]))
        return {
            "app": self.name, "by": by,
            "top": [{"user": u, "bytes_out": v[0], "packets_out": v[1], "bytes_in": v[2], "packets_in": v[3]}
                    for u, v in rows[: n if n > 0 else None]],
        }  # fmt: skip

    def size(self) -> int:
        """Users held."""
        return len(self.accounts)


__all__ = ["UNMAPPED", "UserAccountingApp", "UserMap", "key_text", "parse_user_map"]
