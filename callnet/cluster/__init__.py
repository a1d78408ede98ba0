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
from callnet.dispatch import Dispatcher

__all__ = ["Cluster", "Peer", "PeerState", "Router"]

log = Logger()

#: What a subscriber to peer changes is called with: the peer's name and state.
Listener = Callable[[str, PeerState], object]


class Cluster(Service):
    """A node's links to its peers, and the routing that uses them."""

    def __init__(
        self,
        config: NodeConfig,
        dispatcher: Dispatcher,
        reactor: Any,
        hello: Callable[[], dict[str, Any]],
        endpoints: Mapping[str, IStreamClientEndpoint] | None = None,
    ) -> None:
        """
        @param endpoints: endpoints to reach peers by, instead of parsing
            the configured strings (for tests that join nodes in memory).
        """
        self._listeners: list[Listener] = []
        chosen = endpoints or {}
        self.peers = [
            Peer(name, chosen.get(name, endpoint), reactor, config.cluster, hello, self._changed)
            for name, endpoint in config.peers
        ]
        self.router = Router(self.peers, reactor, config.name, config.cluster.max_hops)
        dispatcher.router = self.router

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
