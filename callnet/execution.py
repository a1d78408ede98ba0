"""
Where a procedure runs: in the reactor, in a worker thread, or in a worker
process.  Each is an L{Execution}, one small class behind one interface, so
the dispatcher starts every call the same way and knows nothing of threads
or processes.

A procedure's C{run} (see L{callnet.registry.Run}) names its execution.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.python.failure import Failure

from callnet.errors import InternalError, Outcome
from callnet.reactors import DispatchReactor
from callnet.workers import ThreadRunner


class NotStartedError(Exception):
    """Queued work was abandoned before it started: the procedure never ran."""


#: The types a procedure's result has most often, none of them a Deferred.
#: Deferred is an ABC (it is Awaitable), so isinstance(result, Deferred)
#: takes about 0.33 us; the path every call takes asks it three times, and
#: looking the type up here first spares that for plain results.
PLAIN_RESULTS: frozenset[type] = frozenset({int, str, bool, float, type(None), list, dict})


class Execution(Protocol):
    """How procedures of one kind are started."""

    def start(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Any:
        """
        Start C{function(*args, **kwargs)}.

        @return: a L{Deferred} for work still running (cancelling it
            cancels the work, and fails it with L{NotStartedError} if the
            work had not started), or the result of work that ended at once.
        @raise BaseException: what the procedure raised at once.
        """


class InReactor:
    """
    Run the procedure in the reactor thread: for procedures that return at
    once, or return a Deferred or a coroutine and never block.
    """

    def start(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Any:
        result = function(*args, **kwargs)
        if type(result) in PLAIN_RESULTS or isinstance(result, Deferred):
            return result
        if hasattr(result, "__await__") or hasattr(result, "send"):
            return ensureDeferred(result)  # a coroutine
        return result


# States of a job waiting for a thread.
_QUEUED, _RUNNING, _ABANDONED = range(3)


class _ThreadJob:
    """A call queued for the thread pool, which is skipped if abandoned first."""

    __slots__ = ("state",)

    _lock = threading.Lock()

    def __init__(self) -> None:
        self.state = _QUEUED

    def start(self) -> bool:
        with self._lock:
            if self.state == _ABANDONED:
                return False
            self.state = _RUNNING
            return True

    def abandon(self) -> bool:
        """Give up on the job; true if it had not started, so never will."""
        with self._lock:
            if self.state == _QUEUED:
                self.state = _ABANDONED
                return True
            return False


class ThreadResults:
    """
    Results handed from worker threads to the reactor in batches.

    Each C{callFromThread} wakes the reactor with a write to its waker; under
    load, results that finish while a hand-over is pending ride along with it.
    """

    def __init__(self, reactor: DispatchReactor) -> None:
        self._reactor = reactor
        self._results: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._scheduled = False

    def put(self, deliver: Callable[..., None], *args: Any) -> None:
        """(In a worker thread.)  Deliver C{deliver(*args)} in the reactor."""
        self._results.append((deliver, args))
        # Append first, then look: a hand-over seen pending will find it.
        if not self._scheduled:
            self._scheduled = True
            self._reactor.callFromThread(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        results = self._results
        while results:
            deliver, args = results.popleft()
            deliver(*args)


class InThread:
    """
    Run the procedure in a worker thread: for plain functions that may
    block.  A call cancelled while it waits for a thread never starts; one
    cancelled while it runs cannot be stopped, and its late result is
    dropped.
    """

    def __init__(self, threads: ThreadRunner, results: ThreadResults) -> None:
        self._threads = threads
        self._results = results

    def start(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Deferred[Any]:
        job = _ThreadJob()

        def work() -> Any:
            if not job.start():
                raise NotStartedError()
            return function(*args, **kwargs)

        # What the pool calls the job, should a stopping node abandon it.
        work.__name__ = getattr(function, "__name__", work.__name__)

        def canceller(d: Deferred[Any]) -> None:
            if job.abandon():
                d.errback(Failure(NotStartedError()))

        d: Deferred[Any] = Deferred(canceller)

        def deliver(ok: bool, value: Any) -> None:
            if d.called:
                return  # cancelled: the late result is dropped
            if ok:
                d.callback(value)
            else:
                d.errback(value)

        results = self._results

        def report(ok: bool, value: Any) -> None:
            results.put(deliver, ok, value)

        self._threads.callInThreadWithCallback(report, work)
        return d


class InProcess:
    """
    Run the procedure in a worker process: for CPU-bound functions, which
    would hold the GIL in a thread.  Arguments and results cross to the
    worker by the pool's own means, within this machine; nothing from the
    network is unpickled.
    """

    def __init__(self, reactor: DispatchReactor, pool: Callable[[], Executor] | None) -> None:
        self._reactor = reactor
        #: Makes (or returns) the pool on first use: a node that runs no
        #: such procedure starts no process.
        self._pool = pool

    def start(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Deferred[Any]:
        if self._pool is None:
            return fail(InternalError("this node has no process pool", Outcome.NOT_RUN))
        try:
            future = self._pool().submit(function, *args, **kwargs)
        except Exception as e:
            return fail(InternalError(f"could not start a worker process: {e}", Outcome.NOT_RUN))

        def canceller(d: Deferred[Any]) -> None:
            if future.cancel():
                d.errback(Failure(NotStartedError()))

        d: Deferred[Any] = Deferred(canceller)

        def deliver(done: Future[Any]) -> None:
            if d.called or done.cancelled():
                return
            error = done.exception()
            if error is None:
                d.callback(done.result())
            else:
                d.errback(Failure(error))

        reactor = self._reactor
        future.add_done_callback(lambda done: reactor.callFromThread(deliver, done))
        return d
