"""
Peers found in DNS, deterministically: the DNS source against a resolver the
test answers for, on a hand-moved clock; and a node's cluster following it,
with nodes joined in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from callnet import Outcome, UnavailableError, procedure
from callnet.cluster import PeerState
from callnet.cluster.discovery import (
    DnsPeers,
    PeerEntry,
    StaticPeers,
    address_endpoint,
    dns_source,
    system_resolver,
)
from callnet.config import ClusterSettings, NodeConfig, TLSSettings
from callnet.config_load import merge
from callnet.errors import ConfigError
from callnet.node import NodeService
from callnet.testing import InlineThreadPool, MemoryNode, MemoryReactor
from callnet.wiring import build_node

SRV_NAME = "_callnet._tcp.callnet.test"
A_NAME = "callnet.test"


def srv(target: str, port: int, ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(
        SRV_NAME, dns.SRV, ttl=ttl, payload=dns.Record_SRV(0, 0, port, target, ttl=ttl)
    )


def a(name: str, address: str, ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, ttl=ttl, payload=dns.Record_A(address, ttl=ttl))


def aaaa(name: str, address: str, ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(name, dns.AAAA, ttl=ttl, payload=dns.Record_AAAA(address, ttl=ttl))


class FakeResolver:
    """
    Answers lookups from tables the test changes: per name and type, the
    answer and additional records, an exception to fail with, or
    C{"hang"} for a server that never answers.
    """

    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], Any] = {}
        self.asked: list[tuple[str, int]] = []

    def set(
        self,
        name: str,
        kind: int,
        records: Iterable[dns.RRHeader] | BaseException | str,
        additional: Iterable[dns.RRHeader] = (),
    ) -> None:
        if isinstance(records, BaseException | str):
            self.answers[(name, kind)] = records
        else:
            self.answers[(name, kind)] = (list(records), [], list(additional))

    def _lookup(self, name: str, kind: int) -> Deferred[Any]:
        self.asked.append((name, kind))
        answer = self.answers.get((name, kind), DNSNameError(name))
        if answer == "hang":
            return Deferred()
        if isinstance(answer, BaseException):
            return fail(answer)
        return succeed(answer)

    def lookupService(self, name: str) -> Deferred[Any]:
        return self._lookup(name, dns.SRV)

    def lookupAddress(self, name: str) -> Deferred[Any]:
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name: str) -> Deferred[Any]:
        return self._lookup(name, dns.AAAA)


def endpoints(*hosts_ports: tuple[str, int]) -> frozenset[PeerEntry]:
    return frozenset(address_endpoint(host, port) for host, port in hosts_ports)


def srv_endpoints(*found: tuple[str, int, str]) -> frozenset[PeerEntry]:
    """Entries from SRV records: address, port, and the target that gave them."""
    return frozenset(address_endpoint(host, port, target) for host, port, target in found)


class Recorder:
    """Collects what a source reports, and the log events of a test."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.found: list[frozenset[PeerEntry]] = []
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def __call__(self, entries: frozenset[PeerEntry]) -> None:
        self.found.append(entries)

    def logged(self, text: str) -> list[LogEvent]:
        return [event for event in self.events if text in event.get("log_format", "")]


def source(resolver: FakeResolver, clock: Clock, target: str = f"dns-srv:{SRV_NAME}") -> DnsPeers:
    return DnsPeers(target, resolver, clock, min_interval=5.0, max_interval=60.0)


