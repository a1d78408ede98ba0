"""
The async client's streams and progress reports, against a node whose lines
the tests script on a StringTransport: the window and its grants, the end,
the typed errors and their outcomes, cancelling, and progress callbacks.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from callnet import (
    CallCancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    UnavailableError,
)
from callnet.client import Client, ClientProtocol
from callnet.client_stream import DEFAULT_WINDOW, CallStream, Credit
from callnet.wire import Progress


class ScriptedEndpoint:
    """Connects at once to a StringTransport: the test reads what is sent and writes the node's lines."""

    def __init__(self) -> None:
        self.protocol: ClientProtocol | None = None
        self.transport = StringTransport()

    def connect(self, factory: Factory) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, ClientProtocol)
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return succeed(protocol)


class Scripted:
    """A client of a scripted node, and the lines between them."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = ScriptedEndpoint()
        self.client = Client(self.endpoint, self.clock, timeout=10)

    def sent(self) -> list[str]:
        """The lines the client has sent since last asked."""
        self.clock.advance(0)
        data = self.endpoint.transport.value().decode()
        self.endpoint.transport.clear()
        return data.splitlines()

    def reply(self, *lines: str) -> None:
        assert self.endpoint.protocol is not None
        self.endpoint.protocol.dataReceived("".join(line + "\n" for line in lines).encode())
        self.clock.advance(0)


def take(stream: CallStream) -> Deferred[Any]:
    return ensureDeferred(stream.__anext__())  # type: ignore[arg-type]


class StreamTests(SynchronousTestCase):
    """A stream's items, final result and window."""

    def test_items_then_result(self) -> None:
        """Items come in order through async for, and the final reply is the stream's result."""
        node = Scripted()
        stream = node.client.stream("count", 3, window=8)
        self.assertEqual(node.sent(), ["#1 +timeout=10.0 +window=8 count 3"])

        async def read() -> list[Any]:
            return [item async for item in stream]

        d = ensureDeferred(read())
        node.reply("#1 ITEM 0", "#1 ITEM 1")
        self.assertNoResult(d)
        node.reply("#1 ITEM 2", "#1 OK 3")
        self.assertEqual(self.successResultOf(d), [0, 1, 2])
        self.assertEqual(stream.result, 3)
        self.assertTrue(stream.ended)

    def test_default_window(self) -> None:
        """A stream that names no window asks for DEFAULT_WINDOW items."""
        node = Scripted()
        node.client.stream("count", 1)
        self.assertIn(f"+window={DEFAULT_WINDOW}", node.sent()[0])

    def test_grants_as_items_are_taken(self) -> None:
        """Items the reader has not taken are not granted again: MORE goes out as half the window is taken."""
        node = Scripted()
        stream = node.client.stream("count", 10, window=4)
        node.sent()
        node.reply("#1 ITEM 0", "#1 ITEM 1", "#1 ITEM 2", "#1 ITEM 3")
        self.assertEqual(node.sent(), [])  # nothing taken, nothing granted
        self.assertEqual(self.successResultOf(take(stream)), 0)
        self.assertEqual(node.sent(), [])
        self.assertEqual(self.successResultOf(take(stream)), 1)
        self.assertEqual(node.sent(), ["MORE #1 2"])

    def test_result_before_end(self) -> None:
        """Asking for the result of a stream still running is an error, not a guess."""
        node = Scripted()
        stream = node.client.stream("count", 1)
        self.assertRaises(RuntimeError, lambda: stream.result)

    def test_each(self) -> None:
        """each() hands every item to a callback, waits on the Deferreds it returns, and fires with the result."""
        node = Scripted()
        stream = node.client.stream("count", 3, window=2)
        node.sent()
        seen: list[Any] = []
        gate: Deferred[None] = Deferred()

        def callback(item: Any) -> Deferred[None] | None:
            seen.append(item)
            return gate if item == 0 else None

        d = stream.each(callback)
        node.reply("#1 ITEM 0", "#1 ITEM 1")
        self.assertEqual(seen, [0])
        self.assertEqual(node.sent(), ["MORE #1 1"])
        gate.callback(None)
        self.assertEqual(seen, [0, 1])
        node.reply("#1 ITEM 2", "#1 OK 3")
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(seen, [0, 1, 2])

    def test_stream_with_keywords_and_trace(self) -> None:
        """A stream's keyword arguments and trace id travel with +window."""
        node = Scripted()
        node.client.stream("count", 2, interval=0.5, window=3, trace="t1")
        self.assertEqual(
            node.sent(), ["#1 +timeout=10.0 +trace=t1 +window=3 count 2 interval=0.5"]
        )

    def test_bad_window(self) -> None:
        """A window that is not a whole number of items >= 1 is refused before anything is sent."""
        node = Scripted()
        self.assertRaises(ValueError, node.client.stream, "count", 1, window=0)
        self.assertEqual(node.sent(), [])

    def test_late_items_dropped(self) -> None:
        """Items for a tag with no stream in flight are dropped without harm."""
        node = Scripted()
        d = node.client.call("add", 1, 2)
        node.reply("#9 ITEM 1", "#1 ITEM 5", "#1 OK 3")
        self.assertEqual(self.successResultOf(d), 3)


