"""
Test your own procedures and callers without sockets, threads or waiting.

L{MemoryNode} is a node in memory: the real registry, dispatcher and
protocol, a clock you advance by hand, and plain procedures run at once
instead of in a thread.  Its L{MemoryNode.client} is a real
L{callnet.client.Client} joined to it by an in-memory connection::

    from twisted.trial.unittest import SynchronousTestCase
    from callnet.testing import MemoryNode

    class GreeterTests(SynchronousTestCase):
        def test_greet(self):
            node = MemoryNode([greeter.greet])
            client = node.client()
            d = client.call("greet", "Ada")
            node.flush()
            self.assertEqual(self.successResultOf(d), "Hello, Ada!")

Bytes move between client and node only when you call L{MemoryNode.flush}
(or L{MemoryNode.advance}, which also moves the clock), so a test decides
exactly what has happened at each step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from callnet.client import DEFAULT_TIMEOUT, Client
from callnet.config import Limits
from callnet.dispatch import Dispatcher
from callnet.protocol import NodeFactory, NodeProtocol
from callnet.registry import Registry
from callnet.wire import Event, LineDecoder

__all__ = ["ManualThreadPool", "MemoryNode", "MemoryReactor", "StringConnection"]


class MemoryReactor(MemoryReactorClock):
    """A memory reactor and clock whose C{callFromThread} runs the call at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class InlineThreadPool:
    """A thread pool that runs each job at once, in the caller's thread."""

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any
    ) -> None:
        try:
            result = func(*args)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ManualThreadPool:
    """A thread pool whose jobs wait until L{run_all} runs them, in order."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[bool, Any], None], Callable[[], Any]]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any
    ) -> None:
        self.jobs.append((on_result, lambda: func(*args)))

    def run_all(self) -> int:
        """Run every queued job as a worker thread would; return how many ran."""
        ran = 0
        while self.jobs:
            on_result, job = self.jobs.pop(0)
            InlineThreadPool().callInThreadWithCallback(on_result, job)
            ran += 1
        return ran


class MemoryNode:
    """
    A node in memory, for tests.

    @param procedures: functions to serve (marked with C{@procedure} or not).
    @param name: the node's name, as errors show it.
    @param limits: the node's limits; the defaults otherwise.
    @param threads: C{"inline"} runs plain procedures at once; C{"manual"}
        queues them until C{node.threads.run_all()}, to test what happens
        while they run.
    @param send_tracebacks: as the node option: send undeclared errors'
        tracebacks to callers.
    """

    def __init__(
        self,
        procedures: Iterable[Callable[..., Any]] = (),
        *,
        name: str = "memory",
        limits: Limits | None = None,
        threads: str = "inline",
        send_tracebacks: bool = False,
    ) -> None:
        self.clock = MemoryReactor()
        self.name = name
        self.limits = limits or Limits()
        self.threads: InlineThreadPool | ManualThreadPool = (
            ManualThreadPool() if threads == "manual" else InlineThreadPool()
        )
        self.registry = Registry()
        self.registry.add_all(procedures)
        self.dispatcher = Dispatcher(
            self.registry,
            self.clock,
            self.threads,  # type: ignore[arg-type]
            self.limits,
            name,
            send_tracebacks=send_tracebacks,
        )
        self.factory = NodeFactory(self.dispatcher, self.limits, name, self.clock)
        self._pumps: list[iosim.IOPump] = []

    def client(self, timeout: float = DEFAULT_TIMEOUT) -> Client:
        """A real async client whose connections reach this node in memory."""
        return Client(_MemoryEndpoint(self), self.clock, timeout=timeout)

    def flush(self) -> None:
        """Move bytes both ways on every connection until none is left to move."""
        moved = True
        while moved:
            moved = False
            for pump in list(self._pumps):
                moved = pump.flush(advanceClock=False) or moved

    def advance(self, seconds: float) -> None:
        """Move the clock on by C{seconds}, then L{flush}."""
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    def connect_raw(self) -> StringConnection:
        """A connection that records the node's bytes, for protocol-level tests."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(protocol, NodeProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return StringConnection(protocol, transport)


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    """Connects a client factory to a L{MemoryNode} through an L{iosim.IOPump}."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        node = self._node
        address = IPv4Address("TCP", "127.0.0.1", 40000 + len(node._pumps))
        client = factory.buildProtocol(address)
        server = node.factory.buildProtocol(address)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=node.clock,
        )
        node._pumps.append(pump)
        return succeed(client)


class StringConnection:
    """One client's raw view of a L{MemoryNode}: send lines, read reply lines."""

    def __init__(self, protocol: NodeProtocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes | str) -> None:
        """Deliver bytes to the node as if they came from the network."""
        self.protocol.dataReceived(data.encode("utf-8") if isinstance(data, str) else data)

    def lines(self) -> list[bytes]:
        """The complete lines the node wrote since the last call."""
        data: bytes = self.transport.value()
        self.transport.clear()
        return data.splitlines()

    def events(self) -> list[Event]:
        """The replies the node wrote since the last call, decoded."""
        decoder = LineDecoder()
        decoder.feed(self.transport.value())
        self.transport.clear()
        events = []
        while (event := decoder.next_event()) is not None:
            events.append(event)
        return events
