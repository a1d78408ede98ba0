"""
Several threads' calls on one connection of the plain-socket path: tagged
requests pipelined on one socket, and a leader/followers reader.

A thread sends its request under the connection's write lock, then either
becomes the reader (when nobody reads) or waits on a one-shot L{_Done} of
its own.  The reader reads replies and hands each to the thread that waits
for it, until its own comes; then it passes the role to one of the threads
still waiting (waking it through the same one-shot) and returns.  A thread
alone on a connection sends, reads its own reply and returns: no hand-off.

Why: a connection of its own per calling thread costs the node a read and
a write per call, where one connection carrying many threads' calls lets
it read and write them in batches (docs/performance.md).

Every rule of the plain-socket path holds: each wait is bounded by the
call's deadline, a call given up on is cancelled on the node, a reader
that leaves (deadline, Ctrl-C) hands the role on first, and a lost
connection fails every call waiting on it at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from twisted.logger import Logger

from callnet.blocking._wait import INTERRUPT_CHECK_INTERVAL, _Done
from callnet.errors import Outcome, UnavailableError
from callnet.wire import BadLine, Bye, ErrorReply, LineDecoder, Success


class Connection(Protocol):
    """What a shared connection's calls need of the socket under them
    (L{callnet.blocking._connection.Connection} is one)."""

    decoder: LineDecoder
    monotonic: Callable[[], float]

    def send(self, data: bytes, deadline: float) -> None: ...

    def kill(self, why: str) -> str: ...

    def cancel(self, tag: str) -> None: ...

    def read_more(self, deadline: float, interruptible: bool) -> None: ...


#: The connection a multiplexer shares, as its owner knows it.
_C = TypeVar("_C", bound=Connection)


log = Logger()

#: How many calling threads share one connection of the plain-socket path
#: before the next one opens another.  One connection carrying many threads'
#: calls costs the node about a third of the CPU per call that one each
#: costs (docs/performance.md: 31 us against 80-90 us); past 16 waiting
#: threads one reader hands out more replies than it gains, and a second
#: connection lets the node's answers to the two arrive together.
THREADS_PER_CONNECTION = 16


class SendTimeoutError(Exception):
    """The request could not be written by its deadline (a part may have gone)."""


class NotSentError(Exception):
    """The request was not sent: the connection failed before or while writing it."""


class LostError(Exception):
    """The connection ended while the call waited for its reply."""


def not_read(reason: str, tag: str) -> ErrorReply:
    """
    The reply for call C{tag} still waiting when the node said C{BYE}
    (C{reason}): the node runs nothing it reads after it, so it did not run.
    """
    return ErrorReply(UnavailableError(f"{reason}: the call was not read", Outcome.NOT_RUN), tag)


class _Waiter:
    """One call in flight on a shared connection."""

    __slots__ = ("done", "lost", "reply", "tag")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        #: Set once: the reply came, the connection was lost, or this
        #: thread was made the reader.
        self.done = _Done()
        self.reply: Any = None
        self.lost: str | None = None


class Multiplexer(Generic[_C]):
    """
    The calls in flight on one connection and which of their threads reads.

    C{users} counts the calls the path has placed here (guarded by the
    path's lock); everything else by this object's own lock.
    """

    def __init__(self, connection: _C | None = None) -> None:
        #: C{None} while the thread that placed the first call here opens
        #: it; the calls placed meanwhile wait for L{ready}, so that threads
        #: starting together share one new connection, not one each.
        self.connection = connection
        self.ready = threading.Event() if connection is None else None
        #: Why opening the connection failed, for the calls that waited.
        self.failure: BaseException | None = None
        self.users = 0
        #: Why the connection is gone, once it is: no call is placed here then.
        self.lost: str | None = None
        self._lock = threading.Lock()
        self._waiters: dict[str, _Waiter] = {}
        self._reader: _Waiter | None = None

    def tags(self) -> list[str]:
        """The tags of the calls waiting here now."""
        with self._lock:
            return list(self._waiters)

    def exchange(self, tag: str, line: bytes, deadline: float, interruptible: bool) -> Any:
        """
        Send C{line} (a request tagged C{tag}) and return its reply event.

        @param interruptible: wake every L{INTERRUPT_CHECK_INTERVAL} so that
            a pending KeyboardInterrupt is raised (the main thread).
        @raise NotSentError: the connection failed before the request went.
        @raise SendTimeoutError: it could not be written by C{deadline}; the
            connection is ended, as a part of the line may have gone.
        @raise TimeoutError: no reply by C{deadline}; the call was cancelled
            on the node.
        @raise LostError: the connection ended first.
        """
        waiter = _Waiter(tag)
        connection = self.connection
        assert connection is not None
        with self._lock:
            if self.lost is not None:
                raise NotSentError(self.lost)
            self._waiters[tag] = waiter
        try:
            connection.send(line, deadline)
        except TimeoutError:
            self._leave(waiter)
            self.fail(connection.kill("a request could not be written in time"))
            raise SendTimeoutError from None
        except OSError as e:
            self._leave(waiter)
            self.fail(connection.kill(e.strerror or str(e)))
            raise NotSentError(e.strerror or str(e)) from None
        except BaseException:
            # Ctrl-C while writing: the rest of the line will never come.
            self._leave(waiter)
            self.fail(connection.kill("a request was interrupted while being written"))
            raise
        try:
            with self._lock:
                if self._reader is None and waiter.reply is None and waiter.lost is None:
                    self._reader = waiter
            return self._await(connection, waiter, deadline, interruptible)
        except LostError:
            raise
        except BaseException:
            # The deadline, or Ctrl-C: cancel on the node, this call only.
            connection.cancel(tag)
            raise

    def _await(
        self, connection: Connection, waiter: _Waiter, deadline: float, interruptible: bool
    ) -> Any:
        monotonic = connection.monotonic
        done = waiter.done
        while self._reader is not waiter:
            remaining = deadline - monotonic()
            if remaining > 0:
                if interruptible and remaining > INTERRUPT_CHECK_INTERVAL:
                    remaining = INTERRUPT_CHECK_INTERVAL
                try:
                    if not done.wait(remaining):
                        continue
                except BaseException:
                    self._leave(waiter)
                    raise
            with self._lock:
                if waiter.reply is not None:
                    return waiter.reply
                if waiter.lost is not None:
                    raise LostError(waiter.lost)
                if remaining <= 0:
                    self._leave_locked(waiter)
                    raise TimeoutError
        return self._read(connection, waiter, deadline, interruptible)

    def _read(
        self, connection: Connection, waiter: _Waiter, deadline: float, interruptible: bool
    ) -> Any:
        """As the reader: read and hand out replies until C{waiter}'s own."""
        try:
            while True:
                own = self._dispatch(connection, waiter)
                if own is not None:
                    self._leave(waiter)
                    return own
                connection.read_more(deadline, interruptible)
        except LostError as e:
            self.fail(str(e))
            raise
        except BaseException:
            self._leave(waiter)
            raise

    def _dispatch(self, connection: Connection, waiter: _Waiter) -> Any:
        """
        Hand out every reply the decoder holds; return C{waiter}'s own if
        among them.  Replies to calls given up on are dropped.
        """
        decoder = connection.decoder
        own = None
        event = decoder.next_event()
        while event is not None:
            kind = type(event)
            if kind is Success or kind is ErrorReply:
                tag: str = event.tag  # type: ignore[union-attr,assignment]
                if tag == waiter.tag:
                    own = event
                else:
                    with self._lock:
                        other = self._waiters.pop(tag, None)
                        if other is not None:
                            other.reply = event
                            other.done.set()
            elif kind is Bye:
                not_run = self._node_left(event.reason, waiter)  # type: ignore[union-attr]
                return own if own is not None else not_run
            elif kind is BadLine:
                log.warn("unreadable line from the node: {error}", error=event.error)  # type: ignore[union-attr]
            # Items and progress reports are for streams and handles, which
            # keep connections of their own: none is asked for here.
            event = decoder.next_event()
        return own

    def _node_left(self, reason: str, waiter: _Waiter) -> ErrorReply:
        """
        The node said C{BYE}: every call still waiting here, C{waiter}'s
        among them, did not run; no call is placed here again.
        """
        with self._lock:
            if self.lost is None:
                self.lost = reason
            for other in self._waiters.values():
                if other is not waiter and other.reply is None:
                    other.reply = not_read(reason, other.tag)
                    other.done.set()
        return not_read(reason, waiter.tag)

    def _leave(self, waiter: _Waiter) -> None:
        with self._lock:
            self._leave_locked(waiter)

    def _leave_locked(self, waiter: _Waiter) -> None:
        """A call leaves; if it read, the role goes to a call still waiting."""
        self._waiters.pop(waiter.tag, None)
        if self._reader is waiter:
            self._reader = None
            for successor in self._waiters.values():
                self._reader = successor
                successor.done.set()
                break

    def fail(self, why: str) -> None:
        """The connection is gone: release every call waiting here at once."""
        with self._lock:
            if self.lost is None:
                self.lost = why
            waiters, self._waiters = self._waiters, {}
            self._reader = None
            for waiter in waiters.values():
                waiter.lost = why
                waiter.done.set()
