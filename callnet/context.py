"""
What a running procedure knows of its call, and how it calls other
procedures as part of it.

A procedure that takes a parameter annotated L{CallContext} is given one;
the parameter is not part of the call's arguments::

    @procedure
    async def checkout(cart: str, context: CallContext) -> str:
        total = await context.call("price", cart)          # within our deadline
        return await context.call("charge@billing", total)

Nested calls inherit the time left of the call's deadline, its trace id and
its caller: a nested call is made for the same caller, and is allowed only
if that caller may make it (see L{callnet.access}).  They go wherever the
node would send them (here, or a peer), and are cancelled when the call is:
by its caller, its deadline, or its caller's departure.
A plain (thread-pool) procedure uses L{CallContext.call_blocking} instead,
and can poll L{CallContext.cancelled} to stop early.

A long call may say how far it has got with L{CallContext.progress}, from
any thread; the node sends the newest report to a caller that asked for
them, at most one every C{progress_interval} seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from callnet.access import NODE_CALLER, Caller
from callnet.errors import DeadlineExceededError, Outcome, WrongThreadError
from callnet.reactors import Clock, DelayedCall, DispatchReactor
from callnet.tracing import TraceIds
from callnet.wire import Call


class Dispatcher(Protocol):
    """What a call context needs of the dispatcher that runs its call."""

    node_name: str
    trace_ids: TraceIds

    @property
    def clock(self) -> Clock: ...

    @property
    def reactor(self) -> DispatchReactor: ...

    def start(self, call: Call, caller: Caller = ...) -> Any: ...


#: Takes a call's progress reports: done, total, message.
ProgressSink = Callable[[float, "float | None", "str | None"], None]

#: How much longer than the time left a thread waits for a nested call's
#: answer: the node's own deadline normally answers first.
_GRACE = 0.25


class CallContext:
    """A running call, as its procedure sees it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        call: Call,
        procedure: str,
        deadline: float,
        caller: Caller = NODE_CALLER,
        progress: ProgressSink | None = None,
        progress_interval: float = 0.2,
    ) -> None:
        self._dispatcher = dispatcher
        self._call = call
        #: Who made the call; nested calls are made, and judged, for them.
        self.caller = caller
        #: The procedure's name.
        self.procedure = procedure
        #: The node it runs on.
        self.node = dispatcher.node_name
        #: The call's trace id; nested calls carry it on (one is made if the
        #: call came without).
        self.trace = call.trace or dispatcher.trace_ids.new()
        #: When the call's deadline passes, on the node's clock.
        self.deadline = deadline
        #: Set once the call has been cancelled or its deadline has passed.
        self.cancelled = False
        self._children: set[Deferred[Any]] = set()
        self._reactor_thread = threading.get_ident()
        # Progress: where reports go (None: the caller did not ask), the
        # newest one not yet sent, and when the last one went.
        self._progress = progress
        self._progress_interval = progress_interval
        self._progress_lock = threading.Lock()
        self._pending: tuple[float, float | None, str | None] | None = None
        self._progress_due = False
        self._progress_timer: DelayedCall | None = None
        self._progress_sent = float("-inf")

    def remaining(self) -> float:
        """Seconds left before the call's deadline."""
        return self.deadline - self._dispatcher.clock.seconds()

    def call(
        self,
        procedure: str,
        /,
        *args: Any,
        timeout: float | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> Deferred[Any]:
        """
        Call another procedure as part of this call (on the reactor thread).

        It gets the time left of this call's deadline (or C{timeout}, if
        shorter), and is cancelled with this call.  Use from C{async def} or
        Deferred-returning procedures.
        """
        if threading.get_ident() != self._reactor_thread:
            raise WrongThreadError(
                "CallContext.call() is for procedures that run in the reactor;"
                " a plain (thread) procedure uses context.call_blocking()"
            )
        if self.cancelled:
            return fail(self._over())
        remaining = self.remaining()
        if timeout is not None:
            remaining = min(remaining, timeout)
        if remaining <= 0:
            return fail(self._over())
        nested = Call(
            procedure,
            args,
            kwargs,
            timeout=remaining,
            key=key,
            trace=self.trace,
            hops=self._call.hops,
        )
        outcome = self._dispatcher.start(nested, self.caller)
        if isinstance(outcome, Deferred):
            self._children.add(outcome)
            outcome.addBoth(self._child_done, outcome)
            return outcome
        if isinstance(outcome, Failure):
            return fail(outcome)
        return succeed(outcome)

    def call_blocking(self, procedure: str, /, *args: Any, **kwargs: Any) -> Any:
        """
        Call another procedure as part of this call, from a thread-pool
        procedure: block until it answers, within this call's deadline.
        """
        if threading.get_ident() == self._reactor_thread:
            raise WrongThreadError(
                "CallContext.call_blocking() would block the reactor;"
                " a reactor procedure uses 'await context.call(...)'"
            )
        done = threading.Event()
        outcome: list[Any] = []

        def finished(result: Any) -> None:
            outcome.append(result)
            done.set()

        def start() -> None:
            self.call(procedure, *args, **kwargs).addBoth(finished)

        self._dispatcher.reactor.callFromThread(start)
        if not done.wait(max(self.remaining(), 0.0) + _GRACE):
            raise DeadlineExceededError(
                f"no answer from {procedure} within the deadline of {self.procedure}",
                Outcome.MAY_HAVE_RUN,
                self.node,
            )
        [result] = outcome
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """
        Say how far the call has got: C{done} of C{total} (C{None}: not
        known), with an optional line of text.  Callable from any thread,
        and cheap: the node sends the newest report at most once every
        C{progress_interval}, and only to a caller that asked for them
        (C{+progress}).  Advisory: reports may be dropped, never waited for.

        @raise ValueError: C{done} or C{total} is not a number C{>= 0}.
        """
        for value in (done,) if total is None else (done, total):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"progress counts are numbers >= 0, not {value!r}")
            if value == float("inf"):
                raise ValueError("progress counts are finite")
        if message is not None and not isinstance(message, str):
            raise ValueError(f"a progress message is text, not {message!r}")
        if self._progress is None:
            return
        with self._progress_lock:
            self._pending = (done, total, message)
            if self._progress_due:
                return  # the report waiting to go is replaced: the newest wins
            self._progress_due = True
        if threading.get_ident() == self._reactor_thread:
            self._schedule_progress()
        else:
            self._dispatcher.reactor.callFromThread(self._schedule_progress)

    def _schedule_progress(self) -> None:
        """(In the reactor.)  Send the waiting report now, or when the interval allows."""
        if self.cancelled or self._progress is None:
            return
        wait = self._progress_sent + self._progress_interval - self._dispatcher.clock.seconds()
        if wait > 0:
            self._progress_timer = self._dispatcher.clock.callLater(wait, self._send_progress)
        else:
            self._send_progress()

    def _send_progress(self) -> None:
        self._progress_timer = None
        with self._progress_lock:
            report, self._pending = self._pending, None
            self._progress_due = False
        sink = self._progress
        if report is None or sink is None or self.cancelled:
            return
        self._progress_sent = self._dispatcher.clock.seconds()
        sink(*report)

    def ended(self) -> None:
        """The call has ended: no report goes after its answer."""
        self._progress = None
        timer, self._progress_timer = self._progress_timer, None
        if timer is not None:
            timer.cancel()

    def _child_done(self, result: Any, child: Deferred[Any]) -> Any:
        self._children.discard(child)
        return result

    def _over(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"{self.procedure} is over (cancelled, or past its deadline)",
            Outcome.NOT_RUN,
            self.node,
        )

    def cancel(self) -> None:
        """The call ended early: cancel every nested call still running."""
        self.cancelled = True
        self.ended()
        children, self._children = self._children, set()
        for child in children:
            child.cancel()
