"""
Tests for L{callnet.wiring}: one function builds every node's parts, and a
reload swaps what it may change whole.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
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


class NodeReloadReportTests(SynchronousTestCase):
    """What a running node's reload says it applied, and what waits for a restart."""

    def reloaded(self, old: NodeConfig, new: NodeConfig) -> tuple[str, NodeService]:
        """Reload a node started with C{old} to C{new}; return the reload's log line and the node."""
        node = NodeService(old, MemoryReactorClock())
        node.reload_from = lambda: new
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        try:
            self.assertTrue(node.reload())
        finally:
            globalLogPublisher.removeObserver(events.append)
        [text] = [
            formatEvent(event)
            for event in events
            if event.get("log_format", "").startswith("reloaded")
        ]
        return text, node

    def test_settings_read_at_start_wait_for_a_restart(self) -> None:
        """The access log, tracebacks and the metrics listener, which a running node keeps as it
        started, are reported as waiting for a restart, not as nothing changed."""
        old = NodeConfig(name="n", builtins=False)
        new = replace(
            old,
            access_log=True,
            send_tracebacks=True,
            metrics_listen="tcp:9600:interface=127.0.0.1",
        )
        text, node = self.reloaded(old, new)
        self.assertEqual(
            text,
            "reloaded: nothing changed;"
            " needs a restart to apply: send_tracebacks, access_log, metrics_listen",
        )
        self.assertFalse(node.factory.access_log)

    def test_shutdown_grace_is_applied(self) -> None:
        """A new shutdown_grace, which the next stop uses, is reported as applied."""
        old = NodeConfig(name="n", builtins=False)
        text, node = self.reloaded(old, replace(old, shutdown_grace=1.5))
        self.assertEqual(text, "reloaded: shutdown_grace 1.5s")
        self.assertEqual(node.config.shutdown_grace, 1.5)

    def test_service_modules_imported_again_are_reported(self) -> None:
        """A reload that imports the service modules again says so, even when the procedures'
        names stay the same: their code may have changed."""
        folder = Path(tempfile.mkdtemp(prefix="callnet-test-"))
        self.addCleanup(shutil.rmtree, folder, True)
        (folder / "callnet_reload_report_module.py").write_text(
            "from callnet import procedure\n\n\n@procedure\ndef version() -> int:\n    return 1\n"
        )
        sys.path.insert(0, str(folder))
        self.addCleanup(sys.path.remove, str(folder))
        self.addCleanup(sys.modules.pop, "callnet_reload_report_module", None)
        config = NodeConfig(name="n", builtins=False, services=("callnet_reload_report_module",))
        text, _ = self.reloaded(config, config)
        self.assertEqual(
            text, "reloaded: service modules imported again: callnet_reload_report_module"
        )
