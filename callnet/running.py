"""
One call from start to finish: its deadline timer, its cancel, and why it ended.

L{RunningCall} stands between the work a procedure started (a Deferred) and
the Deferred its caller holds.  It ends the call at the deadline or on the
caller's cancel, answering at once even if the work ignores cancellation,
maps what the work ended with to what the caller receives (see
L{callnet.results}), and counts the call in the node's statistics.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import CancelledError as TwistedCancelledError
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from callnet.context import CallContext
from callnet.errors import CallError, DeadlineExceededError, InternalError, Outcome
from callnet.execution import NotStartedError
from callnet.reactors import DelayedCall, DispatchReactor
from callnet.results import DeclaredErrors, checked_result
from callnet.stats import NodeStats, ProcedureStats


class Runner(Protocol):
    """What a running call needs of the dispatcher that started it."""

    @property
    def node_name(self) -> str:
        """The node, named in the errors."""

    @property
    def reactor(self) -> DispatchReactor:
        """The clock deadlines are measured on."""

    @property
    def stats(self) -> NodeStats:
        """Where the call is counted when it ends."""

    def cancelled(self, name: str) -> CallError:
        """The error a call of C{name} ends with when it is cancelled now."""

    def to_call_error(self, name: str, errors: DeclaredErrors, failure: Failure) -> CallError:
        """Map what procedure C{name} raised to the error its caller receives."""


class RunningCall:
    """One call from start to finish: its deadline timer and why it ended."""

    __slots__ = (
        "_began",
        "_context",
        "_dispatcher",
        "_errors",
        "_inner",
        "_name",
        "_stats",
        "_timer",
        "_why",
        "result",
    )

    def __init__(
        self,
        dispatcher: Runner,
        name: str,
        errors: DeclaredErrors,
        stats: ProcedureStats,
        work: Deferred[Any],
        timeout: float,
        began: float,
        context: CallContext | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._began = began
        self._context = context
        self._name = name
        self._errors = errors
        self._why: CallError | None = None
        self._stats = stats
        self.result: Deferred[Any] = Deferred(self._cancel)
        self._inner = work
        self._timer: DelayedCall | None = None
        work.addBoth(self._finish)
        if not self.result.called:
            self._timer = dispatcher.reactor.callLater(timeout, self._expire, timeout)

    def _expire(self, timeout: float) -> None:
        self._timer = None
        self._stop(
            DeadlineExceededError(
                f"deadline of {timeout:g}s passed while {self._name} ran",
                Outcome.MAY_HAVE_RUN,
            )
        )

    def _cancel(self, result: Deferred[Any]) -> None:
        self._stop(self._dispatcher.cancelled(self._name))

    def _stop(self, why: CallError) -> None:
        """End the call now with C{why}, and cancel the work behind it."""
        if self._why is not None or self.result.called:
            return
        self._why = why
        why.node = self._dispatcher.node_name
        if self._context is not None:
            self._context.cancel()
        self._inner.cancel()
        # Work that ignores cancellation must not hold the caller: answer now.
        self._settle(Failure(why))

    def _finish(self, outcome: Any) -> None:
        why = self._why
        if why is not None:
            # Stopped by the deadline or the caller: that is the answer, even
            # if the procedure caught the cancellation and returned a value.
            if isinstance(outcome, Failure) and outcome.check(NotStartedError):
                why.outcome = Outcome.NOT_RUN
            outcome = Failure(why)
        elif isinstance(outcome, Failure):
            dispatcher = self._dispatcher
            if outcome.check(TwistedCancelledError):
                outcome = Failure(
                    InternalError(
                        f"{self._name} was cancelled from within",
                        Outcome.RAN,
                        dispatcher.node_name,
                    )
                )
            else:
                outcome = Failure(dispatcher.to_call_error(self._name, self._errors, outcome))
        else:
            outcome = checked_result(self._name, outcome, self._dispatcher.node_name)
        self._settle(outcome)

    def _settle(self, outcome: Any) -> None:
        if self.result.called:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._context is not None:
            self._context.ended()
        failed = isinstance(outcome, Failure)
        dispatcher = self._dispatcher
        code = outcome.value.code if failed else None
        dispatcher.stats.finished(self._stats, code, dispatcher.reactor.seconds() - self._began)
        if failed:
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)
