"""
The blocking client's streams and progress reports, on both paths: the
reactor path over a fake reactor and a scripted node (no threads, every wait
simulated), and the plain-socket path against a scripted line server on a
loopback socket.  The same behaviour is asked of both: items in order, the
window granted only as items are taken, the final result, typed errors with
the outcome ran once an item arrived, and cancelling by leaving the block,
by the deadline and by Ctrl-C.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from callnet.blocking import BlockingClient, BlockingStream, _wait
from callnet.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    UnavailableError,
)
from callnet.wire import (
    Call,
    Command,
    LineDecoder,
    Progress,
    encode_failure,
    encode_item,
    encode_progress,
    encode_success,
)
from tests.test_blocking import FakeNode, World
from tests.test_blocking_direct import WAIT, LineServer

# --- A node that streams, scripted ----------------------------------------


class Streams:
    """
    What a scripted node does with streams, whatever carries its lines:
    C{count n} yields 0 .. n-1 within the caller's window, C{stall} yields
    one item and then nothing, C{fail} yields one item and raises, and
    C{build} reports progress before its result.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Call] = []
        self.grants: list[int] = []
        self.cancelled: list[str] = []
        #: tag -> [items still to send, credit left, final value]
        self.open: dict[str, list[Any]] = {}
        #: When set, C{build} answers only once the test opens it.
        self.gate: threading.Event | None = None

    def handle(self, event: object) -> bytes:
        """The node's lines in answer to one event from the client."""
        with self.lock:
            if isinstance(event, Call):
                return self._call(event)
            if isinstance(event, Command) and event.verb == "MORE":
                tag, count = str(event.args[0]).lstrip("#"), int(event.args[1])
                self.grants.append(count)
                state = self.open.get(tag)
                if state is None:
                    return b""
                state[1] += count
                return self._send(tag)
            if isinstance(event, Command) and event.verb == "CANCEL":
                tag = str(event.args[0])
                self.cancelled.append(tag)
                if self.open.pop(tag, None) is not None:
                    return b"#%b ERR CANCELLED ran cancelled\n" % tag.encode()
            return b""

    def _call(self, call: Call) -> bytes:
        self.requests.append(call)
        tag = call.tag or ""
        if call.procedure == "build":
            if self.gate is not None:
                self.gate.wait(WAIT)
            report = encode_progress(1, 2, "half", tag) if call.progress else b""
            return report + encode_success("built", tag)
        if call.window is None:
            return encode_failure(
                InvalidArgumentError(f"{call.procedure} streams: ask with +window (stream())"),
                tag,
            )
        if call.procedure == "count":
            self.open[tag] = [list(range(call.args[0])), call.window, call.args[0]]
            return self._send(tag)
        if call.procedure == "fail":
            return encode_item("one", tag) + encode_failure(NotFoundError("row gone"), tag)
        if call.procedure == "stall":
            self.open[tag] = [[], 0, None]
            return encode_item("one", tag)
        return encode_failure(NotFoundError(f"no procedure {call.procedure}"), tag)

    def _send(self, tag: str) -> bytes:
        items, credit, final = self.open[tag]
        out = b""
        while items and credit > 0:
            out += encode_item(items.pop(0), tag)
            credit -= 1
        self.open[tag][1] = credit
        if not items and final is not None:
            del self.open[tag]
            out += encode_success(final, tag)
        return out


class StreamingNode(FakeNode):
    """The fake reactor's node, streaming as L{Streams} says."""

    def __init__(self) -> None:
        super().__init__()
        self.streams = Streams()

    def serve(self) -> bool:
        worked = False
        for protocol, transport, decoder in self.connections:
            data = transport.value()
            transport.clear()
            if not data:
                continue
            worked = True
            decoder.feed(data)
            while (event := decoder.next_event()) is not None:
                reply = self.streams.handle(event)
                if reply:
                    protocol.dataReceived(reply)
        return worked


