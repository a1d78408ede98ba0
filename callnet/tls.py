"""
TLS for nodes, their peers and their clients: certificates that name nodes,
checked with C{service_identity}.

Three uses, one set of files (see C{docs/security.md}):

  - A node with C{[tls]} cert and key listens on C{tls:PORT[:interface=ADDR]}
    (L{server_endpoint}).  With C{[tls] ca} it asks each client for a
    certificate signed by that CA, and refuses one that is not; with
    C{require_client_certificate} it refuses a client that presents none.
    A client has C{[limits] tls_handshake_timeout} seconds to finish its
    handshake (L{with_handshake_deadline}); one that offers ALPN is served
    all the same.  L{peer_identity} gives the name in a client's verified
    certificate.
  - A node with C{[tls]} cert, key and ca dials its peers over TLS
    (L{peer_endpoint}): it presents its own certificate, trusts only the CA,
    and checks that the peer's certificate names the peer as configured
    (C{beta}), whatever address it dials.
  - A program reaches a node with L{client_endpoint}, which checks the
    node's certificate against a CA and the name it was asked for.

Every context made here speaks TLS 1.2 or 1.3 and, under TLS 1.2, offers
only AEAD suites with forward secrecy (L{AEAD_CIPHERS}).

A client connection made here counts as connected only once its TLS
handshake has succeeded (L{HandshakeEndpoint}): a certificate that is
refused fails the connection attempt, with the reason in words, rather than
a call sent on it.

L{make_ca} and L{make_node_certificate} make a development CA and node
certificates (C{callnet certs init DIR}, C{callnet certs node DIR NAME}).

This module must not import the global reactor: C{twistd} imports the node's
modules while it is still choosing one.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from callnet.config import Limits, TLSSettings
from callnet.errors import ConfigError
from callnet.reactors import Clock, DelayedCall

__all__ = [
    "AEAD_CIPHERS",
    "ALPN_PROTOCOL",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "LISTEN_PREFIX",
    "Credentials",
    "HandshakeEndpoint",
    "TLSError",
    "certificate_names",
    "check_listen",
    "client_endpoint",
    "is_tls_listen",
    "links_use_tls",
    "load_credentials",
    "make_ca",
    "make_node_certificate",
    "parse_listen",
    "peer_endpoint",
    "peer_identity",
    "server_endpoint",
    "with_handshake_deadline",
]

log = Logger()

#: The listen form of a node's own TLS listener: C{tls:PORT[:interface=ADDR]}.
LISTEN_PREFIX = "tls:"
#: Seconds a client waits for a TLS handshake to finish before giving up.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: The TLS 1.2 suites every context made here offers, as an OpenSSL cipher
#: string: ECDHE key exchange (forward secrecy) with AES-GCM or
#: ChaCha20-Poly1305 (authenticated encryption).  CBC suites, with their
#: SHA-1 MACs and padding-oracle history, are left out; TLS 1.3 has only
#: AEAD suites, and OpenSSL's own choice of them stands.
AEAD_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: The ALPN protocol name a node accepts for its line protocol.  A client
#: that offers it gets it; one that offers only others (C{h2},
#: C{http/1.1}) is served without ALPN, as if it had offered none.
ALPN_PROTOCOL = b"callnet"
#: How long certificates made by L{make_ca} and L{make_node_certificate} last.
DEFAULT_DAYS = 365
#: File names of the development CA in its directory.
CA_CERT, CA_KEY = "ca.pem", "ca.key"


class TLSError(Exception):
    """A TLS connection could not be made; the message says why, in words."""


# --- Certificates and keys ----------------------------------------------------------


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
        return _options(privateKey=self.key, certificate=certificate, **options)


def _options(**options: Any) -> CertificateOptions:
    """Twisted's options for a context, with callnet's choice of suites."""
    ciphers = AcceptableCiphers.fromOpenSSLCipherString(AEAD_CIPHERS)
    return CertificateOptions(acceptableCiphers=ciphers, **options)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None


def _load_certificate(path: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError:
        raise ConfigError(f"{what}: {path} is not a PEM certificate") from None


def _load_key(path: str, what: str) -> Any:
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
    certificate = _load_certificate(settings.cert, "[tls] cert")
    key = _load_key(settings.key, "[tls] key")
    if _public_bytes(key.public_key()) != _public_bytes(certificate.public_key()):
        raise ConfigError(
            f"[tls] key: {settings.key} is not the key of the certificate {settings.cert}"
        )
    ca = _load_certificate(settings.ca, "[tls] ca") if settings.ca else None
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


def _describe(certificate: x509.Certificate) -> str:
    names = certificate_names(certificate)
    return f"the certificate of {names[0]!r}" if names else "a certificate with no name"


# --- Listening -----------------------------------------------------------------------


def is_tls_listen(description: str) -> bool:
    """Whether a listen string is the node's own C{tls:} form."""
    return description.startswith(LISTEN_PREFIX)


