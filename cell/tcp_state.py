"""Zeek-style connection history and state of a TCP flow, sans-IO and cheap.

Theory of operation. Zeek keeps, per endpoint, a small state machine (INACTIVE, SYN_SENT,
SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET) and, per connection, a `history` string of
letters; at the end `conn_state` (S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR, OTH)
is derived from the two endpoint states. The same is done here, on the same events:

* An endpoint's state changes only on a packet with SYN, FIN or RST, or on the first packet of an
  INACTIVE endpoint (`control` and `first_packet`). Plain data and pure ACKs of an active endpoint
  change nothing, so the cell's fast paths (in-order data, batched pure ACKs) skip this module,
  apart from a bit test for the first data packet / pure ACK of a direction (letters `D`, `A`).
* Letters follow Zeek's base/protocols/conn: `s` SYN, `h` SYN-ACK, `a` pure ACK, `d` payload,
  `f` FIN, `r` RST, `t` retransmitted payload, `g` content gap, `w` zero window, `i` FIN+RST,
  `q` SYN with FIN or RST, `^` direction flipped by the heuristic. Upper case: the originator.
  `a d i q` at most once per direction; `s h f r` again only when the sequence number differs from
  the last one of that kind; `t g w` logarithmically (the 1st, 10th, 100th... occurrence).
  `c` (bad checksum) is never written: the cell does not verify checksums (captures taken on a
  sending host carry offloaded, unfilled ones).
* `flow.orig` (1 or 2) is the originator endpoint: the sender of the first SYN, else the sender of the
  flow's first packet, flipped (with `^`) when its port looks like a server's and the other does not
  (Zeek's rule: with both plausible, flipped when not a SYN-ACK and the sender's port is the lower).

Bits of `flow.hbits` (shift 0 for endpoint 1, 8 for endpoint 2): the once-letters already written
and whether the endpoint sent payload at all. `flow.tstate` holds both endpoint states (and the
previous ones Zeek consults), 4 bits each.
"""

from __future__ import annotations

from sys import intern  # histories repeat: one string object per distinct history
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celltap.cell.flow_table import Flow

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

# endpoint states (Zeek's TCP_ENDPOINT_*)
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

# hbits, per endpoint (shifted by 8 for endpoint 2)
H_ACK, H_DATA, H_INCONS, H_MULTI, H_SENT, H_SYN, H_RST = 1, 2, 4, 8, 16, 32, 64
H_BASE = 128  # picked up midstream: flow.syns holds the sequence number before the first one seen
D1_LETTER = H_DATA  # endpoint 1's `D` written (the per-packet loop tests this bit inline)
D2_LETTER = H_DATA << 8
A1_LETTER = H_ACK
A2_LETTER = H_ACK << 8
D1_SENT = H_DATA | H_SENT
D2_SENT = D1_SENT << 8
SYN_BOTH = H_SYN | H_SYN << 8  # both endpoints' SYN sequence numbers are in flow.syns

M32 = 0xFFFFFFFF
_POW10 = frozenset(10**k for k in range(12))

# logarithmic counters, index in flow.hcount
T_COUNT, G_COUNT, W_COUNT = 0, 2, 4


def letter(flow: Flow, d: int, code: str) -> None:
    """Append one history letter for endpoint d (upper case when d is the originator)."""
    flow.history = intern(flow.history + (code.upper() if d == flow.orig else code))


def once(flow: Flow, d: int, bit: int, code: str) -> None:
    """Append a letter the first time endpoint d shows it."""
    b = bit << 8 if d == 2 else bit
    if not flow.hbits & b:
        flow.hbits |= b
        flow.history = intern(flow.history + (code.upper() if d == flow.orig else code))


def scaled(flow: Flow, d: int, which: int, code: str) -> None:
    """Count one `t`/`g`/`w` event of endpoint d; the 1st, 10th, 100th... write a letter."""
    c = flow.hcount
    if c is None:
        c = flow.hcount = [0, 0, 0, 0, 0, 0]
    i = which + d - 1
    c[i] += 1
    if c[i] in _POW10:
        flow.history = intern(flow.history + (code.upper() if d == flow.orig else code))


