"""
A deadline for the TLS handshake of each connection a node accepts: a
client that connects and never finishes its handshake is closed.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from callnet.reactors import Clock, DelayedCall
from callnet.tls._wording import peer_text

# Under the package's name, as every TLS log line.
log = Logger(namespace="callnet.tls")


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
            peer=peer_text(self.transport),
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
