"""
Tests for L{callnet.blocking}, with a fake reactor and no threads.

The caller's waits are simulated: each one lets the fake reactor run (its
C{callFromThread} queue, then a fake node answering what the client wrote)
and advances both clocks by the time waited.  So a test reads as the caller
sees it, deterministically, and every timeout is checked to the microsecond.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ReactorNotRestartable
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from callnet.blocking import (
    EXIT_JOIN_TIMEOUT,
    GRACE,
    THREAD_NAME,
    BlockingClient,
    CallHandle,
    ForkedProcessError,
    ReactorThread,
    WrongThreadError,
)
from callnet.client import ClientProtocol
from callnet.errors import (
    CallCancelledError,
    CallError,
    DeadlineExceededError,
    NotFoundError,
    Outcome,
    UnavailableError,
)
from callnet.wire import Call, Command, LineDecoder, encode_failure, encode_success

REACTOR_THREAD = 1
CALLER_THREAD = 2

#: A procedure of the fake node that never answers.
SILENT = object()


class FakeReactor(Clock):
    """A reactor clock whose C{callFromThread} queues calls for the test to run."""

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self.triggers: list[tuple[str, str, Callable[..., Any], tuple[Any, ...]]] = []
        self.run_error: Exception | None = None
        self.ran_with: bool | None = None

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.queue.append((f, args, kwargs))

    def addSystemEventTrigger(
        self, phase: str, eventType: str, f: Callable[..., Any], *args: Any
    ) -> None:
        self.triggers.append((phase, eventType, f, args))

    def run(self, installSignalHandlers: bool = True) -> None:
        if self.run_error is not None:
            raise self.run_error
        self.running = True
        self.ran_with = installSignalHandlers

    def stop(self) -> None:
        self.running = False
        for phase, event, f, args in list(self.triggers):
            if (phase, event) == ("before", "shutdown"):
                f(*args)


class FakeThread:
    """What L{ReactorThread} keeps of the thread it started."""

    ident = REACTOR_THREAD

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.target = target
        self.name = name
        self.joins: list[float | None] = []

    def join(self, timeout: float | None = None) -> None:
        self.joins.append(timeout)


class FakeNode:
    """
    An endpoint whose connections reach a scripted node: it answers each
    call from a table of procedures and records C{CANCEL}s.
    """

    def __init__(self) -> None:
        self.procedures: dict[str, Any] = {
            "add": lambda a, b: a + b,
            "echo": lambda value: value,
            "sleep": SILENT,
        }
        self.requests: list[Call] = []
        self.cancelled: list[str] = []
        self.connections: list[tuple[ClientProtocol, StringTransport, LineDecoder]] = []
        #: When true, connection attempts wait for L{accept}.
        self.hold = False
        self.held: list[tuple[Deferred[ClientProtocol], Any]] = []

    def connect(self, factory: Any) -> Deferred[ClientProtocol]:
        if self.hold:
            attempt: Deferred[ClientProtocol] = Deferred()
            self.held.append((attempt, factory))
            return attempt
        return succeed(self._open(factory))

    def _open(self, factory: Any) -> ClientProtocol:
        protocol: ClientProtocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport, LineDecoder()))
        return protocol

    def serve(self) -> bool:
        """Answer what the clients wrote; whether there was anything."""
        worked = False
        for protocol, transport, decoder in self.connections:
            data = transport.value()
            transport.clear()
            if not data:
                continue
            worked = True
            decoder.feed(data)
            while (event := decoder.next_event()) is not None:
                if isinstance(event, Call):
                    self._answer(protocol, event)
                elif isinstance(event, Command):
                    if event.verb == "CANCEL":
                        self.cancelled.append(str(event.args[0]))
                    elif event.verb == "PING":
                        protocol.dataReceived(encode_success("pong", event.tag))
        return worked

    def _answer(self, protocol: ClientProtocol, call: Call) -> None:
        self.requests.append(call)
        handler = self.procedures.get(call.procedure)
        if call.cast or handler is SILENT:
            return
        if handler is None:
            error = NotFoundError(f"no procedure named {call.procedure!r}")
            protocol.dataReceived(encode_failure(error, call.tag))
            return
        protocol.dataReceived(encode_success(handler(*call.args, **call.kwargs), call.tag))

    def reply(self, tag: str, value: Any) -> None:
        """Answer a call that was left waiting."""
        self.connections[-1][0].dataReceived(encode_success(value, tag))


class World:
    """A L{ReactorThread} over a fake reactor, a fake node and simulated waits."""

    def __init__(self) -> None:
        self.reactor = FakeReactor()
        self.node = FakeNode()
        self.now = 1000.0
        self.current = CALLER_THREAD
        self.threads: list[FakeThread] = []
        self.at_exit: list[Callable[[], None]] = []
        self.at_fork: list[Callable[[], None]] = []
        #: Whether the reactor thread runs while the caller waits.
        self.responsive = True
        #: Called at the start of each wait, as another thread acting meanwhile.
        self.on_wait: Callable[[], None] | None = None
        self.waits: list[float] = []
        self.thread = ReactorThread(
            self.reactor,  # type: ignore[arg-type]
            start_thread=self.start_thread,
            atexit_register=self.at_exit.append,
            register_at_fork=self.register_at_fork,
            get_ident=lambda: self.current,
            io_thread=lambda: REACTOR_THREAD,
            monotonic=lambda: self.now,
            wait=self.wait,
        )

    def start_thread(self, target: Callable[[], None], name: str) -> FakeThread:
        thread = FakeThread(target, name)
        self.threads.append(thread)
        return thread

    def register_at_fork(self, *, after_in_child: Callable[[], None]) -> None:
        self.at_fork.append(after_in_child)

    def client(self, timeout: float = 30.0) -> BlockingClient:
        return BlockingClient(self.node, timeout, reactor_thread=self.thread)  # type: ignore[arg-type]

    def pump(self) -> None:
        """Run the reactor thread until it has nothing to do."""
        caller, self.current = self.current, REACTOR_THREAD
        try:
            while True:
                queue, self.reactor.queue = self.reactor.queue, []
                for f, args, kwargs in queue:
                    f(*args, **kwargs)
                if not self.node.serve() and not self.reactor.queue:
                    return
        finally:
            self.current = caller

    def on_reactor(self, f: Callable[..., Any], *args: Any) -> Any:
        """Run C{f} as the reactor thread."""
        caller, self.current = self.current, REACTOR_THREAD
        try:
            return f(*args)
        finally:
            self.current = caller

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        if self.on_wait is not None:
            self.on_wait()
        if self.responsive:
            self.pump()
        if event.is_set():
            return True
        self.now += timeout
        if self.responsive:
            self.reactor.advance(timeout)
            self.pump()
        return event.is_set()

    def sent(self) -> list[str]:
        """The procedures the node has been asked to run."""
        return [call.procedure for call in self.node.requests]


class ReactorThreadTests(SynchronousTestCase):
    """
    Tests for L{ReactorThread}: starting, adopting and stopping the reactor.
    """

    def setUp(self) -> None:
        self.world = World()

    def test_starts_once_in_named_daemon_thread(self) -> None:
        """The first call starts the reactor in one thread named callnet-reactor; later calls reuse it."""
        client = self.world.client()
        self.assertEqual(self.world.thread.state, "idle")
        self.assertEqual(client.call("add", 1, 2), 3)
        self.assertEqual(client.call("add", 2, 2), 4)
        self.assertEqual([t.name for t in self.world.threads], [THREAD_NAME])
        self.assertEqual(len(self.world.at_exit), 1)
        self.assertEqual(len(self.world.at_fork), 1)
        self.assertEqual(self.world.thread.state, "started")

    def test_constructing_a_client_starts_nothing(self) -> None:
        """Making (and closing) a client that never calls starts no thread."""
        with self.world.client():
            pass
        self.assertEqual(self.world.threads, [])
        self.assertEqual(self.world.thread.state, "idle")

    def test_thread_runs_reactor_without_signal_handlers(self) -> None:
        """The thread runs the reactor with installSignalHandlers=False, which only the main thread may install."""
        self.world.client().call_async("sleep", 1)
        self.world.threads[0].target()
        self.assertIs(self.world.reactor.ran_with, False)

    def test_reactor_that_cannot_run_releases_waiters(self) -> None:
        """A reactor that fails to run (not restartable) is logged and its waiters get UnavailableError."""
        handle = self.world.client().call_async("sleep", 1)
        self.world.reactor.run_error = ReactorNotRestartable()
        self.world.on_reactor(self.world.threads[0].target)
        self.assertEqual(len(self.flushLoggedErrors(ReactorNotRestartable)), 1)
        error = self.assertRaises(UnavailableError, handle.result, 0)
        self.assertIs(error.outcome, Outcome.NOT_RUN)
        self.assertEqual(self.world.thread.state, "stopped")

    def test_adopts_running_reactor(self) -> None:
        """When the application already runs the reactor, no thread is started and calls go to it."""
        self.world.reactor.running = True
        client = self.world.client()
        self.assertEqual(client.call("add", 1, 2), 3)
        self.assertEqual(self.world.threads, [])
        self.assertEqual(self.world.at_exit, [])
        self.assertEqual(self.world.thread.state, "adopted")
        self.assertEqual([t[:2] for t in self.world.reactor.triggers], [("before", "shutdown")])

    def test_adopt_before_the_reactor_runs(self) -> None:
        """adopt() makes later calls wait for the application's reactor instead of starting one."""
        self.world.thread.adopt()
        self.world.thread.adopt()
        handle = self.world.client().call_async("add", 1, 2)
        self.assertEqual(self.world.threads, [])
        self.world.pump()
        self.assertEqual(handle.result(0), 3)

    def test_adopt_after_start_refused(self) -> None:
        """adopt() after callnet started its own reactor thread raises RuntimeError."""
        self.world.client().call("add", 1, 2)
        self.assertRaises(RuntimeError, self.world.thread.adopt)

    def test_exit_stops_reactor_and_joins_briefly(self) -> None:
        """At interpreter exit the reactor is stopped from its thread and the exit waits a bounded time."""
        handle = self.world.client().call_async("sleep", 10)
        self.world.pump()
        self.world.reactor.running = True
        [at_exit] = self.world.at_exit
        at_exit()
        self.world.pump()
        self.assertFalse(self.world.reactor.running)
        self.assertEqual(self.world.threads[0].joins, [EXIT_JOIN_TIMEOUT])
        self.assertRaises(UnavailableError, handle.result, 0)

    def test_exit_leaves_adopted_reactor_alone(self) -> None:
        """An adopted reactor is the application's to stop: nothing is registered to stop it at exit."""
        self.world.thread.adopt()
        self.world.client().call_async("add", 1, 2)
        self.assertEqual(self.world.at_exit, [])


