"""
Streams and progress on the node: procedures that yield, their credit, their
end, and progress reports, through the real node in memory.
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from callnet import procedure
from callnet.builtin import builtin_procedures
from callnet.config import Limits
from callnet.context import CallContext
from callnet.registry import Registry
from callnet.streaming import THREAD_STREAM_AHEAD_BYTES, InThreadSource
from callnet.testing import (
    ManualThreadPool,
    MemoryCluster,
    MemoryNode,
    MemoryReactor,
    StringConnection,
)
from callnet.wire import Call, Item, Progress, encode_item

# --- Procedures the tests serve ---------------------------------------------------

closed: list[str] = []
made: list[int] = []


@procedure
def rows(n: int) -> Iterator[dict[str, int]]:
    """Yield n rows, noting each one made and the generator's end."""
    try:
        for i in range(n):
            made.append(i)
            yield {"row": i}
    finally:
        closed.append("rows")


@procedure
def rows_then_fail(n: int) -> Iterator[int]:
    """Yield n items, then fail."""
    yield from range(n)
    raise ValueError("the source ran dry")


@procedure
def returns_a_total() -> Iterator[int]:
    """Yield two items and return a value of its own."""
    yield 1
    yield 2
    return "two"


@procedure
def not_json() -> Iterator[Any]:
    """Yield something that is not JSON."""
    yield object()


def _ticking(clock: MemoryReactor) -> Any:
    @procedure(name="ticks")
    async def ticks(n: int) -> AsyncIterator[int]:
        """Yield n items, one a second, noting the generator's end."""
        try:
            for i in range(n):
                if i:
                    await deferLater(clock, 1.0)
                made.append(i)
                yield i
        finally:
            closed.append("ticks")

    return ticks


@procedure
def build(context: CallContext, steps: int = 3) -> str:
    """Report progress at each step, all at once."""
    for step in range(1, steps + 1):
        context.progress(step, steps, f"step {step}")
    return "built"


def _slow_build(clock: MemoryReactor) -> Any:
    @procedure(name="slow_build")
    async def slow_build(context: CallContext, steps: int = 3) -> str:
        """Report progress once a tenth of a second."""
        for step in range(1, steps + 1):
            await deferLater(clock, 0.1)
            context.progress(step, steps, "pages")
        return "built"

    return slow_build


def forget_earlier_streams() -> None:
    """Close the generators earlier tests left suspended, before counting this test's."""
    gc.collect()
    made.clear()
    closed.clear()


def node(threads: str = "inline", **limits: Any) -> MemoryNode:
    clock = MemoryReactor()
    forget_earlier_streams()
    procedures = [
        rows,
        rows_then_fail,
        returns_a_total,
        not_json,
        build,
        _ticking(clock),
        _slow_build(clock),
        *builtin_procedures(clock),
    ]
    return MemoryNode(procedures, clock=clock, threads=threads, limits=Limits(**limits))


def send(memory: MemoryNode, conn: StringConnection, *lines: str) -> list[bytes]:
    for line in lines:
        conn.send(line + "\n")
    memory.flush()
    return conn.lines()


# --- The procedures ----------------------------------------------------------------------


