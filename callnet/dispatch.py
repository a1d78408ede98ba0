"""
Running a procedure: where it runs, its deadline, its cancellation, its errors.

L{Dispatcher.dispatch} turns a decoded L{Call} into a L{Deferred} that fires
with the procedure's result or fails with a L{CallError}.  It knows nothing of
connections: the protocol hands it calls and writes what comes back.  A call
that runs is followed to its end by L{callnet.running.RunningCall} (deadline,
cancel, statistics); what it ended with becomes what its caller receives in
L{callnet.results}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from callnet.access import NODE_CALLER, AccessPolicy, Caller
from callnet.config import Limits, Security
from callnet.context import CallContext, ProgressSink
from callnet.errors import (
    CallCancelledError,
    CallError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    UnavailableError,
)
from callnet.execution import (
    PLAIN_RESULTS,
    Execution,
    InProcess,
    InReactor,
    InThread,
    ThreadResults,
)
from callnet.forwarding import Forwarder
from callnet.idempotency import KeyStore, fingerprint
from callnet.reactors import DispatchReactor
from callnet.registry import Procedure, Registry
from callnet.results import DeclaredErrors, checked_result, to_call_error
from callnet.running import RunningCall
from callnet.stats import UNKNOWN_PROCEDURE, NodeStats, ProcedureStats, duration_buckets
from callnet.streaming import InReactorSource, InThreadSource, Source, Stream
from callnet.tracing import TraceIds, with_trace
from callnet.wire import Call, encode_item
from callnet.workers import ThreadRunner


class Dispatcher:
    """Runs procedures from a L{Registry} under deadlines and cancellation."""

    def __init__(
        self,
        registry: Registry,
        reactor: DispatchReactor,
        threadpool: ThreadRunner,
        limits: Limits,
        node_name: str,
        process_pool: Callable[[], Executor] | None = None,
        send_tracebacks: bool = False,
        access: AccessPolicy | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.registry = registry
        #: Tokens and access rules: every call, however it arrives, is judged
        #: here, against the policy in force when it starts.
        self.access = access if access is not None else AccessPolicy(Security())
        #: The buckets are fixed at start-up: a reload that changes
        #: C{max_timeout} would otherwise change a histogram's series.
        self.stats = NodeStats(duration_buckets(limits.max_timeout))
        self.reactor = reactor
        self._limits = limits
        self.node_name = node_name
        #: Where procedures run, by their C{run}.
        self._threads = threadpool
        self._thread_results = ThreadResults(reactor)
        self._executions: dict[str, Execution] = {
            "reactor": InReactor(),
            "thread": InThread(threadpool, self._thread_results),
            "process": InProcess(reactor, process_pool),
        }
        self._send_tracebacks = send_tracebacks
        #: Forwards calls for procedures this node does not serve (a
        #: cluster's router); without one, such calls fail NOT_FOUND.
        self.forwarder = forwarder
        #: Outcomes of the keyed calls this node runs, per caller and key.
        self.keys = KeyStore(reactor, limits, node_name)
        #: Trace ids for calls that arrive without one.
        self.trace_ids = TraceIds()
        #: Why calls cancelled from now on end: set once the node stops
        #: (L{shut_down}); until then a cancel comes from the caller.
        self._stopping: str | None = None

    def shut_down(self) -> None:
        """
        The node is stopping: calls cancelled from now on were cancelled by
        the node, and end C{UNAVAILABLE} (they may have run), as their
        callers are told, not C{CANCELLED} as if their callers had gone.
        """
        self._stopping = f"{self.node_name} shut down before the call ended"

    def cancelled(self, name: str) -> CallError:
        """The error a call of C{name} ends with when it is cancelled now."""
        if self._stopping is not None:
            return UnavailableError(self._stopping, Outcome.MAY_HAVE_RUN)
        return CallCancelledError(f"{name} was cancelled by its caller")

    def traced(self, call: Call) -> Call:
        """
        The call with the trace id it runs under here: its own, or a new one
        in place of a traceparent that breaks W3C's rules (which the log
        notes).  The protocol calls it as a call arrives, so that its access
        log and error replies show the id the call ran under.
        """
        if call.trace is None:
            return call
        trace = self.trace_ids.accept(call.trace)
        return call if trace == call.trace else with_trace(call, trace)

    def label(self, procedure: str) -> str:
        """
        The name a call is counted under: the procedure it names (without
        any C{@node}) if this node serves it or a peer has said it does, else
        L{UNKNOWN_PROCEDURE}.  The access log should name calls the same way.
        """
        name = procedure.partition("@")[0]
        entry = self.registry.find(name)
        if entry is not None:
            return entry.name
        forwarder = self.forwarder
        if forwarder is not None and forwarder.serving(name):
            return name
        return UNKNOWN_PROCEDURE

    def to_call_error(self, name: str, errors: DeclaredErrors, failure: Failure) -> CallError:
        """Map what procedure C{name} raised here to the error its caller receives."""
        return to_call_error(name, errors, failure, self.node_name, self._send_tracebacks)

    @property
    def limits(self) -> Limits:
        """The node's limits, which procedures such as multicall apply too."""
        return self._limits

    @property
    def clock(self) -> DispatchReactor:
        """The reactor's clock, which every deadline is measured on."""
        return self.reactor

    def dispatch(self, call: Call, caller: Caller = NODE_CALLER) -> Deferred[Any]:
        """
        Run the procedure a call names, within its deadline.

        @return: a Deferred firing with the result, or failing with a
            L{CallError} whose outcome says whether the procedure ran.
            Cancelling it cancels the work (an C{async def} procedure sees
            C{CallCancelledError}; a thread's late result is dropped) and fails
            the call with L{CallCancelledError}.
        """
        outcome = self.start(call, caller)
        if isinstance(outcome, Deferred):
            return outcome
        if isinstance(outcome, Failure):
            return fail(outcome)
        return succeed(outcome)

    def start(
        self,
        call: Call,
        caller: Caller = NODE_CALLER,
        streams: bool = False,
        progress: ProgressSink | None = None,
    ) -> Any:
        """
        Like L{dispatch}, but a call that ends at once is not wrapped.

        The per-call hot path: a procedure that runs in the reactor and
        returns a plain value costs no Deferred and no timer.  It pays:
        benchmarks/dispatch_start.py times C{start} of such a procedure at
        about 3 us, and 5.4-5.9 us with the value wrapped in C{succeed()} and
        read back with C{addBoth}: some 2.5 us, a tenth of a whole call read
        from a line and answered in memory (about 22-24 us).

        @param caller: who makes the call, as its connection authenticated
            (the node itself by default).  A call a peer forwards for another
            caller (C{+caller}) is judged as that caller's.
        @param streams: the caller can take a stream's items (a connection
            can; a multicall or a nested call cannot, and a stream is
            refused to them).
        @param progress: where the call's progress reports go, if its caller
            asked for them.
        @return: a L{Deferred} for work still running; a L{Stream} for a
            stream; a L{Failure} of a L{CallError} for a call that failed at
            once; otherwise the result.
        """
        if call.caller is not None:
            caller = self.access.on_behalf(caller, call.caller, caller.name)
        if call.trace is not None:
            call = self.traced(call)
        # A node with no tokens and no rules lets every caller call anything:
        # the per-call hot path skips the decision (a caller still holding a
        # token from before a reload is judged, to be told it was revoked).
        if not self.access.open or caller.credential is not None:
            refusal = self._refusal(call, caller)
            if refusal is not None:
                self.stats.refused(self.label(call.procedure), refusal.code)
                refusal.node = self.node_name
                return Failure(refusal)
        if call.key is not None:
            return self._start_keyed(call, caller)
        if streams or progress is not None:
            return self._start(call, caller, None, streams, progress)
        return self._start(call, caller)

    def _refusal(self, call: Call, caller: Caller) -> CallError | None:
        """
        Why C{caller} may not make this call, if it may not: the one access
        decision for every way a procedure is reached.  A procedure that
        calls another for its caller (C{multicall}) names it in its
        metadata, and that procedure is judged too.
        """
        access = self.access
        name = call.procedure.partition("@")[0]
        refusal = access.check(caller, name)
        if refusal is None and access.restricts(caller):
            entry = self.registry.find(name)
            target = entry.called_for_caller(call.args, call.kwargs) if entry else None
            if target is not None:
                refusal = access.check(caller, target.partition("@")[0])
        return refusal

    def _start_keyed(self, call: Call, caller: Caller) -> Any:
        """
        Start a call that carries an idempotency key.

        The key lives on one node, its owner: chosen from the caller and the
        key among the nodes serving the procedure (this one too, if it does),
        so that a retry through any node reaches the same outcome.  A keyed
        call a peer forwarded was sent to its owner, and runs here; one named
        for another node (C{name@node}) is kept by that node.  Keys belong to
        the caller's identity: one caller never sees another's.
        """
        assert call.key is not None
        scope = caller.name
        name, _, target = call.procedure.partition("@")
        served = self.registry.find(name) is not None
        forwarder = self.forwarder
        if not target and call.hops == 0 and forwarder is not None:
            owner = forwarder.key_order(name, scope, call.key, served)
            if owner and owner[0] != self.node_name:
                return self._start(call, caller, scope)
        if not served or (target and target != self.node_name):
            return self._start(call, caller)
        try:
            timeout = self._budget(call)
            try:
                called = fingerprint(name, call.args, call.kwargs)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"the arguments are not JSON: {e}") from None
        except CallError as e:
            self.stats.refused(self.label(name), e.code)
            e.node = self.node_name
            return Failure(e)
        return self.keys.run(scope, call.key, called, timeout, lambda: self._start(call, caller))

    def _start(
        self,
        call: Call,
        caller: Caller,
        owner_scope: str | None = None,
        streams: bool = False,
        progress: ProgressSink | None = None,
    ) -> Any:
        """
        Start a call here, or forward it.

        @param owner_scope: forward this keyed call to the owner of its key
            for this caller, a peer, even if this node serves the procedure.
        @param streams: see L{start}.
        """
        name, target = call.procedure, None
        if "@" in name:
            name, _, target = name.partition("@")
        local = (target is None or target == self.node_name) and owner_scope is None
        entry = self.registry.find(name) if local else None
        stream = False
        try:
            if entry is not None:
                entry.check_arguments(call.args, call.kwargs)
                stream = entry.stream
            elif target == self.node_name:
                raise NotFoundError(f"no procedure named {name[:80]!r} on {target}; try HELP")
            else:
                self._check_routable(call, name, target)
                assert self.forwarder is not None
                stream = self.forwarder.streams(name, target)
            if stream:
                _check_stream(call, name, streams)
            timeout = self._budget(call)
        except CallError as e:
            self.stats.refused(self.label(name), e.code)
            e.node = e.node or self.node_name
            return Failure(e)
        began = self.reactor.seconds()
        if entry is None:
            assert self.forwarder is not None
            # Followed across nodes from here: give it the id to follow, a
            # traceparent with this hop's own parent id.
            call = with_trace(call, self.trace_ids.next_hop(call.trace))
            stats = self.stats.started(name)
            if stream:
                relayed = Stream()
                source = self.forwarder.forward_stream(
                    call, name, timeout, target, caller, relayed.deliver, progress
                )
                running = RunningCall(self, name, (), stats, source.done, timeout, began)
                relayed.attach(source, running.result)
                return relayed
            here = owner_scope is not None and self.registry.find(name) is not None
            work = self.forwarder.forward(
                call, name, timeout, target, caller, owner_scope, here, progress
            )
            return RunningCall(self, name, (), stats, work, timeout, began).result
        stats = self.stats.started(entry.name)
        kwargs = call.kwargs
        context = None
        if entry.context_param is not None:
            context = CallContext(
                self,
                call,
                entry.name,
                self.reactor.seconds() + timeout,
                caller,
                progress,
                self._limits.progress_interval,
            )
            kwargs = {**kwargs, entry.context_param: context}
        if stream:
            return self._start_stream(entry, call, kwargs, context, stats, timeout, began)
        try:
            result = self._executions[entry.run].start(entry.function, call.args, kwargs)
        except BaseException:
            error = self.to_call_error(entry.name, entry.errors, Failure())
            self.stats.finished(stats, error.code, self.reactor.seconds() - began)
            return Failure(error)
        if type(result) in PLAIN_RESULTS or not isinstance(result, Deferred):
            # Ended at once (a reactor procedure's plain value): no Deferred, no timer.
            result = checked_result(entry.name, result, self.node_name)
            error_code = InternalError.code if isinstance(result, Failure) else None
            self.stats.finished(stats, error_code, self.reactor.seconds() - began)
            return result
        running = RunningCall(
            self, entry.name, entry.errors, stats, result, timeout, began, context
        )
        return running.result

    def _start_stream(
        self,
        entry: Procedure,
        call: Call,
        kwargs: Mapping[str, Any],
        context: CallContext | None,
        stats: ProcedureStats,
        timeout: float,
        began: float,
    ) -> Stream:
        """Start a generator procedure: its items are pulled as the caller grants them."""
        stream = Stream()
        tag = call.tag

        def encode(value: Any) -> bytes:
            return encode_item(value, tag)

        # Calling a generator function runs none of its code.
        generator = entry.function(*call.args, **kwargs)
        source: Source
        if entry.run == "thread":
            source = InThreadSource(
                generator, encode, stream.deliver, self._threads, self._thread_results.put
            )
        else:
            source = InReactorSource(generator, encode, stream.deliver)
        running = RunningCall(
            self, entry.name, entry.errors, stats, source.done, timeout, began, context
        )
        stream.attach(source, running.result)
        return stream

    def _check_routable(self, call: Call, name: str, target: str | None) -> None:
        """Refuse a call that is not for this node and cannot be forwarded."""
        forwarder = self.forwarder
        if forwarder is None:
            if target is not None:
                raise NotFoundError(f"no node named {target!r}: this node has no peers")
            raise NotFoundError(f"no procedure named {name[:80]!r}; try HELP")
        if call.hops >= forwarder.max_hops:
            raise FailedPreconditionError(
                f"{name} was forwarded {call.hops} times, the limit: a routing loop?",
                Outcome.NOT_RUN,
            )
        if not forwarder.can_route(name, target):
            raise forwarder.nowhere(name, target)

    def _budget(self, call: Call) -> float:
        """The call's time budget in seconds, within the node's limits."""
        limits = self._limits
        timeout = limits.default_timeout if call.timeout is None else call.timeout
        if timeout > limits.max_timeout:
            timeout = limits.max_timeout
        if timeout <= 0:
            raise DeadlineExceededError(
                "the call's deadline had passed when it arrived", Outcome.NOT_RUN
            )
        return timeout


def _check_stream(call: Call, name: str, streams: bool) -> None:
    """
    Refuse a call of a stream that could not take its items as streams
    are sent (see docs/protocol.md, Streams).
    """
    if call.cast:
        why = f"{name} is a stream: it cannot be cast"
    elif call.key is not None:
        why = f"{name} is a stream: it cannot carry an idempotency key (+key)"
    elif not streams:
        why = f"{name} is a stream: a multicall or a nested call cannot take its items"
    elif call.tag is not None and call.window is None:
        why = (
            f"{name} is a stream: ask for it with +window=N (Client.stream),"
            " and grant more items with MORE"
        )
    else:
        return
    raise InvalidArgumentError(why, Outcome.NOT_RUN)
