"""Drive one sans-IO analyzer with one fuzz input (see stream_input) and check what it produced.

The analyzer is called directly (stream()/data()/end()/datagram()/close()), not through the SDK's
FlowTable, whose guard would turn an analyzer exception into a counted drop: here every exception is
a finding. The records must also be what the JSON-lines writer can encode (plain JSON values), and
every parse error counted must be one the analyzer declares (`error_reasons`).
"""

from __future__ import annotations

import orjson
from celltap.cell.sdk.events import FlowId
from celltap.cell.sdk.flows import FlowAnalyzer, with_uid

from fuzz.seed_streams import scenario_conversations
from fuzz.stream_input import END_REASONS, decode_turns, encode_turns

CLIENT = ("10.0.0.1", 40000)
SERVER = "10.0.0.2"
START = 1_700_000_000.0


_FLOWS: dict[tuple[int, int, bool], FlowId] = {}


def _flow(client_ep: int, port: int, udp: bool) -> FlowId:
    """The connection's flow id (with its uid), built once per kind: it is the same for every input."""
    key = (client_ep, port, udp)
    flow = _FLOWS.get(key)
    if flow is None:
        if client_ep == 1:
            flow = FlowId(CLIENT[0], SERVER, CLIENT[1], port, 0, "ipv4", "udp" if udp else "tcp")
        else:  # the client is the larger endpoint: swap the addresses so it is endpoint 2
            flow = FlowId("10.0.0.0", CLIENT[0], port, CLIENT[1], 0, "ipv4", "udp" if udp else "tcp")
        flow = _FLOWS[key] = with_uid(flow, START)
    return flow


def run_analyzer(analyzer: FlowAnalyzer, data: bytes, port: int, datagrams: bool) -> list[dict]:
    """Feed the input's chunks to `analyzer` as one connection; return its records (checked)."""
    mode, turns = decode_turns(data)
    client_ep = 1 if mode & 1 == 0 else 2
    udp = datagrams and bool(mode & 2)
    ends = END_REASONS[(mode >> 2) & 3]
    flow = _flow(client_ep, port, udp)
    t = START
    if udp:
        for from_client, payload in turns:
            t += 0.001
            analyzer.datagram(flow, client_ep if from_client else 3 - client_ep, payload, t)
    else:
        handler = analyzer.stream(flow, t)
        if handler is not None:
            for from_client, payload in turns:
                t += 0.001
                handler.data(client_ep if from_client else 3 - client_ep, payload, t)
            if ends is not None:
                handler.end(ends, t + 0.001)
    analyzer.close(t + 1.0)
    records = analyzer.records
    for record in records:
        if not isinstance(record, dict):
            raise TypeError(f"record is not a dict: {record!r}")
        orjson.dumps(record)  # the writer's encoding: raises on values JSON cannot carry
    undeclared = set(analyzer.errors) - set(analyzer.error_reasons)
    if undeclared:  # its counter series would not exist at 0 from the start (FlowAnalyzer.error_reasons)
        raise AssertionError(f"{analyzer.name}: parse errors counted but not declared: {sorted(undeclared)}")
    for handed in analyzer.handed_on:
        if not isinstance(handed[2], bytes):
            raise TypeError(f"handed-on data is not bytes: {handed!r}")
    return records


def scenario_seeds(name: str, flows: int = 6, datagrams: bool = False) -> list[bytes]:
    """Seeds from loadgen scenario `name`: each connection as one input (UDP ones in UDP mode)."""
    out = []
    for proto, turns in scenario_conversations(name, flows):
        udp = proto == 17
        if udp and not datagrams:
            continue
        out.append(encode_turns(turns, udp=udp))
    return out
