"""
The cluster: a node's peers, what they serve, and calls forwarded to them.

L{Cluster} is the service a node runs when it has peers.  It keeps a
L{Peer} link to each, tells subscribers when one goes up or down, and gives
the node's dispatcher a L{Router} for calls the node does not serve itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from callnet.cluster.peers import Peer, PeerState
from callnet.cluster.routing import Router
from callnet.config import NodeConfig
from callnet.reactors import DispatchReactor
from callnet.tls import links_use_tls, load_credentials, peer_endpoint

__all__ = ["Cluster", "Peer", "PeerState", "Router"]

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
    ) -> None:
        """
        @param router: routes the node's calls over these peers (its
            dispatcher's forwarder, made before either: see
            L{callnet.wiring.build_node}).
        @param endpoints: endpoints to reach peers by, instead of parsing
            the configured strings (for tests that join nodes in memory).
        @raise ConfigError: C{[tls]} is set and its files cannot be used, or
            a peer's endpoint cannot be dialled over TLS.
        """
        self._listeners: list[Listener] = []
        self._reactor = reactor
        self._hello = hello
        self._chosen = dict(endpoints or {})
        self._config = config
        self.peers: list[Peer] = []
        self.router = router
        self.update(config)

    def _make_peer(self, name: str, endpoint: str) -> Peer:
        config = self._config
        # With [tls] cert, key and ca, every link is mutual TLS: this node's
        # certificate out, and the peer's checked against the CA and its name.
        credentials = load_credentials(config.tls) if links_use_tls(config.tls) else None
        where: str | IStreamClientEndpoint = self._chosen.get(name, endpoint)
        connector = None
        if credentials is not None and name not in self._chosen:
            connector = peer_endpoint(
                self._reactor, name, endpoint, credentials, config.cluster.down_after
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
        )
        peer.configured = endpoint
        return peer

    def update(self, config: NodeConfig) -> tuple[list[str], list[str]]:
        """
        Take a new list of peers: links to peers no longer listed are closed,
        new ones are made, and the rest are left alone.

        @return: the names of the peers added and of those removed.
        @raise ConfigError: a new peer's TLS material cannot be used.
        """
        self._config = config
        wanted = dict(config.peers)
        current = {peer.name: peer for peer in self.peers}
        removed = [name for name, peer in current.items() if wanted.get(name) != peer.configured]
        added = [name for name in wanted if name not in current or name in removed]
        new_peers = {name: self._make_peer(name, wanted[name]) for name in added}
        for name in removed:
            peer = current.pop(name)
            if self.running:
                peer.stop()
        current.update(new_peers)
        self.peers = [current[name] for name in wanted if name in current]
        self.router.set_peers(self.peers)
        if self.running:
            for name in added:
                new_peers[name].start()
        return added, [name for name in removed if name not in wanted]

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

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([peer.stop() for peer in self.peers])
