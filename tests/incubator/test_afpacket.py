"""The TPACKET_V3 capture on a real veth: whole blocks as batches, VLAN tags the kernel took off
put back, PACKET_FANOUT sharing one interface between several capture sockets."""

from __future__ import annotations

import collections
import socket
import time

from celltap.incubator.capture.afpacket import AfPacketCapture

from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import NetNS, no_offloads, quiet


def frames(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        ip = bytes.fromhex("4500002e") + i.to_bytes(2, "big") + bytes.fromhex("00004011 0000 0a000001")
        ip += bytes([10, 1, (i >> 8) & 255, i & 255])
        udp = (1000 + i % 5000).to_bytes(2, "big") + b"\x005\x00\x1a\x00\x00" + bytes(18)
        eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
        if i % 3 == 0:
            out.append(eth + b"\x81\x00" + (100 + i % 50).to_bytes(2, "big") + b"\x08\x00" + ip + udp)
        elif i % 3 == 1:
            out.append(eth + b"\x88\xa8\x00\x07\x81\x00\x00\x09\x08\x00" + ip + udp)  # QinQ
        else:
            out.append(eth + b"\x08\x00" + ip + udp)
    return out


def drain(caps: list[AfPacketCapture], want: int, timeout: float = 10) -> list[list[bytes]]:
    got: list[list[bytes]] = [[] for _ in caps]
    deadline = time.time() + timeout
    while True:  # at least one pass, then until `want` frames or the deadline
        for k, cap in enumerate(caps):
            if cap.wait(10):
                b = cap.read_batch()
                if b is not None:
                    got[k] += [b.frame(i) for i in range(len(b))]
                    cap.release()
        if sum(map(len, got)) >= want or time.time() >= deadline:
            return got


def test_ring_batches_restore_vlan_tags_and_fanout_shares_the_link():
    require_root()
    require_tool("ethtool")
    sent = frames(3000)
    with NetNS("afp") as ns:
        quiet(ns)
        ns.veth("s0", "s1")
        no_offloads(ns, "s0")
        no_offloads(ns, "s1")
        solo = ns.call(lambda: AfPacketCapture("s1", block_size=1 << 18, block_nr=16))
        fan = [
            ns.call(lambda: AfPacketCapture("s1", block_size=1 << 18, block_nr=16, fanout_group=77))
            for _ in range(2)
        ]
        tx = ns.call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
        tx.bind(("s0", 0))
        got_solo: list[bytes] = []
        got_fan: list[list[bytes]] = [[], []]
        for i in range(0, len(sent), 100):
            for f in sent[i : i + 100]:
                tx.send(f)
            got_solo += drain([solo], 0, 0)[0]
            part = drain(fan, 0, 0)
            got_fan[0] += part[0]
            got_fan[1] += part[1]
        got_solo += drain([solo], len(sent) - len(got_solo))[0]
        rest = drain(fan, len(sent) - sum(map(len, got_fan)))
        got_fan = [got_fan[0] + rest[0], got_fan[1] + rest[1]]
        stats = solo.stats()
        for c in (solo, *fan):
            c.close()
        tx.close()
    # The solo socket sees every frame byte for byte, tags included (the kernel had moved them out).
    assert got_solo == sent, stats
    # The fanout group splits the same frames between its members, each frame once.
    assert collections.Counter(got_fan[0] + got_fan[1]) == collections.Counter(sent)
    assert got_fan[0] and got_fan[1]
