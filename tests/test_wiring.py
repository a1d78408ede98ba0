"""
Tests for L{callnet.wiring}: one function builds every node's parts, and a
reload swaps what it may change whole.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from callnet import procedure
from callnet.config import NodeConfig, Security
from callnet.errors import ConfigError
from callnet.node import NodeService
from callnet.testing import InlineThreadPool, MemoryCluster, MemoryNode
from callnet.tls import peer_identity
from callnet.wiring import NodeParts, build_node

TOKEN = "a-token-long-enough-to-use"


@procedure
def greet(name: str) -> str:
    return f"Hello, {name}!"


def parts_of(config: NodeConfig) -> NodeParts:
    """A node's parts built from C{config} on a memory reactor, serving L{greet}."""
    return build_node(config, MemoryReactorClock(), InlineThreadPool(), procedures=[greet])


class BuildNodeTests(SynchronousTestCase):
    """
    Tests for L{build_node}.
    """

    def test_collaborators_given_at_construction(self) -> None:
        """The factory is made knowing how to identify TLS clients, whether to log calls,
        and how to describe the cluster; the dispatcher knows the access rules and peers."""
        config = NodeConfig(
            name="alpha",
            access_log=True,
            peers=(("beta", "tcp:127.0.0.2:7600"),),
            security=Security(tokens=(("alice", TOKEN),)),
        )
        parts = parts_of(config)
        self.assertIs(parts.factory.identify, peer_identity)
        self.assertTrue(parts.factory.access_log)
        assert parts.cluster is not None
        self.assertEqual(parts.factory.describe_cluster, parts.cluster.describe)
        self.assertIs(parts.factory.dispatcher, parts.dispatcher)
        self.assertTrue(parts.dispatcher.access.requires_authentication)
        self.assertIs(parts.dispatcher.forwarder, parts.cluster.router)
        self.assertEqual(parts.factory.stats()["peers"]["beta"]["state"], "connecting")

    def test_no_peers_no_cluster(self) -> None:
        """A node with no peers has no cluster and says nothing of peers in STATS."""
        parts = parts_of(NodeConfig(name="alpha"))
        self.assertIsNone(parts.cluster)
        self.assertNotIn("peers", parts.factory.stats())

    def test_procedures(self) -> None:
        """The registry holds the built-ins, the given procedures and multicall."""
        names = parts_of(NodeConfig(name="alpha")).registry.names()
        for name in ("echo", "greet", "multicall"):
            self.assertIn(name, names)
        names = parts_of(NodeConfig(name="alpha", builtins=False)).registry.names()
        self.assertNotIn("echo", names)

    def test_every_node_is_built_here(self) -> None:
        """A twistd node, a memory node and a memory cluster's nodes all come from build_node."""
        service = NodeService(NodeConfig(name="alpha", builtins=False), MemoryReactorClock())
        self.addCleanup(service.threadpool.stop, 0)
        self.assertIsInstance(service.parts, NodeParts)
        self.assertIs(service.factory, service.parts.factory)
        self.assertIsInstance(MemoryNode([greet]).parts, NodeParts)
        cluster = MemoryCluster({"alpha": [greet], "beta": []})
        for name in ("alpha", "beta"):
            self.assertIs(cluster[name].parts.cluster, cluster.clusters[name])
            self.assertIs(cluster[name].factory.identify, peer_identity)


class ReloadTests(SynchronousTestCase):
    """
    Tests for L{NodeParts.reload}.
    """

    def test_swaps_procedures_and_access(self) -> None:
        """A reload puts the new registry and access policy in place together."""
        config = NodeConfig(name="alpha", builtins=False)
        parts = parts_of(config)
        old_registry, old_access = parts.registry, parts.dispatcher.access
        new = replace(config, builtins=True, security=Security(tokens=(("alice", TOKEN),)))
        self.assertEqual(parts.reload(new), ([], []))
        self.assertIsNot(parts.registry, old_registry)
        self.assertIsNot(parts.dispatcher.access, old_access)
        self.assertIn("echo", parts.registry.names())
        self.assertIn("greet", parts.registry.names())
        self.assertIn("multicall", parts.registry.names())
        self.assertTrue(parts.dispatcher.access.requires_authentication)
        self.assertIs(parts.config, new)

    def test_refused_reload_changes_nothing(self) -> None:
        """A reload whose new config cannot be used leaves registry, access and config as
        they were."""
        config = NodeConfig(name="alpha", builtins=False)
        parts = parts_of(config)
        old_registry, old_access = parts.registry, parts.dispatcher.access
        for new in (
            replace(config, services=("callnet_no_such_module_for_test",)),
            replace(config, peers=(("beta", "tcp:127.0.0.2:7600"),)),
        ):
            self.assertRaises(ConfigError, parts.reload, new)
            self.assertIs(parts.registry, old_registry)
            self.assertIs(parts.dispatcher.access, old_access)
            self.assertIs(parts.config, config)

    def test_peers_change(self) -> None:
        """A reload of a node with peers adds and removes links, naming them."""
        config = NodeConfig(name="alpha", peers=(("beta", "tcp:127.0.0.2:7600"),))
        parts = parts_of(config)
        new = replace(config, peers=(("gamma", "tcp:127.0.0.3:7600"),))
        self.assertEqual(parts.reload(new), (["gamma"], ["beta"]))
        assert parts.cluster is not None
        self.assertEqual([peer.name for peer in parts.cluster.peers], ["gamma"])
