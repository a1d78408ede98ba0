"""
Why a TLS connection failed, in words: OpenSSL's verify error codes and
alerts turned into sentences that name the certificate at fault, and
L{TLSError}, which carries them.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.python.failure import Failure

from callnet.tls._credentials import certificate_names


class TLSError(Exception):
    """A TLS connection could not be made; the message says why, in words."""

    # Its public name: the async client tells a refusal by this name
    # (C{Failure.check("callnet.tls.TLSError")}), so as not to load TLS code.
    __module__ = "callnet.tls"


def describe(certificate: x509.Certificate) -> str:
    """A certificate in words, by the first name it gives."""
    names = certificate_names(certificate)
    return f"the certificate of {names[0]!r}" if names else "a certificate with no name"


#: OpenSSL's verify error codes, in words (X509_V_ERR_*): what is wrong with
#: the certificate at the depth where verification failed.
_VERIFY_ERRORS = {
    2: "its issuer's certificate is unknown",
    9: "it is not valid yet",
    10: "it has expired",
    18: "it is self-signed, not signed by the trusted CA",
    24: "it is signed by a certificate that is not a CA",
    26: "it may not be used for this purpose",
}


def verify_error_text(error: int, certificate: x509.Certificate, depth: int = 0) -> str:
    """What a failed verification means, in words, naming the certificate at fault."""
    if error in (19, 20, 21):
        if depth:
            # Reported at the root of the chain the other end sent.
            names = certificate_names(certificate)
            signer = repr(names[0]) if names else "a CA"
            return f"certificate verify failed: it is signed by {signer}, not by the trusted CA"
        issuer = certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        signer = repr(str(issuer[0].value)) if issuer else "another CA"
        return (
            f"certificate verify failed: {describe(certificate)} is signed by {signer},"
            " not by the trusted CA"
        )
    why = _VERIFY_ERRORS.get(error, f"OpenSSL verify error {error}")
    where = "" if depth == 0 else " in its chain"
    return f"certificate verify failed: {describe(certificate)}{where}: {why}"


#: TLS alerts a node sends a client it refuses, in words.
_ALERTS = {
    "certificate required": "it requires a client certificate signed by its CA",
    "unknown ca": "it does not trust the CA of this client's certificate",
    "bad certificate": "it refused this client's certificate",
    "certificate unknown": "it refused this client's certificate",
    "certificate expired": "this client's certificate has expired",
}


def refusal_text(error: SSL.Error) -> str:
    """An OpenSSL error in words, with what a node's alert means if it sent one."""
    text = _ssl_error_text(error)
    for alert, meaning in _ALERTS.items():
        if f"alert {alert}" in text:
            return f"{meaning} ({text})"
    return text


def _ssl_error_text(error: SSL.Error) -> str:
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    text = ", ".join(reason for reason in reasons if reason) or str(error)
    if any(word in text for word in ("wrong version number", "packet length too long")):
        text += " (the other end does not speak TLS: is it a tcp: listener?)"
    return text


def handshake_failure(reason: Failure, timed_out: float | None) -> TLSError:
    """
    Why a client's handshake failed, from the reason its connection was lost.

    @param timed_out: the seconds it was given, if it ran out of them.
    """
    if timed_out is not None:
        return TLSError(f"TLS handshake failed: no handshake within {timed_out:g}s")
    error = reason.value
    if isinstance(error, TLSError):
        return TLSError(f"TLS handshake failed: {error}")
    if isinstance(error, SSL.Error):
        return TLSError(f"TLS handshake failed: {refusal_text(error)}")
    return TLSError(
        f"TLS handshake failed: the connection closed before it finished"
        f" ({reason.getErrorMessage()})"
    )


def peer_text(transport: Any) -> str:
    """A connection's peer address as C{host:port}, for logs."""
    address = transport.getPeer() if transport is not None else None
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