def sent_payload(flow: Flow, d: int) -> bool:
    """True once endpoint d has sent payload (on any packet)."""
    return bool(flow.hbits & (H_SENT << 8 if d == 2 else H_SENT))


def _state(flow: Flow, d: int) -> int:
    return (flow.tstate >> (0 if d == 1 else 4)) & 15


def _set(flow: Flow, d: int, st: int) -> None:
    t = flow.tstate
    sh = 0 if d == 1 else 4
    old = (t >> sh) & 15
    if old == st:
        return
    psh = sh + 8
    t = (t & ~((15 << sh) | (15 << psh))) | (st << sh) | (old << psh)
    flow.tstate = t


def endpoint_states(flow: Flow) -> tuple[int, int]:
    """(originator state, responder state)."""
    o = flow.orig
    return _state(flow, o), _state(flow, 3 - o)


def syn_seq(flow: Flow, d: int) -> int:
    """The sequence number of the last SYN (ISN) seen from endpoint d, or -1."""
    if not flow.hbits & (H_SYN if d == 1 else H_SYN << 8):
        return -1
    return (flow.syns >> (0 if d == 1 else 32)) & M32


def stream_base(flow: Flow, d: int) -> int:
    """The sequence number before endpoint d's first stream byte: its ISN, or, for a direction picked
    up midstream, the first sequence number seen minus one (as Zeek counts); -1 when unknown."""
    if not flow.hbits & ((H_SYN | H_BASE) if d == 1 else (H_SYN | H_BASE) << 8):
        return -1
    return (flow.syns >> (0 if d == 1 else 32)) & M32


def control_letters(flow: Flow, d: int, flags: int, seq: int, plen: int) -> None:
    """History letters of a packet with SYN, FIN or RST (Zeek's update_history)."""
    f = flags & 7
    up = d == flow.orig
    if f == SYN:
        sh = 0 if d == 1 else 32
        seen = H_SYN if d == 1 else H_SYN << 8
        syns = flow.syns
        if not flow.hbits & seen or (syns >> sh) & M32 != seq:
            if flags & ACK:
                flow.history = intern(flow.history + ("H" if up else "h"))
            else:
                flow.history = intern(flow.history + ("S" if up else "s"))
        flow.syns = (syns & ~(M32 << sh)) | seq << sh
        flow.hbits |= seen
    elif f == FIN:
        # the reassembler's FIN position is the end of the last FIN seen (written after this call)
        if (flow.fin1 if d == 1 else flow.fin2) != (seq + plen) & 0xFFFFFFFF:
            flow.history = intern(flow.history + ("F" if up else "f"))
    elif f == RST:
        sh = 0 if d == 1 else 32
        seen = H_RST if d == 1 else H_RST << 8
        rsts = flow.rsts
        if not flow.hbits & seen or (rsts >> sh) & M32 != seq:
            flow.history = intern(flow.history + ("R" if up else "r"))
        flow.rsts = (rsts & ~(M32 << sh)) | seq << sh
        flow.hbits |= seen
    elif f & FIN and f & RST:
        once(flow, d, H_INCONS, "i")
    else:
        once(flow, d, H_MULTI, "q")


def control(flow: Flow, d: int, flags: int, plen: int) -> None:
    """Endpoint state machine step for a packet with SYN, FIN or RST (Zeek's UpdateStateMachine)."""
    o = 3 - d
    t = flow.tstate
    sh, osh = (0, 4) if d == 1 else (4, 0)
    ep = (t >> sh) & 15
    peer = (t >> osh) & 15
    new_ep, new_peer = ep, peer
    if ep == INACTIVE:
        if flags & SYN:
            if d == flow.orig:
                new_ep = SYN_ACK_SENT if flags & ACK else SYN_SENT
            else:
                if not flags & ACK and peer == SYN_ACK_SENT:
                    # SYN-ACK seen before the SYN: the SYN's sender is the originator after all
                    flow.orig = d
                    flow.history = intern(flow.history + "^")
                    new_peer = ESTABLISHED
                elif peer == SYN_SENT:
                    new_peer = ESTABLISHED
                new_ep = ESTABLISHED
        if flags & FIN:
            new_ep = CLOSED
        if flags & RST:
            new_ep = RESET
    elif ep == SYN_SENT or ep == SYN_ACK_SENT:
        if flags & FIN:
            new_ep = CLOSED
        if flags & RST:
            new_ep = RESET
    elif ep == ESTABLISHED or ep == PARTIAL:
        if flags & SYN and ep == PARTIAL and peer == INACTIVE and not flags & ACK:
            new_ep = SYN_SENT
        if flags & FIN and not flags & RST:
            new_ep = CLOSED
            if peer == RESET and (t >> (osh + 8)) & 15 == CLOSED:
                new_peer = CLOSED  # the peer's FIN then RST was a normal close
        if flags & RST:
            new_ep = RESET
    elif ep == CLOSED:
        if flags & RST and peer != CLOSED:
            new_ep = RESET
    if new_ep != ep:
        _set(flow, d, new_ep)
    if new_peer != peer:
        _set(flow, o, new_peer)
    if new_ep == INACTIVE:
        first_packet(flow, d, flags, plen)