class WrongThreadTests(SynchronousTestCase):
    """
    Tests for blocking on the reactor thread, which must fail at once, never deadlock.
    """

    def setUp(self) -> None:
        self.world = World()
        self.client = self.world.client()
        self.client.call("add", 0, 0)
        self.world.waits.clear()
        self.world.current = REACTOR_THREAD

    def test_call_on_reactor_thread_refused(self) -> None:
        """call() on the reactor thread raises WrongThreadError naming the async API, and sends nothing."""
        error = self.assertRaises(WrongThreadError, self.client.call, "add", 1, 2)
        self.assertIsInstance(error, RuntimeError)
        self.assertIn("callnet.client.Client", str(error))
        self.assertIn("call_async", str(error))
        self.world.pump()
        self.assertEqual(self.world.sent(), ["add"])
        self.assertEqual(self.world.waits, [])

    def test_every_blocking_method_refused(self) -> None:
        """cast(), command(), ping() and a handle's blocking result() are refused there too."""
        self.assertRaises(WrongThreadError, self.client.cast, "echo", 1)
        self.assertRaises(WrongThreadError, self.client.command, "STATS")
        self.assertRaises(WrongThreadError, self.client.ping)
        handle = self.client.call_async("sleep", 1)
        self.assertRaises(WrongThreadError, handle.result)
        self.assertRaises(WrongThreadError, handle.result, 5)
        self.assertEqual(self.world.waits, [])

    def test_result_zero_polls_on_reactor_thread(self) -> None:
        """result(0) never blocks, so it may poll on the reactor thread."""
        pending = self.client.call_async("sleep", 1)
        self.assertRaises(TimeoutError, pending.result, 0)
        handle = self.client.call_async("add", 1, 2)
        self.world.node.serve()
        self.assertEqual(handle.result(0), 3)

    def test_call_async_on_reactor_thread(self) -> None:
        """call_async() on the reactor thread sends at once and its Deferred fires with the result."""
        handle = self.client.call_async("add", 1, 2)
        self.world.node.serve()
        self.assertEqual(self.successResultOf(handle.as_deferred()), 3)

    def test_await_handle(self) -> None:
        """A handle can be awaited in a coroutine under the reactor."""
        handle = self.client.call_async("sleep", 1)

        async def use() -> Any:
            return await handle

        result = Deferred.fromCoroutine(use())
        self.assertNoResult(result)
        self.world.node.serve()
        self.world.node.reply(self.world.node.requests[-1].tag or "", 7)
        self.assertEqual(self.successResultOf(result), 7)

    def test_as_deferred_off_reactor_thread_refused(self) -> None:
        """as_deferred() from another thread raises WrongThreadError: Deferreds are not thread-safe."""
        self.world.current = CALLER_THREAD
        handle = self.client.call_async("add", 1, 2)
        self.assertRaises(WrongThreadError, handle.as_deferred)

    def test_close_on_reactor_thread(self) -> None:
        """close() does not block, so the reactor thread may call it."""
        handle = self.client.call_async("sleep", 1)
        self.client.close()
        self.failureResultOf(handle.as_deferred(), UnavailableError)


