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

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from callnet.answers import MULTICALL, unpack
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
    InvalidArgumentError,
    Outcome,
    UnavailableError,
)
from callnet.reactors import Clock, DelayedCall, DispatchReactor, set_no_delay
from callnet.sending import Outbox
from callnet.wire import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_MAX_LINE,
    BadLine,
    Call,
    ErrorReply,
    Item,
    LineDecoder,
    Progress,
    Success,
    encode_call,
    encode_command,
    encode_more,
    encode_simple_call,
)

log = Logger()


#: A call's deadline when neither the call nor the client names one.
DEFAULT_TIMEOUT = DEFAULT_CALL_TIMEOUT


class _Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def abortConnection(self) -> None: ...
    def writeSequence(self, data: Iterable[bytes]) -> None: ...
    def loseConnection(self) -> None: ...


class _Pending:
    """A call sent and not yet answered."""

    __slots__ = ("bucket", "deferred", "procedure", "timeout")

    def __init__(self, deferred: Deferred[Any], procedure: str, timeout: float) -> None:
        self.deferred = deferred
        self.procedure = procedure
        self.timeout = timeout
        self.bucket = 0


#: The client's deadline timers round deadlines up to this step (1/64 s, a
#: binary fraction so whole-second deadlines stay exact).  The node enforces
#: each deadline exactly; the client's timer is the backstop for a node that
#: stops answering, and may fire up to one step late.
DEADLINE_STEP = 1 / 64


