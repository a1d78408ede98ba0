"""
Deterministic stand-ins for the parts of a node that touch threads or time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from callnet.config import Limits
from callnet.dispatch import Dispatcher
from callnet.protocol import NodeFactory, NodeProtocol
from callnet.registry import Registry
from callnet.wire import Event, LineDecoder


class ThreadlessReactor(MemoryReactorClock):
    """A memory reactor whose C{callFromThread} runs the call at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class ManualThreadPool:
    """A thread pool whose jobs run only when a test says so, in order."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[bool, Any], None], Callable[[], Any]]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any
    ) -> None:
        self.jobs.append((on_result, lambda: func(*args)))

    def run_all(self) -> int:
        """Run every queued job as a worker thread would; return how many ran."""
        from twisted.python.failure import Failure

        ran = 0
        while self.jobs:
            on_result, job = self.jobs.pop(0)
            try:
                result = job()
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)
            ran += 1
        return ran


class MemoryNode:
    """A node with no sockets: a registry, a dispatcher and a protocol factory."""

    def __init__(self, limits: Limits | None = None, name: str = "test") -> None:
        self.reactor = ThreadlessReactor()
        self.threads = ManualThreadPool()
        self.registry = Registry()
        self.limits = limits or Limits()
        self.dispatcher = Dispatcher(
            self.registry,
            self.reactor,
            self.threads,  # type: ignore[arg-type]
            self.limits,
            name,
        )
        self.factory = NodeFactory(self.dispatcher, self.limits, name, self.reactor)

    def connect(self) -> Connection:
        """Open a connection to the node over a L{StringTransport}."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return Connection(protocol, transport)


class Connection:
    """One client's view of a L{MemoryNode}: send lines, read reply lines."""

    def __init__(self, protocol: NodeProtocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)

    def lines(self) -> list[bytes]:
        """The complete lines written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data.splitlines()

    def events(self) -> list[Event]:
        """The replies written since the last call, decoded."""
        decoder = LineDecoder()
        decoder.feed(self.transport.value())
        self.transport.clear()
        events = []
        while (event := decoder.next_event()) is not None:
            events.append(event)
        return events