class CallTests(SynchronousTestCase):
    """
    Tests for L{BlockingClient.call} and the other blocking methods.
    """

    def setUp(self) -> None:
        self.world = World()
        self.client = self.world.client()

    def test_call_returns_result(self) -> None:
        """call() returns the procedure's result, sent with the call's deadline."""
        self.assertEqual(self.client.call("add", 1, 2), 3)
        [request] = self.world.node.requests
        self.assertEqual(request.args, (1, 2))
        self.assertEqual(request.timeout, 30.0)

    def test_options_reach_the_wire(self) -> None:
        """Keyword arguments, the timeout, the idempotency key and the trace id are sent."""
        self.client.call("echo", value=1, timeout=2.5, key="k-1", trace="t-1")
        [request] = self.world.node.requests
        self.assertEqual((request.kwargs, request.timeout), ({"value": 1}, 2.5))
        self.assertEqual((request.key, request.trace), ("k-1", "t-1"))

    def test_remote_error_raised_typed(self) -> None:
        """A node's error reply is raised as its own CallError subclass."""
        error = self.assertRaises(NotFoundError, self.client.call, "nosuch")
        self.assertIs(error.outcome, Outcome.NOT_RUN)

    def test_cast(self) -> None:
        """cast() returns once the call is handed over, and the node is asked for no reply."""
        self.client.cast("echo", 1)
        [request] = self.world.node.requests
        self.assertTrue(request.cast)

    def test_cast_arguments_not_json(self) -> None:
        """A cast whose arguments are not JSON fails at once with InvalidArgumentError, never a wait."""
        self.client.call("add", 0, 0)
        waits = len(self.world.waits)
        error = self.assertRaises(CallError, self.client.cast, "echo", {1, 2})
        self.assertEqual(error.code, "INVALID_ARGUMENT")
        self.assertLessEqual(len(self.world.waits) - waits, 1)

    def test_ping_and_command(self) -> None:
        """ping() returns the node's pong."""
        self.assertEqual(self.client.ping(), "pong")

    def test_bad_timeouts_refused(self) -> None:
        """A timeout that is not a finite number of seconds is a ValueError, not an endless wait."""
        self.assertRaises(ValueError, self.world.client, 0)
        self.assertRaises(ValueError, self.client.call, "add", 1, 2, timeout=float("inf"))
        self.assertRaises(ValueError, self.client.call, "add", 1, 2, timeout=float("nan"))

    def test_bad_endpoint_string_refused_when_made(self) -> None:
        """An endpoint string Twisted cannot build is a ValueError naming it when the client is made, not a call that waits out its deadline."""
        for endpoint in ("tcp:127.0.0.1", "tcp6:[::1]:7600", "nosuch:x"):
            error = self.assertRaises(ValueError, BlockingClient, endpoint)
            self.assertIn(repr(endpoint), str(error))
        self.assertEqual(self.world.reactor.queue, [])

    def test_arguments_not_json(self) -> None:
        """Arguments that are not JSON fail that call with InvalidArgumentError, not-run."""
        error = self.assertRaises(CallError, self.client.call, "echo", {1, 2})
        self.assertEqual(error.code, "INVALID_ARGUMENT")
        self.assertIs(error.outcome, Outcome.NOT_RUN)


