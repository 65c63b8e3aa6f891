"""Sans-IO parsing of TLS ClientHello / ServerHello and the JA3, JA3S and JA4 fingerprints."""

from __future__ import annotations

import hashlib
import struct


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


def parse_client_hello(body: bytes) -> dict:
    """Parse a ClientHello handshake body (after the 4-byte handshake header)."""
    try:
        version = struct.unpack_from(">H", body, 0)[0]
        pos = 2 + 32
        sid_len = body[pos]
        pos += 1 + sid_len
        (cs_len,) = struct.unpack_from(">H", body, pos)
        pos += 2
        if cs_len % 2 or pos + cs_len > len(body):
            raise TlsError("bad_client_hello")
        ciphers = list(struct.unpack_from(f">{cs_len // 2}H", body, pos))
        pos += cs_len
        comp_len = body[pos]
        pos += 1 + comp_len
        if pos > len(body):
            raise TlsError("bad_client_hello")
    except (struct.error, IndexError):
        raise TlsError("bad_client_hello") from None
    exts = _extensions(body, pos)
    hello: dict = {"version": version, "cipher_suites": ciphers, "extensions": [e for e, _ in exts]}
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
    hello["supported_groups"] = groups
    hello["ec_point_formats"] = point_formats
    hello["signature_algorithms"] = sig_algs
    hello["supported_versions"] = versions
    ja3 = ",".join(
        (
            str(version),
            "-".join(str(c) for c in ciphers if not is_grease(c)),
            "-".join(str(e) for e, _ in exts if not is_grease(e)),
            "-".join(str(g) for g in groups if not is_grease(g)),
            "-".join(str(p) for p in point_formats),
        )
    )
    hello["ja3_string"] = ja3
    hello["ja3"] = hashlib.md5(ja3.encode()).hexdigest()
    hello["ja4"] = ja4(hello, sig_algs)
    return hello


def _hash12(items: list[int]) -> str:
    if not items:
        return "000000000000"
    return hashlib.sha256(",".join(f"{i:04x}" for i in items).encode()).hexdigest()[:12]


def ja4(hello: dict, sig_algs: list[int], transport: str = "t") -> str:
    """JA4 (FoxIO) fingerprint of a parsed ClientHello."""
    versions = [v for v in hello["supported_versions"] if not is_grease(v)]
    version = max(versions) if versions else hello["version"]
    ciphers = [c for c in hello["cipher_suites"] if not is_grease(c)]
    exts = [e for e in hello["extensions"] if not is_grease(e)]
    alpn = hello.get("alpn") or []
    first = alpn[0] if alpn else ""
    if not first:
        alpn_code = "00"
    elif first[0].isascii() and first[0].isalnum() and first[-1].isascii() and first[-1].isalnum():
        alpn_code = first[0] + first[-1]
    else:
        raw = first.encode("latin-1").hex()
        alpn_code = raw[0] + raw[-1]
    part_a = (
        f"{transport}{_JA4_VERSIONS.get(version, '00')}{'d' if 0 in exts else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{alpn_code}"
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
        pos = 2 + 32
        sid_len = body[pos]
        pos += 1 + sid_len
        (cipher,) = struct.unpack_from(">H", body, pos)
        pos += 3  # cipher suite + compression method
        if pos > len(body):
            raise TlsError("bad_server_hello")
    except (struct.error, IndexError):
        raise TlsError("bad_server_hello") from None
    exts = _extensions(body, pos)
    hello: dict = {"version": version, "cipher_suite": cipher, "extensions": [e for e, _ in exts]}
    for etype, ebody in exts:
        if etype == 43 and len(ebody) == 2:
            hello["selected_version"] = struct.unpack(">H", ebody)[0]
        elif etype == 16:
            alpn = _alpn(ebody)
            hello["alpn"] = alpn[0] if alpn else None
    ja3s = f"{version},{cipher},{'-'.join(str(e) for e, _ in exts)}"
    hello["ja3s_string"] = ja3s
    hello["ja3s"] = hashlib.md5(ja3s.encode()).hexdigest()
    return hello
