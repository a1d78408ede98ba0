"""
A node's certificate and key, loaded from its C{[tls]} files and checked;
the names a certificate gives its holder; and the one way every context
here is made, with callnet's choice of TLS 1.2 suites (L{AEAD_CIPHERS}).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions

from callnet.config import TLSSettings
from callnet.errors import ConfigError

#: The TLS 1.2 suites every context made here offers, as an OpenSSL cipher
#: string: ECDHE key exchange (forward secrecy) with AES-GCM or
#: ChaCha20-Poly1305 (authenticated encryption).  CBC suites, with their
#: SHA-1 MACs and padding-oracle history, are left out; TLS 1.3 has only
#: AEAD suites, and OpenSSL's own choice of them stands.
AEAD_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class Credentials:
    """A node's certificate and key, and the CA it trusts, loaded and checked."""

    certificate: x509.Certificate
    key: Any  # a cryptography private key
    ca: x509.Certificate | None = None

    @property
    def name(self) -> str | None:
        """The name the node's certificate gives it (its first DNS name, else its CN)."""
        names = certificate_names(self.certificate)
        return names[0] if names else None

    def certificate_options(self, **options: Any) -> CertificateOptions:
        """Twisted's options for a context that presents this certificate."""
        # cryptography's objects, which pyOpenSSL takes as they are (its own
        # are deprecated there), though Twisted's annotations name only its own.
        certificate: Any = self.certificate
        return context_options(privateKey=self.key, certificate=certificate, **options)


def context_options(**options: Any) -> CertificateOptions:
    """Twisted's options for a context, with callnet's choice of suites."""
    ciphers = AcceptableCiphers.fromOpenSSLCipherString(AEAD_CIPHERS)
    return CertificateOptions(acceptableCiphers=ciphers, **options)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None


def load_certificate(path: str, what: str) -> x509.Certificate:
    """
    The PEM certificate at C{path}.

    @param what: what the file is, to begin the error with (C{"[tls] ca"}).
    @raise ConfigError: it cannot be read or is not a PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError:
        raise ConfigError(f"{what}: {path} is not a PEM certificate") from None


def load_key(path: str, what: str) -> Any:
    """
    The unencrypted PEM private key at C{path}.

    @param what: what the file is, to begin the error with (C{"[tls] key"}).
    @raise ConfigError: it cannot be read or is not such a key.
    """
    try:
        return serialization.load_pem_private_key(_read(path, what), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what}: {path} is not an unencrypted PEM private key ({e})") from None


def _public_bytes(key: Any) -> bytes:
    return cast(
        bytes,
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def load_credentials(settings: TLSSettings) -> Credentials:
    """
    Read the node's C{[tls]} files.

    @raise ConfigError: C{[tls]} cert or key is not set, a file cannot be
        read or is not PEM, or the key is not the certificate's.
    """
    if not settings.cert or not settings.key:
        raise ConfigError("[tls] cert and key must be set for TLS")
    certificate = load_certificate(settings.cert, "[tls] cert")
    key = load_key(settings.key, "[tls] key")
    if _public_bytes(key.public_key()) != _public_bytes(certificate.public_key()):
        raise ConfigError(
            f"[tls] key: {settings.key} is not the key of the certificate {settings.cert}"
        )
    ca = load_certificate(settings.ca, "[tls] ca") if settings.ca else None
    return Credentials(certificate, key, ca)


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """
    The names a certificate gives its holder: its DNS names (subject
    alternative names), or its common name when it has none.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        dns: list[str] = []
    else:
        dns = [str(name) for name in san.value.get_values_for_type(x509.DNSName)]
    if dns:
        return dns
    return [
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
