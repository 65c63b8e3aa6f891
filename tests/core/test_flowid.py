"""uid and Community ID: Community IDs equal the `communityid` reference package's; uids are stable."""

from __future__ import annotations

import ipaddress
import random

import communityid
import pytest
from celltap.cell.sdk.events import CREATED, DATA, Event, FlowId
from celltap.cell.sdk.flows import FlowAnalyzer, FlowTable

from celltap.flowid import community_id, flow_uid, key_bytes
from celltap.flowkey import canonical_key


def _addr(v6: bool, rng: random.Random) -> str:
    if v6:
        return str(ipaddress.IPv6Address(rng.getrandbits(128)))
    return str(ipaddress.IPv4Address(rng.getrandbits(32)))


def test_community_id_equals_the_reference_package_on_random_tuples() -> None:
    rng = random.Random(7)
    ref = communityid.CommunityID()
    for _ in range(3000):
        v6 = rng.random() < 0.3
        a, b = _addr(v6, rng), _addr(v6, rng)
        if rng.random() < 0.05:
            b = a  # equal addresses: ports decide the order
        proto = rng.choice([6, 17, 132, 1])
        if proto == 1:
            proto = 58 if v6 else 1
            sp, dp = rng.choice([0, 3, 8, 11, 128, 129, 133, 135, 200]), rng.randrange(4)
        else:
            sp, dp = rng.randrange(65536), rng.randrange(65536)
        assert community_id(proto, a, sp, b, dp) == ref.calc(communityid.FlowTuple(proto, a, b, sp, dp))
        assert community_id(proto, a, sp, b, dp, seed=9) == communityid.CommunityID(seed=9).calc(
            communityid.FlowTuple(proto, a, b, sp, dp)
        )


def test_uid_key_bytes_are_the_canonical_flow_key() -> None:
    src, dst = ipaddress.ip_address("10.0.0.9").packed, ipaddress.ip_address("10.0.0.1").packed
    key, swapped = canonical_key(4, 6, src, 40000, dst, 80)
    assert swapped
    assert key_bytes("ipv4", "tcp", "10.0.0.1", 80, "10.0.0.9", 40000) == key.to_bytes()


def test_uid_depends_on_key_and_start_microsecond_only() -> None:
    base = flow_uid("ipv4", "tcp", "10.0.0.1", 80, "10.0.0.9", 40000, 1_700_000_000_123_456)
    assert base.startswith("C") and len(base) == 12
    assert base == flow_uid(4, 6, "10.0.0.1", 80, "10.0.0.9", 40000, 1_700_000_000_123_456)
    others = {
        flow_uid("ipv4", "tcp", "10.0.0.1", 80, "10.0.0.9", 40000, 1_700_000_000_123_457),
        flow_uid("ipv4", "udp", "10.0.0.1", 80, "10.0.0.9", 40000, 1_700_000_000_123_456),
        flow_uid("ipv4", "tcp", "10.0.0.1", 81, "10.0.0.9", 40000, 1_700_000_000_123_456),
    }
    assert base not in others and len(others) == 3


class _Seen(FlowAnalyzer):
    name = "seen"

    def __init__(self) -> None:
        super().__init__()
        self.flows: list[FlowId] = []

    def stream(self, flow: FlowId, time: float) -> None:
        self.flows.append(flow)

    def datagram(self, flow: FlowId, sender: int, data: bytes, time: float) -> None:
        self.flows.append(flow)


def test_flow_table_gives_tcp_flows_the_uid_of_their_created_time_and_udp_flows_of_their_first_datagram():
    tcp = FlowId("10.0.0.1", "10.0.0.9", 80, 40000, 0, "ipv4", "tcp")
    udp = FlowId("10.0.0.1", "10.0.0.9", 53, 40001, 0, "ipv4", "udp")
    seen = _Seen()
    table = FlowTable(seen, udp_timeout=30.0)
    t0 = 1_700_000_000.123456
    table.handle(
        [
            Event(CREATED, b"t", tcp, t0),
            Event(DATA, b"u", udp, t0 + 1, sender=2, data=b"q"),
            Event(DATA, b"u", udp, t0 + 2, sender=1, data=b"a"),
            Event(DATA, b"u", udp, t0 + 100, sender=2, data=b"q"),  # after the timeout: a new connection
        ]
    )
    tcp_uid = flow_uid("ipv4", "tcp", "10.0.0.1", 80, "10.0.0.9", 40000, 1_700_000_000_123_456)
    udp_uid = flow_uid("ipv4", "udp", "10.0.0.1", 53, "10.0.0.9", 40001, 1_700_000_001_123_456)
    udp_uid2 = flow_uid("ipv4", "udp", "10.0.0.1", 53, "10.0.0.9", 40001, 1_700_000_100_123_456)
    assert [f.uid for f in seen.flows] == [tcp_uid, udp_uid, udp_uid, udp_uid2]


@pytest.mark.parametrize("addr", ["not-an-address", ""])
def test_a_flow_whose_address_is_not_ip_gets_no_uid_and_no_error(addr: str) -> None:
    seen = _Seen()
    FlowTable(seen).handle([Event(CREATED, b"t", FlowId(addr, "10.0.0.9", 1, 2, 0, "ipv4", "tcp"), 1.0)])
    assert seen.flows[0].uid == ""


def test_flow_id_and_uid_text_convert_both_ways() -> None:
    import numpy as np
    import xxhash

    from celltap.flowid import flow_id_from_uid, uid_from_flow_id, uid_from_key, uids_from_flow_ids

    rng = random.Random(11)
    values = [0, 1, 61, 62, (1 << 64) - 1] + [rng.getrandbits(64) for _ in range(2000)]
    texts = [uid_from_flow_id(v) for v in values]
    assert all(len(t) == 12 and t[0] == "C" for t in texts)
    assert [flow_id_from_uid(t) for t in texts] == values
    assert [t.decode() for t in uids_from_flow_ids(np.array(values, np.uint64))] == texts
    # base 62, most significant digit first: 62 is "C" + "0"*9 + "10"
    assert uid_from_flow_id(62) == "C" + "0" * 9 + "10" and uid_from_flow_id(61) == "C" + "0" * 10 + "z"
    key = key_bytes("ipv4", "tcp", "10.0.0.1", 80, "10.0.0.9", 40000)
    start = 1_700_000_000_123_456
    assert uid_from_key(key, start) == uid_from_flow_id(
        xxhash.xxh64_intdigest(key + start.to_bytes(8, "little"))
    )
    for bad in ("", "D00000000000", "C0000000000!", "Czzzzzzzzzzz", (1 << 64), -1):
        with pytest.raises(ValueError):
            flow_id_from_uid(bad) if isinstance(bad, str) else uid_from_flow_id(bad)
