"""
The node's side of a connection: a thin adapter between the codec and the
dispatcher.

L{NodeProtocol} feeds bytes to a L{LineDecoder}, hands each call to the
L{Dispatcher}, and writes each reply as its call completes: tagged replies at
once, untagged ones in the order their requests came.  It applies
backpressure: it stops reading from a connection with too many calls in
flight, or whose replies are not being read, and drops a connection that
leaves its replies unread too long.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from callnet.access import AccessPolicy, Caller
from callnet.config import Limits
from callnet.dispatch import Dispatcher
from callnet.errors import (
    CallError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from callnet.reactors import DelayedCall, DispatchReactor, set_no_delay
from callnet.sending import Outbox
from callnet.tracing import with_trace
from callnet.wire import (
    PROTOCOL_VERSION,
    BadLine,
    Call,
    Command,
    Event,
    LineDecoder,
    encode_failure,
    encode_success,
    encode_text,
)

log = Logger()
#: One event per call when the access log is on, in its own namespace so it
#: can be routed apart from the node's other logs.
access_log = Logger(namespace="callnet.access")

_HTTP_REQUEST = re.compile(rb"[A-Z]{3,7} \S+ HTTP/\d")
_HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"}
)


class _Transport(TypingProtocol):
    """The parts of a stream transport the protocol uses (typed for mypy)."""

    def write(self, data: bytes) -> None: ...
    def writeSequence(self, data: Iterable[bytes]) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def getPeer(self) -> object: ...


class _Slot:
    """A place in the queue of untagged replies, filled when its call ends."""

    __slots__ = ("call", "line")

    def __init__(self, call: Deferred[Any] | None = None) -> None:
        self.call = call
        self.line: bytes | None = None


#: How often a draining node looks whether its calls have ended, in seconds.
DRAIN_CHECK_INTERVAL = 0.05
#: How long a stopping node waits for its last replies to be written before
#: it cuts the connections that have not taken them.
DRAIN_FLUSH_TIMEOUT = 2.0

#: Commands answered before a caller has authenticated.
_BEFORE_AUTH = frozenset({"AUTH", "PING", "HELP", "QUIT"})
#: The delay before a wrong token is answered; it doubles with each failure
#: on a connection, up to AUTH_DELAY_MAX, so guessing is slow.
AUTH_DELAY = 0.5
AUTH_DELAY_MAX = 8.0
#: Wrong tokens after which a connection is closed.
MAX_AUTH_FAILURES = 5

#: What C{_quitting} holds once the client has half-closed its side.
_END_OF_INPUT = object()


@implementer(IPushProducer, IHalfCloseableProtocol, IHandshakeListener)
class NodeProtocol(Protocol):
    """Serves calls arriving on one connection."""

    factory: NodeFactory

    def __init__(self) -> None:
        self._calls: dict[str, Deferred[Any]] = {}
        self._keyed: set[str] = set()
        #: The node name a peer gave in its handshake, if this is a peer.
        self.peer_name: str | None = None
        #: Who is calling: from AUTH or a client certificate; None until known.
        self.caller: Caller | None = None
        #: The name in the connection's verified client certificate, if any.
        self.certified: str | None = None
        self._host: str | None = None
        self._auth_failures = 0
        self._auth_timer: DelayedCall | None = None
        self._paused_for_auth = False
        self._line_timer: DelayedCall | None = None
        self._unsent_while_paused = 0
        self._untagged: deque[_Slot] = deque()
        self._in_flight = 0
        self._paused_for_calls = False
        self._paused_for_writes = False
        self._reading = True
        self._draining = False
        self._quitting: _Slot | str | object | None = None
        self._input_ended = False
        self._closed = False
        self._outbox: Outbox
        self._first_line = True
        self._stall_timer: DelayedCall | None = None
        self._counted = False

    # --- Connection lifecycle ---------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self._out = cast(_Transport, self.transport)
        self._outbox = Outbox(self.transport, factory.clock)
        set_no_delay(self.transport)
        self._decoder = LineDecoder(factory.limits.max_line_bytes)
        if factory.connections >= factory.limits.max_connections:
            self._write_error(
                ResourceExhaustedError(
                    f"too many connections ({factory.limits.max_connections}); try again later",
                    node=factory.node_name,
                ),
                None,
            )
            self._close()
            return
        host = getattr(self._out.getPeer(), "host", None)
        per_address = factory.limits.max_connections_per_address
        if host is not None and factory.by_address.get(host, 0) >= per_address:
            self._write_error(
                ResourceExhaustedError(
                    f"too many connections from {host} ({per_address})",
                    node=factory.node_name,
                ),
                None,
            )
            self._close()
            return
        factory.connections += 1
        factory.open.add(self)
        factory.by_address[host] = factory.by_address.get(host, 0) + 1
        self._host = host
        self._counted = True
        certified = factory.identify(self.transport)
        if certified is not None:
            self.caller = factory.access.certified(certified)
        else:
            self.caller = factory.access.connected()
        self._out.registerProducer(self, True)

    def handshakeCompleted(self) -> None:
        """A TLS handshake finished: a verified client certificate names the caller."""
        if self._closed:
            return
        identity = self.factory.identify(self.transport)
        if identity is not None:
            self.certified = identity
            self.caller = self.factory.access.certified(identity)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._outbox.discard()
        if self._counted:
            factory = self.factory
            factory.connections -= 1
            factory.open.discard(self)
            left = factory.by_address.get(self._host, 1) - 1
            if left:
                factory.by_address[self._host] = left
            else:
                factory.by_address.pop(self._host, None)
            self._counted = False
        self._cancel_line_timer()
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self._cancel_stall_timer()
        calls, self._calls = self._calls, {}
        for tag, call in calls.items():
            if tag not in self._keyed:
                call.cancel()
            # A keyed call runs on to its deadline, so that the caller's
            # retry with the same key finds its outcome instead of a cancel.
        slots, self._untagged = self._untagged, deque()
        for slot in slots:
            if slot.call is not None and slot.line is None:
                slot.call.cancel()

    def shut_down(self) -> None:
        """The node is stopping: cancel what still runs here, and close."""
        why = UnavailableError(
            f"{self.factory.node_name} shut down before the call ended", Outcome.MAY_HAVE_RUN
        )
        calls, self._calls = self._calls, {}
        for tag, call in calls.items():
            self._keyed.discard(tag)
            call.cancel()
            self._write(self._encode(Failure(why), tag))
        self._in_flight -= len(calls)
        for slot in self._untagged:
            if slot.line is None:
                slot.line = self._encode(Failure(why), None)
                if slot.call is not None:
                    slot.call.cancel()
        self._flush_untagged()
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._outbox.send()
        self._out.loseConnection()

    # --- Reading ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self._first_line and _HTTP_REQUEST.match(data):
            self._refuse_http()
            return
        self._decoder.feed(data)
        self._drain()

    def _drain(self) -> None:
        """Handle buffered events until none is left or reading is paused."""
        if self._draining:
            return
        self._draining = True
        self._outbox.hold()
        try:
            decoder = self._decoder
            while self._reading and not self._closed and self._quitting is None:
                event = decoder.next_event()
                if event is None:
                    if self._input_ended:
                        self._end_of_input()
                    break
                self._handle(event)
        finally:
            self._draining = False
            self._outbox.release()
        if self._decoder.buffered and self._reading and not self._closed:
            if self._line_timer is None:
                self._line_timer = self.factory.clock.callLater(
                    self.factory.limits.line_timeout, self._line_too_slow
                )
        else:
            self._cancel_line_timer()

    def _refuse_http(self) -> None:
        self._write_error(
            InvalidArgumentError(
                "this is a callnet node, not an HTTP server; type HELP in a line-based"
                " client such as nc, or see docs/protocol.md"
            ),
            None,
        )
        self._close()

    def _handle(self, event: Event) -> None:
        if self._first_line:
            self._first_line = False
            if _looks_like_http(event):
                self._refuse_http()
                return
        caller = self.caller
        if caller is not None and caller.credential is not None:
            caller = self._still_authenticated(caller)
        if type(event) is Call:
            if caller is None:
                self._reply_now(Failure(_unauthenticated()), event.tag)
            else:
                self._handle_call(event, caller)
        elif type(event) is Command:
            if caller is None and event.verb not in _BEFORE_AUTH:
                self._reply_now(Failure(_unauthenticated()), event.tag)
            else:
                self._handle_command(event)
        elif type(event) is BadLine:
            self._reply_now(Failure(event.error), event.tag)
        else:
            self._reply_now(
                Failure(InvalidArgumentError("a node takes requests here, not replies")), None
            )

    def _still_authenticated(self, caller: Caller) -> Caller | None:
        """
        The caller, unless a reload has since removed the token it
        authenticated with: then the connection must AUTH again.
        """
        if self.factory.access.revoked(caller):
            log.info(
                "{peer}: the token {identity} authenticated with was removed by a reload;"
                " its calls are refused until it authenticates again",
                peer=self._out.getPeer(),
                identity=caller.name,
            )
            self.caller = None
            return None
        return caller

    def _refusal(self, call: Call) -> CallError | None:
        """Why this connection cannot take the call now, if it cannot."""
        factory = self.factory
        if factory.draining:
            return UnavailableError(f"{factory.node_name} is shutting down", Outcome.NOT_RUN)
        if call.tag is not None and call.tag in self._calls:
            return InvalidArgumentError(f"tag #{call.tag} is already in use by a call in flight")
        if self.peer_name is not None and self._in_flight >= factory.limits.max_calls_in_flight:
            return UnavailableError(
                f"{factory.node_name} is busy: {self._in_flight} calls in flight from this peer",
                Outcome.NOT_RUN,
            )
        return None

    def _handle_call(self, call: Call, caller: Caller) -> None:
        tag = call.tag
        refusal = self._refusal(call)
        if refusal is not None:
            self._reply_now(Failure(refusal), tag)
            return
        factory = self.factory
        if call.trace is None and factory.access_log:
            call = with_trace(call, factory.dispatcher.trace_ids.new())
        outcome = factory.dispatcher.start(call, caller)
        if factory.access_log:
            outcome = self._log_access(call, outcome)
        if not isinstance(outcome, Deferred):
            # Answered at once (an error, or a procedure that did not wait):
            # no bookkeeping of calls in flight.
            if call.cast:
                self._cast_done(outcome, call, tracked=False)
            else:
                if isinstance(outcome, Failure):
                    self._trace_failure(outcome, call)
                self._reply_now(outcome, tag)
            return
        d = outcome
        if call.trace is not None or tag is not None:
            d.addErrback(self._trace_failure, call)
        if call.cast:
            self._track()
            d.addBoth(self._cast_done, call, True)
            return
        self._track()
        if tag is None:
            slot = _Slot(d)
            self._untagged.append(slot)
            d.addBoth(self._untagged_done, slot)
        else:
            self._calls[tag] = d
            if call.key is not None:
                self._keyed.add(tag)
            d.addBoth(self._tagged_done, tag)

    def _trace_failure(self, failure: Failure, call: Call) -> Failure:
        """
        Give a failed call's error its trace id, to show in the reply: the
        call's own, or for a program's (tagged) call a new one, so that every
        failure a program sees can be found in the nodes' logs.  A person's
        untagged line is answered without one unless it carried one.
        """
        error = failure.value
        if isinstance(error, CallError) and error.trace is None:
            error.trace = call.trace
            if error.trace is None and call.tag is not None:
                error.trace = self.factory.dispatcher.trace_ids.new()
            # Refusals (not run) are not logged: anyone can cause them cheaply.
            if error.trace is not None and error.outcome is not Outcome.NOT_RUN:
                log.info(
                    "{procedure} failed {code} (trace {trace}): {message}",
                    procedure=call.procedure,
                    code=error.code,
                    trace=error.trace,
                    message=error.message,
                )
        return failure

    def _log_access(self, call: Call, outcome: Any) -> Any:
        """Log the call once it ends (the access log), passing its outcome on."""
        started = self.factory.clock.seconds()

        def record(result: Any) -> Any:
            if isinstance(result, Failure):
                error = result.value
                code = error.code if isinstance(error, CallError) else "INTERNAL"
            else:
                code = "OK"
            access_log.info(
                "{procedure} by {caller} from {address}: {outcome} in {duration_ms:.2f} ms"
                " (trace {trace})",
                procedure=call.procedure,
                caller=str(self.caller),
                address=self._host,
                outcome=code,
                duration_ms=(self.factory.clock.seconds() - started) * 1000,
                trace=call.trace,
                tag=call.tag,
            )
            return result

        if isinstance(outcome, Deferred):
            return outcome.addBoth(record)
        return record(outcome)

    def _cast_done(self, result: Any, call: Call, tracked: bool) -> None:
        if isinstance(result, Failure):
            log.info(
                "cast of {procedure} failed: {error}", procedure=call.procedure, error=result.value
            )
        if tracked and not self._closed:
            self._untrack()
            self._after_call()

    # --- Commands -------------------------------------------------------------

    def _handle_command(self, command: Command) -> None:
        verb, args, tag = command.verb, command.args, command.tag
        factory = self.factory
        registry = factory.dispatcher.registry
        if verb == "PING":
            self._reply_now("pong", tag)
        elif verb == "LIST":
            self._reply_now(registry.names(), tag)
        elif verb == "HELP":
            name = str(args[0]) if args else None
            if name is not None and name not in registry:
                self._reply_now(Failure(_not_found(name, factory.node_name)), tag)
            elif tag is None:
                self._reply_now(None, None, text=registry.help_text(name))
            elif name is None:
                self._reply_now([p.describe() for p in registry.procedures()], tag)
            else:
                self._reply_now(registry.get(name).describe(), tag)
        elif verb == "STATS":
            stats = factory.stats()
            if tag is None:
                self._reply_now(None, None, text=_format_stats(stats))
            else:
                self._reply_now(stats, tag)
        elif verb == "CANCEL":
            self._reply_now(self._cancel(args), tag)
        elif verb == "QUIT":
            self._quit(tag)
        elif verb == "HELLO":
            self._reply_now(self._hello(args), tag)
        elif verb == "AUTH":
            self._auth(args, tag)
        else:
            self._reply_now(
                Failure(UnimplementedError(f"{verb} is not available on this node")), tag
            )

    def _auth(self, args: tuple[Any, ...], tag: str | None) -> None:
        """
        Check a token.  A wrong one is answered only after a delay that
        doubles with each failure, while the connection is not read, and
        after a few the connection is closed: guessing is slow.
        """
        access = self.factory.access
        caller = None
        if len(args) == 1 and isinstance(args[0], str) and access.requires_authentication:
            caller = access.authenticate(args[0])
        if caller is not None:
            self.caller = caller
            self._auth_failures = 0
            self._reply_now(caller.name, tag)
            return
        if not access.requires_authentication:
            self._reply_now(
                Failure(FailedPreconditionError("this node takes no tokens", Outcome.NOT_RUN)),
                tag,
            )
            return
        self._auth_failures += 1
        delay = min(AUTH_DELAY * 2 ** (self._auth_failures - 1), AUTH_DELAY_MAX)
        slot = None
        if tag is None:
            slot = _Slot()
            self._untagged.append(slot)
        self._paused_for_auth = True
        self._update_reading()
        self._auth_timer = self.factory.clock.callLater(delay, self._refuse_auth, tag, slot)

    def _refuse_auth(self, tag: str | None, slot: _Slot | None) -> None:
        self._auth_timer = None
        line = self._encode(Failure(UnauthenticatedError("that token is not valid")), tag)
        if slot is not None:
            slot.line = line
            self._flush_untagged()
        else:
            self._write(line)
        if self._auth_failures >= MAX_AUTH_FAILURES:
            log.info(
                "closing {peer} after {count} failed AUTH attempts",
                peer=self._out.getPeer(),
                count=self._auth_failures,
            )
            self._close()
            return
        self._paused_for_auth = False
        self._update_reading()

    def _hello(self, args: tuple[Any, ...]) -> Any:
        """A peer's handshake: note who it says it is, and say who we are."""
        access = self.factory.access
        caller = self.caller
        if access.requires_authentication and not (caller is not None and caller.peer):
            return Failure(PermissionDeniedError("only a node of this cluster may say HELLO"))
        if len(args) != 1 or not isinstance(args[0], dict):
            return Failure(InvalidArgumentError("usage: HELLO {node info as JSON}"))
        name = str(args[0].get("node", ""))[:128] or None
        if self.certified is not None and name != self.certified:
            return Failure(
                PermissionDeniedError(
                    f"this connection's certificate names {self.certified}, not {name}"
                )
            )
        self.peer_name = name
        if caller is not None and caller.peer and name is not None:
            # Named for the logs and for the calls it forwards; its rights
            # come from how it authenticated, not from this name.
            self.caller = replace(caller, name=name)
        return self.factory.hello()

    def _cancel(self, args: tuple[Any, ...]) -> bool | Failure:
        if len(args) != 1:
            return Failure(InvalidArgumentError("usage: CANCEL tag"))
        tag = str(args[0]).removeprefix("#")
        call = self._calls.get(tag)
        if call is None:
            return False
        call.cancel()
        return True

    def _quit(self, tag: str | None) -> None:
        """Answer C{QUIT} once every earlier call is answered, then close."""
        if tag is None:
            slot = _Slot()
            self._untagged.append(slot)
            self._quitting = slot
        else:
            self._quitting = tag
        self._maybe_quit()

    def readConnectionLost(self) -> None:
        """
        The client sent all it will.

        A person's untagged requests (C{printf 'add 1 2\\n' | nc ...}) are
        answered, then the node closes.  A program's tagged calls are
        cancelled: a program that stops sending has gone away, and its work
        should stop rather than run on to its deadline.
        """
        self._input_ended = True
        calls, self._calls = self._calls, {}
        for tag, call in calls.items():
            if tag not in self._keyed:
                call.cancel()
        self._keyed.clear()
        self._in_flight -= len(calls)
        self._drain()

    def writeConnectionLost(self) -> None:
        """The client will read nothing more; its calls end when it closes."""

    def _end_of_input(self) -> None:
        unfinished = self._decoder.end_of_input()
        if unfinished is not None:
            self._reply_now(Failure(unfinished.error), unfinished.tag)
        self._quitting = _END_OF_INPUT
        self._maybe_quit()

    def _maybe_quit(self) -> None:
        quitting = self._quitting
        if quitting is None or self._in_flight or self._closed:
            return
        if quitting is _END_OF_INPUT:
            pass  # nothing to say: the client is not listening for a goodbye
        elif isinstance(quitting, _Slot):
            quitting.line = encode_success("bye")
            self._flush_untagged()
        elif isinstance(quitting, str):
            self._write(encode_success("bye", quitting))
        self._close()

    # --- Replies ------------------------------------------------------------

    def _reply_now(self, result: Any, tag: str | None, text: str | None = None) -> None:
        """Reply to a request handled without waiting: in order if untagged."""
        line = self._encode(result, tag)
        if text is not None:
            line = encode_text(text) + line
        if tag is None and self._untagged:
            slot = _Slot()
            slot.line = line
            self._untagged.append(slot)
            self._flush_untagged()
        else:
            self._write(line)

    def _write(self, line: bytes) -> None:
        """Write a reply (through the outbox, which sends it: see L{Outbox})."""
        if self._paused_for_writes:
            self._unsent_while_paused += len(line)
            if self._unsent_while_paused > self.factory.limits.max_unsent_bytes:
                self._abort_slow_reader("its unread replies passed the limit")
                return
        self._outbox.write(line)

    def _encode(self, result: Any, tag: str | None) -> bytes:
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, CallError):
                error = InternalError("the node failed to handle this request")
            if error.node is None:
                error.node = self.factory.node_name
            return encode_failure(error, tag)
        try:
            return encode_success(result, tag)
        except (TypeError, ValueError) as e:
            return encode_failure(
                InternalError(
                    f"the result is not JSON ({e})", Outcome.RAN, self.factory.node_name
                ),
                tag,
            )

    def _tagged_done(self, result: Any, tag: str) -> None:
        self._keyed.discard(tag)
        if self._calls.pop(tag, None) is None:
            return  # the connection is gone
        self._untrack()
        self._write(self._encode(result, tag))
        self._after_call()

    def _untagged_done(self, result: Any, slot: _Slot) -> None:
        if self._closed or slot.line is not None:
            return
        self._untrack()
        slot.line = self._encode(result, None)
        self._flush_untagged()
        self._after_call()

    def _flush_untagged(self) -> None:
        queue = self._untagged
        lines: list[bytes] = []
        while queue and (line := queue[0].line) is not None:
            queue.popleft()
            lines.append(line)
        if lines:
            self._outbox.write_lines(lines)

    # --- Flow control ---------------------------------------------------------

    def _track(self) -> None:
        self._in_flight += 1
        # A peer's link is never paused: its heartbeats must be read, or a
        # busy node would look dead.  Past the limit a peer's calls are
        # refused instead (see _handle_call), and it sends them elsewhere.
        if self._in_flight >= self.factory.limits.max_calls_in_flight and self.peer_name is None:
            self._paused_for_calls = True
            self._update_reading()

    def _untrack(self) -> None:
        self._in_flight -= 1

    def _after_call(self) -> None:
        if (
            self._paused_for_calls
            and self._in_flight <= self.factory.limits.max_calls_in_flight // 2
        ):
            self._paused_for_calls = False
            self._update_reading()
        self._maybe_quit()

    def _update_reading(self) -> None:
        reading = not (self._paused_for_calls or self._paused_for_writes or self._paused_for_auth)
        if reading == self._reading or self._closed:
            return
        self._reading = reading
        if reading:
            self._out.resumeProducing()
            self._drain()
        else:
            self._out.pauseProducing()

    # IPushProducer: the transport tells us when its output buffer is full.

    def pauseProducing(self) -> None:
        self._paused_for_writes = True
        self._update_reading()
        if self._stall_timer is None:
            self._stall_timer = self.factory.clock.callLater(
                self.factory.limits.write_stall_timeout, self._stalled
            )

    def resumeProducing(self) -> None:
        self._cancel_stall_timer()
        self._paused_for_writes = False
        self._unsent_while_paused = 0
        self._update_reading()

    def stopProducing(self) -> None:
        self._cancel_stall_timer()

    def _cancel_line_timer(self) -> None:
        if self._line_timer is not None:
            self._line_timer.cancel()
            self._line_timer = None

    def _line_too_slow(self) -> None:
        """A line begun and not finished in time: a slowloris, or a dead peer."""
        self._line_timer = None
        self._write_error(
            ResourceExhaustedError(
                f"a line was begun and not finished within {self.factory.limits.line_timeout:g}s"
            ),
            None,
        )
        self._close()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        self._abort_slow_reader(
            f"it left its replies unread for {self.factory.limits.write_stall_timeout:g}s"
        )

    def _abort_slow_reader(self, why: str) -> None:
        log.info("dropping {peer}: {why}", peer=self._out.getPeer(), why=why)
        self._closed = True
        self._cancel_stall_timer()
        self._outbox.discard()
        self._out.abortConnection()

    def _write_error(self, error: CallError, tag: str | None) -> None:
        self._write(encode_failure(error, tag))


