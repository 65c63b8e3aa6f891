"""Sans-IO parsing of TLS hellos (ClientHello, ServerHello, the SSLv2-format ClientHello) and their
fingerprints: JA3, JA3S, JA4 and JA4S.

A hello body (after the 4-byte handshake header, or the SSLv2 record's message type) becomes a dict of
the values the analyzer reports and the fingerprints hash. Malformed input raises `TlsError` whose
`reason` is the counter label; nothing else escapes.
"""

from __future__ import annotations

import hashlib
import struct

# RFC 8446 4.1.3: a ServerHello with this random is a HelloRetryRequest
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


class TlsError(ValueError):
    """A malformed hello; `reason` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0a0a, 0x1a1a, ... 0xfafa) are left out of fingerprints."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


_JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}


def _u16_list(data: bytes, length_size: int = 2) -> list[int]:
    if len(data) < length_size:
        raise TlsError("bad_extension")
    n = int.from_bytes(data[:length_size], "big")
    body = data[length_size : length_size + n]
    if len(body) != n or n % 2:
        raise TlsError("bad_extension")
    return list(struct.unpack(f">{n // 2}H", body))


def _extensions(data: bytes, pos: int) -> list[tuple[int, bytes]]:
    if pos == len(data):
        return []
    if pos + 2 > len(data):
        raise TlsError("bad_extensions")
    (total,) = struct.unpack_from(">H", data, pos)
    pos += 2
    end = pos + total
    if end > len(data):
        raise TlsError("bad_extensions")
    out = []
    while pos + 4 <= end:
        etype, elen = struct.unpack_from(">HH", data, pos)
        pos += 4
        if pos + elen > end:
            raise TlsError("bad_extensions")
        out.append((etype, data[pos : pos + elen]))
        pos += elen
    return out


def _sni(body: bytes) -> str | None:
    if len(body) < 5:
        return None
    pos = 2
    while pos + 3 <= len(body):
        ntype = body[pos]
        (nlen,) = struct.unpack_from(">H", body, pos + 1)
        if ntype == 0:
            return body[pos + 3 : pos + 3 + nlen].decode("ascii", "replace")
        pos += 3 + nlen
    return None


def _alpn(body: bytes) -> list[str]:
    out = []
    pos = 2
    while pos < len(body):
        ln = body[pos]
        out.append(body[pos + 1 : pos + 1 + ln].decode("latin-1"))
        pos += 1 + ln
    return out


def _key_share_groups(body: bytes) -> list[int]:
    """Groups of a ClientHello key_share (client_shares: group, key_exchange<1..2^16-1>)."""
    if len(body) < 2:
        raise TlsError("bad_extension")
    end = min(len(body), 2 + struct.unpack_from(">H", body, 0)[0])
    pos = 2
    out = []
    while pos + 4 <= end:
        group, klen = struct.unpack_from(">HH", body, pos)
        out.append(group)
        pos += 4 + klen
    return out


def parse_client_hello(body: bytes) -> dict:
    """Parse a ClientHello handshake body (after the 4-byte handshake header)."""
    try:
        version = struct.unpack_from(">H", body, 0)[0]
        pos = 2 + 32
        sid_len = body[pos]
        session_id = body[pos + 1 : pos + 1 + sid_len]
        pos += 1 + sid_len
        (cs_len,) = struct.unpack_from(">H", body, pos)
        pos += 2
        if cs_len % 2 or pos + cs_len > len(body):
            raise TlsError("bad_client_hello")
        ciphers = list(struct.unpack_from(f">{cs_len // 2}H", body, pos))
        pos += cs_len
        comp_len = body[pos]
        comp = list(body[pos + 1 : pos + 1 + comp_len])
        pos += 1 + comp_len
        if pos > len(body) or len(session_id) != sid_len:
            raise TlsError("bad_client_hello")
    except (struct.error, IndexError):
        raise TlsError("bad_client_hello") from None
    exts = _extensions(body, pos)
    hello: dict = {
        "version": version,
        "session_id": session_id,
        "cipher_suites": ciphers,
        "compression_methods": comp,
        "extensions": [e for e, _ in exts],
    }
    groups: list[int] = []
    point_formats: list[int] = []
    sig_algs: list[int] = []
    versions: list[int] = []
    for etype, ebody in exts:
        if etype == 0:
            hello["sni"] = _sni(ebody)
        elif etype == 16:
            hello["alpn"] = _alpn(ebody)
        elif etype == 10:
            groups = _u16_list(ebody)
        elif etype == 11:
            point_formats = list(ebody[1 : 1 + ebody[0]]) if ebody else []
        elif etype == 13:
            sig_algs = _u16_list(ebody)
        elif etype == 43:
            versions = _u16_list(ebody, 1)
        elif etype == 51:
            hello["key_share_groups"] = _key_share_groups(ebody)
        elif etype == 45 and ebody:
            hello["psk_key_exchange_modes"] = list(ebody[1 : 1 + ebody[0]])
        elif etype == 35:
            hello["session_ticket"] = len(ebody)
    hello["supported_groups"] = groups
    hello["ec_point_formats"] = point_formats
    hello["signature_algorithms"] = sig_algs
    hello["supported_versions"] = versions
    _ja3(hello, ciphers, [e for e, _ in exts], groups, point_formats)
    hello["ja4"] = ja4(hello, sig_algs)
    return hello


def _ja3(hello: dict, ciphers: list[int], exts: list[int], groups: list[int], formats: list[int]) -> None:
    ja3 = ",".join(
        (
            str(hello["version"]),
            "-".join(str(c) for c in ciphers if not is_grease(c)),
            "-".join(str(e) for e in exts if not is_grease(e)),
            "-".join(str(g) for g in groups if not is_grease(g)),
            "-".join(str(p) for p in formats),
        )
    )
    hello["ja3_string"] = ja3
    hello["ja3"] = hashlib.md5(ja3.encode()).hexdigest()


def parse_sslv2_client_hello(body: bytes) -> dict:
    """Parse an SSLv2-format CLIENT-HELLO record body (after the 2-byte record header, msg type included).

    Layout (SSL 2.0 spec; RFC 6101 E.2 for the compatible form sent by SSLv3/TLS clients):
    msg_type(1)=1, version(2), cipher_specs_length(2), session_id_length(2), challenge_length(2),
    cipher_specs (3 bytes each), session_id, challenge.
    """
    if len(body) < 9 or body[0] != 1:
        raise TlsError("bad_sslv2_client_hello")
    version, cs_len, sid_len, ch_len = struct.unpack_from(">HHHH", body, 1)
    if cs_len % 3 or 9 + cs_len + sid_len + ch_len > len(body) or not 16 <= ch_len <= 32:
        raise TlsError("bad_sslv2_client_hello")
    specs = [int.from_bytes(body[i : i + 3], "big") for i in range(9, 9 + cs_len, 3)]
    pos = 9 + cs_len
    session_id = body[pos : pos + sid_len]
    challenge = body[pos + sid_len : pos + sid_len + ch_len]
    hello: dict = {
        "version": version,
        "session_id": session_id,
        "cipher_specs": specs,
        # specs 0x00XXYY name TLS suites (RFC 6101 E.1); the others are SSLv2's own ciphers
        "cipher_suites": specs,
        "challenge": challenge.hex(),
        "compression_methods": [],
        "extensions": [],
        "supported_groups": [],
        "ec_point_formats": [],
        "signature_algorithms": [],
        "supported_versions": [],
        "sslv2_format": True,
    }
    _ja3(hello, specs, [], [], [])
    hello["ja4"] = ja4(hello, [])
    return hello


def _hash12(items: list[int]) -> str:
    if not items:
        return "000000000000"
    return hashlib.sha256(",".join(f"{i:04x}" for i in items).encode()).hexdigest()[:12]


def _alpn_code(first: str) -> str:
    if not first:
        return "00"
    if first[0].isascii() and first[0].isalnum() and first[-1].isascii() and first[-1].isalnum():
        return first[0] + first[-1]
    raw = first.encode("latin-1").hex()
    return raw[0] + raw[-1]


def ja4(hello: dict, sig_algs: list[int], transport: str = "t") -> str:
    """JA4 (FoxIO) fingerprint of a parsed ClientHello."""
    versions = [v for v in hello["supported_versions"] if not is_grease(v)]
    version = max(versions) if versions else hello["version"]
    ciphers = [c for c in hello["cipher_suites"] if not is_grease(c)]
    exts = [e for e in hello["extensions"] if not is_grease(e)]
    alpn = hello.get("alpn") or []
    part_a = (
        f"{transport}{_JA4_VERSIONS.get(version, '00')}{'d' if 0 in exts else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{_alpn_code(alpn[0] if alpn else '')}"
    )
    part_b = _hash12(sorted(ciphers))
    ext_sorted = sorted(e for e in exts if e not in (0, 16))
    if not ext_sorted:
        part_c = "000000000000"
    else:
        text = ",".join(f"{e:04x}" for e in ext_sorted)
        if sig_algs:
            text += "_" + ",".join(f"{s:04x}" for s in sig_algs)
        part_c = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{part_a}_{part_b}_{part_c}"


def parse_server_hello(body: bytes) -> dict:
    """Parse a ServerHello handshake body (after the 4-byte handshake header)."""
    try:
        version = struct.unpack_from(">H", body, 0)[0]
        random = body[2:34]
        pos = 2 + 32
        sid_len = body[pos]
        session_id = body[pos + 1 : pos + 1 + sid_len]
        pos += 1 + sid_len
        (cipher,) = struct.unpack_from(">H", body, pos)
        comp = body[pos + 2]
        pos += 3  # cipher suite + compression method
        if pos > len(body) or len(random) != 32:
            raise TlsError("bad_server_hello")
    except (struct.error, IndexError):
        raise TlsError("bad_server_hello") from None
    exts = _extensions(body, pos)
    hello: dict = {
        "version": version,
        "session_id": session_id,
        "cipher_suite": cipher,
        "compression_method": comp,
        "extensions": [e for e, _ in exts],
        "hrr": random == HRR_RANDOM,
    }
    for etype, ebody in exts:
        if etype == 43 and len(ebody) == 2:
            hello["selected_version"] = struct.unpack(">H", ebody)[0]
        elif etype == 16:
            alpn = _alpn(ebody)
            hello["alpn"] = alpn[0] if alpn else None
        elif etype == 51 and len(ebody) >= 2:
            # ServerHello: KeyShareEntry (group, key); HelloRetryRequest: selected_group only
            hello["key_share_group"] = struct.unpack_from(">H", ebody, 0)[0]
        elif etype == 41:
            hello["psk_accepted"] = True
    ext_ids = [e for e, _ in exts]
    ja3s = f"{version},{cipher},{'-'.join(str(e) for e in ext_ids)}"
    hello["ja3s_string"] = ja3s
    hello["ja3s"] = hashlib.md5(ja3s.encode()).hexdigest()
    hello["ja4s"] = ja4s(hello)
    return hello


def ja4s(hello: dict, transport: str = "t") -> str:
    """JA4S (FoxIO) fingerprint of a parsed ServerHello: version, extension count, ALPN, cipher, and
    a truncated SHA-256 of the extensions in the order sent."""
    version = hello.get("selected_version") or hello["version"]
    exts = hello["extensions"]
    part_a = (
        f"{transport}{_JA4_VERSIONS.get(version, '00')}{min(len(exts), 99):02d}"
        f"{_alpn_code(hello.get('alpn') or '')}"
    )
    part_c = _hash12(exts)
    return f"{part_a}_{hello['cipher_suite']:04x}_{part_c}"
