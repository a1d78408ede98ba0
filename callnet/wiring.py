"""
One wiring: the parts of a node, built from a L{NodeConfig} and a reactor.

L{build_node} makes the registry, the dispatcher with its access policy, the
factory and, with peers, the cluster, each given its collaborators when it
is made.  L{callnet.node.NodeService} (a real node under twistd),
L{callnet.testing.MemoryNode} and L{callnet.testing.MemoryCluster} (nodes in
memory) all build their nodes here, so a test's node is wired as a real one.

What a reload may change (the procedures, tokens and access rules, the
peers) is built afresh from the new config by L{NodeParts.reload} and put in
place whole, or not at all.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint

from callnet.access import AccessPolicy
from callnet.builtin import builtin_procedures
from callnet.cluster import Cluster, PeerSource, Router
from callnet.cluster.discovery import dns_source
from callnet.cluster.multicall import make_multicall
from callnet.config import ClusterSettings, NodeConfig
from callnet.dispatch import Dispatcher
from callnet.errors import ConfigError
from callnet.reactors import DispatchReactor
from callnet.registry import Registry
from callnet.server import NodeFactory, node_hello
from callnet.tls import peer_identity
from callnet.workers import ThreadRunner

__all__ = ["NodeParts", "build_node", "load_services"]


def load_services(registry: Registry, modules: tuple[str, ...]) -> None:
    """
    Serve the marked procedures of each named module.

    @raise ConfigError: a module cannot be imported or a name clashes.
    """
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as e:
            raise ConfigError(f"service module {name!r} cannot be imported: {e}") from e
        try:
            added = registry.add_module(module)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"service module {name!r}: {e}") from e
        if not added:
            raise ConfigError(
                f"service module {name!r} has no procedures: mark them with @callnet.procedure"
            )


def _registry(
    config: NodeConfig,
    reactor: DispatchReactor,
    procedures: Iterable[Callable[..., Any]],
    reload: bool,
) -> Registry:
    """
    The procedures a config says to serve, besides C{multicall}: the
    built-ins, the given ones, and its service modules' (imported again on
    reload).

    @raise ConfigError: a module cannot be imported or reloaded, or a name
        clashes.
    """
    registry = Registry()
    if config.builtins:
        registry.add_all(builtin_procedures(reactor))
    registry.add_all(procedures)
    if reload:
        for name in config.services:
            module = sys.modules.get(name)
            if module is not None:
                try:
                    importlib.reload(module)
                except Exception as e:
                    raise ConfigError(f"service module {name!r} cannot be reloaded: {e}") from e
    load_services(registry, config.services)
    return registry


def _access(config: NodeConfig) -> AccessPolicy:
    """The tokens and access rules a config sets, knowing its peers' names."""
    return AccessPolicy(config.security, (name for name, _ in config.peers))


@dataclass
class NodeParts:
    """The parts of one node, wired together; see L{build_node}."""

    config: NodeConfig
    dispatcher: Dispatcher
    factory: NodeFactory
    #: The node's links to its peers, if it has any.
    cluster: Cluster | None
    _reactor: DispatchReactor = field(repr=False)
    _procedures: tuple[Callable[..., Any], ...] = field(repr=False)

    @property
    def registry(self) -> Registry:
        """The procedures the node serves now."""
        return self.dispatcher.registry

    def reload(self, config: NodeConfig) -> tuple[list[str], list[str]]:
        """
        Build what a new config says to serve (procedures, with the service
        modules imported again; tokens and access rules; peers) and put it in
        place whole.  Anything else in the config waits for a restart.

        @return: the names of the peers added and of those removed.
        @raise ConfigError: something of the new config cannot be used;
            then nothing has changed.
        """
        registry = _registry(config, self._reactor, self._procedures, reload=True)
        registry.add(make_multicall(self.dispatcher))
        access = _access(config)
        if (config.peers or config.cluster.discover) and self.cluster is None:
            raise ConfigError(
                "peers can be added on reload only to a node started with some (in [peers]"
                " or by [cluster] discover)"
            )
        # Cluster.update makes every new link before it changes anything, so
        # a peer that cannot be used leaves the old state as it was.
        added, removed = self.cluster.update(config) if self.cluster is not None else ([], [])
        self.dispatcher.registry = registry
        self.dispatcher.access = access
        self.config = config
        return added, removed


def build_node(
    config: NodeConfig,
    reactor: DispatchReactor,
    threads: ThreadRunner,
    *,
    procedures: Iterable[Callable[..., Any]] = (),
    process_pool: Callable[[], Executor] | None = None,
    peer_endpoints: Mapping[str, IStreamClientEndpoint] | None = None,
    discovery: Callable[[ClusterSettings], PeerSource | None] | None = None,
) -> NodeParts:
    """
    Build a node's parts from its config: nothing listens or connects yet.

    @param reactor: the reactor (or, in tests, a memory reactor and clock)
        everything runs on.
    @param threads: where plain (blocking) procedures run.
    @param procedures: procedures to serve besides those the config names
        (a test's own).
    @param process_pool: gives the pool for C{run="process"} procedures,
        started on first use.
    @param peer_endpoints: endpoints to reach peers by, instead of parsing
        the configured strings (nodes joined in memory): by name, or for
        discovered peers by endpoint string.
    @param discovery: makes the source of discovered peers from the
        C{[cluster]} settings (a test's own resolver); by default DNS asked
        through the system's resolver, when C{discover} is set.
    @raise ConfigError: a service module cannot be used, or the C{[tls]}
        material for links to peers cannot be loaded.
    """
    procedures = tuple(procedures)
    registry = _registry(config, reactor, procedures, reload=False)
    # A node with peers routes what it does not serve over them: the router
    # is made first, and given to the dispatcher and to the cluster.
    clustered = bool(config.peers or config.cluster.discover)
    router = Router([], reactor, config.name, config.cluster.max_hops) if clustered else None
    dispatcher = Dispatcher(
        registry,
        reactor,
        threads,
        config.limits,
        config.name,
        process_pool=process_pool,
        send_tracebacks=config.send_tracebacks,
        access=_access(config),
        forwarder=router,
    )
    registry.add(make_multicall(dispatcher))
    cluster = None
    if router is not None:
        cluster = Cluster(
            config,
            router,
            reactor,
            lambda: node_hello(config.name, dispatcher),
            endpoints=peer_endpoints,
            discovery=discovery or (lambda settings: dns_source(settings, reactor)),
        )
    factory = NodeFactory(
        dispatcher,
        config.limits,
        config.name,
        reactor,
        # The name in a TLS client's verified certificate (tls: listeners
        # with [tls] ca); None for any other transport.
        identify=peer_identity,
        access_log=config.access_log,
        describe_cluster=cluster.describe if cluster is not None else None,
    )
    return NodeParts(config, dispatcher, factory, cluster, reactor, procedures)
