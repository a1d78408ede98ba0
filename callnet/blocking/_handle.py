"""
L{CallHandle}: a call in flight, made through the reactor thread, to wait
for, poll, cancel or await.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import CancelledError as DeferredCancelledError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from callnet.blocking._wait import INTERRUPT_CHECK_INTERVAL, _Done
from callnet.client import Client
from callnet.errors import (
    CallCancelledError,
    CallError,
    DeadlineExceededError,
    Outcome,
    WrongThreadError,
)
from callnet.wire import Progress

if TYPE_CHECKING:
    from callnet.blocking._reactor_thread import ReactorThread


class _Owner(Protocol):
    """What a handle needs of the L{BlockingClient} that made it."""

    grace: float

    @property
    def _thread(self) -> ReactorThread: ...

    @property
    def _client(self) -> Client: ...


log = Logger()

#: How the async client is asked to do one thing, given the time left.
_Send = Callable[[Client, float], "Deferred[Any]"]


class CallHandle:
    """
    A call in flight, from L{BlockingClient.call_async}: wait for it, poll
    it, cancel it or have a function called when it is done, from any thread;
    or C{await} it on the reactor thread.

    Its state changes only on the reactor thread.

    @ivar procedure: the procedure called.
    @ivar timeout: the call's deadline, in seconds from when it was made.
    """

    def __init__(self, client: _Owner, procedure: str, timeout: float, send: _Send) -> None:
        self._client = client
        self._thread = client._thread
        self.procedure = procedure
        self.timeout = timeout
        self._send: _Send | None = send
        self._deadline = self._thread.monotonic() + timeout
        #: Past this, waiters give up even if the reactor has not answered.
        self._give_up_at = self._deadline + client.grace
        self._event = _Done()
        self._lock = threading.Lock()
        self._done = False
        self._cancel_requested = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[CallHandle], object]] = []
        self._progress_callbacks: list[Callable[[Progress], object]] = []
        # Reactor thread only:
        self._deferred: Deferred[Any] | None = None
        self._abort_as: tuple[type[CallError], str] | None = None
        self._waiters: list[Deferred[Any]] = []

    def __repr__(self) -> str:
        state = "done" if self._done else "sent" if self._deferred is not None else "pending"
        return f"<CallHandle {self.procedure} {state}>"

    # --- Any thread ---------------------------------------------------------

    def done(self) -> bool:
        """Whether the call has finished: succeeded, failed or been cancelled."""
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """
        Wait for the call to finish; return its result or raise its error.

        Waiting is not owning: when C{timeout} runs out first, the call goes
        on (try again later, or L{cancel} it).  When the call's own deadline
        passes, it is cancelled on the node.

        @param timeout: the longest to wait, in seconds; C{None} waits until
            the call's deadline (plus L{GRACE}); C{0} only polls.
        @raise TimeoutError: C{timeout} passed first.
        @raise CallError: the call failed, as L{BlockingClient.call} raises.
        @raise WrongThreadError: on the reactor thread (unless C{timeout} is
            C{0}, which never blocks): C{await} the handle there instead.
        """
        if timeout is None or timeout > 0:
            self._thread.refuse_reactor_thread("CallHandle.result()")
        return self._wait(timeout)

    def cancel(self) -> bool:
        """
        Cancel the call, on the node too.

        The handle then fails with L{CallCancelledError} (unless it finished
        first): at once on the reactor thread, soon from any other.

        @return: C{False} if the call had finished already, else C{True}.
        """
        if self._event.is_set():
            return False
        # Seen by _start if it has not run yet: then nothing is sent at all.
        self._cancel_requested = True
        self._thread.call_in_reactor(
            self._abort, CallCancelledError, f"{self.procedure} was cancelled by its caller"
        )
        return True

    def add_done_callback(self, fn: Callable[[CallHandle], object]) -> None:
        """
        Have C{fn(handle)} called when the call finishes.

        It is called on the reactor thread, so it must not block (call
        C{result(0)} in it to read the outcome); or, if the call has finished
        already, at once in the calling thread.  What it raises is logged.
        """
        with self._lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        self._run_callback(fn)

    def add_progress_callback(self, fn: Callable[[Progress], object]) -> None:
        """
        Have C{fn(report)} called with each L{Progress} report the procedure
        makes from now on (the call asks for them with C{+progress}).

        Like a done callback, it is called on the thread that reads the reply
        (the reactor's, or the plain-socket path's call thread), so it must
        not block; what it raises is logged.  Reports are advisory: some may
        be skipped, and none come after the call is done.
        """
        with self._lock:
            self._progress_callbacks = [*self._progress_callbacks, fn]

    def _progress(self, report: Progress) -> None:
        """A progress report came for this call."""
        for fn in self._progress_callbacks:
            try:
                fn(report)
            except Exception:
                log.failure("progress callback {fn!r} of {handle!r} failed", fn=fn, handle=self)

    # --- The reactor thread -------------------------------------------------

    def as_deferred(self) -> Deferred[Any]:
        """
        A Deferred firing with the call's result, or failing with its error.
        Cancelling it cancels the call.  Reactor thread only.

        @raise WrongThreadError: called from another thread (Deferreds are
            not thread-safe); use L{result} there.
        """
        if not self._thread.is_reactor_thread():
            raise WrongThreadError(
                "CallHandle.as_deferred() and await work only on the reactor thread;"
                " use result() in other threads"
            )
        if self._done:
            return fail(self._error) if self._error is not None else succeed(self._value)
        waiter: Deferred[Any] = Deferred(self._waiter_cancelled)
        self._waiters.append(waiter)
        return waiter

    def _waiter_cancelled(self, waiter: Deferred[Any]) -> None:
        self.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        """C{await handle} in a coroutine running under the reactor."""
        return self.as_deferred().__await__()

    def _start(self) -> None:
        """Send the call (reactor thread), with the time left of its deadline."""
        send, self._send = self._send, None
        if self._done or send is None:
            return
        if self._cancel_requested:
            self._abort(CallCancelledError, f"{self.procedure} was cancelled by its caller")
            return
        remaining = self._deadline - self._thread.monotonic()
        if remaining <= 0:
            self._finish(
                error=DeadlineExceededError(
                    f"the deadline of {self.procedure} passed before it could be sent",
                    Outcome.NOT_RUN,
                )
            )
            return
        try:
            deferred = send(self._client._client, remaining)
        except Exception as e:
            self._finish(error=e)
            return
        self._deferred = deferred
        deferred.addBoth(self._settle)

    def _settle(self, result: object) -> None:
        """The async client's Deferred fired."""
        if not isinstance(result, Failure):
            self._finish(value=result)
            return
        error = result.value
        if isinstance(error, CallCancelledError | DeferredCancelledError):
            outcome = error.outcome if isinstance(error, CallError) else Outcome.MAY_HAVE_RUN
            node = error.node if isinstance(error, CallError) else None
            cls, message = self._abort_as or (
                CallCancelledError,
                f"{self.procedure} was cancelled by its caller",
            )
            error = cls(message, outcome, node)
        self._finish(error=error)

    def _abort(self, cls: type[CallError], message: str) -> None:
        """
        Give up on the call (reactor thread) and fail it as C{cls}; the outcome
        is the async client's: not-run if it was never sent, else may-have-run.
        """
        if self._done:
            return
        if self._deferred is None:
            self._send = None
            self._finish(error=cls(message, Outcome.NOT_RUN))
            return
        self._abort_as = (cls, message)
        self._deferred.cancel()
        if not self._done:  # a Deferred that ignored its cancellation
            self._finish(error=cls(message, Outcome.MAY_HAVE_RUN))

    def _finish(self, value: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome, wake every waiter, run the callbacks (reactor thread)."""
        with self._lock:
            if self._done:
                return
            self._done = True
            self._value = value
            self._error = error
            callbacks, self._callbacks = self._callbacks, []
        self._event.set()
        self._forget()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:
                continue
            if error is not None:
                waiter.errback(Failure(error))
            else:
                waiter.callback(value)
        for fn in callbacks:
            self._run_callback(fn)

    def _forget(self) -> None:
        """No longer count this call among those its path has in flight."""
        self._thread._forget(self)

    def _run_callback(self, fn: Callable[[CallHandle], object]) -> None:
        try:
            fn(self)
        except Exception:
            log.failure("done callback {fn!r} of {handle!r} failed", fn=fn, handle=self)

    # --- Waiting ------------------------------------------------------------

    def _wait(self, timeout: float | None) -> Any:
        """Wait for the outcome (not on the reactor thread), then return or raise it."""
        if not self._event.is_set():
            self._thread.ensure_running()
            end = self._give_up_at
            if timeout is not None and self._thread.monotonic() + timeout < end:
                if not self._wait_until(self._thread.monotonic() + max(timeout, 0.0)):
                    raise TimeoutError(
                        f"{self.procedure} is not done after {timeout:g}s; the call goes on"
                        f" until its own deadline ({self.timeout:g}s)"
                    )
            elif not self._wait_until(end):
                raise self._give_up()
        if self._error is not None:
            raise self._error
        return self._value

    def _wait_until(self, end: float) -> bool:
        """Wait for the outcome until C{end} on the thread's clock; whether it came."""
        thread = self._thread
        event = self._event
        # Only the main thread gets KeyboardInterrupt: only it needs to wake up.
        poll = threading.current_thread() is threading.main_thread()
        while not event.is_set():
            remaining = end - thread.monotonic()
            if remaining <= 0:
                return False
            if poll:
                remaining = min(remaining, INTERRUPT_CHECK_INTERVAL)
            thread.wait(event, remaining)
        return True

    def _wait_owned(self) -> Any:
        """Wait as the call's owner: Ctrl-C cancels the call."""
        try:
            return self._wait(None)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def _give_up(self) -> DeadlineExceededError:
        """The reactor did not answer in time: cancel the call; the error to raise."""
        budget = f"{self.timeout:g}s (and {self._client.grace:g}s of grace)"
        self._thread.call_in_reactor(
            self._abort,
            DeadlineExceededError,
            f"no reply to {self.procedure} within {budget}; the call was cancelled",
        )
        if self._deferred is None:
            return DeadlineExceededError(
                f"{self.procedure} could not be sent within {budget}: the reactor did not"
                f" answer; the call was cancelled",
                Outcome.NOT_RUN,
            )
        return DeadlineExceededError(
            f"no reply to {self.procedure} within {budget}; the call was cancelled, but"
            f" {self.procedure} may have run",
            Outcome.MAY_HAVE_RUN,
        )
