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

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from callnet.client import DEFAULT_TIMEOUT, Client
from callnet.cluster import Cluster, PeerSource
from callnet.config import ClusterSettings, Limits, NodeConfig, Security
from callnet.protocol import NodeProtocol
from callnet.registry import Registry
from callnet.wire import Event, LineDecoder
from callnet.wiring import build_node

__all__ = [
    "ManualThreadPool",
    "MemoryCluster",
    "MemoryNode",
    "MemoryReactor",
    "StringConnection",
]


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
    @param security: tokens and access rules, as a node's C{[security]} and
        C{[acl]} tables give them.
    @param peers: the node's peers, by name, and the endpoints that reach
        them (in memory); with any, the node has a L{cluster}.
    @param cluster: how it keeps in touch with its peers.
    """

    def __init__(
        self,
        procedures: Iterable[Callable[..., Any]] = (),
        *,
        name: str = "memory",
        limits: Limits | None = None,
        threads: str = "inline",
        send_tracebacks: bool = False,
        clock: MemoryReactor | None = None,
        security: Security | None = None,
        peers: Mapping[str, IStreamClientEndpoint] | None = None,
        cluster: ClusterSettings | None = None,
        config: NodeConfig | None = None,
        discovery: Callable[[ClusterSettings], PeerSource | None] | None = None,
    ) -> None:
        """
        @param config: the whole config, instead of the one the other
            arguments make (C{peers} then gives endpoints for its peers, by
            name, and for discovered ones, by endpoint string).
        @param discovery: makes the source of discovered peers (a test's
            own resolver).
        """
        self.clock = clock or MemoryReactor()
        if config is None:
            config = NodeConfig(
                name=name,
                builtins=False,
                send_tracebacks=send_tracebacks,
                peers=tuple((peer, f"memory:{peer}") for peer in peers or {}),
                limits=limits or Limits(),
                cluster=cluster or ClusterSettings(),
                security=security or Security(),
            )
        self.name = config.name
        self.limits = config.limits
        self.threads: InlineThreadPool | ManualThreadPool = (
            ManualThreadPool() if threads == "manual" else InlineThreadPool()
        )
        #: The node's parts, wired as a real node's are (L{callnet.wiring}).
        self.parts = build_node(
            config,
            self.clock,
            self.threads,  # type: ignore[arg-type]
            procedures=procedures,
            peer_endpoints=peers,
            discovery=discovery,
        )
        self.dispatcher = self.parts.dispatcher
        self.factory = self.parts.factory
        #: The node's links to its peers, if it was given any.
        self.cluster = self.parts.cluster
        self._pumps: list[iosim.IOPump] = []
        #: Which node each pump's client belongs to (None: a test's client).
        self._pump_sources: dict[int, str | None] = {}
        #: Whether the node is reachable: a killed node refuses connections.
        self.alive = True

    @property
    def registry(self) -> Registry:
        """The procedures the node serves."""
        return self.parts.registry

    def client(self, timeout: float = DEFAULT_TIMEOUT, token: str | None = None) -> Client:
        """A real async client whose connections reach this node in memory."""
        return Client(_MemoryEndpoint(self), self.clock, timeout=timeout, token=token)

    def endpoint(self, source: str | None = None) -> IStreamClientEndpoint:
        """An endpoint that connects to this node in memory (from node C{source})."""
        return _MemoryEndpoint(self, source)

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

    def __init__(self, node: MemoryNode, source: str | None = None) -> None:
        self._node = node
        self._source = source

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        node = self._node
        if not node.alive:
            return fail(ConnectionRefusedError(f"{node.name} is not running"))
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
        node._pump_sources[id(pump)] = self._source
        return succeed(client)


@implementer(IStreamClientEndpoint)
class _NamedEndpoint:
    """Connects to a L{MemoryNode} by name, found when connecting (it may not exist yet)."""

    def __init__(self, nodes: Mapping[str, MemoryNode], name: str, source: str) -> None:
        self._nodes = nodes
        self._name = name
        self._source = source

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        return _MemoryEndpoint(self._nodes[self._name], self._source).connect(factory)


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


class MemoryCluster:
    """
    Several L{MemoryNode}s joined as one cluster, on one clock, in memory.

    Each node has every other as a peer.  Besides moving bytes and time,
    a test can make a node fall silent (L{freeze}: its connections stop
    carrying bytes, as a stopped process's would) or die (L{kill}: its
    connections drop and new ones are refused).

    @param nodes: node name -> the procedures it serves.
    @param settings: the cluster settings every node uses.
    @param security: node name -> its tokens and access rules (a node not
        named has none); peers authenticate with each one's cluster token.
    """

    def __init__(
        self,
        nodes: Mapping[str, Iterable[Callable[..., Any]]],
        settings: ClusterSettings | None = None,
        security: Mapping[str, Security] | None = None,
    ) -> None:
        self.clock = MemoryReactor()
        self.settings = settings or ClusterSettings()
        security = security or {}
        self.nodes: dict[str, MemoryNode] = {}
        for name, procedures in nodes.items():
            others = [other for other in nodes if other != name]
            self.nodes[name] = MemoryNode(
                procedures,
                name=name,
                clock=self.clock,
                security=security.get(name),
                peers={other: _NamedEndpoint(self.nodes, other, name) for other in others},
                cluster=self.settings,
            )
        self.clusters: dict[str, Cluster] = {}
        for name, node in self.nodes.items():
            assert node.cluster is not None
            self.clusters[name] = node.cluster
        self._frozen: set[str] = set()
        self._dropped_while_frozen: list[iosim.IOPump] = []

    def start(self) -> None:
        """Start every node's peer links and let the handshakes finish."""
        for cluster in self.clusters.values():
            cluster.startService()
        self.flush()

    def stop(self) -> None:
        """Stop every link, leaving no timer on the clock."""
        for cluster in self.clusters.values():
            cluster.stopService()
        self.flush()

    def __getitem__(self, name: str) -> MemoryNode:
        return self.nodes[name]

    def _pumps(self) -> list[iosim.IOPump]:
        pumps = []
        for name, node in self.nodes.items():
            for pump in node._pumps:
                source = node._pump_sources.get(id(pump))
                if name in self._frozen or source in self._frozen:
                    continue
                pumps.append(pump)
        return pumps

    def flush(self) -> None:
        """Move bytes on every live connection until none is left to move."""
        moved = True
        while moved:
            moved = self._drop_locally() or False
            for pump in self._pumps():
                moved = pump.flush(advanceClock=False) or moved

    def _drop_locally(self) -> bool:
        """
        A live node that drops a connection to a frozen one hears of it at once,
        as over TCP; the frozen one will hear when it thaws.
        """
        dropped = False
        for name, node in self.nodes.items():
            for pump in node._pumps:
                source = node._pump_sources.get(id(pump))
                for side, owner in ((pump.clientIO, source), (pump.serverIO, name)):
                    if (
                        (name in self._frozen or source in self._frozen)
                        and owner not in self._frozen
                        and side.disconnecting
                        and not side.disconnected
                    ):
                        side.disconnected = True
                        side.reportDisconnect()
                        self._dropped_while_frozen.append(pump)
                        dropped = True
        return dropped

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Move the shared clock on by C{seconds}, a step at a time, flushing."""
        self.flush()
        left = seconds
        while left > 1e-9:
            move = min(step, left)
            self.clock.advance(move)
            self.flush()
            left -= move

    def revive(self, name: str) -> None:
        """Start a killed node again: it accepts connections and links to its peers."""
        self.nodes[name].alive = True
        self.clusters[name].startService()
        self.flush()

    def freeze(self, name: str) -> None:
        """Make a node silent: nothing moves on its connections (SIGSTOP)."""
        self._frozen.add(name)

    def thaw(self, name: str) -> None:
        """Let a frozen node's connections carry bytes again (SIGCONT)."""
        self._frozen.discard(name)
        # Connections its peers dropped meanwhile are gone: it learns so now.
        for pump in self._dropped_while_frozen:
            for side in (pump.clientIO, pump.serverIO):
                if not side.disconnected:
                    side.disconnected = True
                    side.reportDisconnect()
        self._dropped_while_frozen.clear()
        self.flush()

    def kill(self, name: str) -> None:
        """Kill a node: its connections drop and it refuses new ones."""
        node = self.nodes[name]
        node.alive = False
        self.clusters[name].stopService()
        for other in self.nodes.values():
            for pump in list(other._pumps):
                if other is node or other._pump_sources.get(id(pump)) == name:
                    pump.serverIO.loseConnection()
                    pump.clientIO.loseConnection()
        self.flush()
        for other in self.nodes.values():
            other._pumps = [
                pump
                for pump in other._pumps
                if not (pump.serverIO.disconnected or pump.clientIO.disconnected)
            ]
