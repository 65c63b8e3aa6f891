"""Where the incubator learns its cells: a static list from the config, or the registry."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celltap.incubator.engine import CellSpec

log = logging.getLogger("celltap.incubator")


class StaticCells:
    """A fixed set of cells from the config file."""

    def __init__(self, cells: list[dict[str, Any]]) -> None:
        self.cells = {c["id"]: CellSpec(c["id"], c["output"], int(c.get("weight", 1))) for c in cells}
        self.changed = threading.Event()
        self.changed.set()

    def current(self) -> dict[str, CellSpec]:
        """The cells now."""
        self.changed.clear()
        return dict(self.cells)

    def close(self) -> None:
        """Nothing to release."""


def cells_from_members(members: dict[str, dict[str, Any]], output_key: str = "input") -> dict[str, CellSpec]:
    """Cell specs from registry values {"id", "input", "weight"}; malformed ones are logged and skipped."""
    out: dict[str, CellSpec] = {}
    for cid, value in members.items():
        spec = value.get(output_key)
        weight = value.get("weight", 1)
        if not isinstance(spec, str) or not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            log.warning("cell %s in the registry has no usable %r / weight; left out", cid, output_key)
            continue
        out[cid] = CellSpec(cid, spec, weight)
    return out


class RegistryCells:
    """Cells watched under /celltap/<cluster>/cells/; the last snapshot survives registry outages."""

    def __init__(
        self,
        url: str,
        cluster: str = "default",
        output_key: str = "input",
        register_as: tuple[str, dict[str, Any]] | None = None,
        ttl: float = 10.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        from celltap.registry import Membership, open_registry

        self.registry = open_registry(url)
        self.membership = Membership(self.registry, cluster, ttl=ttl)
        self.output_key = output_key
        self.changed = threading.Event()
        self._on_change = on_change
        self.members = self.membership.watch("cells", self._changed)
        if register_as is not None:
            self.membership.register("incubators", register_as[0], register_as[1])
        self.members.wait_synced(timeout=5)
        self.changed.set()

    def _changed(self, _members: dict[str, dict[str, Any]]) -> None:
        self.changed.set()
        if self._on_change is not None:
            self._on_change()

    def current(self) -> dict[str, CellSpec]:
        """The cells now (as last seen if the registry is unreachable)."""
        self.changed.clear()
        return cells_from_members(self.members.members(), self.output_key)

    def close(self) -> None:
        """Withdraw our registration and stop watching."""
        self.membership.close()
        close = getattr(self.registry, "close", None)
        if close is not None:
            close()