class StreamServer(LineServer):
    """The loopback line server, streaming as L{Streams} says."""

    def __init__(self) -> None:
        self.streams = Streams()
        decoder = LineDecoder()

        def handler(line: bytes) -> bytes | None:
            decoder.feed(line + b"\n")
            out = b""
            while (event := decoder.next_event()) is not None:
                out += self.streams.handle(event)
            return out or None

        super().__init__(handler)


# --- The paths, as fixtures ------------------------------------------------


class Path:
    """A blocking client on one path, and the scripted node behind it."""

    def __init__(self, client: BlockingClient, streams: Streams, world: World | None) -> None:
        self.client = client
        self.streams = streams
        self.world = world

    def settle(self) -> None:
        """Let what was sent reach the node (the fake reactor's turn, or the socket's)."""
        if self.world is not None:
            self.world.pump()


@pytest.fixture(params=["direct", "reactor"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A client on the plain-socket path or the reactor path, to a node that streams."""
    if request.param == "reactor":
        world = World()
        node = world.node = StreamingNode()
        client = BlockingClient(node, 30.0, reactor_thread=world.thread)  # type: ignore[arg-type]
        yield Path(client, node.streams, world)
        return
    # Play a program with no reactor: the test runner's own, which starts in
    # the main thread when the session's first test runs, is not seen.
    monkeypatch.setattr(_wait, "on_running_reactor_thread", lambda: False)
    server = StreamServer()
    client = BlockingClient(server.endpoint, 30.0, transport="direct")
    try:
        yield Path(client, server.streams, None)
    finally:
        client.close()
        server.close()


def settled_cancels(path: Path) -> list[str]:
    """The tags the node was asked to cancel, once what was sent has arrived."""
    path.settle()
    if path.world is None:
        # The socket: ask something after the cancel and wait for its answer.
        path.client.call("build")
    return path.streams.cancelled


# --- Tests ----------------------------------------------------------------


def test_items_in_order_then_result(path: Path) -> None:
    """A for loop takes every item in order, and the final reply is the stream's result."""
    with path.client.stream("count", 5, window=2) as items:
        assert isinstance(items, BlockingStream)
        assert list(items) == [0, 1, 2, 3, 4]
        assert items.result == 5
    [request] = path.streams.requests
    assert request.window == 2


def test_grants_follow_the_reader(path: Path) -> None:
    """The node is granted more items only as the reader takes them, half a window at a time."""
    with path.client.stream("count", 10, window=4) as items:
        assert next(items) == 0
        path.settle()
        assert path.streams.grants == []
        assert next(items) == 1
        assert list(items) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert set(path.streams.grants) == {2}
    assert sum(path.streams.grants) >= 6  # 10 items in a window of 4


def test_leaving_the_block_cancels(path: Path) -> None:
    """Leaving the with block before the end (a break) cancels the stream on the node."""
    with path.client.stream("count", 100, window=4) as items:
        for item in items:
            if item == 1:
                break
    tag = path.streams.requests[0].tag
    assert settled_cancels(path) == [tag]
    assert list(items) == []


def test_error_after_an_item_ran(path: Path) -> None:
    """An error after the first item is raised typed, with the outcome ran."""
    with path.client.stream("fail") as items:
        assert next(items) == "one"
        with pytest.raises(NotFoundError) as caught:
            next(items)
        assert caught.value.outcome is Outcome.RAN
        assert list(items) == []
        with pytest.raises(RuntimeError):
            items.result  # noqa: B018


def test_refusal_keeps_its_outcome(path: Path) -> None:
    """A stream the node refuses before any item keeps not-run; call() on a stream is refused as such."""
    with pytest.raises(NotFoundError) as caught, path.client.stream("nosuch") as items:
        next(items)
    assert caught.value.outcome is Outcome.NOT_RUN
    with pytest.raises(InvalidArgumentError, match=r"stream\(\)"):
        path.client.call("count", 3)


def test_deadline_mid_stream(path: Path) -> None:
    """The deadline covers the whole stream: it passes while waiting, cancels the node, and says ran."""
    with path.client.stream("stall", timeout=0.3) as items:
        assert next(items) == "one"
        with pytest.raises(DeadlineExceededError) as caught:
            next(items)
    assert caught.value.outcome is Outcome.RAN
    assert settled_cancels(path) == [path.streams.requests[0].tag]


def test_ctrl_c_cancels_and_reraises(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt while waiting for an item cancels the stream on the node and is raised."""
    items = path.client.stream("stall", timeout=20)
    assert next(items) == "one"
    if path.world is not None:

        def interrupt() -> None:
            raise KeyboardInterrupt

        path.world.on_wait = interrupt
    else:
        timer = threading.Timer(0.2, lambda: _interrupt_main())
        timer.start()
    with pytest.raises(KeyboardInterrupt):
        next(items)
    if path.world is not None:
        path.world.on_wait = None
    assert settled_cancels(path) == [path.streams.requests[0].tag]
    assert list(items) == []


def _interrupt_main() -> None:
    import _thread

    _thread.interrupt_main()


def test_closed_client_ends_the_stream(path: Path) -> None:
    """Closing the client mid-stream fails the reader UNAVAILABLE, ran."""
    items = path.client.stream("stall")
    assert next(items) == "one"
    if path.world is not None:
        path.client.close()
        path.world.pump()
    else:
        threading.Timer(0.1, path.client.close).start()
    with pytest.raises(UnavailableError) as caught:
        next(items)
    assert caught.value.outcome is Outcome.RAN


def test_bad_window(path: Path) -> None:
    """A window that is not a whole number from 1 is refused before anything is sent."""
    with pytest.raises(ValueError, match="window"):
        path.client.stream("count", 1, window=0)
    assert path.streams.requests == []


def test_progress_on_the_handle(path: Path) -> None:
    """call_async asks for +progress, and its handle hands each report to its progress callbacks."""
    reports: list[Progress] = []
    done = threading.Event()
    if path.world is None:
        path.streams.gate = threading.Event()  # the node answers once the callback is added
    handle = path.client.call_async("build")
    handle.add_progress_callback(reports.append)
    handle.add_done_callback(lambda _: done.set())
    if path.streams.gate is not None:
        path.streams.gate.set()
    if path.world is not None:
        path.world.pump()
    assert done.wait(WAIT)
    assert handle.result() == "built"
    assert [(r.done, r.total, r.message) for r in reports] == [(1, 2, "half")]
    assert path.streams.requests[0].progress is True


class ProgressOrderTests(SynchronousTestCase):
    """Progress on the reactor path, where the order of events is the test's to choose."""

    def test_reports_reach_callbacks_before_the_result(self) -> None:
        """A callback added before the reply arrives sees every report, before the handle is done."""
        world = World()
        node = world.node = StreamingNode()
        client = BlockingClient(node, 30.0, reactor_thread=world.thread)  # type: ignore[arg-type]
        handle = client.call_async("build")
        seen: list[tuple[float, bool]] = []
        handle.add_progress_callback(lambda report: seen.append((report.done, handle.done())))
        world.pump()
        self.assertEqual(seen, [(1, False)])
        self.assertEqual(handle.result(), "built")

    def test_a_failing_callback_is_logged(self) -> None:
        """A progress callback that raises is logged, and the call still completes."""
        world = World()
        node = world.node = StreamingNode()
        client = BlockingClient(node, 30.0, reactor_thread=world.thread)  # type: ignore[arg-type]
        handle = client.call_async("build")

        def broken(report: Progress) -> None:
            raise RuntimeError("no display")

        handle.add_progress_callback(broken)
        world.pump()
        self.assertEqual(handle.result(), "built")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
