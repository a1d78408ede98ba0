"""
A development CA: C{callnet certs init DIR} makes it (L{make_ca}), and
C{callnet certs node DIR NAME} a certificate for each node
(L{make_node_certificate}), which it presents both to clients and to its
peers.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from callnet.errors import ConfigError
from callnet.tls._credentials import load_certificate, load_key

#: How long certificates made by L{make_ca} and L{make_node_certificate} last.
DEFAULT_DAYS = 365
#: File names of the development CA in its directory.
CA_CERT, CA_KEY = "ca.pem", "ca.key"


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists already; remove it, or use --force") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _save(
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    cert_path: Path,
    key_path: Path,
    force: bool,
) -> tuple[Path, Path]:
    """Write a certificate and its key (mode 0600), neither if either exists (unless C{force})."""
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise ConfigError(f"{path} exists already; remove it, or use --force")
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return cert_path, key_path


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise ConfigError("certificates must last at least 1 day")
    now = datetime.datetime.now(datetime.UTC)
    # A little slack before now, for clocks that disagree by a few minutes.
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signatures only (ECDHE does the key exchange); a CA's also sign certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: Any,
    start: datetime.datetime,
    end: datetime.datetime,
    ca: bool,
) -> x509.CertificateBuilder:
    """
    What CA and node certificates share: a random serial, and whether the
    key may sign certificates (a CA's, for node certificates only: path
    length 0) or only connections.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(_key_usage(ca), critical=True)
    )


def make_ca(
    directory: str | os.PathLike[str],
    common_name: str | None = None,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> tuple[Path, Path]:
    """
    Make a CA for a cluster: C{ca.pem} and C{ca.key} (mode 0600) in C{directory}.

    An EC P-256 key and a self-signed CA certificate that may sign node
    certificates only (path length 0), valid for C{days}.  Its name is
    C{common_name}, by default "callnet development CA" and a random
    suffix, so that two CAs are told apart in errors.

    @return: the paths of the certificate and the key.
    @raise ConfigError: a file exists already (unless C{force}).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = common_name or f"callnet development CA {secrets.token_hex(3)}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _validity(days)
    public = key.public_key()
    certificate = (
        _builder(subject, subject, public, start, end, ca=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _save(certificate, key, folder / CA_CERT, folder / CA_KEY, force)


def make_node_certificate(
    directory: str | os.PathLike[str],
    name: str,
    ips: Iterable[str] = (),
    dns: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> tuple[Path, Path]:
    """
    Make C{NAME.pem} and C{NAME.key} (mode 0600) in C{directory}, signed by
    the CA there (L{make_ca}).

    The certificate names the node: its common name and first DNS name are
    C{name}, then any C{dns} names and C{ips} addresses (for clients that
    reach the node by address).  It serves both ends of a TLS connection
    (server and client authentication), as a node listens and dials its
    peers with the same certificate.

    @return: the paths of the certificate and the key.
    @raise ConfigError: no CA in C{directory}, a bad name or address, or
        a file exists already (unless C{force}).
    """
    folder = Path(directory)
    if not name or "/" in name or name.startswith(".") or not name.isascii():
        raise ConfigError(f"not a usable node name: {name!r}")
    ca_cert = load_certificate(str(folder / CA_CERT), "the CA (make it with certs init)")
    ca_key = load_key(str(folder / CA_KEY), "the CA (make it with certs init)")
    addresses = []
    for text in ips:
        try:
            addresses.append(ipaddress.ip_address(text))
        except ValueError:
            raise ConfigError(f"not an IP address: {text!r}") from None
    alternatives: list[x509.GeneralName] = [x509.DNSName(name)]
    alternatives += [x509.DNSName(extra) for extra in dns if extra != name]
    alternatives += [x509.IPAddress(address) for address in addresses]
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    end = min(end, ca_cert.not_valid_after_utc)
    certificate = (
        _builder(subject, ca_cert.subject, key.public_key(), start, end, ca=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _save(certificate, key, folder / f"{name}.pem", folder / f"{name}.key", force)