class StreamErrorTests(SynchronousTestCase):
    """A stream's errors: typed as for calls, with the outcome ran once an item arrived."""

    def read_all(self, stream: CallStream) -> Deferred[list[Any]]:
        async def read() -> list[Any]:
            return [item async for item in stream]

        return ensureDeferred(read())

    def test_node_error_after_items(self) -> None:
        """The node's error ends the stream after the items that came before it."""
        node = Scripted()
        stream = node.client.stream("count", 3)
        node.sent()
        seen: list[Any] = []
        d = stream.each(seen.append)
        node.reply("#1 ITEM 0", "#1 ERR NOT_FOUND ran no such row")
        self.assertEqual(seen, [0])
        error = self.failureResultOf(d, NotFoundError).value
        self.assertEqual(error.outcome, Outcome.RAN)

    def test_refusal_before_items(self) -> None:
        """A refusal before any item keeps the node's outcome."""
        node = Scripted()
        stream = node.client.stream("count", 3)
        d = self.read_all(stream)
        node.reply("#1 ERR INVALID_ARGUMENT not-run a stream cannot be cast")
        error = self.failureResultOf(d, InvalidArgumentError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)

    def test_deadline_covers_the_whole_stream(self) -> None:
        """The deadline runs from the request, not from each item, and after an item its outcome is ran."""
        node = Scripted()
        stream = node.client.stream("count", 3, timeout=2)
        node.sent()
        seen: list[Any] = []
        d = stream.each(seen.append)
        node.clock.advance(1.5)
        node.reply("#1 ITEM 0")
        node.clock.advance(0.6)
        error = self.failureResultOf(d, DeadlineExceededError).value
        self.assertEqual(error.outcome, Outcome.RAN)
        self.assertEqual(seen, [0])
        self.assertEqual(node.sent(), ['CANCEL "1"'])

    def test_deadline_before_items(self) -> None:
        """A deadline that passes before any item keeps the client's may-have-run."""
        node = Scripted()
        d = self.read_all(node.client.stream("count", 3, timeout=1))
        node.clock.advance(1.1)
        error = self.failureResultOf(d, DeadlineExceededError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)

    def test_lost_connection_mid_stream(self) -> None:
        """A connection lost after an item fails the stream UNAVAILABLE with the outcome ran."""
        node = Scripted()
        stream = node.client.stream("count", 3)
        d = self.read_all(stream)
        node.reply("#1 ITEM 0")
        assert node.endpoint.protocol is not None
        node.endpoint.protocol.connectionLost(Failure(ConnectionError("gone")))
        error = self.failureResultOf(d, UnavailableError).value
        self.assertEqual(error.outcome, Outcome.RAN)

    def test_error_raised_once(self) -> None:
        """After raising its error, a stream's iteration ends, as an async generator's does."""
        node = Scripted()
        stream = node.client.stream("count", 3)
        node.reply("#1 ERR NOT_FOUND not-run no such procedure")
        self.failureResultOf(take(stream), NotFoundError)
        self.failureResultOf(take(stream), StopAsyncIteration)

    def test_aclose_cancels_on_the_node(self) -> None:
        """aclose() sends CANCEL, drops what is held, and ends iteration quietly."""
        node = Scripted()
        stream = node.client.stream("count", 10, window=4)
        node.sent()
        node.reply("#1 ITEM 0", "#1 ITEM 1")
        self.assertEqual(self.successResultOf(take(stream)), 0)
        self.successResultOf(stream.aclose())
        self.assertEqual(node.sent(), ['CANCEL "1"'])
        self.failureResultOf(take(stream), StopAsyncIteration)
        node.reply("#1 ITEM 2", "#1 ERR CANCELLED ran cancelled")  # late: dropped

    def test_break_in_async_with(self) -> None:
        """Leaving async with early (a break) cancels the stream on the node."""
        node = Scripted()
        stream = node.client.stream("count", 10)
        node.sent()

        async def first() -> Any:
            async with stream:
                async for item in stream:
                    return item
            return None

        d = ensureDeferred(first())
        node.reply("#1 ITEM 7")
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(node.sent(), ['CANCEL "1"'])

    def test_cancel_a_waiting_item(self) -> None:
        """Cancelling the Deferred of the next item cancels the stream, as cancelling a call does."""
        node = Scripted()
        stream = node.client.stream("count", 10)
        node.reply("#1 ITEM 0")
        self.successResultOf(take(stream))
        waiting = take(stream)
        waiting.cancel()
        error = self.failureResultOf(waiting, CallCancelledError).value
        self.assertEqual(error.outcome, Outcome.RAN)
        self.assertEqual(node.sent()[-1], 'CANCEL "1"')

    def test_cancel_before_connected(self) -> None:
        """A stream cancelled before its request was sent fails not-run and sends nothing."""
        clock = MemoryReactorClock()
        pending: Deferred[Any] = Deferred()

        class Waiting:
            def connect(self, factory: Factory) -> Deferred[Any]:
                return pending

        client = Client(Waiting(), clock)  # type: ignore[arg-type]
        stream = client.stream("count", 1)
        d = take(stream)
        self.assertTrue(stream.cancel())
        error = self.failureResultOf(d, CallCancelledError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)

    def test_call_on_a_stream_is_refused(self) -> None:
        """call() on a streaming procedure gets the node's refusal, which names stream()."""
        node = Scripted()
        d = node.client.call("count", 3)
        node.reply("#1 ERR INVALID_ARGUMENT not-run count streams: ask with +window (stream())")
        error = self.failureResultOf(d, InvalidArgumentError).value
        self.assertIn("stream()", error.message)
        self.assertEqual(error.outcome, Outcome.NOT_RUN)