class RegistryTests(SynchronousTestCase):
    """Functions that yield are streams, and say so."""

    def test_generators_are_streams(self) -> None:
        """A generator runs in a thread, an async generator in the reactor; both are streams."""
        registry = Registry()
        registry.add(rows)
        registry.add(_ticking(MemoryReactor()))
        registry.add(build)
        self.assertEqual(
            [(p.name, p.run, p.stream) for p in registry.procedures()],
            [("build", "thread", False), ("rows", "thread", True), ("ticks", "reactor", True)],
        )

    def test_generator_elsewhere_refused(self) -> None:
        """A generator declared to run in a process, or an async one in a thread, is refused."""
        registry = Registry()
        with self.assertRaises(ValueError):
            registry.add(rows, name="r", run="process")
        with self.assertRaises(ValueError):
            registry.add(_ticking(MemoryReactor()), run="thread")

    def test_described_as_streams(self) -> None:
        """Descriptions carry "stream": true for streams only, in HELP and in HELLO."""
        memory = node()
        conn = memory.connect_raw()
        [reply] = send(memory, conn, "#1 HELP rows")
        self.assertIs(json.loads(reply.split(b" ", 2)[2])["stream"], True)
        [reply] = send(memory, conn, "#2 HELP build")
        self.assertNotIn("stream", json.loads(reply.split(b" ", 2)[2]))
        hello = memory.factory.hello()
        marked = {entry["name"] for entry in hello["procedures"] if entry.get("stream")}
        self.assertEqual(
            marked, {"count", "rows", "rows_then_fail", "returns_a_total", "not_json", "ticks"}
        )

    def test_help_text_marks_streams(self) -> None:
        """HELP's table marks streams, and HELP name says it answers with ITEM lines."""
        memory = node()
        conn = memory.connect_raw()
        table = b"\n".join(send(memory, conn, "HELP"))
        self.assertIn(
            b"| count(n: int, interval: float = 0) -> AsyncIterator[int] [stream]", table
        )
        self.assertIn(b"MORE #tag n", table)
        one = b"\n".join(send(memory, conn, "HELP rows"))
        self.assertIn(b"a stream: answers with ITEM lines, then OK", one)


# --- Streams on the wire ------------------------------------------------------------------


