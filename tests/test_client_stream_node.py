"""
The async client's streams and progress end to end against the real node in
memory (L{MemoryNode}): items, the window that slows the producer, ending
early (the producer's C{finally} runs), the deadline, and progress reports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from callnet import DeadlineExceededError, InvalidArgumentError, Outcome, procedure
from callnet.builtin import builtin_procedures
from callnet.context import CallContext
from callnet.testing import MemoryNode, MemoryReactor
from callnet.wire import Progress


class Producers:
    """Procedures that yield, and what they did: items made, generators closed."""

    def __init__(self, clock: MemoryReactor) -> None:
        self.made: list[int] = []
        self.closed: list[str] = []
        made, closed = self.made, self.closed

        @procedure
        def rows(n: int) -> Iterator[int]:
            """Yield n items from a worker thread, noting each one and the end."""
            try:
                for i in range(n):
                    made.append(i)
                    yield i
            finally:
                closed.append("rows")

        @procedure
        async def ticks(n: int) -> AsyncIterator[int]:
            """Yield n items in the reactor, one a second, noting the end."""
            try:
                for i in range(n):
                    if i:
                        await deferLater(clock, 1.0)
                    yield i
            finally:
                closed.append("ticks")

        @procedure
        async def build(steps: int, context: CallContext) -> str:
            """Take a second a step, reporting each."""
            for step in range(1, steps + 1):
                await deferLater(clock, 1.0)
                context.progress(step, steps, f"step {step}")
            return "built"

        self.procedures = [rows, ticks, build]


class StreamsAgainstTheNode(SynchronousTestCase):
    """Client.stream through the node's own streaming, in memory."""

    def setUp(self) -> None:
        clock = MemoryReactor()
        self.producers = Producers(clock)
        self.node = MemoryNode(
            [*builtin_procedures(clock), *self.producers.procedures], clock=clock
        )
        self.client = self.node.client()

    def collect(self, stream: Any) -> Any:
        async def read() -> list[Any]:
            return [item async for item in stream]

        return ensureDeferred(read())

    def test_count(self) -> None:
        """The built-in count streams 0..4 and returns how many it sent."""
        stream = self.client.stream("count", 5)
        d = self.collect(stream)
        self.node.flush()
        self.assertEqual(self.successResultOf(d), [0, 1, 2, 3, 4])
        self.assertEqual(stream.result, 5)

    def test_slow_reader_slows_the_producer(self) -> None:
        """A reader that takes nothing lets the node make about one window of items, not all of them."""
        stream = self.client.stream("rows", 1000, window=8)
        self.node.flush()
        self.assertLessEqual(len(self.producers.made), 2 * 8)
        d = self.collect(stream)
        self.node.flush()
        self.assertEqual(self.successResultOf(d), list(range(1000)))
        self.assertEqual(self.producers.closed, ["rows"])

    def test_break_cancels_and_runs_finally(self) -> None:
        """Leaving async with early cancels the stream; the producer's finally runs on the node."""
        for name in ("rows", "ticks"):

            async def first_two(name: str = name) -> list[Any]:
                taken = []
                async with self.client.stream(name, 1000, window=4) as stream:
                    async for item in stream:
                        taken.append(item)
                        if len(taken) == 2:
                            break
                return taken

            d = ensureDeferred(first_two())
            self.node.advance(1)
            self.node.advance(1)
            self.assertEqual(self.successResultOf(d), [0, 1])
            self.assertEqual(self.producers.closed[-1], name)
            self.assertEqual(self.node.dispatcher.stats.in_flight, 0)

    def test_deadline_mid_stream(self) -> None:
        """The deadline covers the whole stream: it ends it mid-way, with the outcome ran, and closes the producer."""
        seen: list[int] = []
        d = self.client.stream("ticks", 10, timeout=2.5).each(seen.append)
        for _ in range(3):
            self.node.advance(1)
        error = self.failureResultOf(d, DeadlineExceededError).value
        self.assertEqual(error.outcome, Outcome.RAN)
        self.assertEqual(seen, [0, 1, 2])
        self.assertEqual(self.producers.closed, ["ticks"])

    def test_progress(self) -> None:
        """with_progress(fn).call() hands fn the procedure's reports, then fires with the result."""
        reports: list[Progress] = []
        d = self.client.with_progress(reports.append).call("build", 3)
        for _ in range(3):
            self.node.advance(1)
        self.assertEqual(self.successResultOf(d), "built")
        self.assertEqual(
            [(r.done, r.total, r.message) for r in reports],
            [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")],
        )

    def test_call_on_a_stream(self) -> None:
        """call() on a streaming procedure is refused not-run, with a message naming stream()."""
        d = self.client.call("count", 3)
        self.node.flush()
        error = self.failureResultOf(d, InvalidArgumentError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertIn("Client.stream", error.message)
