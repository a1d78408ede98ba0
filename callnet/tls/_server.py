"""
The node's side of TLS: the endpoint of a C{tls:} listener, which presents
the node's certificate, verifies client certificates against C{[tls] ca},
answers clients that offer ALPN, and puts a deadline on each handshake;
and the name a verified client certificate gives (L{peer_identity}).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from callnet.config import Limits, TLSSettings
from callnet.errors import ConfigError
from callnet.reactors import DispatchReactor
from callnet.tls._credentials import AEAD_CIPHERS, certificate_names, load_credentials
from callnet.tls._deadline import with_handshake_deadline
from callnet.tls._listen import parse_listen
from callnet.tls._wording import peer_text, verify_error_text

# Under the package's name, as every TLS log line.
log = Logger(namespace="callnet.tls")

#: The ALPN protocol name a node accepts for its line protocol.  A client
#: that offers it gets it; one that offers only others (C{h2},
#: C{http/1.1}) is served without ALPN, as if it had offered none.
ALPN_PROTOCOL = b"callnet"


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
                    peer=peer_text(getattr(tls, "transport", None)),
                    why=verify_error_text(error, cert.to_cryptography(), depth),
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
    reactor: DispatchReactor,
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


def harden_ssl_endpoint(endpoint: Any) -> None:
    """
    Give a Twisted C{ssl:} listener (L{SSL4ServerEndpoint}) what the node's
    own C{tls:} listeners have: TLS 1.2 with AEAD suites only, and ALPN
    clients accepted.  Done on its one shared context before any connection
    is made from it (pyOpenSSL refuses after).
    """
    context = endpoint._sslContextFactory.getContext()
    context.set_cipher_list(AEAD_CIPHERS.encode("ascii"))
    context.set_alpn_select_callback(_choose_protocol)
