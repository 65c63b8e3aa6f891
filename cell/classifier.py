"""SF-TAP flow classification: regexes on the first bytes of each direction, port lists, nice priority.

Rules are tried in order of `nice` (lower first); inside one nice level, regex rules come before
port-only rules, then file order (SF-TAP's LRU reordering is not reproduced: results stay repeatable).
A regex rule matches when its `up` pattern matches the first bytes of one direction and its `down`
pattern those of the other (either orientation), and its `port` list (if any) contains either port.
A rule without regexes matches on ports alone. Nothing matches -> the protocol's default interface.
"""

from __future__ import annotations

from cell.events import MATCH_DOWN, MATCH_NONE, MATCH_UP
from cell.sftap_config import CellConfig, Rule


class Classifier:
    """Rule lists per protocol, in evaluation order."""

    def __init__(self, cfg: CellConfig) -> None:
        self.tcp = cfg.rules_for("tcp")
        self.udp = cfg.rules_for("udp")
        self.tcp_default = cfg.special.get("tcp_default")
        self.udp_default = cfg.special.get("udp_default")
        self.counts: dict[str, int] = {}

    def _count(self, rule: Rule | None) -> None:
        name = rule.name if rule is not None else "unclassified"
        self.counts[name] = self.counts.get(name, 0) + 1

    def classify_tcp(self, head1: bytes, head2: bytes, port1: int,
                     port2: int) -> tuple[Rule | None, int, int]:
        """(rule, match of endpoint 1's data, match of endpoint 2's data); rule None: nowhere to go."""
        for rule in self.tcp:
            if not rule.port_match(port1, port2):
                continue
            if not rule.has_regex:
                self._count(rule)
                return rule, MATCH_NONE, MATCH_NONE
            up, down = rule.up, rule.down
            if (up is None or up.match(head1)) and (down is None or down.match(head2)):
                self._count(rule)
                return rule, MATCH_UP, MATCH_DOWN
            if (up is None or up.match(head2)) and (down is None or down.match(head1)):
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