class ProgressTests(SynchronousTestCase):
    """Progress reports reach a callback, for calls and streams, only when asked for."""

    def test_call_with_progress(self) -> None:
        """with_progress(fn).call() sends +progress and hands each report to fn before the result."""
        node = Scripted()
        reports: list[Progress] = []
        d = node.client.with_progress(reports.append).call("build", "site")
        self.assertEqual(node.sent(), ['#1 +timeout=10.0 +progress build "site"'])
        node.reply('#1 PROGRESS {"done":1,"total":3,"message":"pages"}')
        self.assertEqual(reports, [Progress(1, 3, "pages", "1")])
        self.assertNoResult(d)
        node.reply('#1 PROGRESS {"done":3,"total":null}', '#1 OK "built"')
        self.assertEqual(self.successResultOf(d), "built")
        self.assertEqual([(r.done, r.total) for r in reports], [(1, 3), (3, None)])

    def test_progress_keyword_is_the_procedures(self) -> None:
        """A procedure's own keyword named on_progress is an argument, never taken for a callback."""
        node = Scripted()
        node.client.call("build", on_progress="quiet")
        self.assertEqual(node.sent(), ['#1 +timeout=10.0 build on_progress="quiet"'])

    def test_stream_with_progress(self) -> None:
        """A stream may ask for progress too: both kinds of line reach their own takers."""
        node = Scripted()
        reports: list[Progress] = []
        stream = node.client.with_progress(reports.append).stream("scan", window=2)
        self.assertEqual(node.sent(), ["#1 +timeout=10.0 +window=2 +progress scan"])
        seen: list[Any] = []
        d = stream.each(seen.append)
        node.reply("#1 ITEM 1", '#1 PROGRESS {"done":1}', "#1 OK null")
        self.assertEqual(seen, [1])
        self.assertEqual(len(reports), 1)
        self.assertIsNone(self.successResultOf(d))

    def test_failing_progress_callback(self) -> None:
        """A progress callback that raises is logged; the call goes on to its result."""
        node = Scripted()

        def broken(report: Progress) -> None:
            raise RuntimeError("display gone")

        d = node.client.with_progress(broken).call("build")
        node.reply('#1 PROGRESS {"done":1}', "#1 OK 1")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_no_progress_unless_asked(self) -> None:
        """A plain call drops progress lines the node should not have sent."""
        node = Scripted()
        d = node.client.call("build")
        node.reply('#1 PROGRESS {"done":1}', "#1 OK 1")
        self.assertEqual(self.successResultOf(d), 1)


class CreditTests(SynchronousTestCase):
    """The window a reader grants, without I/O."""

    @given(
        window=st.integers(min_value=1, max_value=100),
        steps=st.lists(st.booleans(), max_size=300),
    )
    def test_reader_never_holds_more_than_the_window(self, window: int, steps: list[bool]) -> None:
        """However items arrive and are taken, the node may never send more than window items ahead."""
        credit = Credit(window)
        granted = window
        sent = taken = 0
        for arrive in steps:
            if arrive and sent < granted:
                sent += 1
            elif taken < sent:
                taken += 1
                granted += credit.took()
            self.assertLessEqual(sent - taken, window)
            self.assertLessEqual(granted - taken, window)
        # A reader that has taken everything has granted all but under half a window.
        self.assertGreater(granted - taken, window - max(1, window // 2))

    def test_bad_windows(self) -> None:
        """A window must be a whole number of items from 1."""
        for bad in (0, -1, 1.5, True):
            self.assertRaises(ValueError, Credit, bad)  # type: ignore[arg-type]