class DnsSourceTests(SynchronousTestCase):
    """The DNS source alone: what it reports, and when it asks again."""

    def test_srv_with_additional_addresses(self) -> None:
        """SRV records give each peer's port; the addresses sent along give its host."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(
            SRV_NAME,
            dns.SRV,
            [srv("n1.callnet.test", 7601), srv("n2.callnet.test", 7602)],
            [a("n1.callnet.test", "10.0.0.1"), a("n2.callnet.test", "10.0.0.2")],
        )
        found = Recorder(self)
        peers = source(resolver, clock)
        peers.start(found)
        self.assertEqual(
            found.found,
            [
                srv_endpoints(
                    ("10.0.0.1", 7601, "n1.callnet.test"), ("10.0.0.2", 7602, "n2.callnet.test")
                )
            ],
        )
        self.assertEqual(resolver.asked, [(SRV_NAME, dns.SRV)])
        peers.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_srv_targets_without_addresses_are_looked_up(self) -> None:
        """An SRV target whose address the server did not send along is asked for, A and AAAA."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(SRV_NAME, dns.SRV, [srv("n1.callnet.test", 7601)])
        resolver.set("n1.callnet.test", dns.A, [a("n1.callnet.test", "10.0.0.1")])
        resolver.set("n1.callnet.test", dns.AAAA, [aaaa("n1.callnet.test", "fd00::1")])
        found = Recorder(self)
        source(resolver, clock).start(found)
        self.assertEqual(
            found.found,
            [
                srv_endpoints(
                    ("10.0.0.1", 7601, "n1.callnet.test"), ("fd00::1", 7601, "n1.callnet.test")
                )
            ],
        )

    def test_srv_target_root_is_no_peer(self) -> None:
        """An SRV record whose target is "." (service not offered there) or port 0 is skipped."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(
            SRV_NAME,
            dns.SRV,
            [srv("", 7600), srv("n1.callnet.test", 0), srv("n2.callnet.test", 7602)],
            [a("n1.callnet.test", "10.0.0.1"), a("n2.callnet.test", "10.0.0.2")],
        )
        found = Recorder(self)
        source(resolver, clock).start(found)
        self.assertEqual(found.found, [srv_endpoints(("10.0.0.2", 7602, "n2.callnet.test"))])
        self.assertEqual(resolver.asked, [(SRV_NAME, dns.SRV)])

    def test_a_records_share_one_port(self) -> None:
        """dns-a gives every A and AAAA address of the name, on the port the string names."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.1"), a(A_NAME, "10.0.0.2")])
        resolver.set(A_NAME, dns.AAAA, [aaaa(A_NAME, "fd00::3")])
        found = Recorder(self)
        source(resolver, clock, f"dns-a:{A_NAME}:7600").start(found)
        self.assertEqual(
            found.found,
            [endpoints(("10.0.0.1", 7600), ("10.0.0.2", 7600), ("fd00::3", 7600))],
        )
        self.assertIn("tcp:host=fd00\\:\\:3:port=7600", {e.endpoint for e in found.found[0]})

    def test_refresh_follows_ttl_within_bounds(self) -> None:
        """The next lookup comes after the shortest TTL, but no sooner than the minimum nor later
        than the maximum interval."""
        for ttl, expected in ((0, 5.0), (3, 5.0), (17, 17.0), (86400, 60.0)):
            resolver, clock = FakeResolver(), Clock()
            resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.1", ttl), a(A_NAME, "10.0.0.2", 90)])
            peers = source(resolver, clock, f"dns-a:{A_NAME}:7600")
            peers.start(Recorder(self))
            self.assertEqual(peers.next_in, expected, ttl)
            asked = len(resolver.asked)
            clock.advance(expected - 0.01)
            self.assertEqual(len(resolver.asked), asked, ttl)
            clock.advance(0.01)
            self.assertEqual(len(resolver.asked), 2 * asked, ttl)
            peers.stop()
            self.assertEqual(clock.getDelayedCalls(), [])

    def test_appear_and_disappear(self) -> None:
        """A record added or removed is reported at the next refresh; an unchanged answer is not."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.1", 10)])
        found = Recorder(self)
        source(resolver, clock, f"dns-a:{A_NAME}:7600").start(found)
        clock.advance(10)
        self.assertEqual(len(found.found), 1)
        resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.1", 10), a(A_NAME, "10.0.0.2", 10)])
        clock.advance(10)
        resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.2", 10)])
        clock.advance(10)
        self.assertEqual(
            found.found,
            [
                endpoints(("10.0.0.1", 7600)),
                endpoints(("10.0.0.1", 7600), ("10.0.0.2", 7600)),
                endpoints(("10.0.0.2", 7600)),
            ],
        )
        self.assertEqual(len(found.logged("appeared")), 3)

    def test_failure_keeps_peers_and_backs_off(self) -> None:
        """A failed lookup keeps the peers known, is logged, and is retried after the minimum
        interval, doubling up to the maximum; an answer ends the back-off."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.1", 10)])
        found = Recorder(self)
        peers = source(resolver, clock, f"dns-a:{A_NAME}:7600")
        peers.start(found)
        clock.advance(10)
        resolver.set(A_NAME, dns.A, DNSServerError("SERVFAIL"))
        delays = []
        for _ in range(6):
            delays.append(peers.next_in)
            assert peers.next_in is not None
            clock.advance(peers.next_in)
        self.assertEqual(delays, [10.0, 5.0, 10.0, 20.0, 40.0, 60.0])
        self.assertEqual(found.found, [endpoints(("10.0.0.1", 7600))])
        self.assertEqual(peers.known, endpoints(("10.0.0.1", 7600)))
        failures = found.logged("DNS lookup of {target} failed")
        self.assertEqual(len(failures), 6)
        self.assertEqual(failures[0]["count"], 1)
        resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.1", 10)])
        clock.advance(60)
        self.assertEqual((peers.failures, peers.next_in), (0, 10.0))

    def test_no_records_keeps_peers(self) -> None:
        """A name that no longer exists (NXDOMAIN) or has no records keeps the peers known."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.1", 10)])
        found = Recorder(self)
        peers = source(resolver, clock, f"dns-a:{A_NAME}:7600")
        peers.start(found)
        resolver.set(A_NAME, dns.A, DNSNameError(A_NAME))
        clock.advance(10)
        self.assertEqual(peers.next_in, 5.0)
        resolver.set(A_NAME, dns.A, [])
        clock.advance(5)
        self.assertEqual(peers.next_in, 10.0)
        self.assertEqual(found.found, [endpoints(("10.0.0.1", 7600))])
        self.assertEqual(len(found.logged("DNS has no records")), 2)

    def test_a_lookup_that_never_answers_fails_at_the_longest_interval(self) -> None:
        """A server that never answers fails the lookup after the longest interval, and it is
        asked again."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, "hang")
        found = Recorder(self)
        peers = source(resolver, clock, f"dns-a:{A_NAME}:7600")
        peers.start(found)
        clock.advance(59.9)
        self.assertEqual(peers.failures, 0)
        clock.advance(0.1)
        self.assertEqual((peers.failures, peers.next_in), (1, 5.0))
        peers.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_while_looking(self) -> None:
        """A source stopped while a lookup is out reports nothing more and leaves no timer."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, "hang")
        found = Recorder(self)
        peers = source(resolver, clock, f"dns-a:{A_NAME}:7600")
        peers.start(found)
        peers.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(found.found, [])
        self.assertEqual(found.logged("failed"), [])

    def test_static_peers_are_a_source(self) -> None:
        """The [peers] table reports its named peers once, and keeps their order."""
        static = StaticPeers([("beta", "tcp:127.0.0.2:7600"), ("alpha", "tcp:127.0.0.1:7600")])
        found = Recorder(self)
        static.start(found)
        self.assertEqual([entry.name for entry in static.entries], ["beta", "alpha"])
        self.assertEqual(found.found, [frozenset(static.entries)])

    def test_no_discover_no_source(self) -> None:
        """Cluster settings without discover make no DNS source."""
        self.assertIsNone(dns_source(ClusterSettings(), Clock(), FakeResolver()))


class MaxPeersTests(SynchronousTestCase):
    """An answer naming more peers than discover_max_peers gives only that many."""

    def test_srv_answer_past_the_limit(self) -> None:
        """
        Of 10 SRV targets, the first 3 by name are followed and only theirs
        are looked up; the log says how many were left out, once.
        """
        resolver, clock = FakeResolver(), Clock()
        targets = [f"n{i}.callnet.test" for i in range(10)]
        resolver.set(SRV_NAME, dns.SRV, [srv(target, 7600) for target in reversed(targets)])
        for i, target in enumerate(targets):
            resolver.set(target, dns.A, [a(target, f"10.0.0.{i}")])
        found = Recorder(self)
        peers = DnsPeers(f"dns-srv:{SRV_NAME}", resolver, clock, 5.0, 60.0, max_peers=3)
        peers.start(found)
        self.assertEqual(
            found.found,
            [srv_endpoints(*[(f"10.0.0.{i}", 7600, targets[i]) for i in range(3)])],
        )
        asked = {name for name, kind in resolver.asked if kind == dns.A}
        self.assertEqual(asked, set(targets[:3]))
        self.assertEqual(peers.left_out, 7)
        [warning] = found.logged("discover_max_peers")
        self.assertEqual((warning["total"], warning["kept"], warning["left_out"]), (10, 3, 7))
        clock.advance(30)
        self.assertEqual(len(found.logged("discover_max_peers")), 1)
        self.assertEqual(len(found.found), 1)

    def test_address_answer_past_the_limit(self) -> None:
        """dns-a keeps the first addresses in order, the same on every node, and says so."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, [a(A_NAME, f"10.0.0.{i}") for i in (5, 1, 4, 2, 3)])
        found = Recorder(self)
        peers = DnsPeers(f"dns-a:{A_NAME}:7600", resolver, clock, 5.0, 60.0, max_peers=2)
        peers.start(found)
        self.assertEqual(found.found, [endpoints(("10.0.0.1", 7600), ("10.0.0.2", 7600))])
        self.assertEqual(peers.left_out, 3)
        self.assertEqual(len(found.logged("discover_max_peers")), 1)

    def test_the_setting_reaches_the_source(self) -> None:
        """dns_source passes [cluster] discover_max_peers to the source it makes."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, [a(A_NAME, f"10.0.0.{i}") for i in range(5)])
        settings = ClusterSettings(discover=f"dns-a:{A_NAME}:7600", discover_max_peers=4)
        peers = dns_source(settings, clock, resolver)
        assert peers is not None
        found = Recorder(self)
        peers.start(found)
        self.assertEqual(len(found.found[0]), 4)


class DiscoverSettingTests(SynchronousTestCase):
    """The discover string and its bounds, checked when the config is read."""

    def test_bad_discover_is_one_line(self) -> None:
        """A discover string of neither form is refused in one line naming the key."""
        for bad in ("dns:callnet.test", "dns-a:callnet.test", "dns-a:x:99999", "dns-srv:a b"):
            error = self.assertRaises(ConfigError, merge, NodeConfig(), {"discover": bad})
            self.assertIn("[cluster] discover must be", str(error))
            self.assertNotIn("\n", str(error))

    def test_bounds_in_order(self) -> None:
        """The shortest interval may not be longer than the longest."""
        error = self.assertRaises(
            ConfigError,
            merge,
            NodeConfig(),
            {"discover_min_interval": 90.0, "discover_max_interval": 60.0},
        )
        self.assertIn("discover_min_interval (90) must not be greater", str(error))

    def test_nameservers(self) -> None:
        """DNS servers are IP addresses with an optional port; a host name is refused."""
        config = merge(
            NodeConfig(), {"discover_nameservers": ["127.0.0.1:8600", "[::1]", "10.0.0.1"]}
        )
        self.assertEqual(
            config.cluster.discover_nameservers, ("127.0.0.1:8600", "[::1]", "10.0.0.1")
        )
        self.assertRaises(
            ConfigError, merge, NodeConfig(), {"discover_nameservers": ["dns.example:53"]}
        )


class Work:
    """A node's procedures: who answered, and calls held until the test answers them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: list[Deferred[Any]] = []

    def procedures(self) -> list[Any]:
        @procedure(run="reactor", name="where", idempotent=True)
        def where() -> str:
            return self.name

        @procedure(run="reactor", name="hold")
        def hold() -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.held.append(d)
            return d

        return [where, hold]