class _Deadlines:
    """
    Deadlines of many calls with one reactor timer: calls are kept in
    buckets of L{DEADLINE_STEP}, and the timer is set for the earliest bucket.
    Adding or removing a call costs a set operation, not a timer.
    """

    def __init__(self, clock: Clock, expire: Callable[[str], None]) -> None:
        self._clock = clock
        self._expire = expire
        self._buckets: dict[int, set[str]] = {}
        self._order: list[int] = []  # a heap of bucket numbers
        self._timer: DelayedCall | None = None
        self._timer_bucket = 0

    def add(self, tag: str, timeout: float) -> int:
        bucket = math.ceil((self._clock.seconds() + timeout) / DEADLINE_STEP)
        tags = self._buckets.get(bucket)
        if tags is None:
            self._buckets[bucket] = {tag}
            heapq.heappush(self._order, bucket)
            if self._timer is None or bucket < self._timer_bucket:
                self._schedule(bucket)
        else:
            tags.add(tag)
        return bucket

    def remove(self, tag: str, bucket: int) -> None:
        # The timer is left to fire and find the bucket empty: cancelling and
        # re-arming it as calls come and go would cost a timer per call again.
        tags = self._buckets.get(bucket)
        if tags is not None:
            tags.discard(tag)

    def _schedule(self, bucket: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_bucket = bucket
        delay = max(bucket * DEADLINE_STEP - self._clock.seconds(), 0.0)
        self._timer = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        order = self._order
        while order and order[0] * DEADLINE_STEP <= now:
            for tag in sorted(self._buckets.pop(heapq.heappop(order), ())):
                self._expire(tag)
        while order and not self._buckets.get(order[0]):
            self._buckets.pop(heapq.heappop(order), None)
        if order:
            self._schedule(order[0])

    def stop(self) -> None:
        """Cancel the timer (the connection is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._order.clear()


class ClientProtocol(TwistedProtocol):
    """
    One connection to a node: sends tagged requests, matches replies by tag.

    Tags are never reused on a connection, so a late reply to a call that was
    cancelled or timed out is recognised and dropped.
    """

    def __init__(self, clock: Clock, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._clock = clock
        self._decoder = LineDecoder(max_line)
        self._pending: dict[str, _Pending] = {}
        self._deadlines = _Deadlines(clock, self._expired)
        self._tags = map(_tag_text, itertools.count(1))
        self._connected = False
        self._lost: Failure | None = None
        self._abort_reason: str | None = None
        self._outbox: Outbox
        self.node_name: str | None = None
        self.on_lost: Callable[[ClientProtocol], None] | None = None
        #: Called with this protocol once it is connected.
        self.on_made: Callable[[ClientProtocol], object] | None = None
        #: When a byte last came from the node, on the clock: its heartbeat.
        self.last_heard = clock.seconds()
        #: How many reads have brought bytes from the node.  A heartbeat that
        #: finds the node silent compares it again after the reactor has read
        #: its sockets: a busy reactor's clock moves on while bytes wait unread.
        self.reads = 0
        #: Per tag, what takes the ITEM and PROGRESS lines of a call in
        #: flight that has them (see L{call_with_events}).
        self.listeners: dict[str, Callable[[Item | Progress], object]] = {}

    @property
    def in_flight(self) -> int:
        """How many calls on this connection await their replies."""
        return len(self._pending)

    @property
    def is_connected(self) -> bool:
        """Whether calls can be sent on this connection now."""
        return self._connected

    def connectionMade(self) -> None:
        self._connected = True
        self._out = cast(_Transport, self.transport)
        self._outbox = Outbox(self.transport, self._clock)
        set_no_delay(self.transport)
        self.last_heard = self._clock.seconds()
        if self.on_made is not None:
            self.on_made(self)

    def call(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
        key: str | None = None,
        trace: str | None = None,
        hops: int = 0,
        caller: str | None = None,
    ) -> Deferred[Any]:
        """
        Send a call; the Deferred fires with its result or fails with a L{CallError}.

        @param caller: the identity a node forwards this call for (C{+caller}),
            which the receiving node believes only from a peer.
        """
        if not self._connected:
            return fail(UnavailableError("not connected", Outcome.NOT_RUN, self.node_name))
        if timeout <= 0:
            return fail(
                DeadlineExceededError(
                    "the deadline passed before the call was sent", Outcome.NOT_RUN
                )
            )
        tag = next(self._tags)
        try:
            if kwargs or key is not None or trace is not None or hops or caller is not None:
                line = encode_call(
                    Call(procedure, args, kwargs, tag, timeout, False, key, trace, hops, caller)
                )
            else:
                line = encode_simple_call(tag, timeout, procedure, args)
        except (TypeError, ValueError) as e:
            return fail(InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN))
        return self._send(tag, line, procedure, timeout)

    def call_with_events(
        self, call: Call, timeout: float, listener: Callable[[Item | Progress], object]
    ) -> tuple[str, Deferred[Any]]:
        """
        Send a call (a stream's, with C{+window}, or one with C{+progress})
        under a new tag, whose C{ITEM} and C{PROGRESS} lines go to
        C{listener} as they come, before its final reply.

        @return: the tag (for L{more}) and the Deferred of the final reply.
        """
        if not self._connected:
            return "", fail(UnavailableError("not connected", Outcome.NOT_RUN, self.node_name))
        tag = next(self._tags)
        try:
            line = encode_call(replace(call, tag=tag, timeout=timeout))
        except (TypeError, ValueError) as e:
            return tag, fail(InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN))
        self.listeners[tag] = listener
        return tag, self._send(tag, line, call.procedure, timeout)

    def more(self, tag: str, count: int) -> None:
        """Grant the stream C{tag} C{count} more items (C{MORE}), if it is in flight."""
        if self._connected and tag in self._pending:
            self._outbox.write(encode_more(tag, count))

    def _send(self, tag: str, line: bytes, procedure: str, timeout: float) -> Deferred[Any]:
        pending = _Pending(Deferred(lambda d: self._abandon(tag, "cancelled")), procedure, timeout)
        pending.bucket = self._deadlines.add(tag, timeout)
        self._pending[tag] = pending
        self._outbox.write(line)
        return pending.deferred

    def cast(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> None:
        """Send a call that wants no reply."""
        if not self._connected:
            raise UnavailableError("not connected", Outcome.NOT_RUN, self.node_name)
        try:
            line = encode_call(Call(procedure, args, kwargs, None, timeout, True))
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN) from None
        self._outbox.write(line)

    def command(
        self, verb: str, args: tuple[Any, ...], timeout: float, at_once: bool = False
    ) -> Deferred[Any]:
        """
        Send a command such as C{STATS} with a tag and wait for its reply.

        @param at_once: send it now, with whatever was written before it,
            rather than at the end of the reactor's turn (see L{Outbox}): a
            heartbeat must not wait out a turn that local work makes long.
        """
        if not self._connected:
            return fail(UnavailableError("not connected", Outcome.NOT_RUN, self.node_name))
        tag = next(self._tags)
        d = self._send(tag, encode_command(verb, args, tag), verb, timeout)
        if at_once:
            self._outbox.send()
        return d

    def _expired(self, tag: str) -> None:
        self._abandon(tag, "deadline")

    def _abandon(self, tag: str, why: str) -> None:
        """Give up on a call (deadline or cancel): tell the node, fail the caller."""
        pending = self._pending.pop(tag, None)
        if pending is None:
            return
        self._deadlines.remove(tag, pending.bucket)
        self.listeners.pop(tag, None)
        if why == "deadline":
            error: CallError = DeadlineExceededError(
                f"no reply to {pending.procedure} within {pending.timeout:g}s",
                Outcome.MAY_HAVE_RUN,
            )
        else:
            error = CallCancelledError(f"{pending.procedure} was cancelled", Outcome.MAY_HAVE_RUN)
        error.node = self.node_name
        if self._connected:
            self._outbox.write(encode_command("CANCEL", (tag,)))
        if not pending.deferred.called:
            pending.deferred.errback(Failure(error))

    def dataReceived(self, data: bytes) -> None:
        self.last_heard = self._clock.seconds()
        self.reads += 1
        decoder = self._decoder
        decoder.feed(data)
        # Calls made by the callbacks of these replies are sent as they pile
        # up and when the read is handled (see Outbox).
        self._outbox.hold()
        while (event := decoder.next_event()) is not None:
            if type(event) is Success or type(event) is ErrorReply:
                tag = event.tag
                pending = self._pending.pop(tag, None) if tag is not None else None
                if pending is None:
                    continue  # a late reply to a call given up on, or an untagged answer
                self._deadlines.remove(tag, pending.bucket)  # type: ignore[arg-type]
                if self.listeners:
                    self.listeners.pop(tag, None)  # type: ignore[arg-type]
                if type(event) is Success:
                    pending.deferred.callback(event.value)
                else:
                    pending.deferred.errback(Failure(cast(ErrorReply, event).error))
            elif type(event) is Item or type(event) is Progress:
                listener = self.listeners.get(event.tag) if event.tag is not None else None
                if listener is not None:
                    listener(event)
            elif type(event) is BadLine:
                log.warn(
                    "unreadable line from {node}: {error}", node=self.node_name, error=event.error
                )
        self._outbox.release()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connected = False
        self._outbox.discard()
        self._lost = reason
        self._deadlines.stop()
        why = self._abort_reason or reason.getErrorMessage()
        why = why.replace("{", "(").replace("}", ")")
        # A node that refused our TLS certificate did so before reading a
        # request: those calls did not run.
        refused = reason.check("callnet.tls.TLSError") is not None
        self._fail_pending(
            "connection lost while {procedure} was in flight: " + why,
            Outcome.NOT_RUN if refused else Outcome.MAY_HAVE_RUN,
        )
        if self.on_lost is not None:
            self.on_lost(self)

    def close(self) -> None:
        """
        Close the connection; calls in flight fail as L{UnavailableError},
        and the node is asked to cancel them first.
        """
        if self._connected:
            if self._pending:
                self._outbox.write_lines(
                    [encode_command("CANCEL", (tag,)) for tag in self._pending]
                )
            self._fail_pending(
                "the client was closed while {procedure} was in flight", Outcome.MAY_HAVE_RUN
            )
            self._outbox.send()
            self._out.loseConnection()

    def _fail_pending(self, message: str, outcome: Outcome) -> None:
        """Fail every call awaiting a reply, with C{message} naming each one."""
        pending, self._pending = self._pending, {}
        self.listeners.clear()
        for tag, entry in pending.items():
            self._deadlines.remove(tag, entry.bucket)
            entry.deferred.errback(
                Failure(
                    UnavailableError(
                        message.format(procedure=entry.procedure), outcome, self.node_name
                    )
                )
            )

    def abort(self, why: str | None = None) -> None:
        """
        Drop the connection now, without waiting to send what is buffered.

        @param why: what to tell the calls it fails, instead of the transport's
            own words for an aborted connection.
        """
        if self._connected:
            self._abort_reason = why
            self._outbox.discard()
            self._out.abortConnection()


def _nothing() -> None:
    pass


def _tag_text(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if not number:
            return text


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, clock: Clock, max_line: int) -> None:
        self._clock = clock
        self._max_line = max_line

    def buildProtocol(self, addr: object) -> ClientProtocol:
        protocol = ClientProtocol(self._clock, self._max_line)
        protocol.factory = self
        return protocol


_DEFAULT = object()


class Client:
    """
    An asynchronous client of one node.

    It connects on first use and again after a lost connection.  Calls
    return Deferreds; all take keyword-only C{timeout} (seconds; every call
    has a deadline) and C{key} (an idempotency key).

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
        self._factory = _ClientFactory(reactor, max_line)
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
            return _nothing
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