def _looks_like_http(event: Event) -> bool:
    """Whether a first request is an HTTP request line that came in pieces."""
    return (
        type(event) is Call
        and event.procedure in _HTTP_METHODS
        and bool(event.args)
        and str(event.args[-1]).startswith("HTTP/")
    )


def _unauthenticated() -> CallError:
    return UnauthenticatedError("authenticate first: AUTH <token>")


def _not_found(name: str, node: str) -> CallError:
    return NotFoundError(f"no procedure named {name[:80]!r}; try HELP", node=node)


def _format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"node {stats['node']}: {stats['connections']} connections,"
        f" {stats['calls']} calls, {stats['errors']} errors, {stats['in_flight']} in flight",
    ]
    peers = stats.get("peers")
    procedures = stats["procedures"]
    if procedures:
        width = max(len(name) for name in procedures)
        lines.append(f"{'procedure':<{width}}  {'calls':>8}  {'errors':>8}  {'in flight':>9}")
        for name, entry in procedures.items():
            lines.append(
                f"{name:<{width}}  {entry['calls']:>8}  {entry['errors']:>8}"
                f"  {entry['in_flight']:>9}"
            )
    if peers:
        width = max(len(name) for name in peers)
        lines.append(f"{'peer':<{width}}  {'state':<10}  {'in flight':>9}  endpoint")
        for name, peer in sorted(peers.items()):
            lines.append(
                f"{name:<{width}}  {peer['state']:<10}  {peer['in_flight']:>9}  {peer['endpoint']}"
            )
    return "\n".join(lines)