@implementer(IStreamClientEndpoint)
class _NodeAt:
    """An endpoint to the memory node of a name, found when dialled (x may dial itself)."""

    def __init__(self, nodes: dict[str, MemoryNode], name: str) -> None:
        self._nodes = nodes
        self._name = name

    def connect(self, factory: Any) -> Any:
        return self._nodes[self._name].endpoint("x").connect(factory)


class Discovered:
    """
    Node C{x}, whose peers come from DNS only, and nodes at the addresses
    DNS may name (x itself among them), all in memory on one clock.
    """

    def __init__(
        self,
        case: SynchronousTestCase | None,
        names: Iterable[str] = ("a", "b", "c"),
        aliases: dict[str, str] | None = None,
        static: dict[str, str] | None = None,
    ) -> None:
        self.clock = MemoryReactor()
        self.resolver = FakeResolver()
        self.work = {name: Work(name) for name in names}
        self.nodes = {
            name: MemoryNode(work.procedures(), name=name, clock=self.clock)
            for name, work in self.work.items()
        }
        #: Address -> the node that answers there.
        self.at = {f"10.0.0.{i}": name for i, name in enumerate(self.work, 1)}
        self.at["10.0.0.99"] = "x"
        self.at.update(aliases or {})
        settings = ClusterSettings(
            discover=f"dns-a:{A_NAME}:7600", discover_min_interval=1.0, discover_max_interval=10.0
        )
        config = NodeConfig(
            name="x",
            builtins=False,
            cluster=settings,
            peers=tuple((static or {}).items()),
            shutdown_grace=10.0,
        )
        chosen: dict[str, Any] = {}
        for address, name in self.at.items():
            chosen[address_endpoint(address, 7600).endpoint] = _NodeAt(self.nodes, name)
        for peer, name in (static or {}).items():
            chosen[peer] = _NodeAt(self.nodes, name)
        self.x = MemoryNode(
            config=config,
            clock=self.clock,
            peers=chosen,
            discovery=lambda s: dns_source(s, self.clock, self.resolver),
        )
        self.nodes["x"] = self.x
        assert self.x.cluster is not None
        self.cluster = self.x.cluster
        self.log = Recorder(case) if case is not None else None
        self.client = self.x.client()

    def publish(self, *addresses: str, ttl: int = 5) -> None:
        self.resolver.set(A_NAME, dns.A, [a(A_NAME, address, ttl) for address in addresses])

    def flush(self) -> None:
        moved = True
        while moved:
            moved = False
            for node in self.nodes.values():
                for pump in list(node._pumps):
                    moved = pump.flush(advanceClock=False) or moved

    def advance(self, seconds: float, step: float = 0.5) -> None:
        self.flush()
        left = seconds
        while left > 1e-9:
            move = min(step, left)
            self.clock.advance(move)
            self.flush()
            left -= move

    def states(self) -> dict[str, str]:
        return {peer.name: peer.state.value for peer in self.cluster.peers}

    def call(self, name: str, *args: Any) -> Deferred[Any]:
        d = self.client.call(name, *args)
        self.flush()
        return d

    def stop(self) -> None:
        self.client.close()
        self.cluster.stopService()
        self.flush()