class TimeoutTests(SynchronousTestCase):
    """
    Tests for deadlines: every wait ends, and a call that times out is cancelled on the node.
    """

    def setUp(self) -> None:
        self.world = World()
        self.client = self.world.client()

    def test_timeout_cancels_call_on_node(self) -> None:
        """A call past its timeout raises DeadlineExceededError (may have run) and the node gets CANCEL."""
        start = self.world.now
        error = self.assertRaises(DeadlineExceededError, self.client.call, "sleep", 5, timeout=0.5)
        self.assertIs(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertIn("may-have-run", str(error))
        [request] = self.world.node.requests
        self.assertEqual(self.world.node.cancelled, [request.tag])
        # The reactor's own timer answered, before the caller's grace ran out.
        self.assertTrue(0.5 <= self.world.now - start < 0.5 + GRACE)

    def test_wait_never_exceeds_timeout_plus_grace(self) -> None:
        """When the reactor does not answer, the caller gives up at exactly timeout + grace."""
        self.world.client().call("add", 0, 0)
        self.world.responsive = False
        start = self.world.now
        error = self.assertRaises(DeadlineExceededError, self.client.call, "add", 1, 2, timeout=2)
        self.assertAlmostEqual(self.world.now - start, 2 + GRACE, places=9)
        self.assertIs(error.outcome, Outcome.NOT_RUN)
        self.assertIn("reactor did not answer", str(error))
        self.world.pump()
        self.assertEqual(self.world.sent(), ["add"])  # the late call was never sent

    def test_caller_gives_up_on_sent_call(self) -> None:
        """A call sent before the reactor froze is given up as may-have-run, and cancelled when it wakes."""
        handle = self.client.call_async("sleep", 5, timeout=1)
        self.world.pump()
        self.world.responsive = False
        error = self.assertRaises(DeadlineExceededError, handle.result)
        self.assertIs(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertIn("may have run", str(error))
        self.world.pump()
        self.assertEqual(self.world.node.cancelled, [self.world.node.requests[0].tag])
        self.assertIs(
            self.assertRaises(DeadlineExceededError, handle.result).outcome, Outcome.MAY_HAVE_RUN
        )

    def test_deadline_counts_time_spent_queued(self) -> None:
        """The deadline sent to the node is what is left after waiting for the reactor thread."""
        handle = self.client.call_async("add", 1, 2, timeout=3)
        self.world.now += 1
        self.world.pump()
        self.assertEqual(handle.result(0), 3)
        self.assertEqual(self.world.node.requests[0].timeout, 2.0)

    def test_result_timeout_does_not_cancel(self) -> None:
        """result(timeout) shorter than the deadline raises TimeoutError and the call goes on."""
        handle = self.client.call_async("sleep", 5, timeout=10)
        start = self.world.now
        self.assertRaises(TimeoutError, handle.result, 1)
        self.assertAlmostEqual(self.world.now - start, 1, places=9)
        self.assertFalse(handle.done())
        self.assertEqual(self.world.node.cancelled, [])
        self.world.node.reply(self.world.node.requests[0].tag or "", 5)
        self.assertEqual(handle.result(), 5)

    def test_result_until_deadline_cancels(self) -> None:
        """result() with no timeout waits for the call's deadline, which cancels the call."""
        handle = self.client.call_async("sleep", 5, timeout=2)
        self.assertRaises(DeadlineExceededError, handle.result)
        self.assertEqual(len(self.world.node.cancelled), 1)


class InterruptTests(SynchronousTestCase):
    """
    Tests for Ctrl-C during a blocking call.
    """

    def setUp(self) -> None:
        self.world = World()
        self.client = self.world.client()

    def interrupt_once_sent(self) -> None:
        if self.world.node.requests:
            raise KeyboardInterrupt

    def test_interrupt_cancels_call(self) -> None:
        """KeyboardInterrupt during call() propagates and the call is cancelled on the node."""
        self.world.on_wait = self.interrupt_once_sent
        self.assertRaises(KeyboardInterrupt, self.client.call, "sleep", 30)
        self.world.pump()
        self.assertEqual(self.world.node.cancelled, [self.world.node.requests[0].tag])

    def test_main_thread_wait_wakes_to_be_interrupted(self) -> None:
        """On the main thread a long wait is taken in short steps, so a pending KeyboardInterrupt runs soon."""
        self.assertRaises(DeadlineExceededError, self.client.call, "sleep", 30, timeout=1)
        self.assertTrue(self.world.waits)
        self.assertLessEqual(max(self.world.waits), 0.1)

    def test_interrupt_while_waiting_on_handle_keeps_call(self) -> None:
        """KeyboardInterrupt while waiting on a handle leaves the call to its handle, uncancelled."""
        handle = self.client.call_async("sleep", 30)
        self.world.on_wait = self.interrupt_once_sent
        self.assertRaises(KeyboardInterrupt, handle.result)
        self.world.on_wait = None
        self.world.pump()
        self.assertEqual(self.world.node.cancelled, [])
        self.assertFalse(handle.done())


class ShutdownTests(SynchronousTestCase):
    """
    Tests for reactor shutdown, which must release every waiter at once.
    """

    def setUp(self) -> None:
        self.world = World()
        self.client = self.world.client()
        self.client.call("add", 0, 0)

    def stop_reactor(self) -> None:
        self.world.on_reactor(self.world.reactor.stop)

    def test_shutdown_releases_sent_call(self) -> None:
        """A blocked call already sent fails with UnavailableError, may-have-run, and is cancelled on the node."""

        def stop_once_sent() -> None:
            if len(self.world.node.requests) == 2:
                self.stop_reactor()

        self.world.on_wait = stop_once_sent
        start = self.world.now
        error = self.assertRaises(UnavailableError, self.client.call, "sleep", 30)
        self.assertIs(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertIn("shutting down", str(error))
        self.assertLess(self.world.now - start, 1)
        self.assertEqual(self.world.node.cancelled, [self.world.node.requests[1].tag])

    def test_shutdown_releases_unsent_call(self) -> None:
        """A call still queued for the reactor fails with UnavailableError, not-run."""
        handle = self.client.call_async("add", 1, 2)
        self.stop_reactor()
        error = self.assertRaises(UnavailableError, handle.result)
        self.assertIs(error.outcome, Outcome.NOT_RUN)
        self.world.pump()
        self.assertEqual(self.world.sent(), ["add"])

    def test_shutdown_releases_call_waiting_to_connect(self) -> None:
        """A call waiting for a connection fails with UnavailableError, not-run."""
        self.world.node.connections[0][0].connectionLost()
        self.world.node.hold = True
        handle = self.client.call_async("add", 1, 2)
        self.world.pump()
        self.stop_reactor()
        error = self.assertRaises(UnavailableError, handle.result)
        self.assertIs(error.outcome, Outcome.NOT_RUN)

    def test_calls_after_shutdown_fail_at_once(self) -> None:
        """After shutdown a call raises UnavailableError, not-run, without waiting."""
        self.stop_reactor()
        self.world.waits.clear()
        error = self.assertRaises(UnavailableError, self.client.call, "add", 1, 2)
        self.assertIs(error.outcome, Outcome.NOT_RUN)
        self.assertIn("stopped", str(error))
        self.assertEqual(self.world.waits, [])
        self.assertRaises(UnavailableError, self.client.call_async, "add", 1, 2)
        self.assertEqual(self.world.reactor.queue, [])


class CloseTests(SynchronousTestCase):
    """
    Tests for L{BlockingClient.close}.
    """

    def setUp(self) -> None:
        self.world = World()
        self.client = self.world.client()

    def test_close_releases_every_call(self) -> None:
        """close() fails every call in flight with UnavailableError and cancels them on the node."""
        first = self.client.call_async("sleep", 5)
        second = self.client.call_async("sleep", 6)
        self.world.pump()
        self.client.close()
        for handle in (first, second):
            error = self.assertRaises(UnavailableError, handle.result, 0)
            self.assertIn("closed", str(error))
            self.assertIs(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(len(self.world.node.cancelled), 2)
        self.assertTrue(self.world.node.connections[0][1].disconnecting)

    def test_close_releases_blocked_caller(self) -> None:
        """A caller blocked in call() is released when another thread closes the client."""

        def close_once_sent() -> None:
            if self.world.node.requests:
                self.world.on_wait = None
                self.client.close()

        self.world.on_wait = close_once_sent
        start = self.world.now
        self.assertRaises(UnavailableError, self.client.call, "sleep", 30)
        self.assertLess(self.world.now - start, 1)

    def test_close_leaves_other_clients(self) -> None:
        """Closing one client does not touch another client's calls."""
        other = self.world.client()
        handle = other.call_async("sleep", 5)
        self.client.call("add", 1, 2)
        self.client.close()
        self.assertFalse(handle.done())

    def test_calls_after_close_fail(self) -> None:
        """After close() a call raises UnavailableError, not-run, at once."""
        with self.client as client:
            client.call("add", 1, 2)
        error = self.assertRaises(UnavailableError, self.client.call, "add", 1, 2)
        self.assertIs(error.outcome, Outcome.NOT_RUN)
        self.client.close()


class HandleTests(SynchronousTestCase):
    """
    Tests for L{CallHandle}: polling, waiting, cancelling and callbacks.
    """

    def setUp(self) -> None:
        self.world = World()
        self.client = self.world.client()

    def test_done_and_result(self) -> None:
        """done() turns true when the reactor has the answer; result() returns it, every time."""
        handle = self.client.call_async("add", 1, 2)
        self.assertIsInstance(handle, CallHandle)
        self.assertFalse(handle.done())
        self.world.pump()
        self.assertTrue(handle.done())
        self.assertEqual(handle.result(), 3)
        self.assertEqual(handle.result(0), 3)

    def test_calls_cross_together(self) -> None:
        """Calls made before the reactor thread runs cross in one wake-up, in order."""
        handles = [self.client.call_async("add", n, 1) for n in range(5)]
        self.assertEqual(len(self.world.reactor.queue), 1)
        self.world.pump()
        self.assertEqual([handle.result(0) for handle in handles], [1, 2, 3, 4, 5])
        self.assertEqual(
            [call.args for call in self.world.node.requests], [(n, 1) for n in range(5)]
        )
        self.client.call_async("add", 1, 1)
        self.assertEqual(len(self.world.reactor.queue), 1)

    def test_error_raised_each_time(self) -> None:
        """A failed call's handle raises the same error from every result()."""
        handle = self.client.call_async("nosuch")
        self.world.pump()
        first = self.assertRaises(NotFoundError, handle.result)
        self.assertIs(self.assertRaises(NotFoundError, handle.result), first)

    def test_callbacks_run_on_reactor_thread(self) -> None:
        """A callback added before the call is done runs once, on the reactor thread."""
        seen: list[tuple[CallHandle, int]] = []
        handle = self.client.call_async("add", 1, 2)
        handle.add_done_callback(lambda h: seen.append((h, self.world.current)))
        self.assertEqual(seen, [])
        self.world.pump()
        self.assertEqual(seen, [(handle, REACTOR_THREAD)])

    def test_callback_on_done_handle_runs_at_once(self) -> None:
        """A callback added after the call is done runs at once, in the calling thread."""
        handle = self.client.call_async("add", 1, 2)
        self.world.pump()
        seen: list[int] = []
        handle.add_done_callback(lambda h: seen.append(self.world.current))
        self.assertEqual(seen, [CALLER_THREAD])

    def test_failing_callback_logged(self) -> None:
        """A callback that raises is logged, and the other callbacks still run."""
        seen: list[Any] = []
        handle = self.client.call_async("add", 1, 2)
        handle.add_done_callback(lambda h: 1 / 0)
        handle.add_done_callback(lambda h: seen.append(h.result(0)))
        self.world.pump()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(seen, [3])

    def test_cancel_sent_call(self) -> None:
        """cancel() cancels the call on the node; the handle fails with CallCancelledError, may-have-run."""
        handle = self.client.call_async("sleep", 5)
        self.world.pump()
        self.assertTrue(handle.cancel())
        self.world.pump()
        error = self.assertRaises(CallCancelledError, handle.result, 0)
        self.assertIs(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(self.world.node.cancelled, [self.world.node.requests[0].tag])
        self.assertFalse(handle.cancel())

    def test_cancel_before_sent(self) -> None:
        """A call cancelled before the reactor sent it fails not-run and never reaches the node."""
        handle = self.client.call_async("add", 1, 2)
        handle.cancel()
        self.world.pump()
        error = self.assertRaises(CallCancelledError, handle.result, 0)
        self.assertIs(error.outcome, Outcome.NOT_RUN)
        self.assertEqual(self.world.node.requests, [])

    def test_cancelling_deferred_cancels_call(self) -> None:
        """Cancelling the Deferred from as_deferred() cancels the call on the node."""
        handle = self.client.call_async("sleep", 5)
        self.world.pump()
        result = self.world.on_reactor(handle.as_deferred)
        self.world.on_reactor(result.cancel)
        self.failureResultOf(result, CallCancelledError)
        self.world.pump()
        self.assertEqual(len(self.world.node.cancelled), 1)

    def test_as_deferred_of_done_handle(self) -> None:
        """as_deferred() of a finished call has its result already."""
        handle = self.client.call_async("nosuch")
        self.world.pump()
        self.failureResultOf(self.world.on_reactor(handle.as_deferred), NotFoundError)


class ForkTests(SynchronousTestCase):
    """
    Tests for a process forked after the reactor thread started.
    """

    def setUp(self) -> None:
        self.world = World()
        self.client = self.world.client()

    def test_child_refuses_calls(self) -> None:
        """In a forked child every call raises ForkedProcessError at once, naming fork."""
        self.client.call("add", 1, 2)
        [after_in_child] = self.world.at_fork
        after_in_child()
        self.assertEqual(self.world.thread.state, "forked")
        waits = len(self.world.waits)
        error = self.assertRaises(ForkedProcessError, self.client.call, "add", 1, 2)
        self.assertIn("fork", str(error))
        self.assertRaises(ForkedProcessError, self.world.client().call_async, "add", 1, 2)
        self.assertEqual(len(self.world.waits), waits)

    def test_child_does_not_deadlock_on_held_lock(self) -> None:
        """A lock held by another thread at the fork does not hang the child's call."""
        self.client.call("add", 1, 2)
        self.world.thread._lock.acquire()
        self.world.at_fork[0]()
        self.assertRaises(ForkedProcessError, self.client.call, "add", 1, 2)

    def test_fork_before_first_call_is_harmless(self) -> None:
        """Nothing watches for fork until the reactor thread starts, so a child forked earlier may call."""
        self.assertEqual(self.world.at_fork, [])
        self.assertEqual(self.client.call("add", 1, 2), 3)


class DoneTests(SynchronousTestCase):
    """
    Tests for the event a L{CallHandle} is waited on with, over real threads.
    """

    def test_wakes_every_waiter(self) -> None:
        """Every thread waiting on it wakes when it is set, however many wait."""
        from callnet.blocking import _Done

        done = _Done()
        woken: list[bool] = []
        waiters = [threading.Thread(target=lambda: woken.append(done.wait(30))) for _ in range(8)]
        for waiter in waiters:
            waiter.start()
        self.assertFalse(done.is_set())
        done.set()
        for waiter in waiters:
            waiter.join(30)
        self.assertEqual(woken, [True] * 8)
        self.assertTrue(done.wait(0))

    def test_timeout(self) -> None:
        """Waiting on one not set gives up after the timeout and says so."""
        from callnet.blocking import _Done

        done = _Done()
        self.assertFalse(done.wait(0.01))
        self.assertFalse(done.wait(0))
        done.set()
        done.set()
        self.assertTrue(done.wait(0))
