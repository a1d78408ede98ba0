"""
Prometheus metrics for a node, served on their own endpoint.

L{Metrics} reads the node's own counters (the ones C{STATS} reports) each
time it is scraped, so serving metrics adds nothing to a call's cost:

  - C{callnet_calls_total{procedure, outcome}}: finished calls, by outcome
    as their callers saw it (C{OK} or the error code: a result that cannot
    be sent is C{INTERNAL}).  Refused calls count under the procedure they
    name; a name the node neither serves nor can forward counts under
    C{procedure="(unknown)"}, so that made-up names add no series.  The sum
    over every series is the C{calls} of C{STATS}.
  - C{callnet_call_duration_seconds{procedure}}: a histogram of how long
    calls that started took, on buckets up to the node's C{max_timeout}
    (L{callnet.stats.duration_buckets}).
  - C{callnet_calls_in_flight{procedure}}: calls running now.
  - C{callnet_connections}: connections open now.
  - C{callnet_peer_up{peer}}: 1 for a peer that is up, 0 otherwise.
  - prometheus-client's process (C{process_*}: CPU, memory, open files),
    platform (C{python_info}) and garbage collector (C{python_gc_*})
    figures.

prometheus-client is an optional dependency (C{callnet[metrics]}): it is
imported only when a node is configured to serve metrics.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from callnet.cluster.peers import PeerState
from callnet.dispatch import Dispatcher
from callnet.errors import ConfigError
from callnet.reactors import DispatchReactor
from callnet.server import NodeFactory

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from callnet.cluster import Cluster

__all__ = ["Metrics", "MetricsPage", "metrics_service", "require_prometheus"]

#: What to tell an operator whose node is configured to serve metrics
#: without the library to do it.
MISSING = (
    "serving metrics needs prometheus-client: install callnet[metrics]"
    ' (pip install "callnet[metrics]")'
)


def require_prometheus() -> Any:
    """
    Import prometheus-client.

    @return: the C{prometheus_client} package.
    @raise ConfigError: it is not installed; the message says how to get it.
    """
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        raise ConfigError(MISSING) from None


class _NodeCollector:
    """A Prometheus collector that reads a node's counters at scrape time."""

    def __init__(
        self, dispatcher: Dispatcher, factory: NodeFactory, cluster: Cluster | None
    ) -> None:
        self._dispatcher = dispatcher
        self._factory = factory
        self._cluster = cluster
        from prometheus_client.utils import floatToGoString

        #: The buckets' C{le} labels, as Prometheus writes them.
        buckets = dispatcher.stats.buckets
        self._bounds = [floatToGoString(bound) for bound in (*buckets, float("inf"))]

    def describe(self) -> list[Any]:
        """Nothing up front: every figure is read when the registry collects."""
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = self._dispatcher.stats
        procedures = sorted(stats.by_procedure.items())
        calls = CounterMetricFamily(
            "callnet_calls",
            "Calls finished, by procedure and outcome as the caller saw it (OK or"
            ' the error code); procedure="(unknown)" for names not served here.',
            labels=["procedure", "outcome"],
        )
        durations = HistogramMetricFamily(
            "callnet_call_duration_seconds",
            "How long calls that started took, by procedure.",
            labels=["procedure"],
        )
        in_flight = GaugeMetricFamily(
            "callnet_calls_in_flight", "Calls running now, by procedure.", labels=["procedure"]
        )
        for name, entry in procedures:
            for outcome, count in entry.outcomes().items():
                calls.add_metric([name, outcome], count)
            if not entry.in_flight and not any(entry.durations):
                continue  # only refused: none of its calls ran, so none took time
            cumulative, buckets = 0, []
            for bound, count in zip(self._bounds, entry.durations, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            durations.add_metric([name], buckets, entry.duration_sum)
            in_flight.add_metric([name], entry.in_flight)
        yield calls
        yield durations
        yield in_flight
        yield GaugeMetricFamily(
            "callnet_connections", "Connections open now.", value=self._factory.connections
        )
        if self._cluster is not None:
            peers = GaugeMetricFamily(
                "callnet_peer_up", "1 for a peer that is up, 0 otherwise.", labels=["peer"]
            )
            for peer in self._cluster.peers:
                peers.add_metric([peer.name], 1 if peer.state is PeerState.UP else 0)
            yield peers


class Metrics:
    """
    A node's figures as Prometheus metrics, in a registry of their own.

    Each node has its own registry, not prometheus-client's global one, so
    several nodes can run in one process.

    @ivar registry: the C{CollectorRegistry} to scrape.
    @raise ConfigError: prometheus-client is not installed.
    """

    def __init__(
        self, dispatcher: Dispatcher, factory: NodeFactory, cluster: Cluster | None = None
    ) -> None:
        require_prometheus()
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
        from prometheus_client.registry import CollectorRegistry

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(_NodeCollector(dispatcher, factory, cluster))
        # Read at scrape time from /proc and the interpreter, like the node's
        # own figures; the process collector finds nothing to report where
        # there is no /proc, and says nothing.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """
        The metrics in the exposition format C{accept} asks for.

        @param accept: the scraper's C{Accept} header, if any: OpenMetrics
            if it asks for it, else the Prometheus text format.
        @return: the body and its content type.
        """
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class MetricsPage(Resource):
    """
    C{GET /metrics} (and C{HEAD}): render the registry in the reactor thread.

    Not C{prometheus_client.twisted.MetricsResource}, which uses the global
    reactor and reads the counters from a worker thread while calls change
    them.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept")
        body, content_type = self._metrics.render(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body

    def render_HEAD(self, request: Request) -> bytes:
        """
        The headers C{GET} would send, and no body: without this Twisted
        renders the body and logs a warning that a HEAD request returned one.
        """
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""


class _QuietSite(Site):
    """A site that does not log every scrape."""

    def log(self, request: http.Request) -> None:
        pass


def metrics_service(reactor: DispatchReactor, description: str, metrics: Metrics) -> IService:
    """
    A service serving C{GET /metrics} on the server endpoint C{description}.

    @param description: a Twisted server endpoint string, such as
        C{tcp:9600:interface=127.0.0.1}.
    """
    root = Resource()
    root.putChild(b"metrics", MetricsPage(metrics))
    site = _QuietSite(root)
    site.noisy = False
    return StreamServerEndpointService(serverFromString(reactor, description), site)
