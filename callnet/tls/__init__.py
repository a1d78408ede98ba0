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

One job per module:

  - C{_credentials}: the C{[tls]} files loaded and checked, the names a
    certificate gives, the suites every context offers;
  - C{_listen}: the C{tls:} listen grammar;
  - C{_server}: the listener, its client certificate checks and ALPN;
  - C{_deadline}: the listener's deadline for each handshake;
  - C{_wording}: why a connection failed, in words (L{TLSError});
  - C{_handshake}: client connections that count once their handshake has;
  - C{_client}: endpoints that check the node's name, for programs and peers;
  - C{_devca}: the development CA.

No module here may import the global reactor: C{twistd} imports the node's
modules while it is still choosing one.
"""

from callnet.tls._client import _client_creator as _client_creator
from callnet.tls._client import client_endpoint, peer_endpoint
from callnet.tls._credentials import (
    AEAD_CIPHERS,
    Credentials,
    certificate_names,
    load_credentials,
)
from callnet.tls._deadline import _DeadlineFactory as _DeadlineFactory
from callnet.tls._deadline import with_handshake_deadline
from callnet.tls._devca import make_ca, make_node_certificate
from callnet.tls._handshake import DEFAULT_HANDSHAKE_TIMEOUT, HandshakeEndpoint
from callnet.tls._listen import LISTEN_PREFIX, is_tls_listen, parse_listen
from callnet.tls._listen import ListenSpec as ListenSpec
from callnet.tls._server import (
    ALPN_PROTOCOL,
    check_listen,
    harden_ssl_endpoint,
    peer_identity,
    server_endpoint,
)
from callnet.tls._server import _server_creator as _server_creator
from callnet.tls._wording import TLSError

# Importable from here too, though not in __all__: ListenSpec, what
# parse_listen returns, and the pieces tests put together in memory
# (_server_creator, _DeadlineFactory, _client_creator).
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
    "harden_ssl_endpoint",
    "is_tls_listen",
    "load_credentials",
    "make_ca",
    "make_node_certificate",
    "parse_listen",
    "peer_endpoint",
    "peer_identity",
    "server_endpoint",
    "with_handshake_deadline",
]
