"""The cell's flow table: one Flow per (canonical key, hop), and a timer wheel for idle timeouts.

The garbage collector never scans the whole table: flows sit in one-second buckets keyed by their
earliest possible expiry; a due bucket is checked flow by flow (a flow touched since is re-bucketed,
an idle one expires), at most `budget` flows per call, so one call is bounded however big the table.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from celltap.cell.events import WireId
from celltap.cell.tcp_state import conn_state

if TYPE_CHECKING:
    from celltap.cell.tcp_reassembly import OooBuffer

LINGER_NS = 2_000_000_000  # closed TCP flows absorb trailing ACKs / FIN retransmissions this long

# IPFIX flowEndReason (IANA IE 136)
END_IDLE, END_DETECTED, END_FORCED, END_RESOURCES = 1, 3, 4, 5


class Flow:
    """One flow: identity, counters, classification and (for TCP) both directions' stream state."""

    __slots__ = (
        "addr1",
        "addr2",
        "closed1",
        "closed2",
        "created",
        "dead",
        "end_ns",
        "end_reason",
        "ended",
        "fin1",
        "fin2",
        "hash",
        "hbits",
        "hcount",
        "head1",
        "head2",
        "held",
        "history",
        "hop",
        "inner_vlan",
        "ipfix_end",
        "key",
        "l3",
        "l4",
        "last_ns",
        "match1",
        "match2",
        "missed_bytes",
        "nxt1",
        "nxt2",
        "octets1",
        "octets2",
        "ooo1",
        "ooo2",
        "ooo_bytes",
        "orig",
        "payload1",
        "payload2",
        "pending",
        "pkts1",
        "pkts2",
        "port1",
        "port2",
        "rsts",
        "rule",
        "sink",
        "start_ns",
        "syns",
        "tstate",
        "vlan",
        "wire",
    )

    def __init__(
        self,
        key: int,
        fhash: int,
        l3: int,
        l4: int,
        addr1: bytes,
        port1: int,
        addr2: bytes,
        port2: int,
        hop: int,
        ts_ns: int,
    ) -> None:
        self.key = key
        self.hash = fhash
        self.l3 = l3
        self.l4 = l4
        self.addr1 = addr1
        self.addr2 = addr2
        self.port1 = port1
        self.port2 = port2
        self.hop = hop
        self.start_ns = ts_ns
        self.last_ns = ts_ns
        self.end_ns = ts_ns
        self.pkts1 = self.pkts2 = self.octets1 = self.octets2 = 0
        self.orig = 1  # the originator endpoint (1 or 2): see cell/tcp_state.py
        self.rule = None  # the classification Rule once decided
        self.sink = None  # the interface socket the flow's events go to
        self.match1 = self.match2 = 2
        self.created = False  # CREATED event emitted
        self.dead = False
        self.ended = False  # stream closed (DESTROYED sent); the flow may linger for trailing packets
        self.ipfix_end = 0
        self.end_reason = 0
        self.pending: list | None = None  # (sender, data, ts_ns) delivered before classification
        self.head1 = b""
        self.head2 = b""
        self.held = 0  # stream bytes held back until the flow is classified
        self.nxt1 = self.nxt2 = -1
        self.fin1 = self.fin2 = -1
        self.closed1 = self.closed2 = False
        self.ooo1: OooBuffer | None = None  # out-of-order bytes per direction (None: nothing buffered)
        self.ooo2: OooBuffer | None = None
        self.ooo_bytes = 0
        self.wire: WireId | None = None
        # Zeek-style connection history (cell/tcp_state.py)
        self.history = ""
        self.hbits = 0  # once-letters written, payload sent (per endpoint)
        self.tstate = 0  # both endpoints' TCP states and previous states, 4 bits each
        self.syns = 0  # last SYN sequence number of each endpoint (32 bits each; hbits says which are set)
        self.rsts = 0  # last RST sequence number of each endpoint (likewise)
        self.hcount: list[int] | None = None  # retransmissions, gaps, zero windows per endpoint
        self.missed_bytes = 0  # stream bytes skipped in holes, both directions
        self.payload1 = self.payload2 = 0  # datagram payload bytes each way (UDP/ICMP; TCP: by sequence)
        self.vlan = self.inner_vlan = 0  # 802.1Q tags of the flow's first packet (0: none)

    @property
    def init_dir(self) -> int:
        """The originator endpoint (older name of `orig`)."""
        return self.orig

    @init_dir.setter
    def init_dir(self, d: int) -> None:
        self.orig = d

    def conn_state(self) -> str:
        """Zeek's conn_state (S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR, OTH)."""
        return conn_state(self)

    def wire_id(self) -> WireId:
        """The flow's precomputed event-header pieces (built on first use)."""
        w = self.wire
        if w is None:
            fmt = self.sink.fmt if self.sink is not None else "text"
            w = self.wire = WireId(
                self.l3, self.l4, self.addr1, self.port1, self.addr2, self.port2, self.hop, fmt
            )
        return w


class FlowTable:
    """Live flows by key, with idle-timeout buckets."""

    def __init__(self, tcp_timeout_s: float, udp_timeout_s: float, linger_s: float = 2.0) -> None:
        self.linger_ns = int(linger_s * 1e9)
        self.flows: dict[int, Flow] = {}
        self.tcp_timeout_ns = int(tcp_timeout_s * 1e9)
        self.udp_timeout_ns = int(udp_timeout_s * 1e9)
        self._wheel: dict[int, list[Flow]] = {}
        self._due: list[int] = []
        self._carry: list[Flow] = []  # flows of a due bucket not yet checked (budget ran out)

    def __len__(self) -> int:
        return len(self.flows)

    def timeout_ns(self, flow: Flow) -> int:
        """Idle timeout of a flow."""
        if flow.ended:
            return self.linger_ns
        return self.tcp_timeout_ns if flow.l4 == 6 else self.udp_timeout_ns

    def add(self, flow: Flow) -> None:
        """Insert a new flow and schedule its first expiry check."""
        self.flows[flow.key] = flow
        self.schedule(flow, flow.last_ns + self.timeout_ns(flow))

    def schedule(self, flow: Flow, deadline_ns: int) -> None:
        """Check the flow again at `deadline_ns` (a flow may sit in several buckets; extras are skipped)."""
        sec = deadline_ns // 1_000_000_000 + 1
        bucket = self._wheel.get(sec)
        if bucket is None:
            bucket = self._wheel[sec] = []
            heapq.heappush(self._due, sec)
        bucket.append(flow)

    def remove(self, flow: Flow) -> None:
        """Forget a flow (its wheel entries are skipped lazily)."""
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        flow.dead = True

    def expired(self, now_ns: int, budget: int) -> list[Flow]:
        """Up to `budget` checks of due buckets; return flows idle past their timeout (still in the table)."""
        out: list[Flow] = []
        now_sec = now_ns // 1_000_000_000
        checked = 0
        while checked < budget:
            if not self._carry:
                if not self._due or self._due[0] > now_sec:
                    break
                self._carry = self._wheel.pop(heapq.heappop(self._due))
            carry = self._carry
            while carry and checked < budget:
                flow = carry.pop()
                checked += 1
                if flow.dead:
                    continue
                deadline = flow.last_ns + self.timeout_ns(flow)
                if deadline <= now_ns:
                    out.append(flow)
                else:
                    self.schedule(flow, deadline)
        return out

    def all_flows(self) -> list[Flow]:
        """Every live flow (end of input)."""
        return list(self.flows.values())
