"""Self-signed OPC UA application certificates (Part 6, 6.2.2), made with ``cryptography``.

An OPC UA peer checks more than a TLS client does: the certificate's
subjectAltName must carry the application URI the peer announces, the key
usage must allow signing, non-repudiation and key/data encipherment, and the
extended key usage must say client and/or server. :func:`make_certificate`
writes a PEM certificate and an unencrypted PEM key (mode 0600) that pass
those checks.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateFiles", "make_certificate"]


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    certificate: Path
    private_key: Path
    uri: str


def make_certificate(
    directory: str | Path,
    name: str,
    *,
    uri: str | None = None,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    days: int = 825,
    server: bool = False,
    key_bits: int = 2048,
) -> CertificateFiles:
    """Write ``NAME-cert.pem`` and ``NAME-key.pem`` under ``directory``.

    ``uri`` is the application URI (default ``urn:safewatch:gateway:NAME``, or
    ``urn:safewatch:sim:NAME`` for a server). ``hosts`` go into the
    subjectAltName as DNS names or IP addresses.
    """
    if days < 1:
        raise ValueError("days must be >= 1")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    uri = uri or f"urn:safewatch:{'sim' if server else 'gateway'}:{name}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SafeWatch"),
        ]
    )
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = folder / f"{name}-cert.pem"
    key_path = folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return CertificateFiles(cert_path, key_path, uri)
