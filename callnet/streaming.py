"""
Running a procedure that yields: its items pulled only as the caller grants
them, and its generator closed when the call ends early.

A stream's items come from a L{Source}, one small interface with a class per
kind, beside the executions of L{callnet.execution}:

  - L{InThreadSource}: a generator (C{def ... yield}), pulled in a worker
    thread while credit lasts.  When the credit is spent the job ends and
    hands the generator back: a stream waiting for C{MORE} holds no thread,
    so stalled streams cannot take the pool.  The next pull is a new job.
  - L{InReactorSource}: an async generator (C{async def ... yield}), resumed
    in the reactor for each item it may make, and simply not resumed past
    its credit.
  - L{Relay} (for the cluster): a stream a peer runs, whose credit is passed
    on to it.

Each source's C{done} Deferred fires with the stream's final value once every
item was handed over, or fails with what the producer raised; cancelling it
stops the producer and closes the generator (C{close()} in a thread,
C{aclose()} in the reactor), so its C{finally} blocks run on the node that
runs it.  L{Stream} is what the connection sees: the items as lines, the
final outcome, and the credit, holds and cancel the session drives.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from callnet.errors import CallError, InternalError, Outcome
from callnet.workers import ThreadRunner

log = Logger()

#: Hands a line to whoever takes the stream's items (see L{Stream.deliver}).
Emit = Callable[[Any], None]


class Source(Protocol):
    """Where a stream's items come from, pulled only as far as its credit goes."""

    #: Fires with the final value after the last item was emitted, or fails
    #: with what the producer raised.  Cancelling it stops the producer.
    done: Deferred[Any]

    def grant(self, count: int) -> None:
        """The caller may take C{count} more items."""

    def hold(self) -> None:
        """Stop pulling for now (the connection's output is backed up)."""

    def release(self) -> None:
        """Pull again, as far as the credit goes."""


def final_value(value: Any, items: int) -> Any:
    """
    A stream's final result: what the generator returned, or, if nothing
    (an async generator cannot return a value), how many items it made.
    """
    return items if value is None else value


class _NotJSONError(Exception):
    """An item could not be written as JSON."""


def _encode(encode: Callable[[Any], bytes], value: Any) -> bytes:
    try:
        return encode(value)
    except (TypeError, ValueError) as e:
        raise _NotJSONError(str(e)) from None


#: How many bytes of a thread stream's items may be on their way to the
#: reactor at once.  A pull job stops there and the next starts as they are
#: written: without it a job pulled a whole window (64 items of 1 MiB) before
#: the connection's backpressure could hold it, and the replies left unsent
#: passed C{max_unsent_bytes}.
THREAD_STREAM_AHEAD_BYTES = 1024 * 1024


