"""
Streams for the asynchronous client: L{CallStream}, what L{Client.stream}
returns, and L{Credit}, the window of items its reader grants the node.

    async for item in client.stream("count", 5):
        print(item)

A stream asks with C{+window=W}: the node sends at most C{W} items beyond
those the reader has taken, and the stream grants more (C{MORE}) as they are
taken, half a window at a time.  So the client holds at most C{W} items, and
a reader that takes them slowly slows the node's producer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from callnet.errors import CallCancelledError, CallError, InvalidArgumentError, Outcome
from callnet.wire import Item, Progress

#: How many items a stream lets the node send ahead of its reader, when the
#: caller names no window.  Enough to keep a fast producer busy over a round
#: trip (more are granted when half of them have been taken), few enough that
#: the items a client holds stay small.
DEFAULT_WINDOW = 64

log = Logger()


class Credit:
    """
    The window a stream's reader grants, without I/O: after each item taken,
    L{took} says how many items to grant with C{MORE} now (0: none yet).
    Grants go out when half the window has been taken, so a reader never
    holds more than C{window} items and the node rarely waits for a grant.
    """

    def __init__(self, window: int) -> None:
        if type(window) is not int or window < 1:
            raise ValueError(f"a stream's window is a whole number of items >= 1, not {window!r}")
        self.window = window
        self._step = max(1, window // 2)
        self._taken = 0

    def took(self) -> int:
        """One more item taken by the reader: the number to grant now."""
        self._taken += 1
        if self._taken < self._step:
            return 0
        grant, self._taken = self._taken, 0
        return grant


def asks_for_a_stream(error: BaseException) -> bool:
    """
    Whether a call was refused because its procedure streams and the call
    did not ask with C{+window}: the node says so with C{INVALID_ARGUMENT}
    (not-run), naming C{+window} or C{stream()}.  For a caller such as
    C{callnet call} that does not know beforehand, and asks again as a stream.
    """
    return (
        isinstance(error, InvalidArgumentError)
        and error.outcome is Outcome.NOT_RUN
        and ("+window" in error.message or "stream()" in error.message)
    )


class _Link(Protocol):
    """What a stream needs of the connection it runs on."""

    def more(self, tag: str, count: int) -> None: ...


def ran_if_items(error: BaseException | None, items: int) -> BaseException | None:
    """
    A stream's error as its caller sees it: once any item arrived the
    procedure has run (the caller holds part of its result), whoever noticed
    the failure.
    """
    if items and isinstance(error, CallError):
        error.outcome = Outcome.RAN
    return error


class CallStream:
    """
    A stream of items from a procedure that yields, and its final result.

    Take the items with C{async for} (or L{each}); the final result is
    L{result} once the items are done.  Errors are the L{CallError}s of
    calls, raised where the next item would be, with the outcome C{ran} once
    any item arrived.  L{aclose} (or leaving C{async with}) cancels the
    stream on the node; so does cancelling the Deferred of a pending item.

    @ivar procedure: the procedure streamed.
    @ivar window: how many items the node may send ahead of the reader.
    @ivar received: how many items have arrived so far.
    """

    def __init__(self, procedure: str, window: int = DEFAULT_WINDOW) -> None:
        self.procedure = procedure
        self._credit = Credit(window)
        self.window = window
        self.received = 0
        self._buffer: deque[Any] = deque()
        self._waiters: deque[Deferred[Any]] = deque()
        self._link: _Link | None = None
        self._tag = ""
        self._reply: Deferred[Any] | None = None
        self._ended = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._failed = False
        self._closed = False

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        return f"<CallStream {self.procedure} {state}, {self.received} items>"

    # --- Wiring (the client) -----------------------------------------------

    def _sent(self, link: _Link, tag: str) -> None:
        """The request went out on C{link} as C{tag}."""
        self._link = link
        self._tag = tag

    def _follow(self, reply: Deferred[Any]) -> None:
        """Watch the Deferred of the final reply (which cancelling cancels the call)."""
        self._reply = reply
        reply.addBoth(self._end)

    def _item(self, value: Any) -> None:
        """An item arrived."""
        self.received += 1
        if self._closed:
            return
        if self._waiters:
            self._took()
            self._waiters.popleft().callback(value)
        else:
            self._buffer.append(value)

    def _end(self, result: object) -> None:
        """The final reply (or the client's own failure) ended the stream."""
        self._ended = True
        if isinstance(result, Failure):
            self._failed = True
            self._error = ran_if_items(result.value, self.received)
        else:
            self._value = result
        while self._waiters:
            self._next_at_end().chainDeferred(self._waiters.popleft())

    # --- The reader ---------------------------------------------------------

    def __aiter__(self) -> CallStream:
        return self

    def __anext__(self) -> Deferred[Any]:
        """The next item, or C{StopAsyncIteration} once the stream has ended."""
        if self._buffer:
            self._took()
            return succeed(self._buffer.popleft())
        if self._ended or self._closed:
            return self._next_at_end()
        waiter: Deferred[Any] = Deferred(self._waiter_cancelled)
        self._waiters.append(waiter)
        return waiter

    async def __aenter__(self) -> CallStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _next_at_end(self) -> Deferred[Any]:
        """What the reader gets past the last item: the error once, then the end."""
        error, self._error = self._error, None
        if error is not None and not self._closed:
            return fail(error)
        return fail(StopAsyncIteration())

    def _took(self) -> None:
        grant = self._credit.took()
        if grant and not self._ended and self._link is not None:
            self._link.more(self._tag, grant)

    def _waiter_cancelled(self, waiter: Deferred[Any]) -> None:
        self.cancel()

    @property
    def ended(self) -> bool:
        """Whether the node's final reply (or an error) has ended the stream."""
        return self._ended

    @property
    def result(self) -> Any:
        """
        The final result (the procedure's return value), once the stream has
        ended well.

        @raise RuntimeError: the stream has not ended, or ended in an error.
        """
        if not self._ended or self._failed:
            raise RuntimeError(f"the stream of {self.procedure} has no result (yet)")
        return self._value

    def each(self, callback: Callable[[Any], object]) -> Deferred[Any]:
        """
        Call C{callback(item)} for each item as it comes, in order; if it
        returns an awaitable (a Deferred, say), wait for it before the next.

        @return: a Deferred firing with the final result once the stream has
            ended, or failing with its error.  Cancelling it cancels the stream.
        """

        async def pump() -> Any:
            async for item in self:
                outcome = callback(item)
                if isinstance(outcome, Awaitable):
                    await outcome
            return self.result

        return ensureDeferred(pump())

    def cancel(self) -> bool:
        """
        Cancel the stream, on the node too (C{CANCEL}): the reader gets
        L{CallCancelledError} past the items it has.  Whether it was in flight.
        """
        if self._ended:
            return False
        if self._reply is None:
            self._end(
                Failure(CallCancelledError(f"{self.procedure} was cancelled", Outcome.NOT_RUN))
            )
            return True
        self._reply.cancel()
        return True

    def aclose(self) -> Deferred[None]:
        """
        Stop taking items: cancel the stream on the node if it is still in
        flight, drop the items held, and end iteration quietly.
        """
        self._closed = True
        self._buffer.clear()
        self.cancel()
        self._error = None
        return succeed(None)


#: What a call's C{PROGRESS} reports are handed to.
ProgressCallback = Callable[[Progress], object]


def _listener(
    stream: CallStream | None, on_progress: ProgressCallback | None
) -> Callable[[Item | Progress], object]:
    """What takes a call's ITEM lines (its stream) and PROGRESS lines (the callback)."""

    def listen(event: Item | Progress) -> None:
        if type(event) is Item:
            if stream is not None:
                stream._item(event.value)
        elif on_progress is not None:
            try:
                on_progress(event)  # type: ignore[arg-type]
            except Exception:
                log.failure("progress callback {fn!r} failed", fn=on_progress)

    return listen


class _Calls(Protocol):
    """What L{ProgressCalls} needs of a L{Client}."""

    def _call(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        key: str | None,
        trace: str | None,
        on_progress: ProgressCallback | None,
    ) -> Deferred[Any]: ...

    def _stream(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        window: int | None,
        trace: str | None,
        on_progress: ProgressCallback | None,
    ) -> CallStream: ...


class ProgressCalls:
    """
    L{Client.call} and L{Client.stream}, with progress reports to a callback
    (see L{Client.with_progress}).
    """

    def __init__(self, client: _Calls, on_progress: ProgressCallback) -> None:
        self._client = client
        self._on_progress = on_progress

    def call(
        self,
        procedure: str,
        /,
        *args: Any,
        timeout: float | None = None,
        key: str | None = None,
        trace: str | None = None,
        **kwargs: Any,
    ) -> Deferred[Any]:
        """As L{Client.call}, asking for C{+progress}."""
        return self._client._call(procedure, args, kwargs, timeout, key, trace, self._on_progress)

    def stream(
        self,
        procedure: str,
        /,
        *args: Any,
        timeout: float | None = None,
        window: int | None = None,
        trace: str | None = None,
        **kwargs: Any,
    ) -> CallStream:
        """As L{Client.stream}, asking for C{+progress}."""
        return self._client._stream(
            procedure, args, kwargs, timeout, window, trace, self._on_progress
        )
