"""Tests for callnet.metrics: the Prometheus figures and their endpoint."""

from __future__ import annotations

import sys
from typing import Any
from unittest import mock

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from callnet import procedure
from callnet.errors import ConfigError
from callnet.metrics import MISSING, Metrics, MetricsPage, metrics_service
from callnet.testing import MemoryCluster, MemoryNode, MemoryReactor


def add(a: int, b: int) -> int:
    return a + b


def make_node() -> tuple[MemoryNode, dict[str, Deferred[Any]]]:
    """A node serving add and wait; wait's calls stay pending until fired."""
    pending: dict[str, Deferred[Any]] = {}

    @procedure(run="reactor")
    def wait(key: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending[key] = d
        return d

    return MemoryNode([procedure(run="reactor")(add), wait]), pending


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode("utf-8")


def value(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in the registry, or None if there is none."""
    return metrics.registry.get_sample_value(name, labels or {})


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node, self.pending = make_node()
        self.metrics = Metrics(self.node.dispatcher, self.node.factory)
        self.conn = self.node.connect_raw()

    def test_calls_by_outcome(self) -> None:
        """Calls are counted by procedure and outcome: OK or the error code."""
        self.conn.send("add 1 2\nadd 3 4\nnosuch\n#1 +timeout=2 wait a\n#2 wait b\n")
        self.node.advance(2)
        self.pending["b"].callback("done")
        self.assertEqual(value(self.metrics, "callnet_calls_total", _calls("add", "OK")), 2)
        self.assertEqual(value(self.metrics, "callnet_calls_total", _calls("wait", "OK")), 1)
        self.assertEqual(
            value(self.metrics, "callnet_calls_total", _calls("wait", "DEADLINE_EXCEEDED")), 1
        )
        # Refused before a procedure was chosen: no procedure label value.
        self.assertEqual(value(self.metrics, "callnet_calls_total", _calls("", "NOT_FOUND")), 1)
        text = scrape(self.metrics)
        self.assertIn('callnet_calls_total{outcome="NOT_FOUND",procedure=""} 1.0', text)
        self.assertIn("# TYPE callnet_calls_total counter", text)

    def test_sum_of_calls_is_stats_calls(self) -> None:
        """Every call STATS counts is in exactly one callnet_calls_total series."""
        self.conn.send("add 1 2\nnosuch\n#1 +timeout=1 wait a\nadd 1\n")
        self.node.advance(1)
        families = {family.name: family for family in self.metrics.registry.collect()}
        total = sum(
            sample.value
            for sample in families["callnet_calls"].samples
            if sample.name == "callnet_calls_total"
        )
        stats = self.node.factory.stats()
        self.assertEqual(total, stats["calls"])
        self.assertEqual(total, 4)

    def test_histogram_buckets(self) -> None:
        """A call's duration on the clock lands in the first bucket it fits."""
        self.conn.send("#1 wait a\n#2 wait b\n#3 wait c\nadd 1 2\n")
        self.node.advance(0.003)
        self.pending["a"].callback(None)  # 3 ms: le=0.005
        self.node.advance(0.097)
        self.pending["b"].callback(None)  # 100 ms: exactly on the bound le=0.1
        self.node.advance(20)
        self.pending["c"].callback(None)  # 20.1 s: only +Inf

        def bucket(name: str, le: str) -> float | None:
            labels = {"procedure": name, "le": le}
            return value(self.metrics, "callnet_call_duration_seconds_bucket", labels)

        self.assertEqual(bucket("wait", "0.001"), 0)
        self.assertEqual(bucket("wait", "0.005"), 1)
        self.assertEqual(bucket("wait", "0.05"), 1)
        self.assertEqual(bucket("wait", "0.1"), 2)
        self.assertEqual(bucket("wait", "10.0"), 2)
        self.assertEqual(bucket("wait", "+Inf"), 3)
        wait = {"procedure": "wait"}
        self.assertEqual(value(self.metrics, "callnet_call_duration_seconds_count", wait), 3)
        seconds = value(self.metrics, "callnet_call_duration_seconds_sum", wait)
        self.assertAlmostEqual(seconds or 0, 0.003 + 0.1 + 20.1)
        # A reactor procedure that returns at once takes no time on the clock.
        self.assertEqual(bucket("add", "0.0005"), 1)

    def test_stats_shows_the_same_figures(self) -> None:
        """STATS reports the outcomes and the cumulative duration buckets too."""
        self.conn.send("#1 +timeout=0.05 wait a\nnosuch\n")
        self.node.advance(0.05)
        stats = self.node.factory.stats()
        wait = stats["procedures"]["wait"]
        self.assertEqual(wait["outcomes"], {"DEADLINE_EXCEEDED": 1})
        self.assertEqual(wait["seconds"]["le"]["0.01"], 0)
        self.assertEqual(wait["seconds"]["le"]["0.05"], 1)
        self.assertEqual(wait["seconds"]["le"]["+Inf"], 1)
        self.assertEqual(stats["refused"], {"NOT_FOUND": 1})

    def test_calls_in_flight(self) -> None:
        """The in-flight gauge follows calls as they start and finish."""
        self.conn.send("#1 wait a\n#2 wait b\n")
        self.node.flush()
        wait = {"procedure": "wait"}
        self.assertEqual(value(self.metrics, "callnet_calls_in_flight", wait), 2)
        self.pending["a"].callback(None)
        self.assertEqual(value(self.metrics, "callnet_calls_in_flight", wait), 1)
        self.pending["b"].errback(ValueError("no"))
        self.assertEqual(value(self.metrics, "callnet_calls_in_flight", wait), 0)
        self.assertEqual(value(self.metrics, "callnet_calls_total", _calls("wait", "INTERNAL")), 1)
        self.flushLoggedErrors(ValueError)

    def test_connections(self) -> None:
        """The connections gauge counts the connections open now."""
        self.assertEqual(value(self.metrics, "callnet_connections"), 1)
        second = self.node.connect_raw()
        self.assertEqual(value(self.metrics, "callnet_connections"), 2)
        second.transport.loseConnection()
        second.protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(value(self.metrics, "callnet_connections"), 1)

    def test_no_peers_no_peer_metric(self) -> None:
        """A node with no cluster has no callnet_peer_up series."""
        self.assertNotIn("callnet_peer_up", scrape(self.metrics))

    def test_own_registry(self) -> None:
        """Two nodes in one process keep apart: each has its own registry."""
        other, _ = make_node()
        other_metrics = Metrics(other.dispatcher, other.factory)
        self.conn.send("add 1 2\n")
        self.assertEqual(value(self.metrics, "callnet_calls_total", _calls("add", "OK")), 1)
        self.assertIsNone(value(other_metrics, "callnet_calls_total", _calls("add", "OK")))


class PeerTests(SynchronousTestCase):
    def test_peer_up(self) -> None:
        """callnet_peer_up is 1 for a peer that is up, 0 once it is down."""
        cluster = MemoryCluster({"alpha": [], "beta": [], "gamma": []})
        alpha = cluster["alpha"]
        metrics = Metrics(alpha.dispatcher, alpha.factory, cluster.clusters["alpha"])
        cluster.start()
        self.addCleanup(cluster.stop)
        self.assertEqual(value(metrics, "callnet_peer_up", {"peer": "beta"}), 1)
        self.assertEqual(value(metrics, "callnet_peer_up", {"peer": "gamma"}), 1)
        cluster.freeze("gamma")
        cluster.advance(cluster.settings.down_after + 1)
        self.assertEqual(value(metrics, "callnet_peer_up", {"peer": "beta"}), 1)
        self.assertEqual(value(metrics, "callnet_peer_up", {"peer": "gamma"}), 0)
        cluster.thaw("gamma")
        cluster.advance(cluster.settings.reconnect_max_delay + 1)
        self.assertEqual(value(metrics, "callnet_peer_up", {"peer": "gamma"}), 1)


class MissingLibraryTests(SynchronousTestCase):
    def test_missing_prometheus_client(self) -> None:
        """Without prometheus-client, Metrics says which extra to install."""
        node = MemoryNode()
        hidden = {name: None for name in list(sys.modules) if name.startswith("prometheus_client")}
        with mock.patch.dict(sys.modules, {"prometheus_client": None, **hidden}):
            error = self.assertRaises(ConfigError, Metrics, node.dispatcher, node.factory)
        self.assertEqual(str(error), MISSING)
        self.assertIn("install callnet[metrics]", str(error))


class EndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = MemoryNode([procedure(run="reactor")(add)])
        self.metrics = Metrics(self.node.dispatcher, self.node.factory)
        self.node.connect_raw().send("add 1 2\n")

    def test_get_metrics(self) -> None:
        """GET /metrics renders the registry in the Prometheus text format."""
        request = DummyRequest([b""])
        body = MetricsPage(self.metrics).render_GET(request)  # type: ignore[arg-type]
        [content_type] = request.responseHeaders.getRawHeaders(b"content-type") or []
        self.assertTrue(content_type.startswith(b"text/plain; version="), content_type)
        self.assertIn(b'callnet_calls_total{outcome="OK",procedure="add"} 1.0', body)

    def test_openmetrics(self) -> None:
        """A scraper that asks for OpenMetrics gets it."""
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"accept", [b"application/openmetrics-text"])
        body = MetricsPage(self.metrics).render_GET(request)  # type: ignore[arg-type]
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [OPENMETRICS.encode("ascii")]
        )
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_service(self) -> None:
        """metrics_service listens on its endpoint string with a site serving /metrics."""
        reactor = MemoryReactor()
        service = metrics_service(reactor, "tcp:9600:interface=127.0.0.1", self.metrics)
        assert isinstance(service, StreamServerEndpointService)
        service.startService()
        self.addCleanup(service.stopService)
        [(port, factory, _backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9600, "127.0.0.1"))
        assert isinstance(factory, Site)
        request = DummyRequest([b"metrics"])
        resource = factory.getResourceFor(request)  # type: ignore[arg-type]
        self.assertIsInstance(resource, MetricsPage)