class InThreadSource:
    """
    A generator pulled in worker threads, as many items per job as the credit
    allows (and one ahead) up to L{THREAD_STREAM_AHEAD_BYTES} on their way,
    each encoded there; never a thread held while waiting for credit.
    """

    def __init__(
        self,
        generator: Generator[Any, None, Any],
        encode: Callable[[Any], bytes],
        emit: Emit,
        threads: ThreadRunner,
        to_reactor: Callable[..., None],
    ) -> None:
        self._generator = generator
        self._encode = encode
        self._emit = emit
        self._threads = threads
        self._to_reactor = to_reactor
        self._lock = threading.Lock()
        # All under the lock: credit left, held by the session, a job
        # running (it owns the generator), cancelled, the generator over,
        # and the item made ahead of the credit.
        self._credit = 0
        self._held = False
        self._busy = False
        self._stopping = False
        self._over = False
        self._ahead: bytes | None = None
        # Bytes handed to the reactor and not yet emitted.
        self._on_the_way = 0
        self._items = 0
        self.done: Deferred[Any] = Deferred(self._cancel)

    def grant(self, count: int) -> None:
        with self._lock:
            self._credit += count
            ahead = self._take_ahead()
            start = self._claim()
        if ahead is not None:
            # Through the same hand-over as the job's items, to keep their order.
            self._to_reactor(self._deliver, ahead)
        if start:
            self._threads.callInThreadWithCallback(_ignore, self._pull)

    def hold(self) -> None:
        with self._lock:
            self._held = True

    def release(self) -> None:
        with self._lock:
            self._held = False
        self.grant(0)

    def _take_ahead(self) -> bytes | None:
        """(The lock held.)  The item made ahead, if the credit now covers it."""
        ahead = self._ahead
        if ahead is None or self._credit <= 0 or self._held:
            return None
        self._ahead = None
        self._credit -= 1
        self._on_the_way += len(ahead)
        return ahead

    def _claim(self) -> bool:
        """(The lock held.)  Whether a pull job should start now; if so, it owns the generator."""
        if (
            self._busy
            or self._held
            or self._credit <= 0
            or self._stopping
            or self._over
            or self._ahead is not None
            or self._on_the_way >= THREAD_STREAM_AHEAD_BYTES
        ):
            return False
        self._busy = True
        return True

    def _pull(self) -> None:
        """
        (In a worker thread.)  Pull items while credit lasts, then one more,
        so that a stream's end is seen as soon as its last item is granted;
        then let go of the generator.
        """
        generator, lock = self._generator, self._lock
        while True:
            with lock:
                if self._stopping:
                    break
                if (
                    self._held
                    or self._ahead is not None
                    or self._on_the_way >= THREAD_STREAM_AHEAD_BYTES
                ):
                    self._busy = False  # the next job starts from _deliver
                    return
            try:
                line = _encode(self._encode, next(generator))
            except StopIteration as end:
                self._end(True, final_value(end.value, self._items))
                return
            except _NotJSONError as e:
                self._close()
                self._end(False, _not_json(e))
                return
            except BaseException:
                self._end(False, Failure())
                return
            self._items += 1
            with lock:
                if self._credit > 0:
                    self._credit -= 1
                    self._on_the_way += len(line)
                else:
                    self._ahead = line
                    continue  # seen at the top: the job ends
            self._to_reactor(self._deliver, line)
        self._close()

    def _end(self, ok: bool, value: Any) -> None:
        with self._lock:
            self._over = True
            self._busy = False
        self._to_reactor(self._finish, ok, value)

    def _close(self) -> None:
        """(In a worker thread, owning the generator.)  Close it: its C{finally} runs."""
        try:
            self._generator.close()
        except BaseException:
            log.failure("closing a stream's generator failed")
        with self._lock:
            self._over = True
            self._busy = False

    def _deliver(self, line: bytes) -> None:
        if not self.done.called:
            self._emit(line)
        with self._lock:
            self._on_the_way -= len(line)
            start = self._claim()
        if start:
            self._threads.callInThreadWithCallback(_ignore, self._pull)

    def _finish(self, ok: bool, value: Any) -> None:
        if self.done.called:
            return
        if ok:
            self.done.callback(value)
        else:
            self.done.errback(value)

    def _cancel(self, done: Deferred[Any]) -> None:
        with self._lock:
            self._stopping = True
            self._ahead = None
            # A job running closes the generator once its item is made; an
            # idle generator is closed by a job of its own.
            idle = not self._busy and not self._over
            if idle:
                self._busy = True
        if idle:
            self._threads.callInThreadWithCallback(_ignore, self._close)


async def _next(generator: AsyncIterator[Any]) -> Any:
    return await generator.__anext__()


