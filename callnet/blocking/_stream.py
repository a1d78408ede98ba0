"""
L{BlockingStream}: the items of a procedure that yields, for a C{for} loop,
on either path of the blocking client.

    with client.stream("count", 5) as items:
        for item in items:
            ...

On the plain-socket path (C{DirectStream}) the stream holds a connection
of its own while it runs and reads its items in the calling thread; on the
reactor path (L{BridgedStream}) the async client's stream hands its items
across to the reader.  Either way the reader grants the node more items
only as it takes them, so a slow reader slows the producer and the client
holds at most the stream's window of items.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from callnet.blocking._handle import CallHandle, _Owner
from callnet.blocking._wait import INTERRUPT_CHECK_INTERVAL
from callnet.client_stream import CallStream, Credit, ran_if_items
from callnet.errors import CallError


class BlockingStream:
    """
    A stream in flight: iterate over it for its items (each as it comes,
    waiting for it within the stream's deadline); its final result is
    L{result} once the items are done.  Errors are raised as the blocking
    client's calls raise them, with the outcome C{ran} once any item arrived.

    Leaving its C{with} block, or L{close}, cancels it on the node if it is
    still running.  Ctrl-C while it waits cancels it and is raised again.

    @ivar procedure: the procedure streamed.
    @ivar received: how many items have arrived so far.
    """

    procedure: str
    received: int

    def __init__(self, procedure: str, window: int) -> None:
        self.procedure = procedure
        self.window = window
        self.received = 0
        self._credit = Credit(window)
        self._done = False
        self._closed = False
        self._value: Any = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.procedure} {'ended' if self._done else 'open'},"
            f" {self.received} items>"
        )

    def __iter__(self) -> BlockingStream:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        if self._done:
            return self._past_the_end()
        try:
            return self._next()
        except KeyboardInterrupt:
            self.close()
            raise

    def __enter__(self) -> BlockingStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def result(self) -> Any:
        """
        The final result (the procedure's return value), once the items are done.

        @raise RuntimeError: the stream has not ended, or ended in an error.
        """
        if not self._done or self._error is not None or self._failed:
            raise RuntimeError(f"the stream of {self.procedure} has no result (yet)")
        return self._value

    _failed = False

    def _past_the_end(self) -> Any:
        """The error once, then the end of iteration."""
        error, self._error = self._error, None
        if error is not None:
            self._failed = True
            raise error
        raise StopIteration

    def _ended(self, value: Any = None, error: BaseException | None = None) -> Any:
        """Record the end and raise it (the error, or StopIteration)."""
        self._done = True
        self._value = value
        self._error = None if error is None else ran_if_items(error, self.received)
        return self._past_the_end()

    def _next(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Stop taking items: cancel the stream on the node if it still runs."""
        raise NotImplementedError


class _Bridge(CallStream):
    """The reactor thread's half of a L{BridgedStream}: hands items across."""

    def __init__(self, procedure: str, window: int, reader: BridgedStream) -> None:
        super().__init__(procedure, window)
        self._reader = reader
        #: Fires with the final result, for the reader's L{CallHandle}.
        self.final: Deferred[Any] = Deferred(self._final_cancelled)

    def _final_cancelled(self, final: Deferred[Any]) -> None:
        self.cancel()

    def _item(self, value: Any) -> None:
        self.received += 1
        self._reader._arrived(value)

    def _end(self, result: object) -> None:
        self._ended = True
        if isinstance(result, Failure):
            error = ran_if_items(result.value, self.received)
            self.final.errback(Failure(error))
        else:
            self.final.callback(result)

    def grant(self, count: int) -> None:
        """Grant the node C{count} more items (reactor thread)."""
        if not self._ended and self._link is not None:
            self._link.more(self._tag, count)


class BridgedStream(BlockingStream):
    """
    A stream on the reactor path: the async client's stream runs on the
    reactor thread; its end is a L{CallHandle}'s, so that closing the client
    or the reactor's shutdown release the reader as they release calls.
    """

    def __init__(
        self,
        owner: _Owner,
        procedure: str,
        window: int,
        timeout: float,
        open_stream: Callable[[Any, float, CallStream], object],
    ) -> None:
        super().__init__(procedure, window)
        self._bridge = _Bridge(procedure, window, self)
        self._items: deque[Any] = deque()
        self._wake = threading.Event()
        bridge = self._bridge

        def send(client: Any, left: float) -> Deferred[Any]:
            open_stream(client, left, bridge)
            return bridge.final

        self._handle = CallHandle(owner, procedure, timeout, send)
        self._handle.add_done_callback(lambda _: self._wake.set())
        self._thread = owner._thread

    def _arrived(self, value: Any) -> None:
        """An item came (reactor thread)."""
        self.received += 1
        self._items.append(value)
        self._wake.set()

    def _next(self) -> Any:
        handle = self._handle
        thread = self._thread
        poll = threading.current_thread() is threading.main_thread()
        while True:
            self._wake.clear()
            if self._items:
                value = self._items.popleft()
                grant = self._credit.took()
                if grant and not handle.done():
                    thread.call_in_reactor(self._bridge.grant, grant)
                return value
            if handle.done():
                try:
                    return self._ended(value=handle.result(0))
                except CallError as e:
                    return self._ended(error=e)
            remaining = handle._give_up_at - thread.monotonic()
            if remaining <= 0:
                return self._ended(error=handle._give_up())
            thread.ensure_running()
            if poll:
                remaining = min(remaining, INTERRUPT_CHECK_INTERVAL)
            thread.wait(self._wake, remaining)

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        if not self._done:
            self._done = True
            self._handle.cancel()
