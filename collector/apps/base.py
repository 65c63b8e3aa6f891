"""The plugin interface of analysis apps, and the registry of app kinds.

An app declares its partition key, is updated with record batches (numpy structured arrays with
IANA column names), exports its state as a JSON-able *partial*, absorbs partials of other nodes,
and answers queries from a merged state.  A cluster-wide query is: every node's partial, absorbed
into one fresh instance, then `answer`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from celltap.collector.routing import PARTITION_KEYS


class AppConfigError(ValueError):
    """An app section of a node config is invalid; the message names the key."""


class App(ABC):
    """One analysis app instance; `options` come from the node config's `apps` entry."""

    kind: ClassVar[str]
    default_key: ClassVar[str] = "src"
    allowed_keys: ClassVar[tuple[str, ...]] = PARTITION_KEYS

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.options = dict(options or {})
        self.key = str(self.options.get("key", self.default_key))
        if self.key not in self.allowed_keys:
            raise AppConfigError(
                f"apps.{name}.key: {self.key!r} is not one of {', '.join(self.allowed_keys)}"
            )

    def empty(self) -> App:
        """A fresh instance with the same configuration (for shadow state and query merges)."""
        return type(self)(self.name, self.options)

    @abstractmethod
    def update(self, records: np.ndarray, exporter: str) -> None:
        """Account one batch of records (all of whose partition keys this instance owns)."""

    @abstractmethod
    def partial(self) -> dict[str, Any]:
        """The mergeable state as JSON-able data."""

    @abstractmethod
    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Merge another instance's `partial()` into this state."""

    @abstractmethod
    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The query answer over this (merged) state."""

    @abstractmethod
    def size(self) -> int:
        """Number of entries held (for the state-size metric)."""

    def describe(self) -> dict[str, Any]:
        """Kind, key and options, as nodes advertise them in the registry."""
        return {"name": self.name, "kind": self.kind, "key": self.key, "options": self.options}


_KINDS: dict[str, type[App]] = {}


def register_kind(cls: type[App]) -> type[App]:
    """Class decorator adding an app kind to the registry."""
    _KINDS[cls.kind] = cls
    return cls


def app_kinds() -> dict[str, type[App]]:
    """All built-in app kinds by name."""
    import celltap.collector.apps.appmix
    import celltap.collector.apps.matrix
    import celltap.collector.apps.portscan
    import celltap.collector.apps.synflood
    import celltap.collector.apps.toptalkers
    import celltap.collector.apps.users
    import celltap.collector.apps.volume  # noqa: F401

    return dict(_KINDS)


def make_app(name: str, spec: Mapping[str, Any]) -> App:
    """Build an app from its config entry {kind: ..., key: ..., other options}."""
    kinds = app_kinds()
    kind = spec.get("kind", name)
    cls = kinds.get(str(kind))
    if cls is None:
        raise AppConfigError(
            f"apps.{name}.kind: unknown app kind {kind!r}; one of {', '.join(sorted(kinds))}"
        )
    options = {k: v for k, v in spec.items() if k != "kind"}
    return cls(name, options)


def merge_partials(describe: Mapping[str, Any], partials: list[Mapping[str, Any]]) -> App:
    """One instance holding the merge of every node's partial (for a cluster-wide answer)."""
    app = make_app(str(describe["name"]), {"kind": describe["kind"], **dict(describe.get("options") or {})})
    for p in partials:
        app.absorb(p)
    return app