class WireTests(SynchronousTestCase):
    """What a connection sees of a stream."""

    def test_untagged_items_as_made(self) -> None:
        """count 3 0.5 typed by a person shows each item as it is made, then OK 3."""
        memory = node()
        conn = memory.connect_raw()
        self.assertEqual(send(memory, conn, "count 3 0.5"), [b"ITEM 0"])
        memory.advance(0.5)
        self.assertEqual(conn.lines(), [b"ITEM 1"])
        memory.advance(0.5)
        self.assertEqual(conn.lines(), [b"ITEM 2", b"OK 3"])

    def test_count_checks_its_arguments(self) -> None:
        """count refuses a negative n or interval before its first item: not-run."""
        memory = node()
        conn = memory.connect_raw()
        for line in ("count -1", "count 2 -0.5", "count 2 x"):
            [reply] = send(memory, conn, line)
            self.assertTrue(reply.startswith(b"ERR INVALID_ARGUMENT not-run"), reply)

    def test_window_and_more(self) -> None:
        """A tagged stream sends its window, then waits; MORE grants more; never answered."""
        memory = node()
        conn = memory.connect_raw()
        self.assertEqual(send(memory, conn, "#1 +window=2 count 5"), [b"#1 ITEM 0", b"#1 ITEM 1"])
        memory.advance(10)
        self.assertEqual(conn.lines(), [])
        self.assertEqual(
            send(memory, conn, "MORE #1 3"),
            [b"#1 ITEM 2", b"#1 ITEM 3", b"#1 ITEM 4", b"#1 OK 5"],
        )

    def test_thread_stream_pulls_only_its_window(self) -> None:
        """A generator is not asked for more than one item past its window."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "#1 +window=3 rows 100")
        self.assertEqual(made, [0, 1, 2, 3])  # one ahead, to see an end at once
        send(memory, conn, "MORE #1 2")
        self.assertEqual(made, [0, 1, 2, 3, 4, 5])

    def test_thread_stream_holds_no_thread_waiting(self) -> None:
        """A generator out of credit holds no worker thread; MORE starts a new job."""
        memory = node(threads="manual")
        conn = memory.connect_raw()
        send(memory, conn, "#1 +window=2 rows 5")
        pool = memory.threads
        self.assertEqual(pool.run_all(), 1)  # type: ignore[union-attr]
        memory.flush()
        self.assertEqual(conn.lines(), [b'#1 ITEM {"row":0}', b'#1 ITEM {"row":1}'])
        self.assertEqual(pool.jobs, [])  # type: ignore[union-attr]
        send(memory, conn, "MORE #1 5")
        self.assertEqual(len(pool.jobs), 1)  # type: ignore[union-attr]
        pool.run_all()  # type: ignore[union-attr]
        memory.flush()
        self.assertEqual(conn.lines()[-1], b"#1 OK 5")

    def test_thread_stream_bounds_what_is_on_its_way(self) -> None:
        """
        A pull job stops once THREAD_STREAM_AHEAD_BYTES of items wait for the
        reactor, however large the window; the next starts as they are
        written, so the connection's backpressure can hold the stream.
        """
        made: list[int] = []

        def big(n: int) -> Iterator[str]:
            for i in range(n):
                made.append(i)
                yield "x" * (300 * 1024)

        pool = ManualThreadPool()
        handed: list[tuple[Any, tuple[Any, ...]]] = []
        written: list[bytes] = []
        source = InThreadSource(
            big(20), encode_item, written.append, pool, lambda f, *a: handed.append((f, a))
        )
        finished: list[Any] = []
        source.done.addCallback(finished.append)
        source.grant(50)
        self.assertEqual(pool.run_all(), 1)
        self.assertEqual(made, [0, 1, 2, 3], "4 items of 300 KiB pass 1 MiB: the job ends")
        self.assertEqual(pool.jobs, [])
        while handed or pool.jobs:
            for f, args in handed[:]:
                handed.remove((f, args))
                f(*args)
            self.assertLessEqual(len(pool.jobs), 1)
            pool.run_all()
            on_the_way = sum(len(a[0]) for f, a in handed if f == source._deliver)
            self.assertLess(on_the_way, THREAD_STREAM_AHEAD_BYTES + 300 * 1024 + 64)
        self.assertEqual(len(written), 20)
        self.assertEqual(finished, [20])

    def test_quit_sends_the_rest(self) -> None:
        """After QUIT no MORE can come: a tagged stream is sent the rest, then bye."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "#1 +window=1 rows 3")
        lines = send(memory, conn, "QUIT")
        self.assertEqual(
            lines, [b'#1 ITEM {"row":1}', b'#1 ITEM {"row":2}', b"#1 OK 3", b'OK "bye"']
        )

    def test_tagged_without_window_refused(self) -> None:
        """A tagged request for a stream without +window is refused not-run, saying why."""
        memory = node()
        conn = memory.connect_raw()
        [reply] = send(memory, conn, "#1 count 3")
        self.assertTrue(reply.startswith(b"#1 ERR INVALID_ARGUMENT not-run"), reply)
        self.assertIn(b"+window", reply)
        self.assertEqual(made, [])

    def test_cast_key_and_multicall_refused(self) -> None:
        """A stream cannot be cast, carry a key, or be one of a multicall's calls."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "+cast rows 3")
        self.assertEqual(made, [])
        [keyed] = send(memory, conn, "#2 +window=5 +key=k1 rows 3")
        self.assertTrue(keyed.startswith(b"#2 ERR INVALID_ARGUMENT not-run"), keyed)
        self.assertIn(b"idempotency key", keyed)
        [multi] = send(memory, conn, "#3 multicall rows [3]")
        outcome = json.loads(multi.split(b" ", 2)[2])
        self.assertIn("stream", json.dumps(outcome))
        self.assertEqual(made, [])

    def test_more_for_no_stream_ignored(self) -> None:
        """MORE for a tag with no stream in flight is ignored; a malformed one is an error."""
        memory = node()
        conn = memory.connect_raw()
        self.assertEqual(send(memory, conn, "MORE #9 3"), [])
        [bad] = send(memory, conn, "MORE #9 0")
        self.assertTrue(bad.startswith(b"ERR INVALID_ARGUMENT"), bad)
        [bad] = send(memory, conn, "#4 MORE #9")
        self.assertTrue(bad.startswith(b"#4 ERR INVALID_ARGUMENT"), bad)

    def test_final_value(self) -> None:
        """A generator's return value is the final OK; without one, how many items it made."""
        memory = node()
        conn = memory.connect_raw()
        self.assertEqual(
            send(memory, conn, "returns_a_total"), [b"ITEM 1", b"ITEM 2", b'OK "two"']
        )
        self.assertEqual(send(memory, conn, "rows 1")[-1], b"OK 1")

    def test_error_after_first_item_ran(self) -> None:
        """An error after the first item has the outcome ran, and comes after the items."""
        memory = node()
        conn = memory.connect_raw()
        lines = send(memory, conn, "#1 +window=9 rows_then_fail 2")
        self.flushLoggedErrors(ValueError)
        self.assertEqual(lines[:2], [b"#1 ITEM 0", b"#1 ITEM 1"])
        self.assertTrue(lines[2].startswith(b"#1 ERR INTERNAL ran"), lines[2])

    def test_item_not_json(self) -> None:
        """An item that is not JSON ends the stream INTERNAL, and closes the generator."""
        memory = node()
        conn = memory.connect_raw()
        [reply] = send(memory, conn, "not_json")
        self.assertTrue(reply.startswith(b"ERR INTERNAL ran"), reply)
        self.assertIn(b"not JSON", reply)

    def test_untagged_stream_waits_its_turn(self) -> None:
        """An untagged stream behind a running call holds one item, then goes in order."""
        memory = node()
        conn = memory.connect_raw()
        self.assertEqual(send(memory, conn, "sleep 1", "rows 5"), [])
        self.assertEqual(made, [0, 1])  # the second made ahead, in the producer
        self.assertEqual(conn.protocol.session.held_items(), {None: 1})
        memory.advance(1)
        self.assertEqual(
            conn.lines(),
            [b"OK 1.0", *(b'ITEM {"row":%d}' % i for i in range(5)), b"OK 5"],
        )

    def test_output_backed_up_holds_the_producer(self) -> None:
        """While the connection's output is backed up, no item is made; then it goes on."""
        memory = node()
        conn = memory.connect_raw()
        conn.protocol.pauseProducing()
        send(memory, conn, "#1 +window=100 rows 10")
        self.assertEqual(made, [])
        conn.protocol.resumeProducing()
        memory.flush()
        self.assertEqual(made, list(range(10)))
        self.assertEqual(conn.lines()[-1], b"#1 OK 10")

    def test_stats_count_a_stream_as_one_call(self) -> None:
        """A stream counts as one call, whatever its items."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "rows 7")
        stats = memory.dispatcher.stats.as_dict()
        self.assertEqual(stats["procedures"]["rows"]["calls"], 1)
        self.assertEqual(stats["in_flight"], 0)


# --- Ending early ------------------------------------------------------------------


class EndingTests(SynchronousTestCase):
    """Cancel, deadline and a lost connection stop the producer, which closes."""

    def test_cancel_closes_a_thread_generator(self) -> None:
        """CANCEL ends the stream CANCELLED ran, and the generator's finally runs."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "#1 +window=2 rows 10")
        lines = send(memory, conn, "CANCEL #1")
        self.assertTrue(lines[0].startswith(b"#1 ERR CANCELLED ran"), lines)
        self.assertEqual(lines[1], b"OK true")
        self.assertEqual(closed, ["rows"])

    def test_cancel_closes_an_async_generator(self) -> None:
        """CANCEL of an async generator waiting at an await runs its finally."""
        memory = node()
        conn = memory.connect_raw()
        self.assertEqual(send(memory, conn, "#1 +window=9 ticks 10"), [b"#1 ITEM 0"])
        lines = send(memory, conn, "CANCEL 1")
        self.assertTrue(lines[0].startswith(b"#1 ERR CANCELLED ran"), lines)
        self.assertEqual(closed, ["ticks"])

    def test_cancel_closes_an_async_generator_waiting_for_credit(self) -> None:
        """An async generator paused at its yield for want of credit is closed by aclose()."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "#1 +window=1 ticks 10")
        send(memory, conn, "CANCEL 1")
        self.assertEqual(closed, ["ticks"])
        self.assertEqual(memory.clock.getDelayedCalls(), [])

    def test_deadline_covers_the_stream(self) -> None:
        """The deadline covers the whole stream: past it, DEADLINE_EXCEEDED ran, and it closes."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "#1 +timeout=2.5 +window=99 ticks 10")
        memory.advance(1)
        memory.advance(1)
        memory.advance(1)
        lines = conn.lines()
        self.assertEqual(lines[:2], [b"#1 ITEM 1", b"#1 ITEM 2"])
        self.assertTrue(lines[2].startswith(b"#1 ERR DEADLINE_EXCEEDED ran"), lines)
        self.assertEqual(closed, ["ticks"])

    def test_connection_lost_closes(self) -> None:
        """A lost connection closes the generators of its streams."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "#1 +window=1 rows 10", "ticks 10")
        conn.protocol.connectionLost()
        self.assertEqual(sorted(closed), ["rows", "ticks"])

    def test_node_stopping_closes(self) -> None:
        """A stopping node ends its streams UNAVAILABLE, closes their generators, and says BYE."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "#1 +window=1 rows 10")
        memory.dispatcher.shut_down()
        conn.protocol.shut_down()
        memory.flush()
        line, bye = conn.lines()
        self.assertTrue(line.startswith(b"#1 ERR UNAVAILABLE"), line)
        self.assertTrue(bye.startswith(b"BYE "), bye)
        self.assertEqual(closed, ["rows"])

    def test_ctrl_c_cancels_an_untagged_stream(self) -> None:
        """Ctrl-C in telnet cancels a person's stream, which ends CANCELLED in its turn."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "count 100 1")
        conn.send(b"\xff\xf4")
        memory.flush()
        lines = conn.lines()
        self.assertTrue(lines[-1].startswith(b"ERR CANCELLED ran"), lines)


# --- Progress ------------------------------------------------------------------------


class ProgressTests(SynchronousTestCase):
    """PROGRESS lines: asked for, rate-limited, advisory."""

    def test_progress_reported_when_asked(self) -> None:
        """+progress gets PROGRESS lines before the reply, at most one per interval."""
        memory = node()
        conn = memory.connect_raw()
        self.assertEqual(send(memory, conn, "#4 +progress slow_build"), [])
        memory.advance(0.1)
        self.assertEqual(conn.lines(), [b'#4 PROGRESS {"done":1,"total":3,"message":"pages"}'])
        memory.advance(0.1)  # too soon after the last: held back, the newest wins
        self.assertEqual(conn.lines(), [])
        memory.advance(0.1)
        self.assertEqual(
            conn.lines(),
            [b'#4 PROGRESS {"done":2,"total":3,"message":"pages"}', b'#4 OK "built"'],
        )
        self.assertEqual(memory.clock.getDelayedCalls(), [])

    def test_no_progress_unasked(self) -> None:
        """Without +progress, no PROGRESS line is sent."""
        memory = node()
        conn = memory.connect_raw()
        send(memory, conn, "#4 slow_build")
        for _ in range(3):
            memory.advance(0.1)
        self.assertEqual(conn.lines(), [b'#4 OK "built"'])

    def test_progress_rate_is_a_setting(self) -> None:
        """progress_interval sets how often reports go."""
        memory = node(progress_interval=0.0)
        conn = memory.connect_raw()
        send(memory, conn, "#4 +progress slow_build")
        memory.advance(0.1)
        memory.advance(0.1)
        self.assertEqual(len(conn.lines()), 2)

    def test_progress_dropped_while_output_backed_up(self) -> None:
        """Reports made while the connection's output is backed up are dropped."""
        memory = node(progress_interval=0.0)
        conn = memory.connect_raw()
        send(memory, conn, "#4 +progress slow_build")
        conn.protocol.pauseProducing()
        memory.advance(0.1)
        conn.protocol.resumeProducing()
        memory.advance(0.1)
        self.assertEqual(conn.lines(), [b'#4 PROGRESS {"done":2,"total":3,"message":"pages"}'])

    def test_progress_checks_its_numbers(self) -> None:
        """progress() refuses counts that are not numbers >= 0, asked for or not."""
        memory = node()
        context = CallContext(memory.dispatcher, Call("x", (), {}), "x", 10.0)
        for done, total in [(-1, None), (1, -2), ("a", None), (True, None), (float("inf"), 3)]:
            with self.assertRaises(ValueError):
                context.progress(done, total)
        context.progress(1, None, "fine")