@dataclass(frozen=True)
class ListenSpec:
    """What a C{tls:} listen string says."""

    port: int
    interface: str = ""
    backlog: int = 50


def _split(description: str) -> list[str]:
    """Split an endpoint string at colons not escaped by a backslash."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_listen(description: str) -> ListenSpec:
    """
    Read C{tls:PORT[:interface=ADDR][:backlog=N]} (colons in an IPv6
    address escaped as C{\\:}).

    @raise ConfigError: naming what is wrong with it.
    """
    usage = "tls:PORT[:interface=ADDRESS][:backlog=N]"
    if not is_tls_listen(description):
        raise ConfigError(f'not a tls: listener: "{description}" (expected {usage})')
    port_text, *options = _split(description[len(LISTEN_PREFIX) :])
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f'bad tls: listener "{description}": the port must be 0 to 65535')
    spec: dict[str, Any] = {"port": int(port_text)}
    for option in options:
        key, sep, value = option.partition("=")
        if key == "interface" and sep:
            spec["interface"] = value
        elif key == "backlog" and sep and value.isdigit() and int(value) > 0:
            spec["backlog"] = int(value)
        else:
            raise ConfigError(
                f'bad tls: listener "{description}": unknown or malformed option'
                f' "{option}" (expected {usage}; the certificate comes from [tls])'
            )
    return ListenSpec(**spec)


def check_listen(description: str, settings: TLSSettings) -> None:
    """
    Check a C{tls:} listen string and the C{[tls]} files it needs, as a node
    would when it starts, without listening.

    @raise ConfigError: the string is malformed, C{[tls]} cert or key is
        unset or unusable, or C{require_client_certificate} is set without
        C{ca}.
    """
    parse_listen(description)
    _server_creator(settings, description)


def _choose_protocol(
    connection: SSL.Connection, offered: list[bytes]
) -> bytes | SSL._NoOverlappingProtocols:
    """
    The ALPN answer to a client: C{callnet} if it offers it, else none at all.

    (Twisted's own choice answers an empty name when nothing overlaps, which
    OpenSSL takes as a fatal error: every client that offers ALPN, such as
    curl or a browser, would be refused with alert 80.)
    """
    if ALPN_PROTOCOL in offered:
        return ALPN_PROTOCOL
    return SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """
    Server connections that verify client certificates, log the ones
    refused, and accept clients that offer ALPN.
    """

    def __init__(self, options: CertificateOptions, verify_mode: int) -> None:
        self._options = options
        self._verify_mode = verify_mode
        # The one context Twisted makes for these options and every
        # connection shares, with its own ALPN choice in: replace it before
        # a connection is made from the context (pyOpenSSL refuses after).
        options.getContext().set_alpn_select_callback(_choose_protocol)

    def serverConnectionForTLS(self, tls: Any) -> SSL.Connection:
        connection = self._options.serverConnectionForTLS(tls)
        if self._verify_mode:
            connection.set_verify(self._verify_mode, _server_verify_callback(tls))
        return connection


def _server_verify_callback(tls: Any) -> Callable[..., bool]:
    def verify(connection: Any, cert: Any, error: int, depth: int, ok: int) -> bool:
        if not ok:
            with contextlib.suppress(Exception):  # never raise into OpenSSL
                log.warn(
                    "refusing a TLS client at {peer}: {why}",
                    peer=_peer_text(getattr(tls, "transport", None)),
                    why=_verify_error_text(error, cert.to_cryptography(), depth),
                )
        return bool(ok)

    return verify


def _server_creator(settings: TLSSettings, description: str) -> _ServerCreator:
    if not settings.cert or not settings.key:
        raise ConfigError(
            f'listener "{description}": a tls: listener needs [tls] cert and key,'
            " the node's certificate"
        )
    credentials = load_credentials(settings)
    if credentials.ca is None:
        if settings.require_client_certificate:
            raise ConfigError(
                "[tls] require_client_certificate needs [tls] ca, the CA that signs"
                " client certificates"
            )
        return _ServerCreator(credentials.certificate_options(), 0)
    options = credentials.certificate_options(
        verify=True,
        caCerts=[crypto.X509.from_cryptography(credentials.ca)],
        requireCertificate=settings.require_client_certificate,
    )
    mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
    if settings.require_client_certificate:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    return _ServerCreator(options, mode)


def server_endpoint(
    reactor: Any,
    description: str,
    settings: TLSSettings,
    handshake_timeout: float = Limits.tls_handshake_timeout,
) -> IStreamServerEndpoint:
    """
    The endpoint of a node's C{tls:PORT[:interface=ADDR]} listener.

    It presents C{[tls]} cert and key.  With C{[tls] ca}, it asks each
    client for a certificate and verifies one that is presented against
    the CA, refusing the handshake if it fails; with
    C{require_client_certificate}, a client with none is refused too.  A
    client that has not finished its handshake C{handshake_timeout}
    seconds after connecting is closed (L{with_handshake_deadline}).

    @raise ConfigError: see L{check_listen}.
    """
    spec = parse_listen(description)
    creator = _server_creator(settings, description)
    endpoint = SSL4ServerEndpoint(reactor, spec.port, creator, spec.backlog, spec.interface)
    return with_handshake_deadline(endpoint, reactor, handshake_timeout)


def with_handshake_deadline(
    endpoint: IStreamServerEndpoint, clock: Clock, timeout: float
) -> IStreamServerEndpoint:
    """
    A TLS server endpoint whose connections are closed if their handshake
    has not finished C{timeout} seconds after TCP connected.

    The node's protocol is connected at once, as on any listener, so such a
    connection counts against the node's connection limits until then.

    @param endpoint: an endpoint that wraps its connections in TLS (a
        C{tls:} listener's, or C{ssl:}'s: L{SSL4ServerEndpoint}), whose
        protocols are told when the handshake is done (L{IHandshakeListener}).
    @param clock: the reactor, for the deadline.
    """
    return _DeadlineEndpoint(endpoint, clock, timeout)


@implementer(IStreamServerEndpoint)
class _DeadlineEndpoint:
    def __init__(self, endpoint: IStreamServerEndpoint, clock: Clock, timeout: float) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self._timeout = timeout

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:  # noqa: N803
        return cast(
            "Deferred[Any]",
            self._endpoint.listen(_DeadlineFactory(protocolFactory, self._clock, self._timeout)),
        )


class _DeadlineFactory(Factory):
    """Builds the node's protocols, each behind a handshake deadline."""

    noisy = False

    def __init__(self, factory: IProtocolFactory, clock: Clock, timeout: float) -> None:
        self._factory = factory
        self._clock = clock
        self._timeout = timeout

    def logPrefix(self) -> str:
        return _log_prefix(self._factory)

    def doStart(self) -> None:
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()

    def buildProtocol(self, addr: Any) -> Protocol | None:
        real = self._factory.buildProtocol(addr)
        if real is None:
            return None
        return _HandshakeDeadline(real, self._clock, self._timeout)


