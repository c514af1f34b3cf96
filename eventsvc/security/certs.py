"""
Minting certificates: a development CA and the certificates it signs.

Used by C{eventsvc certs} to make FAKE development certificates and by the
tests to make good, expired and foreign ones.  Nothing here is for
production: a real deployment brings certificates from its own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import List, NamedTuple, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FAKE = "FAKE development certificate - NOT FOR PRODUCTION"


class Minted(NamedTuple):
    cert_pem: bytes
    key_pem: bytes
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "eventsvc (FAKE, development only)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Minted:
    return Minted(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        cert,
        key,
    )


def make_ca(common_name: str = "eventsvc FAKE development CA", days: int = 3650, path_length: Optional[int] = 0) -> Minted:
    """
    A self-signed root CA.  C{path_length}: how many intermediate CAs may
    stand below it (0: it signs end certificates only; None: no limit).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return _pem(_ca_certificate(_name(common_name), key, key, days, path_length), key)


def make_intermediate(root: Minted, common_name: str, days: int = 1825) -> Minted:
    """
    An intermediate CA that C{root} signs (C{root} made with a
    C{path_length} of 1 or more), signing end certificates only.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_certificate(root.certificate.subject, key, root.key, days, 0, _name(common_name))
    return _pem(cert, key)


def _ca_certificate(
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    days: int,
    path_length: Optional[int],
    subject: Optional[x509.Name] = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or issuer)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if signer is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def make_cert(
    ca: Minted,
    common_name: str,
    names: Sequence[str] = (),
    days: int = 825,
    not_before: Optional[datetime.datetime] = None,
    not_after: Optional[datetime.datetime] = None,
) -> Minted:
    """
    A certificate signed by C{ca} for C{common_name}, valid for the DNS
    names and IP addresses in C{names}, usable by servers and clients.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    alternatives: List[x509.GeneralName] = []
    for name in list(names) or [common_name]:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return _pem(cert, key)
