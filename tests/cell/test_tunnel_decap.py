"""The cell and tunnels (crafted frames): the inner flow by default, also after the cell reassembles
a fragmented tunnel packet; the tunnel's own flow with `decapsulate: no`."""

from __future__ import annotations

from celltap.cell.abstractor import Abstractor
from celltap.cell.sftap_config import parse_config
from celltap.loadgen.packets import SYN

from celltap.pcap.batch import FrameBatch
from tests.cell.wire import parse_text
from tests.core import frames as fr

T0 = 1_700_000_000_000_000_000
DOC = {"tcp_default": {"if": "default", "proto": "TCP"}, "udp_default": {"if": "udpdef", "proto": "UDP"}}


def _outer_fragments(inner: bytes, ident: int) -> list[bytes]:
    """A GRE packet carrying `inner`, split by its outer IPv4 header into two fragments."""
    gre = fr.gre(inner, 0x0800)
    first = fr.ipv4("10.1.0.1", "10.1.0.2", 47, gre[:24], ident=ident, flags_off=0x2000)
    second = fr.ipv4("10.1.0.1", "10.1.0.2", 47, gre[24:], ident=ident, flags_off=24 // 8)
    return [fr.eth(first), fr.eth(second)]


def _run(extra: dict, frames: list[bytes]) -> Abstractor:
    cell = Abstractor(parse_config({"global": {"midstream": "yes", **extra}, **DOC}))
    cell.process_frames(FrameBatch.from_frames(frames, [T0 + i for i in range(len(frames))]))
    cell.finish()
    return cell


def test_crafted_fragmented_gre_is_decapsulated_after_reassembly() -> None:
    syn = fr.ipv4("192.168.1.1", "192.168.2.2", 6, fr.tcp(41000, 8080, seq=100, flags=SYN))
    udp = fr.ipv4("192.168.1.1", "192.168.2.2", 17, fr.udp(5000, 6000, b"datagram in a tunnel"))
    frames = [*_outer_fragments(syn, 1), fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 47, fr.gre(udp, 0x0800)))]
    cell = _run({}, frames)
    tcp = parse_text(b"".join(cell.sinks["tcp/default"].parts))
    assert {e.flow[:4] for e in tcp} == {("192.168.1.1", 41000, "192.168.2.2", 8080)}
    udp_evs = parse_text(b"".join(cell.sinks["udp/udpdef"].parts))
    assert [e.data for e in udp_evs if e.event == "DATA"] == [b"datagram in a tunnel"]
    outer = _run({"decapsulate": "no"}, frames)
    assert not outer.sinks["tcp/default"].parts and not outer.sinks["udp/udpdef"].parts
    assert outer.drops.get("unsupported_l4", 0) >= 1  # GRE (protocol 47) is not a flow a cell follows