@implementer(IHandshakeListener)
class _HandshakeDeadline(Protocol):
    """
    Sits between TLS and the node's protocol, which it connects at once and
    to which it passes everything; it closes the connection if the
    handshake has not finished in time.

    The node's protocol is given the TLS transport itself, so its writes,
    producers and C{peer_identity} see no difference.
    """

    def __init__(self, real: IProtocol, clock: Clock, timeout: float) -> None:
        self._real = real
        self._clock = clock
        self._timeout = timeout
        self._timer: DelayedCall | None = None

    def logPrefix(self) -> str:
        return _log_prefix(self._real)

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._too_slow)
        self._real.makeConnection(cast(Any, self.transport))

    def _too_slow(self) -> None:
        self._timer = None
        log.info(
            "closing a TLS client at {peer}: no handshake within {timeout:g}s",
            peer=_peer_text(self.transport),
            timeout=self._timeout,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if IHandshakeListener.providedBy(self._real):
            cast(IHandshakeListener, self._real).handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        self._real.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._real.connectionLost(reason)


def _log_prefix(wrapped: object) -> str:
    """What Twisted's logs call a factory or protocol: as if it were not wrapped."""
    prefix = getattr(wrapped, "logPrefix", None)
    return str(prefix()) if callable(prefix) else type(wrapped).__name__


def _peer_text(transport: Any) -> str:
    """A connection's peer address as C{host:port}, for logs."""
    address = transport.getPeer() if transport is not None else None
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def peer_identity(transport: object) -> str | None:
    """
    The name in the verified client certificate of a connection to a node,
    or C{None}.

    A name is given only for a TLS connection whose handshake has finished,
    on a listener that verifies client certificates (a C{tls:} listener with
    C{[tls] ca}), whose client presented one that the CA signed: its first
    DNS name, or its common name if it has no DNS name.  Before the
    handshake has finished (as in C{connectionMade}), it is C{None}; call
    it from C{IHandshakeListener.handshakeCompleted}, or on the first data.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        connection = get_handle()
    except Exception:
        return None
    if not isinstance(connection, SSL.Connection):
        return None
    if not connection.get_verify_mode() & SSL.VERIFY_PEER:
        return None
    chain = connection.get_verified_chain(as_cryptography=True)
    if not chain:
        return None
    names = certificate_names(chain[0])
    return names[0] if names else None


# --- Connecting ----------------------------------------------------------------------

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


def _verify_error_text(error: int, certificate: x509.Certificate, depth: int = 0) -> str:
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
            f"certificate verify failed: {_describe(certificate)} is signed by {signer},"
            " not by the trusted CA"
        )
    why = _VERIFY_ERRORS.get(error, f"OpenSSL verify error {error}")
    where = "" if depth == 0 else " in its chain"
    return f"certificate verify failed: {_describe(certificate)}{where}: {why}"


#: TLS alerts a node sends a client it refuses, in words.
_ALERTS = {
    "certificate required": "it requires a client certificate signed by its CA",
    "unknown ca": "it does not trust the CA of this client's certificate",
    "bad certificate": "it refused this client's certificate",
    "certificate unknown": "it refused this client's certificate",
    "certificate expired": "this client's certificate has expired",
}


def _refusal_text(error: SSL.Error) -> str:
    text = _ssl_error_text(error)
    for alert, meaning in _ALERTS.items():
        if f"alert {alert}" in text:
            return f"{meaning} ({text})"
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """
    Client connections that trust one CA and check the server's name with
    C{service_identity}: a DNS name, or an IP address.  A refusal says why
    in words, as the reason the connection was lost.
    """

    def __init__(self, options: CertificateOptions, name: str) -> None:
        self._options = options
        self._name = name
        self._is_ip = _is_ip(name)

    def clientConnectionForTLS(self, tls: Any) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tls)
        if not self._is_ip:
            # Not a host name: send no SNI, and check the name all the same.
            with contextlib.suppress(UnicodeError):
                connection.set_tlsext_host_name(self._name.encode("idna"))
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._callback(tls)
        )
        return connection

    def _callback(self, tls: Any) -> Callable[..., bool]:
        def verify(connection: Any, cert: Any, error: int, depth: int, ok: int) -> bool:
            try:
                certificate = cert.to_cryptography()
                why: str | None
                if not ok:
                    why = _verify_error_text(error, certificate, depth)
                elif depth == 0:
                    why = self._name_mismatch(certificate)
                else:
                    why = None
                if why is None:
                    return True
                tls.failVerification(Failure(TLSError(why)))
            except Exception:
                log.failure("while verifying a certificate")
            return False

        return verify

    def _name_mismatch(self, certificate: x509.Certificate) -> str | None:
        try:
            if self._is_ip:
                verify_certificate_ip_address(certificate, self._name)
            else:
                verify_certificate_hostname(certificate, self._name)
        except VerificationError:
            names = ", ".join(certificate_names(certificate)) or "nothing"
            return f"certificate verify failed: the certificate names {names}, not {self._name}"
        except Exception as e:  # a certificate service_identity cannot read
            return f"certificate verify failed: cannot check the name {self._name}: {e}"
        return None


def _ssl_error_text(error: SSL.Error) -> str:
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    text = ", ".join(reason for reason in reasons if reason) or str(error)
    if any(word in text for word in ("wrong version number", "packet length too long")):
        text += " (the other end does not speak TLS: is it a tcp: listener?)"
    return text


def _handshake_failure(reason: Failure, timed_out: float | None) -> TLSError:
    if timed_out is not None:
        return TLSError(f"TLS handshake failed: no handshake within {timed_out:g}s")
    error = reason.value
    if isinstance(error, TLSError):
        return TLSError(f"TLS handshake failed: {error}")
    if isinstance(error, SSL.Error):
        return TLSError(f"TLS handshake failed: {_refusal_text(error)}")
    return TLSError(
        f"TLS handshake failed: the connection closed before it finished"
        f" ({reason.getErrorMessage()})"
    )


@implementer(IHandshakeListener)
class _Gate(Protocol):
    """
    Sits between TLS and the real protocol, which it connects only once the
    handshake succeeds; until then, a lost connection fails the attempt.
    """

    def __init__(self, real: IProtocol, attempt: HandshakeEndpoint._Attempt) -> None:
        self._real = real
        self._attempt = attempt
        self._open = False
        self._heard = False
        self._timer: DelayedCall | None = None
        self._timed_out: float | None = None

    def connectionMade(self) -> None:
        attempt = self._attempt
        attempt.gate = self
        if attempt.result.called:  # cancelled meanwhile
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._timer = attempt.clock.callLater(attempt.timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        self._timed_out = self._attempt.timeout
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def handshakeCompleted(self) -> None:
        self._stop_timer()
        result = self._attempt.result
        if result.called:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._open = True
        self._real.makeConnection(cast(Any, self.transport))
        result.callback(self._real)

    def dataReceived(self, data: bytes) -> None:
        if self._open:
            self._heard = True
            self._real.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        if self._open:
            if not self._heard and isinstance(reason.value, SSL.Error):
                # With TLS 1.3 a server judges the client's certificate after
                # the client has finished its handshake: its refusal comes as
                # an alert in place of the first reply.
                reason = Failure(TLSError(f"the node refused TLS: {_refusal_text(reason.value)}"))
            self._real.connectionLost(reason)
            return
        self._attempt.refused(_handshake_failure(reason, self._timed_out))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _GateFactory(Factory):
    noisy = False

    def __init__(self, factory: IProtocolFactory, attempt: HandshakeEndpoint._Attempt) -> None:
        self._factory = factory
        self._attempt = attempt

    def buildProtocol(self, addr: Any) -> Protocol | None:
        real = self._factory.buildProtocol(addr)
        if real is None:
            return None
        return _Gate(real, self._attempt)


@implementer(IStreamClientEndpoint)
class HandshakeEndpoint:
    """
    A TLS client endpoint whose connection attempt succeeds only once the
    TLS handshake has: the protocol is connected then, and the attempt
    fails with a L{TLSError} saying why if the handshake fails, or does not
    finish within C{timeout} seconds.

    (A TLS endpoint of Twisted's own reports a connection as soon as TCP
    connects, so a refused certificate would fail the first call sent on it,
    as if the connection had been lost while the call ran.)

    @param tls_endpoint: an endpoint that wraps its protocols in TLS, such
        as one from C{wrapClientTLS}.
    @param clock: the reactor, for the handshake's timeout.
    @param label: what to call the endpoint (its C{repr}), in errors and logs.
    @param on_refused: called with each handshake failure's message.
    """

    class _Attempt:
        def __init__(self, clock: Any, timeout: float) -> None:
            self.clock = clock
            self.timeout = timeout
            self.gate: _Gate | None = None
            self.connecting: Deferred[Any] | None = None
            self.on_refused: Callable[[str], object] | None = None
            self.result: Deferred[IProtocol] = Deferred(self._cancel)

        def _cancel(self, result: Deferred[IProtocol]) -> None:
            if self.gate is not None:
                self.gate.abort()
            elif self.connecting is not None and not self.connecting.called:
                self.connecting.cancel()

        def refused(self, error: TLSError) -> None:
            if self.result.called:  # cancelled: the abort that follows is no refusal
                return
            if self.on_refused is not None:
                self.on_refused(str(error))
            self.result.errback(Failure(error))

        def not_connected(self, reason: Failure) -> None:
            if not self.result.called:
                self.result.errback(reason)

    def __init__(
        self,
        tls_endpoint: IStreamClientEndpoint,
        clock: Any,
        timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        label: str | None = None,
        on_refused: Callable[[str], object] | None = None,
    ) -> None:
        self._endpoint = tls_endpoint
        self._clock = clock
        self._timeout = timeout
        self._label = label or repr(tls_endpoint)
        self._on_refused = on_refused

    def __repr__(self) -> str:
        return self._label

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        attempt = self._Attempt(self._clock, self._timeout)
        attempt.on_refused = self._on_refused
        connecting = self._endpoint.connect(_GateFactory(protocolFactory, attempt))
        attempt.connecting = connecting
        connecting.addErrback(attempt.not_connected)
        return attempt.result


def _client_creator(
    name: str,
    ca: x509.Certificate,
    credentials: Credentials | None,
) -> _ClientCreator:
    trust = [crypto.X509.from_cryptography(ca)]
    if credentials is None:
        options = _options(verify=True, caCerts=trust)
    else:
        options = credentials.certificate_options(verify=True, caCerts=trust)
    return _ClientCreator(options, name)


def client_endpoint(
    reactor: Any,
    host: str,
    port: int,
    ca: str | os.PathLike[str],
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> IStreamClientEndpoint:
    """
    An endpoint for L{callnet.Client} or L{callnet.BlockingClient} that
    reaches a node's C{tls:} listener.

        endpoint = client_endpoint(reactor, "127.0.0.1", 7601, ca="certs/ca.pem")
        client = Client(endpoint, reactor)

    The node's certificate must be signed by C{ca} and name C{name} (by
    default C{host}: a DNS name, or an IP address given with C{--ip} when
    the certificate was made).  A certificate that fails either check
    fails the connection attempt, and so the call, with
    L{callnet.UnavailableError} (not-run) saying why.

    @param reactor: the reactor to connect with (for a L{BlockingClient},
        the global reactor, C{twisted.internet.reactor}).
    @param ca: the CA certificate (PEM) that signs the node's certificate.
    @param cert: a client certificate (PEM) to present, for a node that asks
        for one; C{key} is its private key.
    @param name: the name the node's certificate must give; C{host} if C{None}.
    @param timeout: seconds to connect, and then to finish the handshake.
    @raise ConfigError: a file cannot be read, or C{cert} comes without C{key}.
    """
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs its key: give both cert and key, or neither")
    credentials = None
    if cert is not None and key is not None:
        credentials = load_credentials(TLSSettings(cert=os.fspath(cert), key=os.fspath(key)))
    authority = _load_certificate(os.fspath(ca), "ca")
    expected = name or host
    creator = _client_creator(expected, authority, credentials)
    tcp = HostnameEndpoint(reactor, host, port, timeout=timeout)
    shown = f"[{host}]" if ":" in host else host
    label = f"tls:{shown}:{port}" + (f" (as {name})" if name and name != host else "")
    return HandshakeEndpoint(wrapClientTLS(creator, tcp, reactor), reactor, timeout, label)


def links_use_tls(settings: TLSSettings) -> bool:
    """Whether a node's links to its peers go over TLS: C{[tls]} cert, key and ca are set."""
    return bool(settings.cert and settings.key and settings.ca)