# --- Through the async client and the cluster -------------------------------------------


class ClusterTests(SynchronousTestCase):
    """A stream a peer serves is relayed with its flow control, deadline and cancel."""

    def cluster(self) -> MemoryCluster:
        forget_earlier_streams()
        cluster = MemoryCluster({"alpha": [], "beta": [rows, rows_then_fail]})
        cluster.start()
        self.addCleanup(cluster.stop)
        return cluster

    def test_forwarded_with_credit(self) -> None:
        """Alpha relays beta's items, and beta makes no more than alpha's caller granted."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 +window=2 rows 6\n")
        cluster.flush()
        self.assertEqual(conn.lines(), [b'#1 ITEM {"row":0}', b'#1 ITEM {"row":1}'])
        self.assertEqual(made, [0, 1, 2])
        conn.send("MORE #1 4\n")
        cluster.flush()
        lines = conn.lines()
        self.assertEqual(len(lines), 5)
        self.assertEqual(lines[-1], b"#1 OK 6")

    def test_forwarded_untagged(self) -> None:
        """A person's stream through alpha comes item by item, then OK."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("rows 3\n")
        cluster.flush()
        self.assertEqual(
            conn.lines(),
            [b'ITEM {"row":0}', b'ITEM {"row":1}', b'ITEM {"row":2}', b"OK 3"],
        )

    def test_cancel_travels(self) -> None:
        """CANCEL at alpha closes the generator on beta."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 +window=1 rows 6\n")
        cluster.flush()
        conn.send("CANCEL #1\n")
        cluster.flush()
        self.assertTrue(conn.lines()[1].startswith(b"#1 ERR CANCELLED ran"))
        self.assertEqual(closed, ["rows"])

    def test_error_after_items_relayed(self) -> None:
        """Beta's error after its items reaches alpha's caller with the outcome ran."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 +window=5 rows_then_fail 1\n")
        cluster.flush()
        self.flushLoggedErrors(ValueError)
        lines = conn.lines()
        self.assertEqual(lines[0], b"#1 ITEM 0")
        self.assertTrue(lines[1].startswith(b"#1 ERR INTERNAL ran @beta"), lines)

    def test_peer_streams_marked(self) -> None:
        """HELP on alpha marks the streams its peer serves, from the peer's handshake."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 HELP rows\n")
        cluster.flush()
        [line] = conn.lines()
        self.assertIs(json.loads(line.split(b" ", 2)[2])["stream"], True)
        conn.send("HELP\n")
        cluster.flush()
        self.assertIn(b"[stream]", b"\n".join(conn.lines()))

    def test_client_call_on_a_stream_refused(self) -> None:
        """Client.call on a stream gets INVALID_ARGUMENT not-run, through the cluster too."""
        cluster = self.cluster()
        d = cluster["alpha"].client().call("rows", 2)
        cluster.flush()
        error = self.failureResultOf(d).value
        self.assertEqual((error.code, error.outcome.value), ("INVALID_ARGUMENT", "not-run"))


class ClientProtocolTests(SynchronousTestCase):
    """The link protocol takes a tagged call's ITEM and PROGRESS lines."""

    def test_listener_takes_items_then_reply(self) -> None:
        """call_with_events hands a call's ITEM lines to its listener, then its reply."""
        memory = node()
        client = memory.client()
        connecting = client.connect()
        memory.flush()
        protocol = self.successResultOf(connecting)
        seen: list[Any] = []
        tag, reply = protocol.call_with_events(Call("count", (3,), {}, window=2), 5.0, seen.append)
        memory.flush()
        self.assertEqual(seen, [Item(0, tag), Item(1, tag)])
        protocol.more(tag, 1)
        memory.flush()
        self.assertEqual([event.value for event in seen], [0, 1, 2])
        self.assertEqual(self.successResultOf(reply), 3)
        self.assertEqual(protocol.listeners, {})

    def test_listener_takes_progress(self) -> None:
        """A call with +progress hands its PROGRESS lines to its listener."""
        memory = node()
        client = memory.client()
        connecting = client.connect()
        memory.flush()
        protocol = self.successResultOf(connecting)
        seen: list[Any] = []
        _, reply = protocol.call_with_events(
            Call("slow_build", (), {}, progress=True), 5.0, seen.append
        )
        memory.advance(0.1)
        self.assertEqual(seen, [Progress(1, 3, "pages", seen[0].tag)])
        memory.advance(0.1)
        memory.advance(0.1)
        self.assertEqual(self.successResultOf(reply), "built")