class InReactorSource:
    """
    An async generator resumed in the reactor, once per item granted (and
    once ahead, so that its end is seen as soon as its last item is granted).
    """

    def __init__(self, generator: Any, encode: Callable[[Any], bytes], emit: Emit) -> None:
        self._generator = generator
        self._encode = encode
        self._emit = emit
        self._credit = 0
        self._held = False
        self._items = 0
        self._ahead: bytes | None = None
        self._step: Deferred[Any] | None = None
        self._pumping = False
        self.done: Deferred[Any] = Deferred(self._cancel)

    def grant(self, count: int) -> None:
        self._credit += count
        self._pump()

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        self._held = False
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._held and not self.done.called:
                ahead = self._ahead
                if ahead is not None:
                    if self._credit <= 0:
                        break
                    self._ahead = None
                    self._credit -= 1
                    self._emit(ahead)
                    continue
                if self._step is not None or (self._credit <= 0 and not self._items):
                    break
                # Resume the generator here: an item made at once costs no
                # Deferred (11 Python calls an item, against 33 through
                # ensureDeferred: benchmarks/stream_step.py).
                step = _next(self._generator)
                try:
                    step.send(None)
                except StopIteration as made:
                    self._got(made.value)
                    continue
                except BaseException:
                    self._ended(Failure())
                    break
                # It awaits (a Deferred, whose await loops until it has a
                # result): the started step goes on under ensureDeferred.
                waiting = ensureDeferred(step)
                if not waiting.called:
                    self._step = waiting
                waiting.addCallbacks(self._got, self._ended)
        finally:
            self._pumping = False

    def _got(self, value: Any) -> None:
        self._step = None
        if self.done.called:
            return
        try:
            line = _encode(self._encode, value)
        except _NotJSONError as e:
            self.done.errback(_not_json(e))
            self._close()
            return
        self._items += 1
        self._ahead = line
        self._pump()

    def _ended(self, failure: Failure) -> None:
        self._step = None
        if self.done.called:
            return
        if failure.check(StopAsyncIteration):
            self.done.callback(final_value(None, self._items))
        else:
            self.done.errback(failure)

    def _cancel(self, done: Deferred[Any]) -> None:
        step, self._step = self._step, None
        self._ahead = None
        if step is not None:
            step.cancel()  # CancelledError at the generator's await
        self._close()

    def _close(self) -> None:
        """C{aclose()} the generator, so its C{finally} runs."""
        closing = ensureDeferred(self._generator.aclose())
        closing.addErrback(lambda failure: log.failure("closing a stream failed", failure))


def _not_json(error: Exception) -> Failure:
    return Failure(InternalError(f"a stream's item is not JSON ({error})", Outcome.RAN))


def _ignore(ok: bool, value: Any) -> None:
    """A pull job reports what it made through the reactor, not here."""
    if not ok:
        log.failure("a stream's pull job failed", value)


class Stream:
    """
    One stream running for a connection: the items as lines for it, the
    final outcome, and the credit and holds the session gives.

    An error that ends the stream after its first item has the outcome
    C{ran}: the caller holds part of the result.
    """

    __slots__ = ("_source", "items", "on_item", "result")

    def __init__(self) -> None:
        #: Called with each item's line, in the reactor; set by whoever
        #: takes the items (the connection) before it grants any credit.
        self.on_item: Callable[[bytes], None] | None = None
        #: Items handed on so far.
        self.items = 0
        self._source: Source | None = None
        self.result: Deferred[Any] = Deferred()

    def attach(self, source: Source, result: Deferred[Any]) -> None:
        """Take items from C{source}; C{result} is the call's final outcome."""
        self._source = source
        self.result = result
        result.addErrback(self._ran)

    def deliver(self, line: bytes) -> None:
        """An item's line, made by the source."""
        if self.result.called:
            return  # ended (cancelled, past its deadline): dropped
        self.items += 1
        on_item = self.on_item
        if on_item is not None:
            on_item(line)

    def _ran(self, failure: Failure) -> Failure:
        error = failure.value
        if self.items and isinstance(error, CallError):
            error.outcome = Outcome.RAN
        return failure

    def grant(self, count: int) -> None:
        """The caller may take C{count} more items."""
        if self._source is not None and not self.result.called:
            self._source.grant(count)

    def hold(self) -> None:
        """Make no more items for now: the connection's output is backed up."""
        if self._source is not None:
            self._source.hold()

    def release(self) -> None:
        """Make items again, as far as the credit goes."""
        if self._source is not None and not self.result.called:
            self._source.release()

    def cancel(self) -> None:
        """End the stream now: its generator is closed; it fails C{CANCELLED}."""
        self.result.cancel()
