"""
The asynchronous client: calls return Deferreds, which C{async def} code can
C{await}.

    client = Client("tcp:127.0.0.1:7600", reactor)
    result = await client.call("add", 1, 2, timeout=5)

Every call has a deadline (the client's default when the call names none).
It travels to the node as the remaining budget, and the client keeps its own
timer too, so a call to a node that stops answering still ends on time.
Cancelling a call's Deferred sends C{CANCEL} so the node stops the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from callnet.answers import MULTICALL, unpack
from callnet.client_protocol import ClientFactory, no_op
from callnet.client_protocol import ClientProtocol as ClientProtocol
from callnet.client_protocol import _tag_text as _tag_text
from callnet.client_stream import (
    DEFAULT_WINDOW,
    CallStream,
    ProgressCallback,
    ProgressCalls,
    _listener,
)
from callnet.errors import (
    CallCancelledError,
    CallError,
    DeadlineExceededError,
    Outcome,
    UnavailableError,
)
from callnet.reactors import DelayedCall, DispatchReactor
from callnet.wire import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_MAX_LINE,
    Call,
    Item,
    Progress,
)

#: A call's deadline when neither the call nor the client names one.
DEFAULT_TIMEOUT = DEFAULT_CALL_TIMEOUT


_DEFAULT = object()


def check_endpoint_string(text: str) -> None:
    """
    Raise C{ValueError} naming C{text} if Twisted cannot make a client
    endpoint of it (C{tcp:127.0.0.1} with no port, a kind it does not know),
    so that the mistake is said at once rather than by whatever the first
    connection attempt raises, in whichever thread that happens.
    """
    # Imported here: only this check builds an endpoint with no reactor to run it.
    from twisted.internet.testing import MemoryReactor

    try:
        clientFromString(MemoryReactor(), text)
    except Exception as e:  # any parser's error means the string is bad
        reason = str(e) if isinstance(e, ValueError | OSError) and str(e) else ""
        # Twisted names a missing field by its constructor's missing argument.
        if isinstance(e, TypeError) and "missing" in str(e):
            reason = "missing " + str(e).partition("missing ")[2].split("argument: ")[-1]
        raise ValueError(f"not an endpoint: {text!r}" + (f" ({reason})" if reason else "")) from e


class Client:
    """
    An asynchronous client of one node.

    It connects on first use and again after a lost connection.  Calls
    return Deferreds; all take keyword-only C{timeout} (seconds; every call
    has a deadline) and C{key} (an idempotency key).

    It dials when a call needs a connection, not before, and a call that
    finds the node unreachable fails at once, C{UNAVAILABLE not-run}, so its
    caller may retry or go elsewhere.  Twisted's C{ClientService}, which a
    node's links to its peers use (L{callnet.cluster.peers}), keeps dialling
    with back-off whether or not anything is waiting, and holds a caller
    until its next attempt: right for a link that must stay up, wrong for a
    client that may sit idle or must fail within its deadline.

    @param endpoint: a Twisted client endpoint string such as
        C{"tcp:127.0.0.1:7600"} or C{"unix:/run/callnet.sock"}, or an
        L{IStreamClientEndpoint}.
    @param reactor: the reactor to connect with (its clock runs deadlines).
    @param timeout: the default deadline of a call, in seconds.
    @param token: a token to authenticate with (C{AUTH}) on each connection,
        for a node that requires one.
    """

    def __init__(
        self,
        endpoint: str | IStreamClientEndpoint,
        reactor: DispatchReactor,
        timeout: float = DEFAULT_TIMEOUT,
        max_line: int = DEFAULT_MAX_LINE,
        token: str | None = None,
    ) -> None:
        self._token = token
        if isinstance(endpoint, str):
            self.address = endpoint
            endpoint = clientFromString(reactor, endpoint)
        else:
            self.address = repr(endpoint)
        self._endpoint: Any = endpoint
        self._reactor = reactor
        self.timeout = timeout
        self._factory = ClientFactory(reactor, max_line)
        self._protocol: ClientProtocol | None = None
        self._connecting: list[Deferred[ClientProtocol]] | None = None
        self._closed = False

    # --- Connection ---------------------------------------------------------

    def connect(self) -> Deferred[ClientProtocol]:
        """Connect now rather than on first call; fires with the connection."""
        if self._closed:
            return fail(UnavailableError("the client is closed", Outcome.NOT_RUN))
        if self._protocol is not None and self._protocol.is_connected:
            return succeed(self._protocol)
        waiter: Deferred[ClientProtocol] = Deferred()
        if self._connecting is None:
            self._connecting = [waiter]
            attempt = self._endpoint.connect(self._factory)
            attempt.addCallbacks(self._connected, self._connect_failed)
        else:
            self._connecting.append(waiter)
        return waiter

    def _connected(self, protocol: ClientProtocol) -> None:
        waiters, self._connecting = self._connecting or [], None
        if self._closed:
            protocol.close()
            error = UnavailableError("the client was closed", Outcome.NOT_RUN)
            for waiter in waiters:
                waiter.errback(Failure(error))
            return
        protocol.on_lost = self._lost
        if self._token is None:
            self._ready(protocol, waiters)
            return
        # Authenticate every new connection before any call uses it.
        auth = protocol.command("AUTH", (self._token,), self.timeout)
        auth.addCallbacks(
            lambda identity: self._ready(protocol, waiters),
            lambda reason: self._auth_failed(protocol, waiters, reason),
        )

    def _ready(self, protocol: ClientProtocol, waiters: list[Deferred[ClientProtocol]]) -> None:
        self._protocol = protocol
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(protocol)

    def _auth_failed(
        self, protocol: ClientProtocol, waiters: list[Deferred[ClientProtocol]], reason: Failure
    ) -> None:
        protocol.close()
        error = reason.value
        if not isinstance(error, CallError):
            error = UnavailableError(reason.getErrorMessage(), Outcome.NOT_RUN)
        error.outcome = Outcome.NOT_RUN  # no call was sent
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(Failure(error))

    def _connect_failed(self, reason: Failure) -> None:
        waiters, self._connecting = self._connecting or [], None
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(
                    Failure(
                        UnavailableError(
                            f"cannot connect to {self.address}: {reason.getErrorMessage()}",
                            Outcome.NOT_RUN,
                        )
                    )
                )

    def hold_sends(self) -> Callable[[], None]:
        """
        Keep the calls made from now on (on the reactor thread) to send them
        together when the returned function is called, rather than at the
        end of the reactor's turn: for a caller that makes a batch of calls.
        """
        protocol = self._protocol
        if protocol is None or not protocol.is_connected:
            return no_op
        outbox = protocol._outbox
        outbox.hold()
        return outbox.release

    def _lost(self, protocol: ClientProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    # --- Calls --------------------------------------------------------------

    def call(
        self,
        procedure: str,
        /,
        *args: Any,
        timeout: float | None = None,
        key: str | None = None,
        trace: str | None = None,
        **kwargs: Any,
    ) -> Deferred[Any]:
        """
        Call a procedure on the node.

        @return: a Deferred firing with the result, or failing with a
            L{CallError} subclass.  Cancelling it cancels the call on the node.
        """
        return self._call(procedure, args, kwargs, timeout, key, trace, None)

    def _call(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        key: str | None,
        trace: str | None,
        on_progress: ProgressCallback | None,
    ) -> Deferred[Any]:
        budget = self.timeout if timeout is None else timeout
        deadline = self._reactor.seconds() + budget
        protocol = self._protocol
        if on_progress is None:
            if protocol is not None and protocol.is_connected:
                return protocol.call(procedure, args, kwargs, budget, key, trace)
            return self._when_connected(
                deadline,
                lambda p: p.call(
                    procedure, args, kwargs, deadline - self._reactor.seconds(), key, trace
                ),
            )
        call = Call(procedure, args, kwargs, key=key, trace=trace, progress=True)
        listener = _listener(None, on_progress)
        return self._when_connected(
            deadline,
            lambda p: _open(p, call, deadline - self._reactor.seconds(), listener)[1],
        )

    def stream(
        self,
        procedure: str,
        /,
        *args: Any,
        timeout: float | None = None,
        window: int | None = None,
        trace: str | None = None,
        **kwargs: Any,
    ) -> CallStream:
        """
        Call a procedure that yields, and take its items as they come
        (C{async for item in client.stream("count", 5)}); see L{CallStream}.

        @param timeout: the deadline of the whole stream, in seconds.
        @param window: how many items the node may send before the reader
            takes them (L{DEFAULT_WINDOW} when C{None}): what the client holds
            at most.
        """
        return self._stream(procedure, args, kwargs, timeout, window, trace, None)

    def _stream(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        window: int | None,
        trace: str | None,
        on_progress: ProgressCallback | None,
        stream: CallStream | None = None,
    ) -> CallStream:
        if stream is None:
            stream = CallStream(procedure, DEFAULT_WINDOW if window is None else window)
        deadline = self._reactor.seconds() + (self.timeout if timeout is None else timeout)
        call = Call(
            procedure, args, kwargs, trace=trace, window=stream.window, progress=bool(on_progress)
        )
        listener = _listener(stream, on_progress)

        def send(protocol: ClientProtocol) -> Deferred[Any]:
            tag, reply = _open(protocol, call, deadline - self._reactor.seconds(), listener)
            stream._sent(protocol, tag)
            return reply

        stream._follow(self._when_connected(deadline, send))
        return stream

    def with_progress(self, on_progress: ProgressCallback) -> ProgressCalls:
        """
        Calls and streams that ask for C{+progress} and hand each
        L{Progress} report to C{on_progress} (on the reactor thread) before
        their result: C{client.with_progress(show).call("build", "site")}.
        A method of its own, so that no keyword argument of a procedure is
        ever taken for it.
        """
        return ProgressCalls(self, on_progress)

    def multicall(
        self,
        procedure: str,
        /,
        *args: Any,
        nodes: list[str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Deferred[dict[str, Any]]:
        """
        Call a procedure on every node that serves it (or on C{nodes}), all
        under one deadline.

        @return: a Deferred firing with a dict of node name -> the result,
            or node name -> the L{CallError} that node's call failed with.
        """

        d = self.call(MULTICALL, procedure, list(args), kwargs, nodes, timeout=timeout)
        return d.addCallback(unpack)

    def cast(self, procedure: str, /, *args: Any, **kwargs: Any) -> Deferred[None]:
        """
        Send a call that wants no reply (fire and forget).

        @return: a Deferred that fires once the request is handed to the
            connection, or fails with L{UnavailableError} if it cannot be.
        """

        def send(protocol: ClientProtocol) -> None:
            protocol.cast(procedure, args, kwargs)

        return self._when_connected(self._reactor.seconds() + self.timeout, send)

    def command(self, verb: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """Send a protocol command (C{PING}, C{LIST}, C{STATS}, C{HELP})."""
        budget = self.timeout if timeout is None else timeout
        deadline = self._reactor.seconds() + budget
        return self._when_connected(
            deadline, lambda p: p.command(verb, args, deadline - self._reactor.seconds())
        )

    def ping(self, timeout: float | None = None) -> Deferred[Any]:
        """Ask the node to answer; fires with C{"pong"}."""
        return self.command("PING", timeout=timeout)

    def _when_connected(
        self, deadline: float, send: Callable[[ClientProtocol], Any]
    ) -> Deferred[Any]:
        """Run C{send} on a connection once there is one, within the deadline."""
        connecting = self.connect()
        timer: list[DelayedCall] = []
        sent: list[Deferred[Any]] = []

        def cancel(d: Deferred[Any]) -> None:
            # Before the request is sent, stop waiting for the connection;
            # after, cancel the call itself (which tells the node).
            (sent[0] if sent else connecting).cancel()

        result: Deferred[Any] = Deferred(cancel)

        def connected(protocol: ClientProtocol) -> None:
            if timer:
                timer.pop().cancel()
            if result.called:
                return
            try:
                outcome = send(protocol)
            except Exception:
                # A cast whose arguments are not JSON, say: fail this call.
                result.errback()
                return
            if isinstance(outcome, Deferred):
                sent.append(outcome)
                outcome.chainDeferred(result)
            else:
                result.callback(outcome)

        def failed(reason: Failure) -> None:
            if timer:
                timer.pop().cancel()
            if result.called:
                return
            if reason.check(CallError):
                result.errback(reason)
            else:
                result.errback(
                    Failure(CallCancelledError("cancelled before it was sent", Outcome.NOT_RUN))
                )

        def expire() -> None:
            timer.clear()
            if not result.called:
                result.errback(
                    Failure(
                        DeadlineExceededError(
                            f"the deadline passed while connecting to {self.address}",
                            Outcome.NOT_RUN,
                        )
                    )
                )

        remaining = deadline - self._reactor.seconds()
        if not connecting.called:
            timer.append(self._reactor.callLater(max(remaining, 0), expire))
        connecting.addCallbacks(connected, failed)
        return result

    def close(self) -> None:
        """Close the connection.  Calls in flight fail with L{UnavailableError}."""
        self._closed = True
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


def _open(
    protocol: ClientProtocol,
    call: Call,
    timeout: float,
    listener: Callable[[Item | Progress], object],
) -> tuple[str, Deferred[Any]]:
    """Send a call whose lines come before its reply, if its deadline has not passed."""
    if timeout <= 0:
        return "", fail(
            DeadlineExceededError("the deadline passed before the call was sent", Outcome.NOT_RUN)
        )
    return protocol.call_with_events(call, timeout, listener)