_cluster_clock: list[MemoryReactor] = []


@procedure(idempotent=True)
async def late_start(n: int) -> AsyncIterator[int]:
    """Wait a second, then yield n items a second apart (safe to run again)."""
    try:
        for i in range(n):
            await deferLater(_cluster_clock[0], 1.0)
            made.append(i)
            yield i
    finally:
        closed.append("late_start")


@procedure(name="late_start_once")
async def late_start_once(n: int) -> AsyncIterator[int]:
    """As late_start, but not safe to run twice."""
    async for item in late_start(n):
        yield item


@procedure
async def pages(n: int, context: CallContext) -> str:
    """Make n pages, a quarter second each, saying so."""
    for page in range(1, n + 1):
        await deferLater(_cluster_clock[0], 0.25)
        context.progress(page, n, f"page {page}")
    return "done"


class ClusterFailoverTests(SynchronousTestCase):
    """Failover only before the first item, only when safe; the deadline travels."""

    def cluster(self) -> MemoryCluster:
        forget_earlier_streams()
        procedures = [late_start, late_start_once, pages]
        cluster = MemoryCluster({"alpha": [], "beta": procedures, "gamma": procedures})
        _cluster_clock[:] = [cluster.clock]
        cluster.start()
        self.addCleanup(cluster.stop)
        return cluster

    def serving(self, cluster: MemoryCluster, name: str) -> str:
        """The peer whose node is running a call of C{name} now."""
        [node] = [
            peer
            for peer in ("beta", "gamma")
            if cluster[peer]
            .dispatcher.stats.as_dict()["procedures"]
            .get(name, {})
            .get("in_flight")
        ]
        return node

    def test_failover_before_the_first_item(self) -> None:
        """An idempotent stream whose peer dies before its first item is run by another."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 +window=5 late_start 2\n")
        cluster.flush()
        first = self.serving(cluster, "late_start")
        cluster.kill(first)
        cluster.advance(2.5)
        lines = conn.lines()
        self.assertEqual(lines, [b"#1 ITEM 0", b"#1 ITEM 1", b"#1 OK 2"])
        other = "gamma" if first == "beta" else "beta"
        stats = cluster[other].dispatcher.stats.as_dict()["procedures"]["late_start"]
        self.assertEqual((stats["calls"], stats["errors"]), (1, 0))

    def test_no_failover_when_not_safe(self) -> None:
        """A stream that is not idempotent fails may-have-run when its peer dies."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 +window=5 late_start_once 2\n")
        cluster.flush()
        cluster.kill(self.serving(cluster, "late_start_once"))
        [line] = conn.lines()
        self.assertTrue(line.startswith(b"#1 ERR UNAVAILABLE may-have-run"), line)

    def test_no_failover_after_the_first_item(self) -> None:
        """Once an item came, a dying peer ends the stream with the outcome ran."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 +window=5 late_start 3\n")
        cluster.advance(1.05)
        self.assertEqual(conn.lines(), [b"#1 ITEM 0"])
        cluster.kill(self.serving(cluster, "late_start"))
        [line] = conn.lines()
        self.assertTrue(line.startswith(b"#1 ERR UNAVAILABLE ran"), line)

    def test_progress_relayed(self) -> None:
        """A forwarded call's progress reports reach its caller, when it asked for them."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 +progress pages 3\n")
        cluster.advance(0.55)
        self.assertEqual(
            conn.lines(),
            [
                b'#1 PROGRESS {"done":1,"total":3,"message":"page 1"}',
                b'#1 PROGRESS {"done":2,"total":3,"message":"page 2"}',
            ],
        )
        cluster.advance(0.3)
        self.assertEqual(conn.lines()[-1], b'#1 OK "done"')

    def test_deadline_travels(self) -> None:
        """The caller's deadline ends the stream at alpha and closes the generator on the peer."""
        cluster = self.cluster()
        conn = cluster["alpha"].connect_raw()
        conn.send("#1 +timeout=1.5 +window=5 late_start 3\n")
        cluster.advance(2.0)
        lines = conn.lines()
        self.assertEqual(lines[0], b"#1 ITEM 0")
        self.assertTrue(lines[1].startswith(b"#1 ERR DEADLINE_EXCEEDED ran"), lines)
        self.assertEqual(closed, ["late_start"])
