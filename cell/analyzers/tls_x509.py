"""X.509 certificates of a TLS Certificate message, decoded the way Zeek's x509.log reports them.

`parse_certificate_list` splits a (TLS <= 1.2) Certificate handshake body into DER certificates;
`x509_fields` decodes one with the `cryptography` package into Zeek's x509.log fields (dotted names,
as Zeek's JSON writer prints them). Decoding is cached by SHA-256 fingerprint: a server's chain is the
same on every connection, so the cost is paid once. A certificate `cryptography` cannot decode keeps
its fingerprint and gets `"parse_error"` instead of the decoded fields.

Name conventions follow Zeek (which uses OpenSSL): subject/issuer in RFC 4514 order ("CN=..,O=..");
key_alg and sig_alg are OpenSSL's long names ("rsaEncryption", "sha256WithRSAEncryption"); the EC
curve is OpenSSL's short name ("prime256v1"); the serial is upper-case hex; exponent is a decimal
string.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from celltap.cell.analyzers.tls_hello import TlsError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

CACHE_SIZE = 4096
_cache: OrderedDict[bytes, dict] = OrderedDict()

# OpenSSL short names where they differ from the SEC 2 names `cryptography` uses
_CURVE_SN = {"secp256r1": "prime256v1", "secp192r1": "prime192v1"}
# OpenSSL long names of algorithms `cryptography` names differently
_ALG_LN = {"ed25519": "ED25519", "ed448": "ED448"}


def parse_certificate_list(body: bytes) -> list[bytes]:
    """The DER certificates of a TLS 1.0-1.2 Certificate message body (certificate_list<0..2^24-1>)."""
    if len(body) < 3:
        raise TlsError("bad_certificate_message")
    total = int.from_bytes(body[:3], "big")
    if total + 3 > len(body):
        raise TlsError("bad_certificate_message")
    pos, end = 3, 3 + total
    out = []
    while pos + 3 <= end:
        n = int.from_bytes(body[pos : pos + 3], "big")
        pos += 3
        if pos + n > end:
            raise TlsError("bad_certificate_message")
        out.append(body[pos : pos + n])
        pos += n
    return out


def fingerprint(der: bytes) -> str:
    """Zeek's certificate fingerprint: SHA-256 of the DER encoding, lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = getattr(oid, "_name", None) or oid.dotted_string
    return _ALG_LN.get(name, name)


def _key_fields(cert: x509.Certificate, out: dict) -> None:
    try:
        out["certificate.key_alg"] = _oid_name(cert.public_key_algorithm_oid)
        key = cert.public_key()
    except Exception:  # an unsupported or broken key: the other fields stand
        return
    if isinstance(key, rsa.RSAPublicKey):
        out["certificate.key_type"] = "rsa"
        out["certificate.key_length"] = key.key_size
        out["certificate.exponent"] = str(key.public_numbers().e)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        out["certificate.key_type"] = "ecdsa"
        out["certificate.key_length"] = key.curve.key_size
        out["certificate.curve"] = _CURVE_SN.get(key.curve.name, key.curve.name)
    elif isinstance(key, dsa.DSAPublicKey):
        out["certificate.key_type"] = "dsa"
        out["certificate.key_length"] = key.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        out["certificate.key_type"] = "ed25519"
        out["certificate.key_length"] = 256
    elif isinstance(key, ed448.Ed448PublicKey):
        out["certificate.key_type"] = "ed448"
        out["certificate.key_length"] = 456


def _extension_fields(cert: x509.Certificate, out: dict) -> None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for key, kind in (
            ("san.dns", x509.DNSName),
            ("san.uri", x509.UniformResourceIdentifier),
            ("san.email", x509.RFC822Name),
        ):
            values = san.get_values_for_type(kind)
            if values:
                out[key] = list(values)
        ips = san.get_values_for_type(x509.IPAddress)
        if ips:
            out["san.ip"] = [str(ip) for ip in ips]
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    out["basic_constraints.ca"] = bc.ca
    if bc.path_length is not None:
        out["basic_constraints.path_len"] = bc.path_length


def _decode(der: bytes) -> dict:
    out: dict = {"fingerprint": fingerprint(der)}
    try:
        cert = x509.load_der_x509_certificate(der)
        out["certificate.version"] = cert.version.value + 1
        serial = f"{cert.serial_number:X}"
        out["certificate.serial"] = serial if len(serial) % 2 == 0 else "0" + serial
        out["certificate.subject"] = cert.subject.rfc4514_string()
        out["certificate.issuer"] = cert.issuer.rfc4514_string()
        out["certificate.not_valid_before"] = cert.not_valid_before_utc.timestamp()
        out["certificate.not_valid_after"] = cert.not_valid_after_utc.timestamp()
        out["certificate.sig_alg"] = _oid_name(cert.signature_algorithm_oid)
        _key_fields(cert, out)
        _extension_fields(cert, out)
    except Exception as exc:  # any input may be hostile: a bad certificate costs only itself
        out["parse_error"] = type(exc).__name__
    return out


def x509_fields(der: bytes) -> dict:
    """Zeek's x509.log fields of one DER certificate (a fresh dict; decoded once per fingerprint)."""
    key = hashlib.sha256(der).digest()
    hit = _cache.get(key)
    if hit is None:
        hit = _decode(der)
        _cache[key] = hit
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return dict(hit)
