"""
The connections of the plain-socket path to one node, as redis-py and
psycopg keep theirs: a call takes an idle connection (or opens one) and
gives it back when its reply is read, so no socket is ever read by two
calls at once.  A connection may instead carry the calls of several threads
at once (L{callnet.blocking._shared.Multiplexer}): such a call takes the
least busy shared connection, or shares an idle or new one.

A forked child never touches its parent's sockets: the pool notices the new
pid and starts afresh.
"""

from __future__ import annotations

import os
import threading

from callnet.blocking._connection import _POLL, Connection
from callnet.blocking._opening import Opener
from callnet.blocking._shared import Multiplexer
from callnet.blocking._wait import INTERRUPT_CHECK_INTERVAL
from callnet.errors import CallError, DeadlineExceededError, Outcome, UnavailableError


class ConnectionPool:
    """
    The connections of one client to one node: idle ones kept for reuse,
    ones a call holds alone, and ones several threads' calls share.

    @param opener: opens (and authenticates) each new connection.
    @param max_idle: how many idle connections to keep.
    @param threads_per_connection: how many calling threads share one
        connection before the next opens another; 1 gives each its own.
    """

    def __init__(self, opener: Opener, *, max_idle: int, threads_per_connection: int) -> None:
        self._opener = opener
        self.address = opener.address
        self.monotonic = opener.monotonic
        self._max_idle = max_idle
        self._per_connection = threads_per_connection
        #: Whether calls may share connections.  TLS sockets cannot be read
        #: in one thread while written in another, and without poll() reads
        #: and writes would race on the socket's timeout: such connections
        #: carry one call at a time.
        self.can_share = (
            threads_per_connection > 1 and opener.address.tls is None and _POLL is not None
        )
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        #: Connections carrying the calls of several threads now.
        self._shared: list[Multiplexer[Connection]] = []
        self.closed = False

    # --- A forked child -----------------------------------------------------

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        """
        In a forked child: forget the parent's connections without a word on
        them (closing our copy of a descriptor leaves the parent's socket be;
        a shutdown or a write would not).
        """
        # Another thread may have held the lock at the fork: it never lets go here.
        self._lock = threading.Lock()
        for connection in [*self._idle, *self._busy, *(m.connection for m in self._shared)]:
            if connection is not None:
                connection.close()
        self._idle = []
        self._busy = set()
        self._shared = []
        self._pid = os.getpid()

    # --- A connection of one call's own -------------------------------------

    def take(self, deadline: float, what: str) -> Connection:
        """A connection for one call: an idle one, or a new one."""
        self._check_pid()
        while True:
            with self._lock:
                if self.closed:
                    raise self.closed_error(what, Outcome.NOT_RUN)
                if not self._idle:
                    break
                connection = self._idle.pop()
                self._busy.add(connection)
            if not connection.is_stale():
                return connection
            self.drop(connection)
        connection = self._opener.open(deadline, what)
        with self._lock:
            if self.closed:
                connection.close()
                raise self.closed_error(what, Outcome.NOT_RUN)
            self._busy.add(connection)
        return connection

    def give_back(self, connection: Connection) -> None:
        """A call is done with its connection: keep it idle, or close it."""
        connection.tag = None
        with self._lock:
            self._busy.discard(connection)
            if (
                not self.closed
                and not connection.closed
                and connection.said_bye is None
                and len(self._idle) < self._max_idle
            ):
                self._idle.append(connection)
                return
        connection.close()

    def drop(self, connection: Connection) -> None:
        """A call's connection cannot be trusted any more: close it."""
        with self._lock:
            self._busy.discard(connection)
        connection.close()

    # --- A connection shared with other threads' calls ----------------------

    def take_shared(self, deadline: float, what: str) -> Multiplexer[Connection]:
        """
        A connection to carry one call beside others: the least busy one
        that carries fewer than C{threads_per_connection} calls, or an
        idle or new one.
        """
        self._check_pid()
        opening = False
        with self._lock:
            if self.closed:
                raise self.closed_error(what, Outcome.NOT_RUN)
            best = None
            for mux in self._shared:
                if mux.lost is None and (best is None or mux.users < best.users):
                    best = mux
            if best is not None and best.users < self._per_connection:
                best.users += 1
                mux = best
            elif self._idle:
                best = None
            else:
                mux = Multiplexer[Connection]()
                mux.users = 1
                self._shared.append(mux)
                opening = True
        if best is None and not opening:
            return self._share_idle(deadline, what)
        if mux.connection is None:
            if opening:
                self._open_shared(mux, deadline, what)
            else:
                self._wait_shared(mux, deadline, what)
        return mux

    def _share_idle(self, deadline: float, what: str) -> Multiplexer[Connection]:
        """
        An idle connection, checked before it is shared (nobody else may
        read it meanwhile), with the multiplexer it keeps; or a new one.
        """
        while True:
            with self._lock:
                if self.closed:
                    raise self.closed_error(what, Outcome.NOT_RUN)
                if not self._idle:
                    mux = Multiplexer[Connection]()
                    mux.users = 1
                    self._shared.append(mux)
                    break
                connection = self._idle.pop()
            if connection.is_stale():
                connection.close()
                continue
            kept = connection.shared
            if kept is None:
                kept = connection.shared = Multiplexer(connection)
            mux = kept
            with self._lock:
                if self.closed:
                    connection.close()
                    raise self.closed_error(what, Outcome.NOT_RUN)
                mux.users = 1
                self._shared.append(mux)
            return mux
        self._open_shared(mux, deadline, what)
        return mux

    def _open_shared(self, mux: Multiplexer[Connection], deadline: float, what: str) -> None:
        """Open the connection of C{mux}, for the calls placed on it meanwhile too."""
        ready = mux.ready
        assert ready is not None
        try:
            connection = self.take(deadline, what)
        except BaseException as e:
            with self._lock:
                mux.lost = str(e)
                mux.failure = e
                mux.users -= 1
                if mux in self._shared:
                    self._shared.remove(mux)
            ready.set()
            raise
        connection.shared = mux
        with self._lock:
            self._busy.discard(connection)
            mux.connection = connection
            if self.closed:
                mux.lost = "the client was closed"
        ready.set()
        if mux.lost is not None:
            self.give_back_shared(mux)
            raise self.closed_error(what, Outcome.NOT_RUN)

    def _wait_shared(self, mux: Multiplexer[Connection], deadline: float, what: str) -> None:
        """Wait, by C{deadline}, for another thread to open the connection of C{mux}."""
        poll = threading.current_thread() is threading.main_thread()
        ready = mux.ready
        assert ready is not None
        try:
            while not ready.is_set():
                remaining = deadline - self.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"the deadline of {what} passed while connecting to {self.address.text}",
                        Outcome.NOT_RUN,
                    )
                ready.wait(min(remaining, INTERRUPT_CHECK_INTERVAL) if poll else remaining)
            failure = mux.failure
            if failure is not None:
                if isinstance(failure, CallError):
                    raise type(failure)(failure.message, Outcome.NOT_RUN) from None
                raise UnavailableError(
                    f"cannot connect to {self.address.text}: {failure!r}", Outcome.NOT_RUN
                )
        except BaseException:
            self.give_back_shared(mux)
            raise
        if mux.lost is not None:
            self.give_back_shared(mux)
            raise self.closed_error(what, Outcome.NOT_RUN)

    def give_back_shared(self, mux: Multiplexer[Connection]) -> None:
        """A call placed on C{mux} is over; the last one keeps or closes the connection."""
        connection = mux.connection
        with self._lock:
            mux.users -= 1
            if mux.users:
                return
            if mux in self._shared:
                self._shared.remove(mux)
            if connection is None:
                return
            if (
                mux.lost is None
                and not self.closed
                and not connection.closed
                and len(self._idle) < self._max_idle
            ):
                self._idle.append(connection)
                return
        connection.close()

    # --- The end ------------------------------------------------------------

    def close(self) -> bool:
        """
        Close every connection: a call waiting on one is cancelled on the
        node and fails at once.  Whether this closed the pool (C{False}: it
        was closed already).
        """
        self._check_pid()
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            shared = list(self._shared)
        for connection in idle:
            connection.close()
        for connection in busy:
            connection.abort()
        for mux in shared:
            carrier = mux.connection
            if carrier is None:
                continue  # being opened: its opener sees the client closed
            for tag in mux.tags():
                carrier.cancel(tag)
            mux.fail(carrier.kill("the client was closed"))
        return True

    def closed_error(self, what: str, outcome: Outcome) -> UnavailableError:
        """The error of a call that meets the client closed."""
        if outcome is Outcome.NOT_RUN:
            message = f"the client of {self.address.text} is closed: {what} was not sent"
        else:
            message = f"the client was closed before {what} completed"
        return UnavailableError(message, outcome)

    def lost_error(self, what: str, why: str, outcome: Outcome) -> UnavailableError:
        """The error of a call whose connection was lost (or closed with the client)."""
        if self.closed:
            return self.closed_error(what, outcome)
        return UnavailableError(
            f"connection to {self.address.text} lost while {what} was in flight: {why}", outcome
        )