class DiscoveredClusterTests(SynchronousTestCase):
    """A node's cluster following its DNS source."""

    def test_peers_named_by_handshake(self) -> None:
        """Each address DNS names is dialled and its peer takes the name its handshake gives."""
        nodes = Discovered(self)
        nodes.publish("10.0.0.1", "10.0.0.2")
        nodes.cluster.startService()
        nodes.flush()
        self.assertEqual(nodes.states(), {"a": "up", "b": "up"})
        self.assertEqual(
            {peer.configured for peer in nodes.cluster.peers},
            {"tcp:host=10.0.0.1:port=7600", "tcp:host=10.0.0.2:port=7600"},
        )
        self.assertIn(self.successResultOf(nodes.call("where")), {"a", "b"})
        self.assertEqual(self.successResultOf(nodes.call("where@b")), "b")
        nodes.stop()
        self.assertEqual(nodes.clock.getDelayedCalls(), [])

    def test_a_name_that_is_no_node_name_is_refused(self) -> None:
        """
        A discovered node whose handshake gives a name name@node could not
        address (here one that looks like another peer's address) is
        refused, and said so; it stays shown by its address.
        """
        nodes = Discovered(self, names=("a", "10.0.0.1:7600"))
        nodes.publish("10.0.0.1", "10.0.0.2")
        nodes.cluster.startService()
        nodes.flush()
        self.assertEqual(nodes.states(), {"a": "up", "10.0.0.2:7600": "connecting"})
        assert nodes.log is not None
        [refused] = nodes.log.logged("refusing peer")
        self.assertIn("not a node name", formatEvent(refused))
        nodes.stop()

    def test_appear_within_one_ttl(self) -> None:
        """A node added to DNS is dialled and up within one TTL."""
        nodes = Discovered(self)
        nodes.publish("10.0.0.1", ttl=5)
        nodes.cluster.startService()
        nodes.flush()
        nodes.publish("10.0.0.1", "10.0.0.3", ttl=5)
        nodes.advance(4.5)
        self.assertEqual(nodes.states(), {"a": "up"})
        nodes.advance(0.5)
        self.assertEqual(nodes.states(), {"a": "up", "c": "up"})
        nodes.stop()

    def test_own_address_is_skipped(self) -> None:
        """The node's own address, known by its own name in the handshake, is dropped and not
        dialled again while DNS names it."""
        nodes = Discovered(self)
        nodes.publish("10.0.0.1", "10.0.0.99")
        nodes.cluster.startService()
        nodes.flush()
        self.assertEqual(nodes.states(), {"a": "up"})
        self.assertEqual(nodes.cluster.skipped, {"tcp:host=10.0.0.99:port=7600": "this node"})
        connections = len(nodes.x._pumps)
        nodes.advance(20)
        self.assertEqual(len(nodes.x._pumps), connections)
        self.assertEqual(len(nodes.log.logged("is this node itself")), 1)
        nodes.stop()
        self.assertEqual(nodes.clock.getDelayedCalls(), [])

    def test_two_addresses_one_name_is_refused(self) -> None:
        """A second address answering with a name a peer already has is refused and logged; once
        the first leaves DNS, the second is dialled again and takes the name."""
        nodes = Discovered(self, aliases={"10.0.0.7": "a"})
        nodes.publish("10.0.0.1", "10.0.0.7")
        nodes.cluster.startService()
        nodes.flush()
        self.assertEqual(nodes.states(), {"a": "up"})
        self.assertEqual(nodes.cluster.skipped, {"tcp:host=10.0.0.7:port=7600": "name a"})
        refused = nodes.log.logged("a name another peer already has")
        self.assertEqual([event["name"] for event in refused], ["a"])
        nodes.publish("10.0.0.7")
        nodes.advance(5)
        self.assertEqual(nodes.states(), {"a": "up"})
        self.assertEqual(
            [peer.configured for peer in nodes.cluster.peers], ["tcp:host=10.0.0.7:port=7600"]
        )
        nodes.stop()

    def test_discovered_static_peer_is_refused(self) -> None:
        """A discovered address that answers with the name of a configured peer is refused: the
        configured peer keeps its name."""
        nodes = Discovered(self, static={"b": "b"})
        nodes.publish("10.0.0.1", "10.0.0.2")
        nodes.cluster.startService()
        nodes.flush()
        self.assertEqual(nodes.states(), {"a": "up", "b": "up"})
        self.assertEqual(nodes.cluster.skipped, {"tcp:host=10.0.0.2:port=7600": "name b"})
        self.assertEqual(
            {peer.name: peer.configured for peer in nodes.cluster.peers},
            {"b": "b", "a": "tcp:host=10.0.0.1:port=7600"},
        )
        nodes.stop()

    def test_gone_peer_drains_its_calls(self) -> None:
        """A peer DNS stops naming gets no new calls; its calls in flight finish, then its link
        ends."""
        nodes = Discovered(self)
        nodes.publish("10.0.0.1", "10.0.0.2")
        nodes.cluster.startService()
        nodes.flush()
        held = nodes.call("hold@a")
        self.assertEqual(len(nodes.work["a"].held), 1)
        nodes.publish("10.0.0.2")
        nodes.advance(5)
        self.assertEqual(nodes.states(), {"b": "up"})
        self.assertEqual(self.successResultOf(nodes.call("where")), "b")
        self.assertNoResult(held)
        self.assertEqual(len(nodes.log.logged("no longer in DNS")), 1)
        nodes.work["a"].held[0].callback("done")
        nodes.advance(0.5)
        self.assertEqual(self.successResultOf(held), "done")
        self.assertEqual([p for p in nodes.nodes["a"]._pumps if not p.serverIO.disconnected], [])
        nodes.stop()
        self.assertEqual(nodes.clock.getDelayedCalls(), [])

    def test_drain_ends_after_grace(self) -> None:
        """A gone peer's call that outlasts the node's shutdown grace fails may-have-run, as a
        call to a node that stops does."""
        nodes = Discovered(self)
        nodes.publish("10.0.0.1", "10.0.0.2")
        nodes.cluster.startService()
        nodes.flush()
        held = nodes.call("hold@a")
        nodes.publish("10.0.0.2")
        nodes.advance(5)
        nodes.advance(9.5)
        self.assertNoResult(held)
        nodes.advance(0.5)
        error = self.failureResultOf(held, UnavailableError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        nodes.stop()
        self.assertEqual(nodes.clock.getDelayedCalls(), [])

    def test_dns_failure_keeps_the_cluster(self) -> None:
        """A DNS server that fails keeps every discovered peer up."""
        nodes = Discovered(self)
        nodes.publish("10.0.0.1", "10.0.0.2")
        nodes.cluster.startService()
        nodes.flush()
        nodes.resolver.set(A_NAME, dns.A, DNSServerError("SERVFAIL"))
        nodes.advance(30)
        self.assertEqual(nodes.states(), {"a": "up", "b": "up"})
        self.assertGreaterEqual(len(nodes.log.logged("failed")), 3)
        nodes.stop()

    def test_reload_keeps_discovered_peers(self) -> None:
        """A reload that keeps the discover settings keeps the discovered peers and their links;
        one that drops discover drains them."""
        clock = MemoryReactor()
        resolver = FakeResolver()
        resolver.set(A_NAME, dns.A, [a(A_NAME, "10.0.0.1")])
        target = MemoryNode(Work("a").procedures(), name="a", clock=clock)
        config = NodeConfig(
            name="x",
            builtins=False,
            cluster=ClusterSettings(discover=f"dns-a:{A_NAME}:7600"),
        )
        looked = []

        def discovery(settings: ClusterSettings) -> DnsPeers | None:
            looked.append(settings.discover)
            return dns_source(settings, clock, resolver)

        parts = build_node(
            config,
            clock,
            InlineThreadPool(),  # type: ignore[arg-type]
            peer_endpoints={"tcp:host=10.0.0.1:port=7600": target.endpoint("x")},
            discovery=discovery,
        )
        assert parts.cluster is not None
        parts.cluster.startService()
        target.flush()
        [peer] = parts.cluster.peers
        self.assertEqual((peer.name, peer.state), ("a", PeerState.UP))
        parts.reload(merge(config, {"max_hops": 3}))
        target.flush()
        self.assertEqual(parts.cluster.peers, [peer])
        self.assertEqual(peer.state, PeerState.UP)
        self.assertEqual(looked, [f"dns-a:{A_NAME}:7600"])
        parts.reload(NodeConfig(name="x", builtins=False))
        self.assertEqual(parts.cluster.peers, [])
        self.assertTrue(peer.draining)
        parts.cluster.stopService()
        target.flush()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_discover_alone_makes_a_cluster(self) -> None:
        """A node with discover and no [peers] has a cluster; TLS links with discover are refused
        at start-up in one line."""
        config = NodeConfig(name="x", cluster=ClusterSettings(discover=f"dns-a:{A_NAME}:7600"))
        parts = build_node(
            config,
            MemoryReactor(),
            InlineThreadPool(),  # type: ignore[arg-type]
            discovery=lambda s: dns_source(s, Clock(), FakeResolver()),
        )
        self.assertIsNotNone(parts.cluster)
        tls = TLSSettings(cert="node.pem", key="node.key", ca="ca.pem")
        error = self.assertRaises(
            ConfigError, merge, config, {"cert": tls.cert, "key": tls.key, "ca": tls.ca}
        )
        self.assertIn("with TLS links to peers, use dns-srv", str(error))
        self.assertNotIn("\n", str(error))

    def test_discovery_over_tls_links(self) -> None:
        """
        With TLS links, discovery reads SRV records and needs the cluster
        token (one line each if not); then a discovered peer is dialled over
        TLS, its certificate checked against the host its SRV record names.
        """
        from callnet.tls import make_ca, make_node_certificate

        folder = tempfile.mkdtemp(prefix="callnet-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        make_ca(folder)
        make_node_certificate(folder, "x")
        tls = {
            "cert": f"{folder}/x.pem",
            "key": f"{folder}/x.key",
            "ca": f"{folder}/ca.pem",
        }
        srv_discovery = {"discover": f"dns-srv:{SRV_NAME}", **tls}
        error = self.assertRaises(ConfigError, merge, NodeConfig(name="x"), srv_discovery)
        self.assertIn("needs [security] cluster_token", str(error))
        self.assertNotIn("\n", str(error))

        resolver = FakeResolver()
        resolver.set(
            SRV_NAME,
            dns.SRV,
            [srv("n1.callnet.test", 7601)],
            [a("n1.callnet.test", "10.0.0.1")],
        )
        parts = build_node(
            merge(
                NodeConfig(name="x"),
                {**srv_discovery, "cluster_token": "a-token-of-sixteen-or-more"},
            ),
            MemoryReactor(),
            InlineThreadPool(),  # type: ignore[arg-type]
            discovery=lambda s: dns_source(s, Clock(), resolver),
        )
        cluster = parts.cluster
        assert cluster is not None
        cluster.startService()
        self.addCleanup(cluster.stopService)
        [peer] = cluster.peers
        self.assertTrue(peer.tls)
        self.assertEqual(peer.configured, "tcp:host=10.0.0.1:port=7601")


class NodeReloadTests(SynchronousTestCase):
    """What a running node's reload says of the discover settings."""

    def reloaded(self, old: NodeConfig, new: NodeConfig) -> str:
        node = NodeService(old, MemoryReactorClock())
        node.reload_from = lambda: new
        log = Recorder(self)
        self.assertTrue(node.reload())
        [event] = log.logged("reloaded: ")
        return formatEvent(event)

    def test_discover_applies_on_reload(self) -> None:
        """A new discover name is reported as applied, not as waiting for a restart; a new
        heartbeat interval waits."""
        old = NodeConfig(name="x", cluster=ClusterSettings(discover=f"dns-a:{A_NAME}:7600"))
        text = self.reloaded(old, merge(old, {"discover": f"dns-srv:{SRV_NAME}"}))
        self.assertIn(f"discover dns-srv:{SRV_NAME}", text)
        self.assertNotIn("needs a restart", text)
        text = self.reloaded(old, merge(old, {"heartbeat_interval": 2.0}))
        self.assertIn("needs a restart to apply: cluster", text)
        self.assertNotIn("discover", text)
        text = self.reloaded(old, merge(old, {"discover_max_peers": 8}))
        self.assertIn(f"discover dns-a:{A_NAME}:7600", text)
        self.assertNotIn("needs a restart", text)


class SystemResolverTests(SynchronousTestCase):
    """The lookups a node makes when no resolver is given."""

    def test_asks_the_configured_server_over_tcp(self) -> None:
        """With discover_nameservers set, a lookup dials the first of them over TCP (the memory
        reactor has no UDP at all)."""
        reactor = MemoryReactorClock()
        settings = merge(
            NodeConfig(),
            {"discover": f"dns-srv:{SRV_NAME}", "discover_nameservers": ["127.0.0.1:8600"]},
        ).cluster
        lookups = system_resolver(settings, reactor)
        lookups.lookupService(SRV_NAME)
        self.assertEqual([client[:2] for client in reactor.tcpClients], [("127.0.0.1", 8600)])


class FailureWordingTests(SynchronousTestCase):
    """How a failed lookup is logged."""

    def test_error_answers_in_words(self) -> None:
        """An error answer is logged by its code's name, a lookup that timed out as such."""
        for error, words in (
            (DNSServerError("SERVFAIL message"), "the server answered SERVFAIL"),
            (DNSQueryRefusedError("REFUSED message"), "the server answered REFUSED"),
        ):
            resolver, clock = FakeResolver(), Clock()
            resolver.set(A_NAME, dns.A, error)
            log = Recorder(self)
            source(resolver, clock, f"dns-a:{A_NAME}:7600").start(log)
            [event] = log.logged("DNS lookup of")
            self.assertEqual(event["why"], words)
        resolver, clock = FakeResolver(), Clock()
        resolver.set(A_NAME, dns.A, "hang")
        log = Recorder(self)
        source(resolver, clock, f"dns-a:{A_NAME}:7600").start(log)
        clock.advance(60)
        self.assertEqual(
            [event["why"] for event in log.logged("DNS lookup of")], ["no answer in time"]
        )

    def test_srv_name_that_does_not_exist(self) -> None:
        """An SRV name that does not exist is an empty answer: the peers known stay."""
        resolver, clock = FakeResolver(), Clock()
        resolver.set(
            SRV_NAME, dns.SRV, [srv("n1.callnet.test", 7601)], [a("n1.callnet.test", "10.0.0.1")]
        )
        found = Recorder(self)
        peers = source(resolver, clock)
        peers.start(found)
        resolver.set(SRV_NAME, dns.SRV, DNSNameError(SRV_NAME))
        clock.advance(30)
        self.assertEqual(found.found, [srv_endpoints(("10.0.0.1", 7601, "n1.callnet.test"))])
        self.assertEqual(len(found.logged("DNS has no records")), 1)


#: The addresses DNS may name in the machine below: a, b, c, a again (a
#: clash), and x itself.
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.7", "10.0.0.99")


class DiscoveryMachine(RuleBasedStateMachine):
    """
    DNS changes, fails and recovers at random while time passes; whatever
    the order, the node never routes to itself, never has two peers of one
    name, follows only what DNS last said, and once DNS is steady has every
    other node up.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nodes = Discovered(None, aliases={"10.0.0.7": "a"})
        self.published: tuple[str, ...] = ()
        self.nodes.publish()
        self.nodes.cluster.startService()
        self.nodes.flush()

    @rule(addresses=st.sets(st.sampled_from(ADDRESSES)), ttl=st.integers(1, 5))
    def publish(self, addresses: set[str], ttl: int) -> None:
        self.published = tuple(sorted(addresses))
        self.nodes.publish(*self.published, ttl=ttl)

    @rule()
    def dns_fails(self) -> None:
        self.nodes.resolver.set(A_NAME, dns.A, DNSServerError("SERVFAIL"))

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 6.0]))
    def wait(self, seconds: float) -> None:
        self.nodes.advance(seconds)

    @rule()
    def settle(self) -> None:
        """DNS answers what was published, steadily: the node converges on it."""
        self.nodes.publish(*self.published, ttl=1)
        self.nodes.advance(12)
        # What DNS said last with any records (an empty answer keeps it).
        known = self.nodes.cluster._source.known  # type: ignore[union-attr]
        expected = {self.nodes.at[entry.address.rsplit(":", 1)[0]] for entry in known} - {"x"}
        assert self.nodes.states() == dict.fromkeys(expected, "up"), (
            self.published,
            self.nodes.states(),
        )

    @invariant()
    def never_itself(self) -> None:
        assert "x" not in self.nodes.states()

    @invariant()
    def one_peer_per_name(self) -> None:
        names = [peer.name for peer in self.nodes.cluster.peers]
        assert len(names) == len(set(names)), names

    @invariant()
    def only_what_dns_said(self) -> None:
        source = self.nodes.cluster._source
        known = {entry.endpoint for entry in source.known}  # type: ignore[union-attr]
        assert {peer.configured for peer in self.nodes.cluster.peers} <= known
        assert set(self.nodes.cluster.skipped) <= known

    def teardown(self) -> None:
        self.nodes.stop()
        assert self.nodes.clock.getDelayedCalls() == [], self.nodes.clock.getDelayedCalls()


DiscoveryMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None
)
TestDiscovery = DiscoveryMachine.TestCase
