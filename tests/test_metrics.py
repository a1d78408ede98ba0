"""Tests for callnet.metrics: the Prometheus figures and their endpoint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Any
from unittest import SkipTest, mock

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from callnet import procedure
from callnet.errors import ConfigError
from callnet.metrics import MISSING, Metrics, MetricsPage, metrics_service
from callnet.stats import duration_buckets
from callnet.testing import MemoryCluster, MemoryNode, MemoryReactor


def add(a: float, b: float) -> float:
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
        # A name this node does not serve: one label for every such name.
        unknown = _calls("(unknown)", "NOT_FOUND")
        self.assertEqual(value(self.metrics, "callnet_calls_total", unknown), 1)
        text = scrape(self.metrics)
        self.assertIn('callnet_calls_total{outcome="NOT_FOUND",procedure="(unknown)"} 1.0', text)
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

    def test_head_metrics(self) -> None:
        """HEAD /metrics gets GET's headers and no body, and logs no warning."""
        from twisted.logger import globalLogPublisher
        from twisted.web.server import Request as ServerRequest
        from twisted.web.test.requesthelper import DummyChannel

        root = Resource()
        root.putChild(b"metrics", MetricsPage(self.metrics))
        site = Site(root)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        channel = DummyChannel()
        channel.site = site
        request = ServerRequest(channel)
        request.method = b"HEAD"
        request.uri = request.path = b"/metrics"
        request.prepath, request.postpath = [], [b"metrics"]
        request.sitepath = []
        request.site = site
        request.process()
        written = channel.transport.written.getvalue()
        head, _, body = written.partition(b"\r\n\r\n")
        self.assertEqual(body, b"")
        self.assertIn(b"200", head.split(b"\r\n")[0])
        self.assertIn(b"content-type: text/plain", head.lower())
        # The length GET's body would have: not compared byte for byte with a
        # second render, whose process figures (CPU, memory) may have moved.
        length = re.search(rb"content-length: (\d+)", head.lower())
        assert length is not None, head
        get_body, _ = self.metrics.render()
        self.assertLess(abs(int(length.group(1)) - len(get_body)), 256)
        self.assertEqual([e for e in events if "HEAD" in str(e.get("log_format"))], [])

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


