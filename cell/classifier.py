"""SF-TAP flow classification: regexes on the first bytes of each direction, port lists, nice priority.

Rules are tried in order of `nice` (lower first); inside one nice level, regex rules come before
port-only rules, then file order (SF-TAP's LRU reordering is not reproduced: results stay repeatable).
A regex rule matches when its `up` pattern is found in the first bytes of one direction and its `down`
pattern in those of the other (either orientation), and its `port` list (if any) contains either port;
"found" is SF-TAP's RE2::PartialMatch, an unanchored search (cell/rule_regex.py), so a rule anchors
itself with `^`. A rule without regexes matches on ports alone. Nothing matches -> the protocol's
default interface.

Before a regex runs, the first byte of the data is checked against the bytes a match can begin with
(RulePattern.first: RE2's own possible-match range for patterns anchored with `^`, None otherwise), and
both sides' checks run before either regex: most rules are ruled out without a call into RE2.
"""

from __future__ import annotations

from celltap.cell.events import MATCH_DOWN, MATCH_NONE, MATCH_UP
from celltap.cell.rule_regex import RulePattern
from celltap.cell.sftap_config import CellConfig, Rule


def _search(p: RulePattern | None):
    return None if p is None else p.search


def _first(p: RulePattern | None) -> frozenset[int] | None:
    return None if p is None else p.first


class Classifier:
    """Rule lists per protocol, in evaluation order."""

    def __init__(self, cfg: CellConfig) -> None:
        self.tcp = cfg.rules_for("tcp")
        self.udp = cfg.rules_for("udp")
        self.tcp_default = cfg.special.get("tcp_default")
        self.udp_default = cfg.special.get("udp_default")
        self.counts: dict[str, int] = {}
        # per rule, once: (rule, up search, down search, up first bytes, down first bytes)
        self._tcp = [(r, _search(r.up), _search(r.down), _first(r.up), _first(r.down)) for r in self.tcp]

    def _count(self, rule: Rule | None) -> None:
        name = rule.name if rule is not None else "unclassified"
        self.counts[name] = self.counts.get(name, 0) + 1

    def classify_tcp(
        self, head1: bytes, head2: bytes, port1: int, port2: int
    ) -> tuple[Rule | None, int, int]:
        """(rule, match of endpoint 1's data, match of endpoint 2's data); rule None: nowhere to go."""
        b1 = head1[0] if head1 else -1
        b2 = head2[0] if head2 else -1
        for rule, up, down, fu, fd in self._tcp:
            if rule.ports and not rule.port_match(port1, port2):
                continue
            if up is None and down is None:
                self._count(rule)
                return rule, MATCH_NONE, MATCH_NONE
            # orientation 1: endpoint 1 sent the "up" bytes. The first-byte tests of both sides run
            # before either regex (fu / fd are None when any first byte may match), so a side that has
            # not spoken rules an orientation out without a regex run.
            if (
                (fu is None or b1 in fu)
                and (fd is None or b2 in fd)
                and (up is None or up(head1))
                and (down is None or down(head2))
            ):
                self._count(rule)
                return rule, MATCH_UP, MATCH_DOWN
            if (
                (fu is None or b2 in fu)
                and (fd is None or b1 in fd)
                and (up is None or up(head2))
                and (down is None or down(head1))
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
            if rule.up is not None and rule.up.search(first):
                self._count(rule)
                return (rule, MATCH_UP, MATCH_DOWN) if sender == 1 else (rule, MATCH_DOWN, MATCH_UP)
            if rule.up is None and rule.down is not None and rule.down.search(first):
                self._count(rule)
                return (rule, MATCH_DOWN, MATCH_UP) if sender == 1 else (rule, MATCH_UP, MATCH_DOWN)
        self._count(self.udp_default)
        return self.udp_default, MATCH_NONE, MATCH_NONE
