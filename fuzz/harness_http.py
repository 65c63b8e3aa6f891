"""Fuzz the HTTP analyzer: one connection's client and server byte streams, split and interleaved."""

from __future__ import annotations

from celltap.cell.analyzers.http_analyzer import HttpAnalyzer

from fuzz.analyzer_input import run_analyzer, scenario_seeds
from fuzz.stream_input import encode_turns

# 8 KiB holds a few requests and responses (a larger seed is cut there: its later turns are more
# body); without a cap libFuzzer makes inputs up to the largest seed (28 KB of loadgen's bulk
# responses), and a long run drifts towards those, at a fraction of the rate.
FUZZ_MAX_LEN = 8192


def test_one_input(data: bytes) -> None:
    """Any exception escaping is a finding."""
    run_analyzer(HttpAnalyzer(), data, 80, datagrams=False)


def seeds() -> list[bytes]:
    """loadgen's http and cps connections, plus a CONNECT tunnel and an upgrade."""
    extra = [
        [
            (True, b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"),
            (False, b"HTTP/1.1 200 Connection established\r\n\r\n"),
            (True, b"\x16\x03\x01\x00\x05hello"),
        ],
        [
            (True, b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            (False, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            (True, b"\x81\x05hello"),
        ],
    ]
    return scenario_seeds("http") + scenario_seeds("cps", 2) + [encode_turns(t) for t in extra]
