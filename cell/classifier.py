"""SF-TAP flow classification: regexes on the first bytes of each direction, port lists, nice priority.

Rules are tried in order of `nice` (lower first); inside one nice level, regex rules come before
port-only rules, then file order (SF-TAP's LRU reordering is not reproduced: results stay repeatable).
A regex rule matches when its `up` pattern matches the first bytes of one direction and its `down`
pattern those of the other (either orientation), and its `port` list (if any) contains either port.
A rule without regexes matches on ports alone. Nothing matches -> the protocol's default interface.
"""

from __future__ import annotations

import re
import re._constants as sc
import re._parser as sp

from cell.events import MATCH_DOWN, MATCH_NONE, MATCH_UP
from cell.sftap_config import CellConfig, Rule

ANY = frozenset(range(256))


def _first(items: list) -> frozenset[int] | None:
    """Bytes a parsed pattern can start with; None when it may match the empty string."""
    out: set[int] = set()
    for op, av in items:
        if op is sc.AT:
            continue  # ^ and other anchors consume nothing
        if op is sc.LITERAL:
            return frozenset(out | {av})
        if op is sc.IN:
            got: set[int] = set()
            for iop, iav in av:
                if iop is sc.LITERAL:
                    got.add(iav)
                elif iop is sc.RANGE:
                    got.update(range(iav[0], iav[1] + 1))
                else:
                    return ANY  # negation, categories: do not try to be clever
            return frozenset(out | got)
        if op is sc.SUBPATTERN:
            sub = _first(list(av[3]))
            if sub is None:
                return None
            return frozenset(out | sub)
        if op is sc.BRANCH:
            for alt in av[1]:
                sub = _first(list(alt))
                if sub is None:
                    return None
                out |= sub
            return frozenset(out)
        if op in (sc.MAX_REPEAT, sc.MIN_REPEAT, sc.POSSESSIVE_REPEAT):
            lo, _hi, item = av
            sub = _first(list(item))
            if sub is None or lo == 0:
                return None
            return frozenset(out | sub)
        return ANY
    return None


def first_bytes(pattern: re.Pattern[bytes] | None) -> frozenset[int] | None:
    """The set of first bytes any match of `pattern` (used with .match) begins with; None = unknown/any."""
    if pattern is None:
        return None
    try:
        got = _first(list(sp.parse(pattern.pattern, pattern.flags)))
    except Exception:  # a prefilter must never reject a valid rule
        return None
    return None if got is None or got == ANY else got


def _may(pattern: re.Pattern[bytes] | None, first: frozenset[int] | None, data: bytes) -> bool:
    if pattern is None:
        return True
    if first is not None and (not data or data[0] not in first):
        return False
    return pattern.match(data) is not None


class Classifier:
    """Rule lists per protocol, in evaluation order."""

    def __init__(self, cfg: CellConfig) -> None:
        self.tcp = cfg.rules_for("tcp")
        self.udp = cfg.rules_for("udp")
        self.tcp_default = cfg.special.get("tcp_default")
        self.udp_default = cfg.special.get("udp_default")
        self.counts: dict[str, int] = {}
        # SF-TAP caches rules by first byte; here: each regex's possible first bytes, computed once
        self.first = {id(r): (first_bytes(r.up), first_bytes(r.down)) for r in (*self.tcp, *self.udp)}

    def _count(self, rule: Rule | None) -> None:
        name = rule.name if rule is not None else "unclassified"
        self.counts[name] = self.counts.get(name, 0) + 1

    def classify_tcp(
        self, head1: bytes, head2: bytes, port1: int, port2: int
    ) -> tuple[Rule | None, int, int]:
        """(rule, match of endpoint 1's data, match of endpoint 2's data); rule None: nowhere to go."""
        b1 = head1[0] if head1 else -1
        b2 = head2[0] if head2 else -1
        first = self.first
        for rule in self.tcp:
            if rule.ports and not rule.port_match(port1, port2):
                continue
            if not rule.has_regex:
                self._count(rule)
                return rule, MATCH_NONE, MATCH_NONE
            up, down = rule.up, rule.down
            fu, fd = first[id(rule)]
            # orientation 1: endpoint 1 sent the "up" bytes. The first-byte tests of both sides run
            # before either regex (fu / fd are None when there is no regex), so a side that has not
            # spoken rules an orientation out without a regex run.
            if (
                (fu is None or b1 in fu)
                and (fd is None or b2 in fd)
                and (up is None or up.match(head1))
                and (down is None or down.match(head2))
            ):
                self._count(rule)
                return rule, MATCH_UP, MATCH_DOWN
            if (
                (fu is None or b2 in fu)
                and (fd is None or b1 in fd)
                and (up is None or up.match(head2))
                and (down is None or down.match(head1))
            ):
                self._count(rule)
                return rule, MATCH_DOWN, MATCH_UP
        self._count(self.tcp_default)
        return self.tcp_default, MATCH_NONE, MATCH_NONE

    def classify_udp(self, first: bytes, sender: int, port1: int, port2: int) -> tuple[Rule | None, int, int]:
        """Classify a UDP flow on its first datagram (sent by endpoint `sender`)."""
        for rule in self.udp:
            if not rule.port_match(port1, port2):
                continue
            if not rule.has_regex:
                self._count(rule)
                return rule, MATCH_NONE, MATCH_NONE
            if rule.up is not None and rule.up.match(first):
                self._count(rule)
                return (rule, MATCH_UP, MATCH_DOWN) if sender == 1 else (rule, MATCH_DOWN, MATCH_UP)
            if rule.up is None and rule.down is not None and rule.down.match(first):
                self._count(rule)
                return (rule, MATCH_DOWN, MATCH_UP) if sender == 1 else (rule, MATCH_UP, MATCH_DOWN)
        self._count(self.udp_default)
        return self.udp_default, MATCH_NONE, MATCH_NONE
