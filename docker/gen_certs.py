"""Make the one-host cluster's CA and certificates, once (the compose file's `certs` service).

    python gen_certs.py --out /tls --node-names node-0,localhost --days 3650

writes, unless `<out>/ca.crt` already exists (a restart keeps the cluster's identity):

    <out>/ca.crt                              the CA's certificate (0644: Prometheus reads it too)
    <out>/node/{ca.crt,tls.crt,tls.key}       server + client certificate of the analysis nodes
    <out>/collector/{ca.crt,tls.crt,tls.key}  client certificate of the collectors
    <out>/client/{ca.crt,tls.crt,tls.key}     client certificate for people and tools that query

the same layout as the Helm chart's Secrets (ca.crt, tls.crt, tls.key).  The CA's private key is not
written anywhere: new certificates need a new CA (delete the volume).  Keys are ECDSA P-256, 0600.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


def make_ca(cn: str, days: int) -> Issuer:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(cn, _name(cn), key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(ca: Issuer, cn: str, names: list[str], server: bool, days: int) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) signed by `ca`; `names` (DNS names or IPs) go in the SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    b = _builder(cn, ca[0].subject, key, days).add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if names:
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = b.sign(ca[1], hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def generate(out: Path, node_names: list[str], days: int, prefix: str = "celltap") -> bool:
    """Write the CA and the three roles' files under `out`; False (and nothing written) if present."""
    if (out / "ca.crt").exists():
        return False
    ca = make_ca(f"{prefix}-ca", days)
    ca_pem = ca[0].public_bytes(serialization.Encoding.PEM)
    roles = {"node": (node_names, True), "collector": ([], False), "client": ([], False)}
    for role, (names, server) in roles.items():
        d = out / role
        d.mkdir(parents=True, exist_ok=True)
        cert, key = make_leaf(ca, f"{prefix}-{role}", names, server, days)
        _write(d / "ca.crt", ca_pem, 0o644)
        _write(d / "tls.crt", cert, 0o644)
        _write(d / "tls.key", key, 0o600)
    _write(out / "ca.crt", ca_pem, 0o644)  # last: its presence means the set is complete
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the generator."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory (a volume shared with the services)")
    p.add_argument("--node-names", default="localhost,127.0.0.1", help="comma-separated SAN of the nodes")
    p.add_argument("--days", type=int, default=3650)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the certificates (or keep the existing ones) and say which."""
    args = parse_args(argv)
    names = [n.strip() for n in args.node_names.split(",") if n.strip()]
    made = generate(Path(args.out), names, args.days)
    print(
        f"gen_certs: {'wrote' if made else 'kept the existing'} CA and certificates in {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
