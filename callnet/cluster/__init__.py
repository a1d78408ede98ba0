"""
The cluster: a node's peers, what they serve, and calls forwarded to them.

L{Cluster} is the service a node runs when it has peers.  It keeps a
L{Peer} link to each, tells subscribers when one goes up or down, and gives
the node's dispatcher a L{Router} for calls the node does not serve itself.

Peers come from sources (L{callnet.cluster.discovery}): the C{[peers]} table,
whose peers are named in advance, and DNS, whose peers are named by their
handshake.  A discovered address that turns out to be this node is skipped;
one that gives a name another peer already has is refused; either is
forgotten when DNS stops naming it.  A discovered peer DNS no longer names,
and a configured one a reload removes, is drained: no new calls go to it,
and its link ends once the calls in flight have their answers, or after the
node's C{shutdown_grace}.  Over TLS links a discovered peer's certificate
must name the host its SRV record gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from callnet.cluster.discovery import PeerEntry, PeerSource, StaticPeers
from callnet.cluster.peers import Peer, PeerState
from callnet.cluster.routing import Router
from callnet.config import ClusterSettings, NodeConfig
from callnet.reactors import DispatchReactor
from callnet.tls import load_credentials, peer_endpoint

__all__ = ["Cluster", "Peer", "PeerSource", "PeerState", "Router"]

#: Makes the source of discovered peers a node's cluster settings ask for,
#: or C{None} when they ask for none.
SourceMaker = Callable[[ClusterSettings], PeerSource | None]

#: The settings that make the discovery source: a change to any starts a new
#: one, on reload as at start.
DISCOVER_SETTINGS = (
    "discover",
    "discover_min_interval",
    "discover_max_interval",
    "discover_max_peers",
    "discover_nameservers",
)

log = Logger()

#: What a subscriber to peer changes is called with: the peer's name and state.
Listener = Callable[[str, PeerState], object]


class Cluster(Service):
    """A node's links to its peers, and the routing that uses them."""

    def __init__(
        self,
        config: NodeConfig,
        router: Router,
        reactor: DispatchReactor,
        hello: Callable[[], dict[str, Any]],
        endpoints: Mapping[str, IStreamClientEndpoint] | None = None,
        discovery: SourceMaker | None = None,
    ) -> None:
        """
        @param router: routes the node's calls over these peers (its
            dispatcher's forwarder, made before either: see
            L{callnet.wiring.build_node}).
        @param endpoints: endpoints to reach peers by, instead of parsing
            the configured strings (for tests that join nodes in memory):
            by name for configured peers, by endpoint string for
            discovered ones.
        @param discovery: makes the source of discovered peers from the
            cluster settings (L{callnet.cluster.discovery.dns_source}).
        @raise ConfigError: C{[tls]} is set and its files cannot be used, or
            a peer's endpoint cannot be dialled over TLS.
        """
        self._listeners: list[Listener] = []
        self._reactor = reactor
        self._hello = hello
        self._chosen = dict(endpoints or {})
        self._config = config
        self._static: list[Peer] = []
        #: Discovered peers by endpoint string, named or not yet.
        self._found: dict[str, Peer] = {}
        #: Discovered endpoints not dialled, and why: this node itself, or
        #: the name another peer has.  Forgotten when DNS stops naming them.
        self.skipped: dict[str, str] = {}
        self._draining: list[Peer] = []
        self._discovery = discovery
        self._source: PeerSource | None = None
        self.peers: list[Peer] = []
        self.router = router
        self.update(config)

    def _make_peer(
        self, name: str, endpoint: str, discovered: bool = False, target: str | None = None
    ) -> Peer:
        """
        @param target: for a discovered peer, the SRV target its certificate
            must name over TLS (a configured peer's must name the peer).
        """
        config = self._config
        # With [tls] cert, key and ca, every link is mutual TLS: this node's
        # certificate out, and the peer's checked against the CA and a name.
        credentials = load_credentials(config.tls) if config.tls.secures_links else None
        key = endpoint if discovered else name
        where: str | IStreamClientEndpoint = self._chosen.get(key, endpoint)
        connector = None
        if credentials is not None and key not in self._chosen:
            expected = target if discovered and target is not None else name
            connector = peer_endpoint(
                self._reactor, expected, endpoint, credentials, config.cluster.down_after
            )
        peer = Peer(
            name,
            where,
            self._reactor,
            config.cluster,
            self._hello,
            self._changed,
            connector=connector,
            token=config.security.cluster_token,
            on_named=self._named if discovered else None,
        )
        peer.configured = endpoint
        return peer

    def update(self, config: NodeConfig) -> tuple[list[str], list[str]]:
        """
        Take a new list of peers: links to peers no longer listed are
        drained (their calls in flight end, within the shutdown grace), new
        ones are made, and the rest are left alone.

        @return: the names of the peers added and of those removed.
        @raise ConfigError: a new peer's TLS material cannot be used.
        """
        before, self._config = self._config, config
        wanted = {
            entry.name: entry.endpoint for entry in StaticPeers(config.peers).entries if entry.name
        }
        current = {peer.name: peer for peer in self._static}
        removed = [name for name, peer in current.items() if wanted.get(name) != peer.configured]
        added = [name for name in wanted if name not in current or name in removed]
        new_peers = {name: self._make_peer(name, wanted[name]) for name in added}
        for name in removed:
            peer = current.pop(name)
            log.info(
                "peer {peer} at {endpoint} is no longer configured: draining it",
                peer=name,
                endpoint=peer.configured,
            )
            self._drain_link(peer)
        current.update(new_peers)
        self._static = [current[name] for name in wanted if name in current]
        self._route()
        if self.running:
            for name in added:
                new_peers[name].start()
        changed = any(
            getattr(before.cluster, key) != getattr(config.cluster, key)
            for key in DISCOVER_SETTINGS
        )
        if self._source is None or changed:
            self._replace_source(config.cluster)
        return added, [name for name in removed if name not in wanted]

    # --- Discovered peers -------------------------------------------------------

    def _replace_source(self, settings: ClusterSettings) -> None:
        """Follow the discovery source these settings ask for; a reload keeps what it found."""
        if self._source is not None:
            self._source.stop()
        self._source = self._discovery(settings) if self._discovery is not None else None
        if self._source is None:
            self._discovered(frozenset())
        elif self.running:
            self._source.start(self._discovered)

    def _discovered(self, entries: frozenset[PeerEntry]) -> None:
        """Dial the endpoints that appeared; drain the peers whose endpoint went."""
        wanted = {entry.endpoint: entry for entry in entries}
        for endpoint in [endpoint for endpoint in self.skipped if endpoint not in wanted]:
            del self.skipped[endpoint]
        for endpoint in [endpoint for endpoint in self._found if endpoint not in wanted]:
            self._drain(self._found.pop(endpoint))
        for endpoint, entry in sorted(wanted.items()):
            if endpoint not in self._found and endpoint not in self.skipped:
                peer = self._make_peer(
                    entry.address or endpoint, endpoint, discovered=True, target=entry.target
                )
                self._found[endpoint] = peer
                if self.running:
                    peer.start()
        self._route()

    def _drain(self, peer: Peer) -> None:
        log.info(
            "peer {peer} at {endpoint} is no longer in DNS: draining it",
            peer=peer.name,
            endpoint=peer.configured,
        )
        # The holder of a name leaving lets an endpoint refused for it try
        # again: _discovered, which drains, dials it next.
        retry = [endpoint for endpoint, why in self.skipped.items() if why == f"name {peer.name}"]
        for endpoint in retry:
            del self.skipped[endpoint]
        self._drain_link(peer)

    def _drain_link(self, peer: Peer) -> None:
        """
        Send no new calls to C{peer}, and end its link once the calls in
        flight on it have their answers, or after the node's shutdown grace:
        a peer that leaves, by DNS or by a reload, is let go as a node that
        stops lets its own calls go.
        """
        if not self.running:
            return
        self._draining.append(peer)
        done = peer.drain(self._config.shutdown_grace)
        done.addBoth(lambda _: self._draining.remove(peer) if peer in self._draining else None)

    def _named(self, peer: Peer, name: str) -> bool:
        """
        A discovered peer's handshake gave C{name}: let it take the name, or
        skip its endpoint if that name is this node's or another peer's.
        """
        endpoint = peer.configured
        if name == self._config.name:
            why = "this node"
            log.info(
                "{endpoint} is this node itself ({name}): not dialling it",
                endpoint=endpoint,
                name=name,
            )
        elif any(other.name == name for other in self._static) or any(
            other.name == name and other is not peer for other in self._found.values()
        ):
            why = f"name {name}"
            log.warn(
                "refusing the node at {endpoint}: it says it is {name}, a name another"
                " peer already has",
                endpoint=endpoint,
                name=name,
            )
        else:
            peer.name = name
            self._route()
            return True
        if self._found.get(endpoint) is peer:
            del self._found[endpoint]
            self.skipped[endpoint] = why
        peer.stop()
        self._route()
        return False

    def _route(self) -> None:
        """Route over the configured peers and the discovered ones not draining."""
        self.peers = self._static + list(self._found.values())
        self.router.set_peers(self.peers)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """
        Call C{listener(name, state)} whenever a peer goes up or down.

        @return: a function that ends the subscription.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self, peer: Peer) -> None:
        for listener in list(self._listeners):
            try:
                listener(peer.name, peer.state)
            except Exception:
                log.failure("peer listener {listener!r} failed", listener=listener)

    def describe(self) -> dict[str, Any]:
        """The cluster as this node sees it, for C{STATS}."""
        return {peer.name: peer.describe() for peer in self.peers}

    def startService(self) -> None:
        super().startService()
        for peer in self.peers:
            peer.start()
        if self._source is not None:
            self._source.start(self._discovered)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._source is not None:
            self._source.stop()
        draining, self._draining = self._draining, []
        return DeferredList([peer.stop() for peer in self.peers + draining])
