"""
The node's protocol and dispatcher, driven deterministically: no sockets, no
threads, time moved by hand.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import sys
import threading
from typing import Any, cast
from unittest import skipIf

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from callnet import protocol as protocol_module
from callnet.config import Limits
from callnet.errors import (
    CallCancelledError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    ResourceExhaustedError,
    UnavailableError,
)
from callnet.reactors import peer_closed
from callnet.registry import procedure
from callnet.server import DRAIN_CHECK_INTERVAL, DRAIN_FLUSH_TIMEOUT
from callnet.testing import MemoryNode
from callnet.wire import Bye, ErrorReply, Success, Text


class Pending:
    """Procedures whose results a test delivers by hand, in any order."""

    def __init__(self) -> None:
        self.calls: dict[Any, Deferred[Any]] = {}
        self.cancelled: list[Any] = []

    def wait(self, key: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(key))
        self.calls[key] = d
        return d


class _ResetSocket(socket.socket):
    """A socket whose client reset the connection: reading it fails."""

    def recv(self, size: int, flags: int = 0) -> bytes:
        raise ConnectionResetError(104, "Connection reset by peer")


def node_with_pending(limits: Limits | None = None) -> tuple[MemoryNode, Pending]:
    node = MemoryNode(limits=limits, name="test", threads="manual")
    pending = Pending()
    node.registry.add(pending.wait, name="wait", run="reactor")

    @procedure(run="reactor")
    def add(a: int, b: int) -> int:
        return a + b

    node.registry.add(add)
    return node, pending


class InlineFormTests(SynchronousTestCase):
    """The form a person types in nc or telnet."""

    def test_add(self) -> None:
        """C{add 1 2} is answered C{OK 3}."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("add 1 2\n")
        self.assertEqual(conn.lines(), [b"OK 3"])

    def test_crlf(self) -> None:
        """A line ending in CRLF, as telnet sends, is read like one ending in LF."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("add 1 2\r\nadd 3 4\r\n")
        self.assertEqual(conn.lines(), [b"OK 3", b"OK 7"])

    def test_untagged_replies_in_request_order(self) -> None:
        """Untagged replies come back in the order of their requests, whatever order calls end."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("wait a\nwait b\nadd 1 1\n")
        self.assertEqual(conn.lines(), [])
        pending.calls["b"].callback("B")
        self.assertEqual(conn.lines(), [])
        pending.calls["a"].callback("A")
        self.assertEqual(conn.lines(), [b'OK "A"', b'OK "B"', b"OK 2"])

    def test_unknown_procedure(self) -> None:
        """An unknown procedure gets NOT_FOUND, did not run, and the connection goes on."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("ad 1 2\nadd 1 2\n")
        [error, ok] = conn.events()
        assert isinstance(error, ErrorReply)
        self.assertIsInstance(error.error, NotFoundError)
        self.assertEqual(error.error.outcome, Outcome.NOT_RUN)
        self.assertEqual(error.error.node, "test")
        self.assertEqual(ok, Success(3))

    def test_wrong_arguments(self) -> None:
        """Arguments that do not fit the signature get INVALID_ARGUMENT naming the usage."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("add 1\n")
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, InvalidArgumentError)
        self.assertEqual(reply.error.outcome, Outcome.NOT_RUN)
        self.assertIn("add(a: int, b: int) -> int", reply.error.message)

    def test_bad_lines_leave_connection_usable(self) -> None:
        """Malformed lines, invalid UTF-8 and invalid JSON each get an error; the next call works."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send(b"#bad! add\n\xfe\xfe\nadd [1,\n+bogus add 1 2\nadd 1 2\n")
        events = conn.events()
        self.assertEqual(len(events), 5)
        for event in events[:4]:
            assert isinstance(event, ErrorReply)
            self.assertIsInstance(event.error, InvalidArgumentError)
            self.assertEqual(event.error.outcome, Outcome.NOT_RUN)
        self.assertEqual(events[4], Success(3))

    def test_oversized_line(self) -> None:
        """A line over the limit fails that request only, with its tag; the next line is served."""
        node, _ = node_with_pending(Limits(max_line_bytes=100))
        conn = node.connect_raw()
        conn.send(b"#7 echo " + b"x" * 60)
        conn.send(b"x" * 1000)
        conn.send(b"x" * 1000 + b"\n#8 add 1 2\n")
        self.assertLessEqual(conn.protocol.session.held_input, 100)
        [too_long, ok] = conn.events()
        assert isinstance(too_long, ErrorReply)
        self.assertIsInstance(too_long.error, ResourceExhaustedError)
        self.assertEqual(too_long.tag, "7")
        self.assertEqual(ok, Success(3, "8"))

    def test_http_request(self) -> None:
        """An HTTP request gets one error line, then the node closes the connection."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        lines = conn.lines()
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith(b"ERR INVALID_ARGUMENT not-run"))
        self.assertIn(b"not an HTTP server", lines[0])
        self.assertTrue(conn.transport.disconnecting)

    def test_http_request_in_pieces(self) -> None:
        """An HTTP request line that arrives a few bytes at a time is refused all the same."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        for piece in (b"GE", b"T /index.html HT", b"TP/1.0\r\n", b"\r\n"):
            conn.send(piece)
        lines = conn.lines()
        self.assertEqual(len(lines), 1)
        self.assertIn(b"not an HTTP server", lines[0])
        self.assertTrue(conn.transport.disconnecting)

    def test_reply_replies_are_refused(self) -> None:
        """A client that sends a reply line is told the node takes requests."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("OK 3\n")
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, InvalidArgumentError)


