"""`up --tls-cert PEM`: the file HAProxy terminates TLS with, checked before anything starts
(HAProxy would otherwise fail after `up` printed its addresses)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def check_pem(data: bytes) -> None:
    """Raise ValueError unless `data` holds a certificate and the private key of the
    first certificate, as HAProxy's `crt` wants them in one file."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError("no PEM certificate in the file") from None
    blocks = [b for b in data.split(b"-----BEGIN ") if b"PRIVATE KEY-----" in b.split(b"\n")[0]]
    if not blocks:
        raise ValueError(
            "no private key in the file (HAProxy wants the certificate and key in one PEM)"
        )
    try:
        key = serialization.load_pem_private_key(b"-----BEGIN " + blocks[0], password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the private key cannot be read: {e}") from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certificates[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError("the private key does not belong to the first certificate")
