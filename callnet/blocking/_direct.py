"""
The plain-socket path of the blocking client: a call does its I/O in the
calling thread, with no reactor and no thread hand-off.

L{DirectPath} joins its parts: the pool of connections to one node
(L{callnet.blocking._pool}, which opens them through
L{callnet.blocking._opening}), the calls made on them
(L{callnet.blocking._exchange}), and the async threads that run the calls
of C{call_async()} (L{callnet.blocking._direct_calls}).  It closes them all
on L{DirectPath.close} and at interpreter exit, which releases every
waiter; a forked child starts afresh, touching none of its parent's sockets
or threads.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import callnet.blocking._exchange as _exchange
from callnet.blocking._address import Address
from callnet.blocking._direct_calls import AsyncThreads, DirectCallHandle, DirectStream
from callnet.blocking._opening import Opener
from callnet.blocking._pool import ConnectionPool
from callnet.blocking._shared import THREADS_PER_CONNECTION
from callnet.errors import Outcome
from callnet.wire import DEFAULT_MAX_LINE

#: Idle connections a client keeps for reuse.  One per thread that calls at
#: the same time is what a program needs; more than this after a burst are
#: closed as they come back, so a burst of threads leaves no crowd of sockets
#: open on the node.
MAX_IDLE_CONNECTIONS = 32
#: Threads that run the calls of C{call_async()} on this path (each with a
#: connection of its own while it runs a call).  Calls started beyond this
#: wait their turn, within their deadlines.
ASYNC_THREADS = 16
#: The name prefix of those threads.
ASYNC_THREAD_NAME = "callnet-call"


_paths: weakref.WeakSet[DirectPath] = weakref.WeakSet()
_exit_hook_registered = False
_exit_lock = threading.Lock()


def _close_all_at_exit() -> None:
    for path in list(_paths):
        path.close()


class DirectPath:
    """
    The connections of one client to one node, and the calls made on them
    from the calling threads.

    @param address: where the node listens.
    @param token: sent with C{AUTH} on each new connection.
    @param connect_timeout: the deadline of a connection's C{AUTH}.
    @param max_idle: how many idle connections to keep.
    @param async_threads: how many threads run C{call_async()} calls.
    @param threads_per_connection: how many calling threads share one
        connection before the next opens another; 1 gives each its own.
    """

    def __init__(
        self,
        address: Address,
        *,
        token: str | None = None,
        connect_timeout: float = 30.0,
        max_line: int = DEFAULT_MAX_LINE,
        max_idle: int = MAX_IDLE_CONNECTIONS,
        async_threads: int = ASYNC_THREADS,
        threads_per_connection: int = THREADS_PER_CONNECTION,
        monotonic: Callable[[], float] = time.monotonic,
        atexit_register: Callable[[Callable[[], None]], object] = atexit.register,
    ) -> None:
        global _exit_hook_registered
        self.address = address
        self.monotonic = monotonic
        opener = Opener(
            address,
            token=token,
            connect_timeout=connect_timeout,
            max_line=max_line,
            monotonic=monotonic,
        )
        self._pool = ConnectionPool(
            opener, max_idle=max_idle, threads_per_connection=threads_per_connection
        )
        self._async_threads = async_threads
        self._pid = os.getpid()
        #: Guards the async threads and the handles of their calls.
        self._lock = threading.Lock()
        self._executor: AsyncThreads | None = None
        self._handles: set[DirectCallHandle] = set()
        _paths.add(self)
        with _exit_lock:
            if not _exit_hook_registered:
                _exit_hook_registered = True
                atexit_register(_close_all_at_exit)

    # --- Calls --------------------------------------------------------------

    def call(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
        key: str | None = None,
        trace: str | None = None,
        handle: DirectCallHandle | None = None,
    ) -> Any:
        """Call a procedure in this thread; return its result or raise its error."""
        return _exchange.call(self._pool, procedure, args, kwargs, timeout, key, trace, handle)

    def stream(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
        window: int,
        trace: str | None = None,
    ) -> DirectStream:
        """
        Send a stream's request in this thread; its items are read as the
        returned stream is iterated, on a connection it holds until it ends.
        """
        return _exchange.stream(self._pool, procedure, args, kwargs, timeout, window, trace)

    def command(self, verb: str, args: tuple[Any, ...], timeout: float) -> Any:
        """Send a protocol command with a tag and return its answer."""
        return _exchange.command(self._pool, verb, args, timeout)

    def cast(
        self, procedure: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
    ) -> None:
        """Send a call that wants no reply, within C{timeout}."""
        _exchange.cast(self._pool, procedure, args, kwargs, timeout)

    # --- Calls that finish later --------------------------------------------

    def _check_pid(self) -> None:
        """In a forked child: forget the parent's async threads and their calls."""
        if self._pid != os.getpid():
            # Another thread may have held the lock at the fork: it never lets go here.
            self._lock = threading.Lock()
            self._executor = None
            self._handles = set()
            self._pid = os.getpid()

    def call_async(self, handle: DirectCallHandle) -> None:
        """Run a handle's call on one of the async threads."""
        self._check_pid()
        with self._lock:
            # Checked under this lock: close() closes the pool, then takes
            # the handles under it, so none added here is missed.
            if self._pool.closed:
                raise self._pool.closed_error(handle.procedure, Outcome.NOT_RUN)
            executor = self._executor
            if executor is None:
                executor = self._executor = AsyncThreads(self._async_threads, ASYNC_THREAD_NAME)
            self._handles.add(handle)
        executor.submit(handle._run)

    def _forget(self, handle: DirectCallHandle) -> None:
        with self._lock:
            self._handles.discard(handle)

    # --- Closing ------------------------------------------------------------

    def close(self) -> None:
        """
        Close every connection.  A call waiting on one is cancelled on the
        node and fails at once with L{UnavailableError}; later calls fail
        the same way, not-run.  Safe from any thread.
        """
        self._check_pid()
        if not self._pool.close():
            return
        with self._lock:
            handles = list(self._handles)
            executor, self._executor = self._executor, None
        for handle in handles:
            handle._closed()
        if executor is not None:
            executor.stop()