class TaggedFormTests(SynchronousTestCase):
    """The form programs use: tags, out-of-order replies, pipelining."""

    def test_out_of_order(self) -> None:
        """Tagged replies come back as calls complete, each carrying its request's tag."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 wait a\n#2 wait b\n")
        pending.calls["b"].callback("B")
        self.assertEqual(conn.lines(), [b'#2 OK "B"'])
        pending.calls["a"].callback("A")
        self.assertEqual(conn.lines(), [b'#1 OK "A"'])

    def test_ten_thousand_pipelined_reordered(self) -> None:
        """10,000 calls pipelined on one connection, completed in random order, each reply matches."""
        node, pending = node_with_pending(Limits(max_calls_in_flight=20_000))
        conn = node.connect_raw()
        count = 10_000
        conn.send("".join(f"#t{i} wait {i}\n" for i in range(count)))
        self.assertEqual(len(pending.calls), count)
        order = list(range(count))
        random.Random(7).shuffle(order)
        for i in order:
            pending.calls[i].callback(i * 3)
        replies = conn.events()
        self.assertEqual(len(replies), count)
        self.assertEqual(
            {r.tag: r.value for r in replies if isinstance(r, Success)},
            {f"t{i}": i * 3 for i in range(count)},
        )
        self.assertEqual([r.tag for r in replies], [f"t{i}" for i in order])

    def test_duplicate_tag(self) -> None:
        """A tag reused while its call is in flight is refused; the first call still answers."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 wait a\n#1 add 1 2\n")
        [refused] = conn.events()
        assert isinstance(refused, ErrorReply)
        self.assertIn("already in use", refused.error.message)
        pending.calls["a"].callback("A")
        self.assertEqual(conn.events(), [Success("A", "1")])


