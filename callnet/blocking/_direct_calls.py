"""
What a call on the plain-socket path hands its caller: L{DirectStream}, a
stream read in the calling thread, and L{DirectCallHandle}, the handle of a
C{call_async()} call run in one of the client's async threads
(L{AsyncThreads}).  A stream gives its connection back to the
L{ConnectionPool} it came from; a handle reaches back to its
L{callnet.blocking._direct.DirectPath} only through the small L{Path}
protocol, so this module does not import it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from callnet.blocking._connection import CANCEL_WRITE_TIMEOUT, Connection, _LostError
from callnet.blocking._handle import CallHandle
from callnet.blocking._pool import ConnectionPool
from callnet.blocking._stream import BlockingStream
from callnet.blocking._wait import INTERRUPT_CHECK_INTERVAL, _Done, refuse_reactor_thread
from callnet.errors import (
    CallCancelledError,
    CallError,
    DeadlineExceededError,
    Outcome,
    UnavailableError,
    WrongThreadError,
)
from callnet.wire import (
    Item,
    Progress,
    Success,
    encode_more,
)

log = Logger()


class Path(Protocol):
    """What a handle needs of the path that made it."""

    def monotonic(self) -> float: ...

    def _forget(self, handle: DirectCallHandle) -> None: ...


class AsyncThreads:
    """
    Daemon threads, started as calls come (at most C{size}), that run the
    calls of C{call_async()}.  Not C{concurrent.futures}: its threads are
    joined at interpreter exit before any C{atexit} hook could release
    their calls, so a call in flight would hold the exit until its deadline.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)
        with self._lock:
            if self._jobs.qsize() > self._idle and self._threads < self._size:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{self._threads}", daemon=True
                ).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if job is None:
                return
            job()
            job = None

    def stop(self) -> None:
        """Let every thread end once the jobs before are done (each ends at once)."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)


class DirectStream(BlockingStream):
    """A stream on the plain-socket path, read in the calling thread."""

    def __init__(
        self,
        pool: ConnectionPool,
        connection: Connection,
        tag: str,
        procedure: str,
        window: int,
        timeout: float,
        deadline: float,
    ) -> None:
        super().__init__(procedure, window)
        self._pool = pool
        self._connection: Connection | None = connection
        self._tag = tag
        self.timeout = timeout
        self._deadline = deadline

    def _next(self) -> Any:
        connection = self._connection
        assert connection is not None
        pool = self._pool
        try:
            event = connection.read_reply(
                self._tag,
                self._deadline,
                threading.current_thread() is threading.main_thread(),
                items=True,
            )
            if type(event) is Item:
                self.received += 1
                grant = self._credit.took()
                if grant:
                    connection.send(encode_more(self._tag, grant), self._deadline)
                return event.value
        except TimeoutError:
            connection.cancel(self._tag, CANCEL_WRITE_TIMEOUT)
            self._release(pool.give_back)
            return self._ended(
                error=DeadlineExceededError(
                    f"the stream of {self.procedure} did not end within {self.timeout:g}s",
                    Outcome.MAY_HAVE_RUN,
                )
            )
        except (_LostError, OSError) as e:
            self._release(pool.drop)
            lost = pool.lost_error(self.procedure, str(e), Outcome.MAY_HAVE_RUN)
            return self._ended(error=lost)
        except BaseException:
            # Ctrl-C: cancel on the node; what was half read cannot be trusted.
            connection.cancel(self._tag, CANCEL_WRITE_TIMEOUT)
            self._done = True
            self._release(pool.drop)
            raise
        self._release(pool.give_back)
        if pool.closed:
            return self._ended(error=pool.closed_error(self.procedure, Outcome.MAY_HAVE_RUN))
        if type(event) is Success:
            return self._ended(value=event.value)
        return self._ended(error=event.error)

    def _release(self, how: Callable[[Connection], None]) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            how(connection)

    def close(self) -> None:
        self._closed = True
        connection = self._connection
        if connection is None:
            return
        self._done = True
        # The node answers the CANCEL with the rest of its window and an
        # error, all under a tag never used again: the next call on this
        # connection reads past them.
        connection.cancel(self._tag, CANCEL_WRITE_TIMEOUT)
        self._release(self._pool.give_back)


class DirectCallHandle(CallHandle):
    """
    A L{CallHandle} whose call runs on the plain-socket path, in one of the
    client's async threads.  Its callbacks run in the thread that finishes
    the call: that async thread, or the one that cancels it.
    """

    def __init__(
        self,
        path: Path,
        procedure: str,
        timeout: float,
        grace: float,
        run: Callable[[DirectCallHandle], Any],
    ) -> None:
        self._path = path
        self.procedure = procedure
        self.timeout = timeout
        self._run_call = run
        self._deadline = path.monotonic() + timeout
        self._give_up_at = self._deadline + grace
        self._event = _Done()
        self._lock = threading.Lock()
        self._done = False
        self._started = False
        self._sent_on: tuple[Connection, str] | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[CallHandle], object]] = []
        self._progress_callbacks: list[Callable[[Progress], object]] = []
        #: Awaiters of the reactor path's handle; none here (no reactor).
        self._waiters: list[Any] = []

    def __repr__(self) -> str:
        state = "done" if self._done else "sent" if self._sent_on is not None else "pending"
        return f"<CallHandle {self.procedure} {state}>"

    def result(self, timeout: float | None = None) -> Any:
        if timeout is None or timeout > 0:
            refuse_reactor_thread("CallHandle.result()")
        return self._wait(timeout)

    def cancel(self) -> bool:
        return self._abandon(CallCancelledError, f"{self.procedure} was cancelled by its caller")

    def _abandon(self, cls: type[CallError], message: str) -> bool:
        """
        Fail the call as C{cls} and cancel it on the node if it was sent;
        not-run if it had not started.  Whether it was still unfinished.
        """
        with self._lock:
            if self._done:
                return False
            sent_on = self._sent_on
            started = self._started
        self._finish(error=cls(message, Outcome.MAY_HAVE_RUN if started else Outcome.NOT_RUN))
        if sent_on is not None:
            connection, tag = sent_on
            connection.cancel(tag, CANCEL_WRITE_TIMEOUT)
        return True

    def as_deferred(self) -> Deferred[Any]:
        raise WrongThreadError(
            "CallHandle.as_deferred() and await need the reactor: this call was made"
            " on the plain-socket path; use result() (or a client made with"
            " transport='reactor')"
        )

    def __await__(self) -> Generator[Any, None, Any]:
        return self.as_deferred().__await__()

    def _closed(self) -> None:
        """The client was closed: fail the call (its connection is aborted)."""
        self._abandon(UnavailableError, f"the client was closed before {self.procedure} completed")

    def _run(self) -> None:
        """The call itself, in an async thread."""
        with self._lock:
            if self._done:
                return
            self._started = True
        if self._path.monotonic() >= self._deadline:
            self._finish(
                error=DeadlineExceededError(
                    f"the deadline of {self.procedure} passed before it could be sent",
                    Outcome.NOT_RUN,
                )
            )
            return
        try:
            value = self._run_call(self)
        except Exception as e:
            self._finish(error=e)
        else:
            self._finish(value=value)

    def _sent(self, connection: Connection, tag: str) -> bool:
        """The request is on the wire; whether the call was cancelled meanwhile."""
        with self._lock:
            self._sent_on = (connection, tag)
            return self._done

    def _forget(self) -> None:
        self._path._forget(self)

    def _wait(self, timeout: float | None) -> Any:
        if not self._event.is_set():
            monotonic = self._path.monotonic
            end = self._give_up_at
            if timeout is not None and monotonic() + timeout < end:
                if not self._wait_for(monotonic() + max(timeout, 0.0)):
                    raise TimeoutError(
                        f"{self.procedure} is not done after {timeout:g}s; the call goes on"
                        f" until its own deadline ({self.timeout:g}s)"
                    )
            elif not self._wait_for(end):
                # The async thread should have ended it by now: end it here.
                self._abandon(
                    DeadlineExceededError,
                    f"no reply to {self.procedure} within {self.timeout:g}s; the call was"
                    f" cancelled",
                )
        if self._error is not None:
            raise self._error
        return self._value

    def _wait_for(self, end: float) -> bool:
        monotonic = self._path.monotonic
        event = self._event
        poll = threading.current_thread() is threading.main_thread()
        while not event.is_set():
            remaining = end - monotonic()
            if remaining <= 0:
                return False
            if poll:
                remaining = min(remaining, INTERRUPT_CHECK_INTERVAL)
            event.wait(remaining)
        return True
