"""
The dialling side of TLS: endpoints that trust one CA and check that the
certificate at the other end names the node asked for, for programs
(L{client_endpoint}) and for a node's links to its peers (L{peer_endpoint},
mutual TLS).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from callnet.config import TLSSettings
from callnet.errors import ConfigError
from callnet.reactors import DispatchReactor, twisted_clock
from callnet.tls._credentials import (
    Credentials,
    certificate_names,
    context_options,
    load_certificate,
    load_credentials,
)
from callnet.tls._handshake import DEFAULT_HANDSHAKE_TIMEOUT, HandshakeEndpoint
from callnet.tls._wording import TLSError, verify_error_text

# Under the package's name, as every TLS log line.
log = Logger(namespace="callnet.tls")


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

    Twisted's C{optionsForClientTLS} makes the same check with the same
    library, but a mismatch then ends the connection with OpenSSL's alert
    and no word of which names the certificate holds; this creator runs the
    check in the verify callback so the caller reads "the certificate names
    beta, not gamma" (C{tests/test_tls.py} holds the wording).
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
                    why = verify_error_text(error, certificate, depth)
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


def _client_creator(
    name: str,
    ca: x509.Certificate,
    credentials: Credentials | None,
) -> _ClientCreator:
    trust = [crypto.X509.from_cryptography(ca)]
    if credentials is None:
        options = context_options(verify=True, caCerts=trust)
    else:
        options = credentials.certificate_options(verify=True, caCerts=trust)
    return _ClientCreator(options, name)


def client_endpoint(
    reactor: DispatchReactor,
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
    authority = load_certificate(os.fspath(ca), "ca")
    expected = name or host
    creator = _client_creator(expected, authority, credentials)
    tcp = HostnameEndpoint(reactor, host, port, timeout=timeout)
    shown = f"[{host}]" if ":" in host else host
    label = f"tls:{shown}:{port}" + (f" (as {name})" if name and name != host else "")
    return HandshakeEndpoint(
        wrapClientTLS(creator, tcp, twisted_clock(reactor)), reactor, timeout, label
    )


def peer_endpoint(
    reactor: DispatchReactor,
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

    secured = wrapClientTLS(creator, inner, twisted_clock(reactor))
    return HandshakeEndpoint(secured, reactor, timeout, f"tls+{description}", refused)