def _calls(name: str, outcome: str) -> dict[str, str]:
    return {"procedure": name, "outcome": outcome}


class NodeTests(SynchronousTestCase):
    def test_node_serves_metrics(self) -> None:
        """A node configured with metrics_listen builds its Metrics and listener."""
        from callnet.config import NodeConfig
        from callnet.node import NodeService

        config = NodeConfig(name="n", metrics_listen="tcp:9600:interface=127.0.0.1")
        node = NodeService(config, MemoryReactor())
        assert node.metrics is not None
        self.assertEqual(value(node.metrics, "callnet_connections"), 0)
        sites = [
            s
            for s in node
            if isinstance(s, StreamServerEndpointService) and isinstance(s.factory, Site)
        ]
        self.assertEqual(len(sites), 1)

    def test_node_without_metrics(self) -> None:
        """By default a node serves no metrics and needs no prometheus-client."""
        from callnet.config import NodeConfig
        from callnet.node import NodeService

        with mock.patch.dict(sys.modules, {"prometheus_client": None}):
            node = NodeService(NodeConfig(name="n"), MemoryReactor())
        self.assertIsNone(node.metrics)

    def test_option(self) -> None:
        """--metrics-listen sets metrics_listen; an exposed address is refused."""
        from twisted.python.usage import UsageError

        from callnet.tap import Options

        options = Options()
        options.parseOptions(["--metrics-listen", "tcp:9600:interface=127.0.0.1"])
        self.assertEqual(options["node_config"].metrics_listen, "tcp:9600:interface=127.0.0.1")
        error = self.assertRaises(
            UsageError, Options().parseOptions, ["--metrics-listen", "tcp:9600"]
        )
        self.assertIn("--metrics-listen", str(error))
        self.assertIn("--allow-insecure", str(error))
        options = Options()
        options.parseOptions(["--metrics-listen", "tcp:9600", "--allow-insecure"])
        self.assertEqual(options["node_config"].metrics_listen, "tcp:9600")