class DeadlineAndCancelTests(SynchronousTestCase):
    """Deadlines and CANCEL reach the running work."""

    def test_deadline_cancels_async_work(self) -> None:
        """When +timeout passes, the procedure's Deferred is cancelled and the caller gets DEADLINE_EXCEEDED."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 +timeout=2.5 wait a\n")
        node.clock.advance(2.4)
        self.assertEqual(conn.lines(), [])
        node.clock.advance(0.2)
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, DeadlineExceededError)
        self.assertEqual(reply.error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(pending.cancelled, ["a"])
        self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_default_deadline(self) -> None:
        """A call that names no deadline gets the node's default one."""
        node, _pending = node_with_pending(Limits(default_timeout=5.0))
        conn = node.connect_raw()
        conn.send("wait a\n")
        node.clock.advance(5.0)
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, DeadlineExceededError)

    def test_spent_deadline_does_not_run(self) -> None:
        """A call arriving with no budget left is refused and did not run."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 +timeout=0 wait a\n")
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, DeadlineExceededError)
        self.assertEqual(reply.error.outcome, Outcome.NOT_RUN)
        self.assertEqual(pending.calls, {})

    def test_deadline_discards_thread_result(self) -> None:
        """A thread procedure past its deadline is answered DEADLINE_EXCEEDED; its late result is dropped."""
        node, _ = node_with_pending()
        ran = []
        node.registry.add(lambda: ran.append(1) or "late", name="slow", run="thread")
        conn = node.connect_raw()
        conn.send("#1 +timeout=1 slow\n")
        # The job is queued but no thread has taken it: it never runs.
        node.clock.advance(1)
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, DeadlineExceededError)
        self.assertEqual(reply.error.outcome, Outcome.NOT_RUN)
        node.threads.run_all()
        self.assertEqual(ran, [])
        self.assertEqual(conn.lines(), [])

    def test_thread_result_arrives(self) -> None:
        """A thread procedure's result is sent when its worker finishes."""
        node, _ = node_with_pending()
        node.registry.add(lambda x: x * 2, name="double", run="thread")
        conn = node.connect_raw()
        conn.send("#1 double 21\n")
        self.assertEqual(conn.lines(), [])
        node.threads.run_all()
        self.assertEqual(conn.lines(), [b"#1 OK 42"])
        self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_cancel_command(self) -> None:
        """C{CANCEL tag} cancels the work, the call is answered CANCELLED and CANCEL answers true."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 wait a\n#2 CANCEL 1\n#3 cancel #99\n")
        events = conn.events()
        self.assertEqual(pending.cancelled, ["a"])
        cancelled = events[0]
        assert isinstance(cancelled, ErrorReply)
        self.assertEqual(cancelled.tag, "1")
        self.assertIsInstance(cancelled.error, CallCancelledError)
        self.assertEqual(events[1:], [Success(True, "2"), Success(False, "3")])

    def test_connection_lost_cancels_work(self) -> None:
        """Work in flight for a connection that closes is cancelled."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 wait a\nwait b\n")
        conn.protocol.connectionLost()
        self.assertEqual(sorted(pending.cancelled), ["a", "b"])
        self.assertEqual(node.dispatcher.stats.in_flight, 0)
        self.assertEqual(node.factory.connections, 0)

    def test_cast(self) -> None:
        """A +cast call runs and is never answered, even when it fails."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("+cast wait a\n+cast nosuch\n#2 add 1 1\n")
        self.assertEqual(conn.events(), [Success(2, "2")])
        self.assertIn("a", pending.calls)
        pending.calls["a"].callback("done")
        self.assertEqual(conn.lines(), [])


class ErrorMappingTests(SynchronousTestCase):
    """What a procedure raises becomes a typed error that says it ran."""

    def test_declared_error(self) -> None:
        """A declared exception becomes its declared code, outcome ran."""
        node = MemoryNode(name="test")

        @procedure(run="reactor", errors={KeyError: NotFoundError})
        def lookup(key: str) -> str:
            raise KeyError(key)

        node.registry.add(lookup)
        conn = node.connect_raw()
        conn.send("lookup alice\n")
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, NotFoundError)
        self.assertEqual(reply.error.outcome, Outcome.RAN)
        self.assertEqual(reply.error.message, "alice")

    def test_undeclared_error(self) -> None:
        """An undeclared exception becomes INTERNAL for that call only; the traceback stays in the log."""
        node = MemoryNode(name="test")

        @procedure(run="reactor")
        def broken() -> None:
            raise ZeroDivisionError("secret detail")

        node.registry.add(broken)
        conn = node.connect_raw()
        conn.send("broken\nbroken\n")
        [first, second] = conn.events()
        assert isinstance(first, ErrorReply)
        self.assertIsInstance(first.error, InternalError)
        self.assertEqual(first.error.outcome, Outcome.RAN)
        self.assertNotIn("secret", first.error.message)
        self.assertNotIn("Traceback", first.error.message)
        self.assertIsInstance(second, ErrorReply)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertFalse(conn.transport.disconnecting)

    def test_result_not_json(self) -> None:
        """A result that is not JSON becomes INTERNAL, outcome ran."""
        node = MemoryNode(name="test")
        node.registry.add(lambda: {1, 2}, name="aset", run="reactor")
        conn = node.connect_raw()
        conn.send("aset\n")
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, InternalError)
        self.assertEqual(reply.error.outcome, Outcome.RAN)

    def test_async_def(self) -> None:
        """An C{async def} procedure runs in the reactor and can be cancelled by its deadline."""
        node = MemoryNode(name="test")
        cancelled = []

        async def nap() -> str:
            d: Deferred[None] = Deferred(lambda _: cancelled.append(True))
            await d
            return "woke"

        node.registry.add(nap)
        conn = node.connect_raw()
        conn.send("#1 +timeout=3 nap\n")
        node.clock.advance(3)
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, DeadlineExceededError)
        self.assertEqual(cancelled, [True])


class ArgumentTypeTests(SynchronousTestCase):
    """Arguments whose types do not fit the annotations are refused before the procedure runs."""

    def greeter(self) -> tuple[MemoryNode, list[str]]:
        """README's greeter on a node named demo, noting every run of either procedure."""
        node = MemoryNode(name="demo")
        ran: list[str] = []
        capitals = {"France": "Paris", "Japan": "Tokyo"}

        @procedure
        def greet(name: str, greeting: str = "Hello") -> str:
            ran.append("greet")
            return f"{greeting}, {name}!"

        @procedure(errors={KeyError: NotFoundError})
        async def capital(country: str) -> str:
            ran.append("capital")
            return capitals[country]

        node.registry.add_all([greet, capital])
        return node, ran

    def test_greet_list(self) -> None:
        """C{greet [1,2]} is refused INVALID_ARGUMENT not-run, naming the argument, its type and the usage."""
        node, ran = self.greeter()
        conn = node.connect_raw()
        conn.send("greet [1,2]\ngreet Ada\n")
        self.assertEqual(
            conn.lines(),
            [
                b"ERR INVALID_ARGUMENT not-run @demo argument 'name' must be str, not list; "
                b"usage: greet(name: str, greeting: str = 'Hello') -> str",
                b'OK "Hello, Ada!"',
            ],
        )
        self.assertEqual(ran, ["greet"])

    def test_keyword_argument(self) -> None:
        """An argument passed by name is checked too."""
        node, ran = self.greeter()
        conn = node.connect_raw()
        conn.send("#1 greet Ada greeting=3\n")
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, InvalidArgumentError)
        self.assertEqual(reply.error.outcome, Outcome.NOT_RUN)
        self.assertTrue(
            reply.error.message.startswith("argument 'greeting' must be str, not int;")
        )
        self.assertEqual(ran, [])

    def test_async_procedure_not_run(self) -> None:
        """C{capital [1]} is refused before the async procedure runs: no INTERNAL, nothing logged."""
        node, ran = self.greeter()
        conn = node.connect_raw()
        conn.send("capital [1]\ncapital Japan\n")
        [refused, ok] = conn.events()
        assert isinstance(refused, ErrorReply)
        self.assertIsInstance(refused.error, InvalidArgumentError)
        self.assertEqual(refused.error.outcome, Outcome.NOT_RUN)
        self.assertTrue(
            refused.error.message.startswith("argument 'country' must be str, not list;")
        )
        self.assertEqual(ok, Success("Tokyo"))
        self.assertEqual(ran, ["capital"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_nested_path(self) -> None:
        """A wrong item inside a list is named by its index."""
        node = MemoryNode(name="test")

        @procedure(run="reactor")
        def total(ids: list[int]) -> int:
            return sum(ids)

        node.registry.add(total)
        conn = node.connect_raw()
        conn.send('total [1,2,3]\ntotal [1,2,3,"4"]\ntotal [true]\n')
        [ok, wrong, boolean] = conn.events()
        self.assertEqual(ok, Success(6))
        assert isinstance(wrong, ErrorReply) and isinstance(boolean, ErrorReply)
        self.assertTrue(wrong.error.message.startswith("argument 'ids'[3] must be int, not str;"))
        self.assertTrue(
            boolean.error.message.startswith("argument 'ids'[0] must be int, not bool;")
        )

    def test_int_is_a_float(self) -> None:
        """A whole number fits a float parameter, as in JSON; a string does not."""
        node = MemoryNode(name="test")

        @procedure(run="reactor")
        def half(x: float) -> float:
            return x / 2

        node.registry.add(half)
        conn = node.connect_raw()
        conn.send('half 3\nhalf 3.0\nhalf "3"\n')
        [whole, real, text] = conn.events()
        self.assertEqual((whole, real), (Success(1.5), Success(1.5)))
        assert isinstance(text, ErrorReply)
        self.assertIsInstance(text.error, InvalidArgumentError)

    def test_refusal_counted(self) -> None:
        """A call refused for its argument types is counted as refused, not as a call that ran."""
        node, _ = self.greeter()
        conn = node.connect_raw()
        conn.send("greet [1]\n#1 STATS\n")
        stats = conn.events()[-1]
        assert isinstance(stats, Success)
        self.assertEqual(stats.value["refused"], {"INVALID_ARGUMENT": 1})
        # Counted under its procedure, as its caller saw it, but it never ran:
        # no duration is recorded.
        greet = stats.value["procedures"]["greet"]
        self.assertEqual(greet["outcomes"], {"INVALID_ARGUMENT": 1})
        self.assertEqual(greet["seconds"]["le"]["+Inf"], 0)


class CommandTests(SynchronousTestCase):
    """PING, LIST, HELP, STATS and QUIT."""

    def test_ping(self) -> None:
        """PING answers pong, in either case."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("PING\n#1 ping\n")
        self.assertEqual(conn.events(), [Success("pong"), Success("pong", "1")])

    def test_list(self) -> None:
        """LIST answers the sorted procedure names."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("LIST\n")
        self.assertEqual(conn.events(), [Success(["add", "multicall", "wait"])])

    def test_help_for_people(self) -> None:
        """Untagged HELP shows each signature as text lines, then OK."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("help\n")
        events = conn.events()
        self.assertEqual(events[-1], Success(None))
        text = "\n".join(e.text for e in events if isinstance(e, Text))
        self.assertIn("add(a: int, b: int) -> int", text)
        self.assertIn("wait(key: Any) -> Deferred[Any]", text)

    def test_help_for_programs(self) -> None:
        """Tagged HELP name answers a JSON description."""
        node, _ = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 HELP add\n#2 HELP nosuch\n")
        [described, missing] = conn.events()
        assert isinstance(described, Success)
        self.assertEqual(described.value["signature"], "(a: int, b: int) -> int")
        assert isinstance(missing, ErrorReply)
        self.assertIsInstance(missing.error, NotFoundError)

    def test_help_shows_positional_and_keyword_only_markers(self) -> None:
        """HELP shows / and * where the signature has them, with annotations unquoted."""

        def span(start: int, stop: int = 10, /, *, step: int = 1, **rest: Any) -> list[int]:
            return list(range(start, stop, step))

        node = MemoryNode([span])
        conn = node.connect_raw()
        conn.send("#1 HELP span\n")
        [described] = conn.events()
        assert isinstance(described, Success)
        self.assertEqual(
            described.value["signature"],
            "(start: int, stop: int = 10, /, *, step: int = 1, **rest: Any) -> list[int]",
        )

    def test_stats(self) -> None:
        """STATS counts calls, errors and calls in flight, per procedure, refusals included."""
        node, _pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("add 1 2\nadd 1\n#1 wait a\n#2 STATS\n")
        stats = conn.events()[-1]
        assert isinstance(stats, Success)
        self.assertEqual(stats.value["calls"], 2)
        self.assertEqual(stats.value["errors"], 1)
        self.assertEqual(stats.value["in_flight"], 1)
        add = stats.value["procedures"]["add"]
        self.assertEqual(
            (add["calls"], add["errors"], add["in_flight"], add["outcomes"]),
            (2, 1, 0, {"OK": 1, "INVALID_ARGUMENT": 1}),
        )
        self.assertEqual(stats.value["procedures"]["wait"]["in_flight"], 1)

    def test_quit_waits_for_calls(self) -> None:
        """QUIT answers bye once earlier calls are answered, then closes."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("wait a\nQUIT\nadd 1 2\n")
        self.assertEqual(conn.lines(), [])
        self.assertFalse(conn.transport.disconnecting)
        pending.calls["a"].callback(1)
        self.assertEqual(conn.lines(), [b"OK 1", b'OK "bye"'])
        self.assertTrue(conn.transport.disconnecting)


class FlowControlTests(SynchronousTestCase):
    """Backpressure and the limits that keep one client from harming others."""

    def test_pause_on_calls_in_flight(self) -> None:
        """Past the calls-in-flight limit the node stops reading, and resumes as calls finish."""
        node, pending = node_with_pending(Limits(max_calls_in_flight=4))
        conn = node.connect_raw()
        conn.send("".join(f"#{i} wait {i}\n" for i in range(10)))
        self.assertEqual(len(pending.calls), 4)
        self.assertEqual(conn.transport.producerState, "paused")
        pending.calls[0].callback(0)
        self.assertEqual(len(pending.calls), 4, "still above the low-water mark")
        pending.calls[1].callback(1)
        # Down to half the limit: reading resumes until the limit is reached again.
        self.assertEqual(len(pending.calls), 6)
        self.assertEqual(conn.transport.producerState, "paused")
        while not all(d.called for d in pending.calls.values()):
            for d in list(pending.calls.values()):
                if not d.called:
                    d.callback(None)
        self.assertEqual(len(pending.calls), 10)
        self.assertEqual(conn.transport.producerState, "producing")
        self.assertEqual(len(conn.events()), 10)

    def test_reader_that_never_reads_is_dropped(self) -> None:
        """A client whose replies stay unread stops being read, then is dropped after the stall limit."""
        node, _ = node_with_pending(Limits(write_stall_timeout=30))
        conn = node.connect_raw()
        conn.protocol.pauseProducing()  # the transport's buffer is full
        self.assertEqual(conn.transport.producerState, "paused")
        conn.send("add 1 2\n")  # data already read is still served
        node.clock.advance(29)
        self.assertFalse(conn.transport.disconnecting)
        node.clock.advance(1)
        self.assertTrue(conn.transport.disconnecting)

    def test_reader_that_catches_up_is_kept(self) -> None:
        """A client that reads its replies again is read again and not dropped."""
        node, _ = node_with_pending(Limits(write_stall_timeout=30))
        conn = node.connect_raw()
        conn.protocol.pauseProducing()
        node.clock.advance(10)
        conn.protocol.resumeProducing()
        self.assertEqual(conn.transport.producerState, "producing")
        node.clock.advance(60)
        self.assertFalse(conn.transport.disconnecting)
        self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_client_gone_while_not_read_is_let_go(self) -> None:
        """A client that closes while its calls at the limit keep it unread is read again to its end, within paused_check_interval."""
        node, pending = node_with_pending(Limits(max_calls_in_flight=2, paused_check_interval=1))
        conn = node.connect_raw()
        mine, theirs = socket.socketpair()
        self.addCleanup(mine.close)
        cast(Any, conn.transport).getHandle = lambda: mine
        conn.send("#1 wait a\n#2 wait b\n")
        self.assertEqual(conn.transport.producerState, "paused")
        node.clock.advance(1)
        self.assertEqual(conn.transport.producerState, "paused", "its client is still there")
        theirs.close()
        node.clock.advance(1)
        self.assertEqual(conn.transport.producerState, "producing", "read, to find the end")
        self.assertFalse(conn.transport.disconnecting)
        conn.protocol.readConnectionLost()  # what the transport then reads
        self.assertEqual(sorted(pending.cancelled), ["a", "b"])
        self.assertTrue(conn.transport.disconnecting)

    def test_client_closed_with_lines_unread_is_read_to_its_end(self) -> None:
        """A client that closes with lines still unread while its calls at the limit keep it unread has its tagged calls cancelled, so the rest is read."""
        node, pending = node_with_pending(Limits(max_calls_in_flight=2, paused_check_interval=1))
        conn = node.connect_raw()
        conn.send("#1 wait a\n#2 wait b\n")
        self.assertEqual(conn.transport.producerState, "paused")
        node.clock.advance(1)
        self.assertEqual(pending.cancelled, [])
        self.patch(protocol_module, "peer_closed", lambda transport: "ending")
        node.clock.advance(1)
        self.assertEqual(sorted(pending.cancelled), ["a", "b"])
        self.assertEqual(conn.transport.producerState, "producing", "read on, to the end")
        self.assertEqual(conn.lines(), [], "cancelled without a reply, as at the end of input")

    def test_client_reset_while_not_read_is_dropped(self) -> None:
        """A connection reset while its calls at the limit keep it unread is aborted, so its calls are cancelled."""
        node, pending = node_with_pending(Limits(max_calls_in_flight=2, paused_check_interval=1))
        conn = node.connect_raw()
        reset = _ResetSocket()
        self.addCleanup(reset.close)
        cast(Any, conn.transport).getHandle = lambda: reset
        conn.send("#1 wait a\n#2 wait b\n")
        node.clock.advance(1)
        self.assertTrue(conn.transport.disconnecting)
        conn.protocol.connectionLost()
        self.assertEqual(sorted(pending.cancelled), ["a", "b"])
        self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_connection_limit(self) -> None:
        """Connections past the limit get one error line and are closed; others are unaffected."""
        node, _ = node_with_pending(Limits(max_connections=2))
        first, second, third = node.connect_raw(), node.connect_raw(), node.connect_raw()
        [refused] = third.events()
        assert isinstance(refused, ErrorReply)
        self.assertIsInstance(refused.error, ResourceExhaustedError)
        self.assertTrue(third.transport.disconnecting)
        first.send("add 1 2\n")
        self.assertEqual(first.lines(), [b"OK 3"])
        first.protocol.connectionLost()
        fourth = node.connect_raw()
        fourth.send("add 2 2\n")
        self.assertEqual(fourth.lines(), [b"OK 4"])
        self.assertFalse(second.transport.disconnecting)


class _Wrapper:
    """A transport wrapping another, as TLS does: its handle is no socket."""

    def __init__(self, inner: object) -> None:
        self.transport = inner

    def getHandle(self) -> object:
        return object()


class _Plain:
    """A transport over a socket."""

    def __init__(self, handle: socket.socket) -> None:
        self.handle = handle

    def getHandle(self) -> socket.socket:
        return self.handle


class PeerClosedTests(SynchronousTestCase):
    """What L{peer_closed} sees on a socket the node is not reading."""

    def test_socket_pair(self) -> None:
        """Open, or with bytes unread, is open; closed with nothing unread is ended; TLS-like wrappers are looked through."""
        mine, theirs = socket.socketpair()
        self.addCleanup(mine.close)
        self.assertEqual(peer_closed(_Plain(mine)), "open")
        theirs.sendall(b"PING\n")
        self.assertEqual(peer_closed(_Wrapper(_Plain(mine))), "open")
        theirs.close()
        self.assertEqual(peer_closed(_Plain(mine)), "open", "a line still to read")
        self.assertEqual(mine.recv(100), b"PING\n")
        self.assertEqual(peer_closed(_Wrapper(_Plain(mine))), "ended")
        self.assertEqual(peer_closed(object()), "open", "no socket: nothing to tell")

    @skipIf(sys.platform != "linux", "the TCP state is read on Linux only")
    def test_tcp_closed_with_bytes_unread(self) -> None:
        """A TCP client that closed with bytes still unread is seen as ending, without reading them."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        client.sendall(b"PING\n")
        self.assertEqual(peer_closed(_Plain(accepted)), "open", "a line to read, and no FIN")
        client.close()
        seen = threading.Event()
        for _ in range(500):  # the FIN follows on loopback at once; bounded all the same
            if peer_closed(_Plain(accepted)) == "ending":
                seen.set()
                break
            seen.wait(0.01)
        self.assertTrue(seen.is_set())
        self.assertEqual(accepted.recv(100), b"PING\n", "nothing was taken")

    def test_tcp_reset(self) -> None:
        """A TCP connection its client reset is seen as reset, without reading it."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        readable, _, _ = select.select([accepted], [], [], 10)
        self.assertEqual(readable, [accepted], "the reset arrives")
        self.assertEqual(peer_closed(_Plain(accepted)), "reset")


class InMemoryConnectionTests(SynchronousTestCase):
    """A client and the node joined by an in-memory pump, as over a socket."""

    def test_pipelined_over_pump(self) -> None:
        """Replies to a pipelined mix of forms reach a line client in the right order."""
        from twisted.protocols.basic import LineOnlyReceiver
        from twisted.test.iosim import connectedServerAndClient

        node, pending = node_with_pending()
        received: list[bytes] = []

        class LineClient(LineOnlyReceiver):
            delimiter = b"\n"

            def lineReceived(self, line: bytes) -> None:
                received.append(line)

        client, _server, pump = connectedServerAndClient(
            lambda: node.factory.buildProtocol(None), LineClient, clock=node.clock
        )
        client.transport.write(b"#1 wait a\nadd 1 2\n#2 add 2 2\nwait b\nping\n")
        pump.flush()
        self.assertEqual(received, [b"OK 3", b"#2 OK 4"])
        pending.calls["b"].callback("B")
        pending.calls["a"].callback("A")
        pump.flush()
        self.assertEqual(received[2:], [b'OK "B"', b'OK "pong"', b'#1 OK "A"'])
        client.transport.loseConnection()
        pump.flush()
        self.assertEqual(node.factory.connections, 0)


class HalfCloseTests(SynchronousTestCase):
    """A client that sends its requests then closes its side, as C{printf ... | nc} does."""

    def test_answers_then_closes(self) -> None:
        """Requests sent before the client's end of input are answered, then the node closes."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("add 1 2\nwait a\n#1 add 2 2\n")
        conn.protocol.readConnectionLost()
        self.assertFalse(conn.transport.disconnecting)
        pending.calls["a"].callback("A")
        self.assertEqual(conn.lines(), [b"OK 3", b"#1 OK 4", b'OK "A"'])
        self.assertTrue(conn.transport.disconnecting)

    def test_tagged_calls_cancelled(self) -> None:
        """A program's tagged calls are cancelled when it stops sending: it has gone away."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 wait a\nwait b\n")
        conn.protocol.readConnectionLost()
        self.assertEqual(pending.cancelled, ["a"])
        pending.calls["b"].callback("B")
        self.assertEqual(conn.lines(), [b'OK "B"'])
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(node.dispatcher.stats.in_flight, 0)

    def test_unfinished_last_line(self) -> None:
        """A last line with no newline is reported, not run."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#5 wait a")
        conn.protocol.readConnectionLost()
        [reply] = conn.events()
        assert isinstance(reply, ErrorReply)
        self.assertEqual(reply.tag, "5")
        self.assertIn("middle of a line", reply.error.message)
        self.assertEqual(pending.calls, {})
        self.assertTrue(conn.transport.disconnecting)

    def test_end_of_input_while_paused(self) -> None:
        """Lines still buffered behind backpressure are served before the node closes."""
        node, pending = node_with_pending(Limits(max_calls_in_flight=2))
        conn = node.connect_raw()
        conn.send("".join(f"wait {i}\n" for i in range(5)))
        conn.protocol.readConnectionLost()
        self.assertEqual(len(pending.calls), 2)
        while not all(d.called for d in pending.calls.values()):
            for d in list(pending.calls.values()):
                if not d.called:
                    d.callback(None)
        self.assertEqual(len(pending.calls), 5)
        self.assertEqual(len(conn.events()), 5)
        self.assertTrue(conn.transport.disconnecting)

    def test_quit_then_end_of_input(self) -> None:
        """After QUIT, end of input changes nothing: the tagged call is answered, then bye, then close."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 wait a\nQUIT\nPING\n")
        conn.protocol.readConnectionLost()
        self.assertEqual(pending.cancelled, [])
        self.assertFalse(conn.transport.disconnecting)
        pending.calls["a"].callback("A")
        self.assertEqual(conn.lines(), [b'#1 OK "A"', b'OK "bye"'])
        self.assertTrue(conn.transport.disconnecting)

    def test_slow_untagged_call_and_a_flood_of_help(self) -> None:
        """Answers queued behind a slow untagged call stop reading at the limit, not memory."""
        node, pending = node_with_pending(Limits(max_calls_in_flight=50))
        conn = node.connect_raw()
        conn.send("wait a\n" + "HELP\n" * 2000)
        self.assertEqual(conn.transport.producerState, "paused")
        self.assertEqual(conn.protocol.session.queued, 50)
        self.assertEqual(conn.lines(), [])
        pending.calls["a"].callback("A")
        lines = conn.lines()
        self.assertEqual(lines[0], b'OK "A"')
        self.assertEqual(sum(line == b"OK" for line in lines), 2000)

    def test_casts_outliving_their_connection_are_bounded(self) -> None:
        """Casts run on after their connection closes, up to max_detached_casts node-wide."""
        node, pending = node_with_pending(Limits(max_detached_casts=1))
        for key in ("a", "b"):
            conn = node.connect_raw()
            conn.send(f"+cast wait {key}\n")
            conn.protocol.readConnectionLost()
            self.assertTrue(conn.transport.disconnecting, "a cast does not hold the connection")
            conn.protocol.connectionLost()
        self.assertEqual(node.factory.connections, 0)
        self.assertEqual(pending.cancelled, ["b"])
        self.assertEqual(node.factory.detached_casts, 1)
        pending.calls["a"].callback(None)
        self.assertEqual(node.factory.detached_casts, 0)


class PeerLinkTests(SynchronousTestCase):
    """A connection from a peer node (it said HELLO) is shed, never paused."""

    def test_peer_link_refuses_past_the_limit_but_keeps_reading(self) -> None:
        """Past the limit a peer's calls are refused UNAVAILABLE not-run, and PING is still answered."""
        node, pending = node_with_pending(Limits(max_calls_in_flight=3))
        conn = node.connect_raw()
        conn.send('#h HELLO {"node": "alpha"}\n')
        [hello] = conn.events()
        assert isinstance(hello, Success)
        self.assertEqual(hello.value["node"], "test")
        conn.send("".join(f"#{i} wait {i}\n" for i in range(5)) + "#p PING\n")
        self.assertEqual(conn.transport.producerState, "producing")
        events = conn.events()
        self.assertEqual(len(pending.calls), 3)
        refused = [e for e in events if isinstance(e, ErrorReply)]
        self.assertEqual([e.tag for e in refused], ["3", "4"])
        for event in refused:
            self.assertIsInstance(event.error, UnavailableError)
            self.assertEqual(event.error.outcome, Outcome.NOT_RUN)
        self.assertIn(Success("pong", "p"), events)


class DrainTests(SynchronousTestCase):
    """A node shutting down gracefully."""

    def test_drain(self) -> None:
        """New calls are refused not-run; calls in flight may finish within the grace; the rest are cancelled."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 wait a\n#2 wait b\nwait c\n")
        done = node.factory.drain(grace=5)
        conn.send("#3 add 1 1\n")
        [refused] = conn.events()
        assert isinstance(refused, ErrorReply)
        self.assertIsInstance(refused.error, UnavailableError)
        self.assertEqual((refused.tag, refused.error.outcome), ("3", Outcome.NOT_RUN))
        pending.calls["a"].callback("A")
        self.assertEqual(conn.events(), [Success("A", "1")])
        self.assertNoResult(done)
        node.clock.advance(5)
        self.assertEqual(sorted(pending.cancelled), ["b", "c"])
        *cut, bye = conn.events()
        self.assertEqual(sorted(str(e.tag) for e in cut), ["2", "None"])  # type: ignore[union-attr]
        for event in cut:
            assert isinstance(event, ErrorReply)
            self.assertEqual(event.error.outcome, Outcome.MAY_HAVE_RUN)
            self.assertIn("shut down", event.error.message)
        self.assertEqual(bye, Bye("test is shutting down"))
        # After BYE the node reads until its client closes, running nothing.
        conn.send("#4 add 1 1\n")
        self.assertEqual(conn.events(), [])
        self.assertFalse(conn.transport.disconnecting)
        self.assertNoResult(done)
        conn.protocol.readConnectionLost()
        self.assertTrue(conn.transport.disconnecting)
        conn.protocol.connectionLost()
        node.clock.advance(DRAIN_CHECK_INTERVAL)
        self.successResultOf(done)

    def test_drain_ends_early(self) -> None:
        """Drain ends as soon as the last call in flight does."""
        node, pending = node_with_pending()
        conn = node.connect_raw()
        conn.send("#1 wait a\n")
        done = node.factory.drain(grace=30)
        node.clock.advance(1)
        pending.calls["a"].callback("A")
        node.clock.advance(0.1)
        self.assertEqual(conn.events(), [Success("A", "1"), Bye("test is shutting down")])
        # A client that does not close after BYE is cut off.
        self.assertFalse(conn.transport.disconnecting)
        node.clock.advance(DRAIN_FLUSH_TIMEOUT)
        self.successResultOf(done)
        self.assertTrue(conn.transport.disconnecting)


class AccessLogTests(SynchronousTestCase):
    """The optional per-call access log."""

    def test_one_event_per_call(self) -> None:
        """With the access log on, each call logs procedure, caller, outcome, duration and trace."""
        from twisted.logger import globalLogPublisher

        node, pending = node_with_pending()
        node.factory.access_log = True
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "callnet.access":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        conn = node.connect_raw()
        conn.send("#1 +trace=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 add 1 2\n")
        conn.send("#2 wait a\n#3 nosuch\n")
        node.clock.advance(0.25)
        pending.calls["a"].callback(None)
        outcomes = {event["tag"]: event for event in events}
        self.assertEqual(outcomes["1"]["outcome"], "OK")
        self.assertEqual(
            outcomes["1"]["trace"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
        self.assertEqual(outcomes["1"]["caller"], "anonymous")
        self.assertEqual(outcomes["2"]["procedure"], "wait")
        self.assertAlmostEqual(outcomes["2"]["duration_ms"], 250.0)
        self.assertEqual(outcomes["3"]["outcome"], "NOT_FOUND")

    def test_off_by_default(self) -> None:
        """No access event is logged unless the node is told to."""
        from twisted.logger import globalLogPublisher

        node, _ = node_with_pending()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        node.connect_raw().send("add 1 2\n")
        self.assertEqual([e for e in events if e.get("log_namespace") == "callnet.access"], [])