def peer_endpoint(
    reactor: Any,
    name: str,
    description: str,
    credentials: Credentials,
    timeout: float,
) -> IStreamClientEndpoint:
    """
    The endpoint of a node's link to its peer C{name}, over TLS.

    C{description} (C{tcp:HOST:PORT}, C{unix:PATH}) says where the peer's
    C{tls:} listener is; the connection presents the node's own certificate,
    trusts only the CA, and requires the peer's certificate to name C{name}
    (a DNS name in it equal to the peer's name, not to the address dialled).

    @param timeout: seconds the TLS handshake may take.
    @raise ConfigError: the credentials have no CA, or C{description} is
        already a TLS endpoint (C{tls:}, C{ssl:}) or does not parse.
    """
    if credentials.ca is None:
        raise ConfigError("[tls] ca must be set for links to peers over TLS")
    if description.startswith(("tls:", "ssl:")):
        raise ConfigError(
            f"[peers] {name}: with [tls] set, links to peers use TLS by themselves: give"
            f' the address of its tls: listener as tcp:HOST:PORT, not "{description}"'
        )
    try:
        inner = clientFromString(reactor, description)
    except Exception as e:
        raise ConfigError(f'[peers] {name}: bad endpoint "{description}": {e}') from None
    creator = _client_creator(name, credentials.ca, credentials)
    last: list[str] = []

    def refused(why: str) -> None:
        # Once per new reason, not at every redial.
        if last != [why]:
            last[:] = [why]
            log.warn(
                "refusing peer {peer} at {endpoint}: {why}",
                peer=name,
                endpoint=description,
                why=why,
            )

    return HandshakeEndpoint(
        wrapClientTLS(creator, inner, reactor), reactor, timeout, f"tls+{description}", refused
    )


# --- A development CA -------------------------------------------------------------


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


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise ConfigError("certificates must last at least 1 day")
    now = datetime.datetime.now(datetime.UTC)
    # A little slack before now, for clocks that disagree by a few minutes.
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


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
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise ConfigError(f"{path} exists already; remove it, or use --force")
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return cert_path, key_path


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
    ca_cert = _load_certificate(str(folder / CA_CERT), "the CA (make it with certs init)")
    ca_key = _load_key(str(folder / CA_KEY), "the CA (make it with certs init)")
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
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
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
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise ConfigError(f"{path} exists already; remove it, or use --force")
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return cert_path, key_path
