"""Fuzz the TLS analyzer: records, handshake messages and certificates in one connection's streams."""

from __future__ import annotations

from celltap.cell.analyzers.tls_analyzer import TlsAnalyzer

from fuzz.analyzer_input import run_analyzer, scenario_seeds
from fuzz.stream_input import decode_turns, encode_turns

# 8 KiB holds a whole handshake with its certificates and the first application data (seeds are
# cut there); without a cap libFuzzer makes inputs up to the largest seed (36 KB of loadgen's bulk
# transfers), and a long run drifts towards those, at a fraction of the rate. What a cut seed loses
# at its end (the closing alert) comes back as a seed of its own (`_closing`).
FUZZ_MAX_LEN = 8192


def test_one_input(data: bytes) -> None:
    """Any exception escaping is a finding."""
    run_analyzer(TlsAnalyzer(), data, 443, datagrams=False)


def _record_cuts(turns: list[tuple[bool, bytes]]) -> list[int]:
    """Indexes i where turns[:i] ends every direction's stream on a TLS record boundary."""
    streams = {True: b"", False: b""}
    cuts = []
    for i, (from_client, payload) in enumerate(turns):
        ok = True
        for s in streams.values():
            pos = 0
            while pos + 5 <= len(s):
                pos += 5 + int.from_bytes(s[pos + 3 : pos + 5], "big")
            ok = ok and pos == len(s)
        if ok:
            cuts.append(i)
        streams[from_client] += payload
    return cuts


def _closing(seed: bytes) -> bytes | None:
    """The seed's opening turns up to a record boundary, then its alert records (the connection's
    close), within FUZZ_MAX_LEN; None if the seed fits anyway or closes without an alert."""
    mode, turns = decode_turns(seed)
    if len(seed) <= FUZZ_MAX_LEN:
        return None
    alerts = [t for t in turns if t[1][:1] == b"\x15"]
    if not alerts:
        return None
    tail = encode_turns(alerts)
    for cut in reversed(_record_cuts(turns)):
        out = encode_turns(turns[:cut], mode=mode) + tail[1:]
        if len(out) <= FUZZ_MAX_LEN:
            return out
    return None


def seeds() -> list[bytes]:
    """loadgen's tls scenario (TLS 1.2 and 1.3 handshakes with certificates), and the closing alerts
    of those longer than FUZZ_MAX_LEN after their handshakes."""
    out = scenario_seeds("tls", 6)
    return out + [c for c in map(_closing, out) if c is not None]
