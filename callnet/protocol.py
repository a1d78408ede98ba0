"""
The node's side of a connection: a thin Twisted adapter around a L{Session}.

L{NodeProtocol} feeds the bytes it reads to the connection's L{Session},
which holds every rule of the connection, and performs the actions the
session asks for: it writes through an L{Outbox}, pauses and resumes the
transport, starts calls on the L{Dispatcher} and follows their Deferreds,
runs the session's timers on the reactor clock, and closes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, cast
from typing import Protocol as Interface

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from callnet.access import AccessPolicy, Caller
from callnet.config import Limits
from callnet.dispatch import Dispatcher
from callnet.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    Outcome,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from callnet.execution import PLAIN_RESULTS
from callnet.logs import readable
from callnet.reactors import DelayedCall, DispatchReactor, peer_closed, set_no_delay
from callnet.replies import encode_result, log_access, trace_failure
from callnet.sending import Outbox
from callnet.session import AUTH_DELAY, MAX_AUTH_FAILURES, ORDINARY_ENDS, Session, Slot
from callnet.streaming import Stream
from callnet.telnet import TelnetFilter
from callnet.tracing import with_trace
from callnet.wire import Call, Command, encode_progress


class Listener(Interface):
    """
    What a connection needs of the listener that made it (L{NodeFactory} in
    L{callnet.server}): the node's shared pieces, and its counts.
    """

    dispatcher: Dispatcher
    limits: Limits
    node_name: str
    clock: DispatchReactor
    draining: bool
    access_log: bool
    identify: Callable[[object], str | None]

    @property
    def access(self) -> AccessPolicy: ...

    def admit(self, protocol: NodeProtocol, host: str | None) -> str | None: ...

    def release(self, protocol: NodeProtocol, host: str | None) -> None: ...

    def auth_failed(self, host: str | None) -> int: ...

    def detach_cast(self, work: Deferred[Any]) -> None: ...

    def answer(self, command: Command, caller: Caller | None = None) -> bytes: ...

    def hello(self) -> dict[str, Any]: ...


__all__ = ["AUTH_DELAY", "MAX_AUTH_FAILURES", "NodeProtocol"]

log = Logger()


@implementer(IPushProducer, IHalfCloseableProtocol, IHandshakeListener)
class NodeProtocol(Protocol):
    """Serves calls arriving on one connection: the adapter of its L{Session}."""

    factory: Listener  # type: ignore[assignment]
    session: Session

    def __init__(self) -> None:
        #: The node name a peer gave in its handshake, if this is a peer.
        self.peer_name: str | None = None
        #: Who is calling: from AUTH or a client certificate; None until known.
        self.caller: Caller | None = None
        #: The name in the connection's verified client certificate, if any.
        self.certified: str | None = None
        self._host: str | None = None
        self._counted = False
        self._timers: dict[str, DelayedCall] = {}
        # The progress reports of the call being started, until followed.
        self._watch: _Watch | None = None

    # --- Connection lifecycle (Twisted's events) ----------------------------------

    def connectionMade(self) -> None:
        factory, transport = self.factory, cast(Any, self.transport)
        self._outbox = Outbox(transport, factory.clock)
        set_no_delay(transport)
        certified = factory.identify(transport)
        if certified is not None:
            self.caller = factory.access.certified(certified)
        else:
            self.caller = factory.access.connected()
        # Telnet's commands (Ctrl-C, option negotiation) come out before the
        # codec sees the bytes; a chunk without byte 255 passes untouched.
        self._telnet = TelnetFilter()
        session = self.session = Session(
            factory.limits, factory.node_name, self, self.caller is not None
        )
        session.draining = factory.draining
        self._host = getattr(transport.getPeer(), "host", None)
        refusal = factory.admit(self, self._host)
        if refusal is None:
            self._counted = True
            transport.registerProducer(self, True)
        else:
            session.refuse(ResourceExhaustedError(refusal, node=factory.node_name), refusal)

    def handshakeCompleted(self) -> None:
        """A TLS handshake finished: a verified client certificate names the caller."""
        identity = self.factory.identify(self.transport)
        if identity is not None:
            self.certified = identity
            self.caller = self.factory.access.certified(identity)
            self.session.authenticated = True

    def dataReceived(self, data: bytes) -> None:
        caller = self.caller
        if caller is not None and caller.credential is not None:
            self._check_revoked(caller)
        outbox = self._outbox
        outbox.hold()
        try:
            session = self.session
            self._telnet.receive(data, session.receive_data, session.interrupt, self.write)
        finally:
            outbox.release()

    def _check_revoked(self, caller: Caller) -> None:
        """
        A reload that removed the token this connection authenticated with
        makes it authenticate again before anything else is served.
        """
        if self.factory.access.revoked(caller):
            log.info(
                "{peer}: the token {identity} authenticated with was removed by a reload;"
                " its requests are refused until it authenticates again",
                peer=readable(cast(Any, self.transport).getPeer()),
                identity=caller.name,
            )
            self.caller = None
            self.session.authenticated = False

    def readConnectionLost(self) -> None:
        """The client sent all it will (see L{Session.end_input})."""
        self._outbox.hold()
        try:
            self.session.end_input()
        finally:
            self._outbox.release()

    def writeConnectionLost(self) -> None:
        """The client will read nothing more; its calls end when it closes."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._outbox.discard()
        if self._counted:
            self._counted = False
            self.factory.release(self, self._host)
        self.session.connection_lost()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def shut_down(self) -> None:
        """The node is stopping: cancel what still runs here, and close."""
        name = self.factory.node_name
        self.session.shut_down(
            UnavailableError(f"{name} shut down before the call ended", Outcome.MAY_HAVE_RUN)
        )

    def abort(self) -> None:
        """Cut the connection now, whatever is left unwritten."""
        cast(Any, self.transport).abortConnection()

    # IPushProducer: the transport says when its output buffer is full.

    def pauseProducing(self) -> None:
        self.session.output_paused()

    def resumeProducing(self) -> None:
        self.session.output_resumed()

    def stopProducing(self) -> None:
        """The transport is going away; L{connectionLost} follows."""

    # --- The session's actions ---------------------------------------------------

    def write(self, line: bytes) -> None:
        self._outbox.write(line)

    def pause_reading(self) -> None:
        cast(Any, self.transport).pauseProducing()

    def resume_reading(self) -> None:
        cast(Any, self.transport).resumeProducing()

    def check_closed(self) -> None:
        transport = cast(Any, self.transport)
        gone = peer_closed(transport)
        if gone == "reset":
            transport.abortConnection()  # connectionLost cancels its calls
        elif gone == "ended":
            # Nothing more can be read but the end: let the transport read it,
            # so the session hears of it as of any end of input.
            transport.resumeProducing()
        elif gone == "ending":
            self._outbox.hold()
            try:
                self.session.input_closing()
            finally:
                self._outbox.release()

    def start_call(self, call: Call) -> Any:
        factory = self.factory
        caller = self.caller
        assert caller is not None  # the session serves calls only once authenticated
        if call.trace is not None:
            # A traceparent that breaks W3C's rules is replaced here, so the
            # access log and the error reply show the id the call runs under.
            call = factory.dispatcher.traced(call)
        elif factory.access_log:
            call = with_trace(call, factory.dispatcher.trace_ids.new())
        watch = self._watch = _Watch(self.session, call.tag) if call.progress else None
        outcome = factory.dispatcher.start(call, caller, True, watch.report if watch else None)
        if type(outcome) is Stream:
            result = outcome.result
            if factory.access_log:
                log_access(call, result, factory.clock, str(caller), self._host)
            if call.trace is not None or call.tag is not None:
                result.addErrback(trace_failure, call, factory.dispatcher.trace_ids)
            return outcome
        if factory.access_log:
            outcome = log_access(call, outcome, factory.clock, str(caller), self._host)
        if type(outcome) not in PLAIN_RESULTS and isinstance(outcome, Deferred):
            if call.trace is not None or call.tag is not None:
                outcome.addErrback(trace_failure, call, factory.dispatcher.trace_ids)
            return outcome
        if call.cast:
            self._cast_done(outcome, call, None)
            return b""
        if isinstance(outcome, Failure):
            trace_failure(outcome, call, factory.dispatcher.trace_ids)
        return self._reply(outcome, call.tag)

    def follow(self, work: Any, call: Call, slot: Slot | None) -> Stream | None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.work, watch.slot = work, slot
        if type(work) is Stream:
            work.on_item = partial(self.session.stream_item, work)
            if slot is not None:
                work.result.addBoth(self._untagged_done, slot)
            else:
                work.result.addBoth(self._tagged_done, call.tag, work)
            return work
        if call.cast:
            work.addBoth(self._cast_done, call, work)
        elif slot is not None:
            work.addBoth(self._untagged_done, slot)
        else:
            work.addBoth(self._tagged_done, call.tag, work)
        return None

    def _untagged_done(self, result: Any, slot: Slot) -> None:
        self.session.untagged_finished(slot, encode_result(result, None, self.factory.node_name))

    def _tagged_done(self, result: Any, tag: str | None, work: Any) -> None:
        line = encode_result(result, tag, self.factory.node_name)
        self.session.tagged_finished(tag, work, line)

    def cancel_call(self, work: Deferred[Any] | Stream) -> None:
        work.cancel()

    def detach_cast(self, work: Deferred[Any]) -> None:
        self.factory.detach_cast(work)

    def run_command(self, command: Command) -> bytes:
        if command.verb == "HELLO":
            return self._reply(self._hello(command.args), command.tag)
        caller = self.caller
        if command.verb == "STATS" and caller is not None:
            # The whole node's counters and its peers' addresses: for those
            # whose rules name STATS (as "*" does), not for every caller.
            refusal = self.factory.access.check(caller, "STATS")
            if refusal is not None:
                return self._reply(Failure(refusal), command.tag)
        return self.factory.answer(command, caller)

    def authenticate(self, args: tuple[Any, ...]) -> Any:
        access = self.factory.access
        if not access.requires_authentication:
            return FailedPreconditionError("this node takes no tokens", Outcome.NOT_RUN)
        caller = None
        if len(args) == 1 and isinstance(args[0], str):
            caller = access.authenticate(args[0])
        if caller is None:
            return None
        self.caller = caller
        return caller.name

    def auth_failed(self) -> int:
        return self.factory.auth_failed(self._host)

    def start_timer(self, timer: str, delay: float) -> None:
        self._timers[timer] = self.factory.clock.callLater(delay, self._fire, timer)

    def _fire(self, timer: str) -> None:
        del self._timers[timer]
        self._outbox.hold()
        try:
            self.session.timer_fired(timer)
        finally:
            self._outbox.release()

    def stop_timer(self, timer: str) -> None:
        self._timers.pop(timer).cancel()

    def close(self, reason: str, abort: bool) -> None:
        transport = cast(Any, self.transport)
        if abort or reason not in ORDINARY_ENDS:
            log.info("closing {peer}: {reason}", peer=readable(transport.getPeer()), reason=reason)
        if abort:
            self._outbox.discard()
            transport.abortConnection()
        else:
            self._outbox.send()
            transport.loseConnection()

    # --- Helpers ------------------------------------------------------------------

    def _reply(self, result: Any, tag: str | None = None) -> bytes:
        return encode_result(result, tag, self.factory.node_name)

    def _hello(self, args: tuple[Any, ...]) -> Any:
        """A peer's handshake: note who it says it is, and say who we are."""
        access, caller = self.factory.access, self.caller
        if access.requires_authentication and not (caller is not None and caller.peer):
            return Failure(PermissionDeniedError("only a node of this cluster may say HELLO"))
        if len(args) != 1 or not isinstance(args[0], dict):
            return Failure(InvalidArgumentError("usage: HELLO {node info as JSON}"))
        name = str(args[0].get("node", ""))[:128] or None
        # A configured peer's name is its certificate's: a certificate that
        # gives one speaks only as that peer, and none other may take it.  A
        # peer by the cluster token whose certificate names no configured peer
        # (found in DNS, its certificate naming its host) gives its own name.
        certified = self.certified
        if (
            certified is not None
            and name != certified
            and (access.names_peer(certified) or access.names_peer(name))
        ):
            why = f"this connection's certificate names {certified}, not {name}"
            return Failure(PermissionDeniedError(why))
        self.peer_name = name
        self.session.peer = True
        if caller is not None and caller.peer and name is not None:
            # Named for the logs and the calls it forwards; its rights come
            # from how it authenticated, never from this name.
            self.caller = replace(caller, name=name)
        return self.factory.hello()

    def _cast_done(self, result: Any, call: Call, work: Deferred[Any] | None) -> None:
        if isinstance(result, Failure):
            log.info(
                "cast of {procedure} failed: {error}", procedure=call.procedure, error=result.value
            )
        if work is not None:
            self.session.cast_finished(work)


class _Watch:
    """Where a call's progress reports go: its line, through the session, in its turn."""

    __slots__ = ("session", "slot", "tag", "work")

    def __init__(self, session: Session, tag: str | None) -> None:
        self.session = session
        self.tag = tag
        self.work: Any = None
        self.slot: Slot | None = None

    def report(self, done: float, total: float | None, message: str | None) -> None:
        if self.work is not None:
            line = encode_progress(done, total, message, self.tag)
            self.session.progress(self.work, self.tag, self.slot, line)
