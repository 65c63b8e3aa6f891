"""tshark's NetFlow/IPFIX dissector decodes what celltap's exporter sends, with the same values."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from celltap.ipfix import MessageEncoder, template_from_names
from celltap.ipfix.encoder import RefreshPolicy
from celltap.ipfix.export import biflow_templates
from celltap.ipfix.message import parse_header
from tests.conftest import require_tool
from tests.ipfix.oracles import datagrams_to_pcap, tshark_fields, tshark_problems

pytestmark = pytest.mark.tshark
PORT = 4739


def biflow(n: int, v6: bool) -> dict:
    rng = np.random.default_rng(11)
    cols = {
        "sourceTransportPort": rng.integers(1024, 65535, n, dtype=np.uint16),
        "destinationTransportPort": np.full(n, 443, np.uint16),
        "protocolIdentifier": np.full(n, 6, np.uint8),
        "octetDeltaCount": rng.integers(40, 10**9, n, dtype=np.uint64),
        "packetDeltaCount": rng.integers(1, 10**6, n, dtype=np.uint64),
        "reverseOctetDeltaCount": rng.integers(40, 10**9, n, dtype=np.uint64),
        "reversePacketDeltaCount": rng.integers(1, 10**6, n, dtype=np.uint64),
        "flowStartMilliseconds": np.full(n, 1_700_000_000_000, np.uint64),
        "flowEndMilliseconds": np.full(n, 1_700_000_000_250, np.uint64),
        "flowEndReason": np.full(n, 3, np.uint8),
        "applicationName": [f"app-{i % 5}" for i in range(n)],
    }
    if v6:
        cols["sourceIPv6Address"] = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        cols["destinationIPv6Address"] = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    else:
        cols["sourceIPv4Address"] = rng.integers(0, 2**32, n, dtype=np.uint32)
        cols["destinationIPv4Address"] = rng.integers(0, 2**32, n, dtype=np.uint32)
    return cols


@pytest.mark.parametrize("v6", [False, True])
def test_tshark_decodes_cell_biflow_export(tmp_path, v6):
    require_tool("tshark")
    enc = MessageEncoder(7, biflow_templates(), refresh=RefreshPolicy(60, 10))
    n = 300
    cols = biflow(n, v6)
    msgs = enc.encode(257 if v6 else 256, cols, 1_700_000_001.0)
    pcap = tmp_path / "export.pcap"
    datagrams_to_pcap(msgs, pcap, PORT)
    assert tshark_problems(pcap, PORT) == 0
    src = "cflow.srcaddrv6" if v6 else "cflow.srcaddr"
    rows = tshark_fields(
        pcap,
        PORT,
        [
            src,
            "cflow.srcport",
            "cflow.octets",
            "cflow.packets",
            "cflow.appl_name",
            "cflow.od_id",
            "cflow.flow_end_reason",
        ],
    )
    srcs = [v for r in rows for v in r[0]]
    ports = [int(v) for r in rows for v in r[1]]
    octets = [int(v) for r in rows for v in r[2]]  # forward and reverse (PEN 29305) interleaved
    packets = [int(v) for r in rows for v in r[3]]
    apps = [v for r in rows for v in r[4]]
    if v6:
        want_src = [str(ipaddress.IPv6Address(bytes(a))) for a in cols["sourceIPv6Address"]]
    else:
        want_src = [str(ipaddress.IPv4Address(int(a))) for a in cols["sourceIPv4Address"]]
    assert srcs == want_src
    assert ports == list(cols["sourceTransportPort"])
    assert octets[0::2] == list(cols["octetDeltaCount"])
    assert octets[1::2] == list(cols["reverseOctetDeltaCount"])
    assert packets[0::2] == list(cols["packetDeltaCount"])
    assert packets[1::2] == list(cols["reversePacketDeltaCount"])
    assert apps == cols["applicationName"]
    assert {v for r in rows for v in r[5]} == {"7"}
    assert {v for r in rows for v in r[6]} == {"3"}


def test_tshark_decodes_netflow_v9_export(tmp_path):
    require_tool("tshark")
    t = template_from_names(
        300,
        [
            ("sourceIPv4Address", None),
            ("destinationIPv4Address", None),
            ("octetDeltaCount", 4),
            ("packetDeltaCount", 4),
            ("sourceTransportPort", None),
        ],
    )
    enc = MessageEncoder(3, [t], version=9)
    n = 200
    cols = {
        "sourceIPv4Address": np.arange(n, dtype=np.uint32) + 0x0A000001,
        "destinationIPv4Address": np.full(n, 0x0A0000FE, np.uint32),
        "octetDeltaCount": np.arange(n) * 100 + 40,
        "packetDeltaCount": np.arange(n) + 1,
        "sourceTransportPort": np.arange(n) + 1000,
    }
    msgs = enc.encode(300, cols, 1_700_000_001.0)
    assert [parse_header(m).sequence for m in msgs] == list(range(len(msgs)))  # v9 counts packets
    pcap = tmp_path / "v9.pcap"
    datagrams_to_pcap(msgs, pcap, PORT)
    assert tshark_problems(pcap, PORT) == 0
    rows = tshark_fields(pcap, PORT, ["cflow.version", "cflow.octets", "cflow.srcport"])
    assert {r[0][0] for r in rows} == {"9"}
    assert [int(v) for r in rows for v in r[1]] == list(cols["octetDeltaCount"])
    assert [int(v) for r in rows for v in r[2]] == list(cols["sourceTransportPort"])


def test_template_refresh_by_count_and_by_time():
    t = template_from_names(300, [("sourceIPv4Address", None)])
    enc = MessageEncoder(1, [t], refresh=RefreshPolicy(seconds=10, messages=3), mtu=16 + 4 + 4 * 2 + 12)
    msgs = enc.encode(300, {"sourceIPv4Address": np.arange(30, dtype=np.uint32)}, 100.0)
    has_tpl = [m[16:18] == b"\x00\x02" for m in msgs]
    assert has_tpl[:7] == [True, False, False, True, False, False, True]  # every 3rd message by count
    enc = MessageEncoder(1, [t], refresh=RefreshPolicy(seconds=10, messages=None))
    first = enc.encode(300, {"sourceIPv4Address": [1]}, 100.0)[0]
    soon = enc.encode(300, {"sourceIPv4Address": [1]}, 105.0)[0]
    later = enc.encode(300, {"sourceIPv4Address": [1]}, 110.0)[0]
    assert [m[16:18] == b"\x00\x02" for m in (first, soon, later)] == [True, False, True]
