"""
The async client against an in-memory node: replies matched by tag, deadlines
and cancellation that reach the node, and typed failures when links break.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import callnet
from callnet import (
    CallCancelledError,
    CallError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    UnavailableError,
    procedure,
)
from callnet.client import Client
from callnet.errors import ERRORS_BY_CODE
from callnet.testing import MemoryNode


class Held:
    """A reactor procedure whose calls wait until the test answers them."""

    def __init__(self) -> None:
        self.calls: list[Deferred[Any]] = []
        self.cancelled = 0

    def __call__(self, value: Any = None) -> Deferred[Any]:
        def cancel(_: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.calls.append(d)
        return d


@procedure(run="reactor")
def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


@procedure(run="reactor")
def broken() -> None:
    """Fail in a way nobody declared."""
    raise RuntimeError("internal detail")


def make_node(**kwargs: Any) -> tuple[MemoryNode, Held]:
    node = MemoryNode([add, broken], **kwargs)
    held = Held()
    node.registry.add(held, name="hold", run="reactor")
    return node, held


class CallTests(SynchronousTestCase):
    """Calls and their results."""

    def test_result(self) -> None:
        """A call's Deferred fires with the procedure's result."""
        node, _ = make_node()
        d = node.client().call("add", 2, 3)
        node.flush()
        self.assertEqual(self.successResultOf(d), 5)

    def test_keyword_arguments(self) -> None:
        """Keyword arguments reach the procedure as keywords."""
        node, _ = make_node()
        d = node.client().call("add", 2, b=40)
        node.flush()
        self.assertEqual(self.successResultOf(d), 42)

    def test_await(self) -> None:
        """A call can be awaited inside C{async def}."""
        node, _ = make_node()
        client = node.client()

        async def total() -> int:
            first = await client.call("add", 1, 2)
            return int(await client.call("add", first, 10))

        d = ensureDeferred(total())
        node.flush()
        self.assertEqual(self.successResultOf(d), 13)

    def test_out_of_order_replies(self) -> None:
        """Many calls in flight on one connection each get their own reply, whatever the order."""
        node, held = make_node()
        client = node.client()
        calls = [client.call("hold", i) for i in range(50)]
        node.flush()
        self.assertEqual(len(held.calls), 50)
        for i in reversed(range(50)):
            held.calls[i].callback(i * 2)
        node.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], [i * 2 for i in range(50)])
        self.assertEqual(len(node._pumps), 1, "one connection carried them all")

    def test_typed_remote_error(self) -> None:
        """A node's error is raised as its class, with the message, outcome and node name."""
        node, _ = make_node(name="alpha")
        d = node.client().call("nosuch", 1)
        node.flush()
        error = self.failureResultOf(d, NotFoundError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertEqual(error.node, "alpha")
        self.assertIn("nosuch", error.message)

    def test_undeclared_error_has_no_traceback(self) -> None:
        """An undeclared failure arrives as INTERNAL without the remote traceback."""
        node, _ = make_node()
        d = node.client().call("broken")
        node.flush()
        error = self.failureResultOf(d, InternalError).value
        self.assertEqual(error.outcome, Outcome.RAN)
        self.assertNotIn("internal detail", str(error))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_tracebacks_when_the_node_sends_them(self) -> None:
        """A node configured to send tracebacks includes the remote one in the error's message."""
        node = MemoryNode([broken], send_tracebacks=True)
        d = node.client().call("broken")
        node.flush()
        error = self.failureResultOf(d, InternalError).value
        self.assertIn("RuntimeError: internal detail", error.message)
        self.assertIn("Traceback", error.message)
        self.flushLoggedErrors(RuntimeError)

    def test_arguments_not_json(self) -> None:
        """Arguments that are not JSON fail the call at once; nothing is sent."""
        node, held = make_node()
        client = node.client()
        node.flush()
        d = client.call("hold", {1, 2})
        node.flush()
        error = self.failureResultOf(d, InvalidArgumentError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertEqual(held.calls, [])

    def test_cast(self) -> None:
        """A cast runs on the node and no reply comes back."""
        node, held = make_node()
        client = node.client()
        d = client.cast("hold", "x")
        node.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(held.calls), 1)
        held.calls[0].callback("ignored")
        node.flush()
        self.assertEqual(node.dispatcher.stats.in_flight, 0)

    def test_ping(self) -> None:
        """C{ping} answers pong."""
        node, _ = make_node()
        d = node.client().ping()
        node.flush()
        self.assertEqual(self.successResultOf(d), "pong")


class DeadlineTests(SynchronousTestCase):
    """Deadlines and cancellation travel to the node."""

    def test_cancel_reaches_node(self) -> None:
        """Cancelling a call's Deferred cancels the work on the node."""
        node, held = make_node()
        d = node.client().call("hold")
        node.flush()
        d.cancel()
        error = self.failureResultOf(d, CallCancelledError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        node.flush()
        self.assertEqual(held.cancelled, 1)
        self.assertEqual(node.dispatcher.stats.in_flight, 0)

    def test_timeout_reaches_node(self) -> None:
        """When a call's timeout passes, the caller gets DEADLINE_EXCEEDED and the node's work is cancelled."""
        node, held = make_node()
        d = node.client().call("hold", timeout=2)
        node.advance(1.9)
        self.assertNoResult(d)
        node.advance(0.2)
        error = self.failureResultOf(d, DeadlineExceededError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(held.cancelled, 1)
        self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_default_timeout(self) -> None:
        """A call that names no timeout gets the client's default."""
        node, held = make_node()
        d = node.client(timeout=5).call("hold")
        node.advance(4.9)
        self.assertNoResult(d)
        node.advance(0.1)
        self.failureResultOf(d, DeadlineExceededError)
        self.assertEqual(held.cancelled, 1)

    def test_late_reply_dropped(self) -> None:
        """A reply that arrives after its call gave up is dropped, not given to another call."""
        node, held = make_node()
        client = node.client()
        first = client.call("hold", timeout=1)
        node.flush()
        node.advance(1)
        self.failureResultOf(first, DeadlineExceededError)
        second = client.call("hold")
        node.flush()
        # The node answers the first call late, as a node behind a slow link would.
        node._pumps[0].client.dataReceived(b'#1 OK "late"\n')
        self.assertNoResult(second)
        held.calls[1].callback("second")
        node.flush()
        self.assertEqual(self.successResultOf(second), "second")

    def test_no_timers_leak(self) -> None:
        """Answered calls leave at most the client's one deadline timer, and closing ends it."""
        node, _ = make_node()
        client = node.client()
        calls = [client.call("add", i, i) for i in range(10)]
        node.flush()
        for d in calls:
            self.successResultOf(d)
        self.assertLessEqual(len(node.clock.getDelayedCalls()), 1)
        node.advance(client.timeout + 1)
        self.assertEqual(node.clock.getDelayedCalls(), [], "the timer found nothing and stopped")
        client.call("add", 1, 1)
        node.flush()
        client.close()
        node.flush()
        self.assertEqual(node.clock.getDelayedCalls(), [])


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    """An endpoint where nothing listens."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: object) -> Deferred[Any]:
        self.attempts += 1
        return fail(ConnectionRefusedError("nothing listens"))


@implementer(IStreamClientEndpoint)
class SilentEndpoint:
    """An endpoint whose connection attempt never completes."""

    def connect(self, factory: object) -> Deferred[Any]:
        return Deferred()


class ConnectionTests(SynchronousTestCase):
    """What callers see when the connection cannot be made or is lost."""

    def test_refused(self) -> None:
        """A call to a node that cannot be reached fails UNAVAILABLE, and did not run."""
        client = Client(RefusingEndpoint(), MemoryReactorClock())
        d = client.call("add", 1, 2)
        error = self.failureResultOf(d, UnavailableError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertIn("cannot connect", error.message)

    def test_connect_deadline(self) -> None:
        """A connection that never completes fails the call by its deadline, not run."""
        clock = MemoryReactorClock()
        client = Client(SilentEndpoint(), clock)
        d = client.call("add", 1, 2, timeout=3)
        clock.advance(3)
        error = self.failureResultOf(d, DeadlineExceededError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)

    def test_cancel_while_connecting(self) -> None:
        """A call cancelled before it was sent fails CANCELLED, not run."""
        clock = MemoryReactorClock()
        d = Client(SilentEndpoint(), clock).call("add", 1, 2)
        d.cancel()
        error = self.failureResultOf(d, CallCancelledError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)

    def test_lost_connection_fails_pending_calls(self) -> None:
        """Losing the connection fails every pending call at once, as may-have-run."""
        node, held = make_node()
        client = node.client()
        calls = [client.call("hold", i) for i in range(3)]
        node.flush()
        node._pumps[0].serverIO.loseConnection()
        node.flush()
        for d in calls:
            error = self.failureResultOf(d, UnavailableError).value
            self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(held.cancelled, 3, "the node cancels work for a lost caller")
        self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_bye_means_not_run(self) -> None:
        """
        A node that shuts down answers what it read, says BYE, and runs
        nothing after: a call it had not read fails not-run, the client
        closes its side, and the node's drain ends.
        """
        node, held = make_node()
        client = node.client()
        running = client.call("hold", 1)
        node.flush()
        self.assertEqual(len(held.calls), 1)
        unread = client.call("add", 1, 2)
        node.clock.advance(0)  # written, not yet delivered
        drained = node.factory.drain(0.0)  # no grace: hold is cancelled at once
        node.flush()
        error = self.failureResultOf(running, UnavailableError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN, "it was running")
        error = self.failureResultOf(unread, UnavailableError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertEqual(error.message, "memory is shutting down: add was not read")
        self.assertEqual(held.cancelled, 1)
        node.advance(0.1)
        self.successResultOf(drained)
        self.assertTrue(node._pumps[0].clientIO.disconnected, "the client closed its side")

    def test_reconnects(self) -> None:
        """After a lost connection the next call connects again."""
        node, _ = make_node()
        client = node.client()
        first = client.call("add", 1, 1)
        node.flush()
        self.successResultOf(first)
        node._pumps[0].serverIO.loseConnection()
        node.flush()
        second = client.call("add", 2, 2)
        node.flush()
        self.assertEqual(self.successResultOf(second), 4)
        self.assertEqual(len(node._pumps), 2)

    def test_close(self) -> None:
        """Closing the client fails calls in flight and refuses new ones."""
        node, _ = make_node()
        client = node.client()
        d = client.call("hold")
        node.flush()
        client.close()
        node.flush()
        self.failureResultOf(d, UnavailableError)
        self.failureResultOf(client.call("add", 1, 1), UnavailableError)


class PublicSurfaceTests(SynchronousTestCase):
    """What C{import callnet} offers."""

    def test_one_class_per_code(self) -> None:
        """Every wire code has its own class, importable from callnet, under CallError."""
        for code, cls in ERRORS_BY_CODE.items():
            self.assertEqual(cls.code, code)
            self.assertIs(getattr(callnet, cls.__name__), cls)
            self.assertTrue(issubclass(cls, CallError))
        self.assertEqual(len(set(ERRORS_BY_CODE.values())), len(ERRORS_BY_CODE))

    def test_public_names(self) -> None:
        """The package's public names are exactly these; changing them is a decision, not an accident."""
        self.assertEqual(
            sorted(callnet.__all__),
            sorted(
                [
                    "BlockingClient",
                    "CallHandle",
                    "Client",
                    "Outcome",
                    "Registry",
                    "procedure",
                    "CallError",
                    "WrongThreadError",
                    "ForkedProcessError",
                    *(cls.__name__ for cls in ERRORS_BY_CODE.values()),
                ]
            ),
        )
        for name in callnet.__all__:
            self.assertTrue(hasattr(callnet, name), name)