def bare_syn(flow: Flow, d: int, flags: int, seq: int) -> None:
    """A SYN or SYN-ACK without payload opening direction d (no packet of it seen yet): letters, states.

    The common handshake shapes are done inline (the per-packet path meets two per connection);
    anything else goes through `control_letters` and `control`.
    """
    t = flow.tstate
    sh = 0 if d == 1 else 4
    seen = H_SYN if d == 1 else H_SYN << 8
    if not flow.hbits & seen and not (t >> sh) & 15:
        syn_sh = 0 if d == 1 else 32
        if d == flow.orig and not flags & ACK:
            flow.history = intern(flow.history + "S")
            flow.hbits |= seen
            flow.syns |= seq << syn_sh
            flow.tstate = t | SYN_SENT << sh  # the previous state stays INACTIVE (0)
            return
        osh = 4 - sh
        if d != flow.orig and flags & ACK and (t >> osh) & 15 == SYN_SENT:
            flow.history = intern(flow.history + "h")
            flow.hbits |= seen
            flow.syns |= seq << syn_sh
            # both ESTABLISHED; the originator's previous state is SYN_SENT
            t &= ~(0xF << osh | 0xF << (osh + 8))
            flow.tstate = t | ESTABLISHED << sh | ESTABLISHED << osh | SYN_SENT << (osh + 8)
            return
    control_letters(flow, d, flags, seq, 0)
    control(flow, d, flags, 0)


def bare_fin(flow: Flow, d: int, flags: int, seq: int) -> None:
    """A FIN without payload from direction d: its letter and state (ESTABLISHED -> CLOSED inline)."""
    if (flow.fin1 if d == 1 else flow.fin2) != seq:
        flow.history = intern(flow.history + ("F" if d == flow.orig else "f"))
    t = flow.tstate
    sh = 0 if d == 1 else 4
    if (t >> sh) & 15 == ESTABLISHED and (t >> (4 - sh)) & 15 != RESET:
        flow.tstate = (t & ~(0xF << sh | 0xF << (sh + 8))) | CLOSED << sh | ESTABLISHED << (sh + 8)
    else:
        control(flow, d, flags, 0)


def first_packet(flow: Flow, d: int, flags: int, plen: int) -> None:
    """A packet without SYN/FIN/RST from an INACTIVE endpoint (Zeek's UpdateInactiveState, last part)."""
    o = flow.orig
    if d != o and plen == 0 and _state(flow, o) == SYN_SENT:
        return  # an ACK of the SYN before the SYN-ACK: not yet a partial connection
    if flags & ACK and _state(flow, 3 - d) == ESTABLISHED:
        _set(flow, d, ESTABLISHED)  # the SYN was missed but the SYN-ACK was seen
    else:
        _set(flow, d, PARTIAL)


def after_close(flow: Flow, d: int, flags: int, seq: int, plen: int) -> None:
    """History letters and states of a packet reaching a closed (lingering) flow."""
    if flags & 7:
        control_letters(flow, d, flags, seq, plen)
        control(flow, d, flags, plen)
    elif plen > 0:
        once(flow, d, H_DATA, "d")
    elif flags & ACK:
        once(flow, d, H_ACK, "a")
    if flags & 0x100:
        scaled(flow, d, W_COUNT, "w")