class NodeFactory(Factory):
    """Makes a L{NodeProtocol} for each connection, sharing one dispatcher."""

    protocol = NodeProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self, dispatcher: Dispatcher, limits: Limits, node_name: str, clock: DispatchReactor
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self.node_name = node_name
        self.clock = clock
        self.connections = 0
        #: The connections open now.
        self.open: set[NodeProtocol] = set()
        #: Set once the node has begun to shut down: new calls are refused.
        self.draining = False
        #: Log every call: procedure, caller, duration, outcome, trace id.
        self.access_log = False
        #: Connections open now, by the address they come from.
        self.by_address: dict[str | None, int] = {}
        #: Who a connection is, from its transport (a TLS client
        #: certificate), before any AUTH; None if the transport cannot say.
        self.identify: Callable[[object], str | None] = lambda transport: None
        #: Set by a node with peers: how it sees them, for C{STATS}.
        self.describe_cluster: Callable[[], dict[str, Any]] | None = None

    @property
    def access(self) -> AccessPolicy:
        """Tokens and access rules: the dispatcher's, the one policy in force."""
        return self.dispatcher.access

    @access.setter
    def access(self, policy: AccessPolicy) -> None:
        self.dispatcher.access = policy

    def drain(self, grace: float) -> Deferred[None]:
        """
        Shut down gracefully: refuse new calls (C{UNAVAILABLE}, not run, so
        callers and peers send them elsewhere), let the calls in flight end
        within C{grace} seconds, then cancel the rest and close every
        connection.

        @return: a Deferred that fires once every connection is closing.
        """
        self.draining = True
        log.info(
            "node {node} draining: {count} calls in flight, up to {grace}s to end",
            node=self.node_name,
            count=self.dispatcher.stats.in_flight,
            grace=grace,
        )
        done: Deferred[None] = Deferred()
        deadline = self.clock.seconds() + grace

        def check() -> None:
            if self.dispatcher.stats.in_flight and self.clock.seconds() < deadline:
                self.clock.callLater(DRAIN_CHECK_INTERVAL, check)
                return
            left = self.dispatcher.stats.in_flight
            if left:
                log.warn(
                    "node {node}: cancelling {count} calls still running after {grace}s",
                    node=self.node_name,
                    count=left,
                    grace=grace,
                )
            for protocol in list(self.open):
                protocol.shut_down()
            closed(self.clock.seconds() + DRAIN_FLUSH_TIMEOUT)

        def closed(flush_deadline: float) -> None:
            # Wait for the last replies to be written out; a client that
            # will not read them is cut off after a moment.
            if self.open and self.clock.seconds() < flush_deadline:
                self.clock.callLater(DRAIN_CHECK_INTERVAL, closed, flush_deadline)
                return
            for protocol in list(self.open):
                protocol._out.abortConnection()
            done.callback(None)

        check()
        return done

    def hello(self) -> dict[str, Any]:
        """What this node says of itself in the handshake: name, procedures."""
        return {
            "node": self.node_name,
            "version": PROTOCOL_VERSION,
            "procedures": [
                {"name": entry.name, "idempotent": entry.idempotent}
                for entry in self.dispatcher.registry.procedures()
            ],
        }

    def stats(self) -> dict[str, Any]:
        """The node's counters, as C{STATS} reports them."""
        stats = {
            "node": self.node_name,
            "connections": self.connections,
            **self.dispatcher.stats.as_dict(),
        }
        if self.describe_cluster is not None:
            stats["peers"] = self.describe_cluster()
        return stats
