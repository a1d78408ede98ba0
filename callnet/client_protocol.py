"""
The client's side of one connection: L{ClientProtocol} sends tagged calls
and matches the replies to them, with a deadline per call kept in coarse
buckets, and hands a stream's C{ITEM} and C{PROGRESS} lines to its
listener.  L{callnet.client.Client} makes and keeps these connections; a
node's links to its peers use them too.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from callnet.errors import (
    CallCancelledError,
    CallError,
    DeadlineExceededError,
    InvalidArgumentError,
    Outcome,
    UnavailableError,
)
from callnet.reactors import Clock, DelayedCall, set_no_delay
from callnet.reading import ReadSize
from callnet.sending import Outbox
from callnet.wire import (
    DEFAULT_MAX_LINE,
    BadLine,
    Bye,
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
        self._read_size: ReadSize
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
        #: Why the node closed this connection, if it said C{BYE}.
        self.said_bye: str | None = None

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
        self._read_size = ReadSize(self.transport)
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
        self._read_size.read(len(data))
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
            elif type(event) is Bye:
                self._node_left(event.reason)
                break
            elif type(event) is BadLine:
                log.warn(
                    "unreadable line from {node}: {error}", node=self.node_name, error=event.error
                )
        self._outbox.release()

    def _node_left(self, reason: str) -> None:
        """
        The node said C{BYE}: it answered all it read and runs nothing
        more, so the calls still waiting did not run.  Fail them so, send no
        more, and close (the node reads until this side closes).
        """
        self._connected = False
        self.said_bye = reason
        self._deadlines.stop()
        reason = reason.replace("{", "(").replace("}", ")")
        self._fail_pending(reason + ": {procedure} was not read", Outcome.NOT_RUN)
        self._outbox.discard()
        self._out.loseConnection()

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


def no_op() -> None:
    pass


def _tag_text(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if not number:
            return text


class ClientFactory(Factory):
    noisy = False

    def __init__(self, clock: Clock, max_line: int) -> None:
        self._clock = clock
        self._max_line = max_line

    def buildProtocol(self, addr: object) -> ClientProtocol:
        protocol = ClientProtocol(self._clock, self._max_line)
        protocol.factory = self
        return protocol