class TruthTests(SynchronousTestCase):
    """The figures say what callers saw."""

    def setUp(self) -> None:
        self.pending: dict[str, Deferred[Any]] = {}
        pending = self.pending

        @procedure(run="reactor")
        def numbers() -> set[int]:
            return {1, 2}

        @procedure(run="reactor")
        def later(key: str) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending[key] = d
            return d

        self.node = MemoryNode([procedure(run="reactor")(add), numbers, later])
        self.metrics = Metrics(self.node.dispatcher, self.node.factory)
        self.conn = self.node.connect_raw()

    def test_result_that_is_not_json_counts_as_internal(self) -> None:
        """A result that cannot be sent counts INTERNAL, as its caller is answered, not OK."""
        self.conn.send("add 1e308 1e308\nnumbers\n#1 later a\n")
        self.pending["a"].callback(float("nan"))
        lines = self.conn.lines()
        self.assertEqual(len(lines), 3)
        for line in lines:
            self.assertIn(b"ERR INTERNAL ran", line)
        for name in ("add", "numbers", "later"):
            self.assertEqual(
                value(self.metrics, "callnet_calls_total", _calls(name, "INTERNAL")), 1, name
            )
            self.assertIsNone(value(self.metrics, "callnet_calls_total", _calls(name, "OK")))

    def test_refused_call_counts_under_its_procedure(self) -> None:
        """A call refused for its arguments counts under the procedure it names."""
        self.conn.send("add 1\nadd 1 2\n")
        self.assertEqual(
            value(self.metrics, "callnet_calls_total", _calls("add", "INVALID_ARGUMENT")), 1
        )
        self.assertEqual(value(self.metrics, "callnet_calls_total", _calls("add", "OK")), 1)
        self.assertNotIn('procedure=""', scrape(self.metrics))

    def test_unknown_names_share_one_label(self) -> None:
        """Made-up names all count under procedure="(unknown)": no series per name."""
        self.conn.send("".join(f"made_up_{n}\n" for n in range(50)) + "add@elsewhere 1 2\n")
        unknown = _calls("(unknown)", "NOT_FOUND")
        self.assertEqual(value(self.metrics, "callnet_calls_total", unknown), 50)
        # A name served here, asked of a node there is not: counted as the name.
        self.assertEqual(value(self.metrics, "callnet_calls_total", _calls("add", "NOT_FOUND")), 1)
        self.assertNotIn("made_up", scrape(self.metrics))

    def test_buckets_reach_max_timeout(self) -> None:
        """The buckets go up to the node's max_timeout, and a call near it lands below +Inf."""
        self.conn.send("#1 +timeout=3600 later a\n")
        self.node.advance(2000)
        self.pending["a"].callback(None)
        bounds = self.node.dispatcher.stats.buckets
        self.assertEqual(bounds[-1], self.node.dispatcher._limits.max_timeout)
        for bound in (30.0, 60.0, 300.0, 900.0):
            self.assertIn(bound, bounds)
        labels = {"procedure": "later", "le": "3600.0"}
        self.assertEqual(value(self.metrics, "callnet_call_duration_seconds_bucket", labels), 1)
        labels["le"] = "900.0"
        self.assertEqual(value(self.metrics, "callnet_call_duration_seconds_bucket", labels), 0)

    def test_buckets_capped_at_a_shorter_max_timeout(self) -> None:
        """A node whose calls run at most 45 s has no bucket past 45 s."""
        self.assertEqual(duration_buckets(45.0)[-3:], (10.0, 30.0, 45.0))
        self.assertEqual(duration_buckets(3600.0)[-1], 3600.0)
        self.assertEqual(duration_buckets(7200.0)[-2:], (3600.0, 7200.0))

    def test_shutdown_cancel_counts_unavailable(self) -> None:
        """A call cancelled because the node stops counts UNAVAILABLE, not a caller's cancel."""
        self.conn.send("#1 later a\n#2 later b\n")
        self.node.dispatcher.shut_down()
        self.node.factory.drain(0)
        self.node.flush()
        self.assertEqual(
            value(self.metrics, "callnet_calls_total", _calls("later", "UNAVAILABLE")), 2
        )
        self.assertIsNone(value(self.metrics, "callnet_calls_total", _calls("later", "CANCELLED")))

    def test_process_and_python_collectors(self) -> None:
        """The node's registry carries the process, platform and GC figures."""
        text = scrape(self.metrics)
        self.assertIn("python_info{", text)
        self.assertIn("python_gc_collections_total", text)
        if os.path.exists("/proc/self/stat"):
            self.assertIn("process_resident_memory_bytes", text)

    def test_scrape_is_valid_exposition(self) -> None:
        """A scrape parses, with HELP and TYPE for every family and cumulative histograms."""
        self.conn.send("add 1 2\nadd 1\nnosuch\n#1 later a\n#2 later b\n")
        self.node.advance(0.2)
        self.pending["a"].callback(None)
        text = scrape(self.metrics)
        check_exposition(self, text)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        self.assertEqual(families["callnet_calls"].type, "counter")
        self.assertEqual(families["callnet_call_duration_seconds"].type, "histogram")
        self.assertEqual(families["callnet_calls_in_flight"].type, "gauge")
        self.assertEqual(families["callnet_connections"].type, "gauge")

    def test_promtool_accepts_a_scrape(self) -> None:
        """promtool check metrics passes on a scrape, where promtool is installed."""
        promtool = shutil.which("promtool")
        if promtool is None:
            raise SkipTest("promtool is not installed")
        self.conn.send("add 1 2\nadd 1\nnosuch\n#1 later a\n")
        self.pending["a"].callback(None)
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=scrape(self.metrics).encode("utf-8"),
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


def check_exposition(test: SynchronousTestCase, text: str) -> None:
    """Check Prometheus text: names, HELP and TYPE lines, cumulative buckets ending at +Inf."""
    helps = re.findall(r"^# HELP (\S+) \S", text, re.MULTILINE)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    test.assertEqual(sorted(helps), sorted(types))
    for family in text_string_to_metric_families(text):
        test.assertRegex(family.name, r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
        test.assertTrue(family.documentation, family.name)
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        counts = {}
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            if sample.name.endswith("_bucket"):
                series.setdefault(labels, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                counts[labels] = sample.value
        test.assertTrue(series, family.name)
        for labels, buckets in series.items():
            bounds = [bound for bound, _ in buckets]
            test.assertEqual(bounds, sorted(bounds))
            test.assertEqual(bounds[-1], float("inf"))
            values = [count for _, count in buckets]
            test.assertEqual(values, sorted(values), "buckets are cumulative")
            test.assertEqual(values[-1], counts[labels])


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
