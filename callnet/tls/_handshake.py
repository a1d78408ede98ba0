"""
A client's TLS connection that counts as made only once its handshake has
succeeded (L{HandshakeEndpoint}): a certificate that is refused fails the
connection attempt, with the reason in words, rather than a call sent on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from callnet.reactors import DelayedCall
from callnet.tls._wording import TLSError, handshake_failure, refusal_text

#: Seconds a client waits for a TLS handshake to finish before giving up.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


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
                reason = Failure(TLSError(f"the node refused TLS: {refusal_text(reason.value)}"))
            self._real.connectionLost(reason)
            return
        self._attempt.refused(handshake_failure(reason, self._timed_out))

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
