"""Argument types with a stated range, so a bad flag value is one argparse error line naming the flag.

`bounded(int, 1, 64)` checks `--workers`; the range is kept on the type (`lo`, `hi`) so the tests can
walk every subcommand's flags and try values just outside it. Every numeric flag of `celltap` uses
one of these (a test fails on a bare `type=int`).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit


class Bounded:
    """An argparse type: a number of `kind` within [lo, hi] (either end may be open: None)."""

    def __init__(
        self, kind: Callable[[str], float], lo: float | None = None, hi: float | None = None
    ) -> None:
        self.kind = kind
        self.lo = lo
        self.hi = hi
        self.__name__ = kind.__name__  # argparse names the type in its messages

    def __call__(self, text: str) -> float:
        word = "an integer" if self.kind is int else "a number"
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {word}{self._range()}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number{self._range()}, got {text!r}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise argparse.ArgumentTypeError(f"must be {word}{self._range()}, got {text}")
        return value

    def _range(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f" in {self.lo}..{self.hi}"
        if self.lo is not None:
            return f" >= {self.lo}"
        if self.hi is not None:
            return f" <= {self.hi}"
        return ""

    def __repr__(self) -> str:
        return f"bounded({self.kind.__name__}, {self.lo}, {self.hi})"


def bounded(kind: Callable[[str], float], lo: float | None = None, hi: float | None = None) -> Bounded:
    """A number type for argparse within [lo, hi]."""
    return Bounded(kind, lo, hi)


PORT = bounded(int, 0, 65535)  # 0: let the kernel choose
SEED = bounded(int, 0, 2**64 - 1)
SECONDS = bounded(float, 0, 10**7)  # about 115 days: longer is a typo, not a plan
COUNT = bounded(int, 0, 2**40)


def endpoint_url(
    *schemes: str, default_port: int | None = None, query: tuple[str, ...] = (), need_host: bool = True
) -> Callable:
    """An argparse type for SCHEME://HOST:PORT (a port in range, a host unless the listener has a
    default address, only the named ?options)."""

    def parse(text: str) -> str:
        u = urlsplit(text)
        want = " or ".join(f"{s}://HOST:PORT" for s in schemes)
        if u.scheme not in schemes or (need_host and not u.hostname):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        try:
            port = u.port if u.port is not None else default_port
        except ValueError:
            port = None
        if port is None:
            raise argparse.ArgumentTypeError(f"expected {want} with a port in 0..65535, got {text!r}")
        unknown = set(parse_qs(u.query)) - set(query)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown option(s) {', '.join(sorted(unknown))} in {text!r}")
        return text

    parse.__name__ = "URL"
    return parse


def ipv4_address(text: str) -> str:
    """An argparse type for a dotted IPv4 address."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IPv4 address, got {text!r}") from None


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), pointing at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print `PROG: MESSAGE (see PROG --help)` and exit with status 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")