def likely_server_ports(rule_ports: list[tuple[int, int]]) -> frozenset[int]:
    """Ports taken for a server's: IANA system ports (below 1024) and the ports config rules name.

    Zeek takes the ports its analyzers register; the cell's rules are its analyzers. Ranges wider
    than 1024 ports (e.g. "1-65535") say nothing about servers and are left out.
    """
    out = set(range(1, 1024))
    for lo, hi in rule_ports:
        if hi - lo < 1024:
            out.update(range(lo, hi + 1))
    return frozenset(out)


def orient_midstream(flow: Flow, sender: int, flags: int, server_ports: frozenset[int]) -> None:
    """Choose the originator of a flow whose first packet is not a SYN (Zeek's WantConnection rule).

    The first packet's sender originates, unless its port is a likely server port: then the roles
    flip when the other port is not one, or, both being plausible, when the packet is not a SYN-ACK
    and the sender's port is the lower. A flip writes `^`.
    """
    sp = flow.port1 if sender == 1 else flow.port2
    dp = flow.port2 if sender == 1 else flow.port1
    flip = False
    if sp in server_ports:
        flip = (not flags & SYN and sp < dp) if dp in server_ports else True
    if flip:
        flow.orig = 3 - sender
        flow.history = intern(flow.history + "^")
    else:
        flow.orig = sender


def conn_state(flow: Flow) -> str:
    """Zeek's conn_state of a TCP flow (from its endpoint states and history)."""
    if flow.l4 != 6:
        return _conn_state_other(flow)
    os, rs = endpoint_states(flow)
    o_inactive = os in (INACTIVE, PARTIAL)
    r_inactive = rs in (INACTIVE, PARTIAL)
    if rs == RESET:
        if os in (SYN_SENT, SYN_ACK_SENT) or (
            os == RESET and not sent_payload(flow, flow.orig) and not sent_payload(flow, 3 - flow.orig)
        ):
            return "REJ"
        return "RSTRH" if o_inactive else "RSTR"
    if os == RESET:
        if r_inactive:
            return "RSTOS0" if _syn_then_rst(flow.history) else "OTH"
        return "RSTO"
    if rs == CLOSED and os == CLOSED:
        return "SF"
    if os == CLOSED:
        return "SH" if r_inactive else "S2"
    if rs == CLOSED:
        return "SHR" if o_inactive else "S3"
    if os == SYN_SENT and rs == INACTIVE:
        return "S0"
    if os == ESTABLISHED and rs == ESTABLISHED:
        return "S1"
    return "OTH"


def _syn_then_rst(hist: str) -> bool:
    """Zeek's /^\\^?S[^HAFGIQ]*R.*/: the originator's SYN, then its RST, nothing established between."""
    h = hist[1:] if hist.startswith("^") else hist
    if not h.startswith("S"):
        return False
    for ch in h[1:]:
        if ch == "R":
            return True
        if ch in "HAFGIQ":
            return False
    return False


def _conn_state_other(flow: Flow) -> str:
    """UDP/ICMP: Zeek's flow semantics (both sides sent: SF; only the originator: S0; only the other: SHR)."""
    o_sent = (flow.pkts1 if flow.orig == 1 else flow.pkts2) > 0
    r_sent = (flow.pkts2 if flow.orig == 1 else flow.pkts1) > 0
    if o_sent:
        return "SF" if r_sent else "S0"
    return "SHR" if r_sent else "OTH"


# history letter -> the TCP flags a packet that wrote it carried (IPFIX tcpControlBits)
_LETTER_FLAGS = {"s": SYN, "h": SYN | ACK, "a": ACK, "d": ACK, "f": FIN, "r": RST}


def control_bits(flow: Flow, d: int) -> int:
    """tcpControlBits of endpoint d's packets (their flags OR-ed), as far as the history shows them.

    The history records SYN (S), SYN-ACK (H), pure ACK (A), data (D, sent with ACK), FIN (F) and RST
    (R) per direction, so SYN, FIN, RST and ACK are exact; PSH, URG, ECE and CWR are not tracked (0).
    """
    if flow.l4 != 6:
        return 0
    bits = 0
    upper = d == flow.orig
    for ch in flow.history:
        if ch.isupper() == upper:
            bits |= _LETTER_FLAGS.get(ch.lower(), 0)
    return bits
