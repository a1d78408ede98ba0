"""
A node: the service that builds the registry, dispatcher and listeners from a
L{NodeConfig} and a reactor, and starts and stops them with twistd.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from callnet.access import AccessPolicy
from callnet.builtin import builtin_procedures
from callnet.cluster import Cluster
from callnet.cluster.multicall import make_multicall
from callnet.config import NodeConfig
from callnet.dispatch import Dispatcher
from callnet.errors import ConfigError
from callnet.metrics import Metrics, metrics_service
from callnet.registry import Registry
from callnet.server import NodeFactory
from callnet.tls import is_tls_listen, peer_identity, server_endpoint
from callnet.workers import WorkerThreads

log = Logger()


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


class NodeService(MultiService):
    """One node: its procedures, its worker pools and its listening endpoints."""

    def __init__(self, config: NodeConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.registry = self._registry(config, reload=False)
        self.threadpool = WorkerThreads(config.threads, f"callnet-{config.name}")
        self._process_pool: ProcessPoolExecutor | None = None
        self.dispatcher = Dispatcher(
            self.registry,
            reactor,
            self.threadpool,
            config.limits,
            config.name,
            process_pool=self._processes,
            send_tracebacks=config.send_tracebacks,
        )
        self.registry.add(make_multicall(self.dispatcher))
        #: Where reload() reads the config again, and the command-line values
        #: that win over the file: set by the twistd entry point.
        self.reload_from: Callable[[], NodeConfig] | None = None
        self.factory = NodeFactory(self.dispatcher, config.limits, config.name, reactor)
        self.factory.access = AccessPolicy(config.security, (name for name, _ in config.peers))
        # The name in a TLS client's verified certificate (tls: listeners with [tls] ca).
        self.factory.identify = peer_identity
        self.factory.access_log = config.access_log
        self.cluster: Cluster | None = None
        if config.peers:
            self.cluster = Cluster(config, self.dispatcher, reactor, self.factory.hello)
            self.factory.describe_cluster = self.cluster.describe
            self.cluster.setServiceParent(self)
        for description in config.listen:
            if is_tls_listen(description):
                # tls:PORT[:interface=ADDR], with the node's [tls] certificate.
                endpoint = server_endpoint(reactor, description, config.tls)
            else:
                endpoint = serverFromString(reactor, description)
            StreamServerEndpointService(endpoint, self.factory).setServiceParent(self)
        #: The node's Prometheus figures, if it serves them ([node] metrics_listen).
        self.metrics: Metrics | None = None
        if config.metrics_listen is not None:
            self.metrics = Metrics(self.dispatcher, self.factory, self.cluster)
            metrics_service(reactor, config.metrics_listen, self.metrics).setServiceParent(self)

    def _registry(self, config: NodeConfig, reload: bool) -> Registry:
        """The procedures a config says to serve (its modules imported again on reload)."""
        registry = Registry()
        if config.builtins:
            registry.add_all(builtin_procedures(self._reactor))
        if reload:
            for name in config.services:
                module = sys.modules.get(name)
                if module is not None:
                    try:
                        importlib.reload(module)
                    except Exception as e:
                        raise ConfigError(
                            f"service module {name!r} cannot be reloaded: {e}"
                        ) from e
        load_services(registry, config.services)
        return registry

    def reload(self) -> bool:
        """
        Read the configuration again and apply what can change while running:
        the service modules (imported again), tokens and access rules, and
        the peers.  Anything else waits for a restart, and the log says so.
        An invalid new configuration is refused, and the running one stays.

        @return: whether the new configuration was applied.
        """
        if self.reload_from is None:
            log.warn("reload asked for, but this node was not started from a config file")
            return False
        old = self.config
        try:
            new = self.reload_from()
            registry = self._registry(new, reload=True)
            access = AccessPolicy(new.security, (name for name, _ in new.peers))
            if new.peers and self.cluster is None:
                raise ConfigError("peers can be added on reload only to a node started with some")
            added, removed = self.cluster.update(new) if self.cluster is not None else ([], [])
        except (ConfigError, OSError) as e:
            log.error("reload refused, the running configuration stays: {error}", error=str(e))
            return False
        registry.add(make_multicall(self.dispatcher))
        old_names, new_names = set(self.registry.names()), set(registry.names())
        self.dispatcher.registry = registry
        self.registry = registry
        self.factory.access = access
        self.config = new
        changes = []
        if new_names != old_names:
            changes.append(
                f"procedures +{sorted(new_names - old_names)} -{sorted(old_names - new_names)}"
            )
        if (new.security.tokens, new.security.acl) != (old.security.tokens, old.security.acl):
            changes.append("tokens or access rules")
        if added or removed:
            changes.append(f"peers +{added} -{removed}")
        unapplied = [
            key
            for key in ("listen", "name", "threads", "processes", "limits", "tls", "cluster")
            if getattr(new, key) != getattr(old, key)
        ]
        log.info(
            "reloaded: {changes}{later}",
            changes="; ".join(changes) or "nothing changed",
            later=f"; needs a restart to apply: {', '.join(unapplied)}" if unapplied else "",
        )
        return True

    def _processes(self) -> Executor:
        """The worker process pool, started on first use."""
        if self._process_pool is None:
            # spawn, not fork: a forked copy of a process running a reactor
            # and threads inherits locks held at the moment of the fork.
            self._process_pool = ProcessPoolExecutor(
                max_workers=self.config.processes or None,
                mp_context=multiprocessing.get_context("spawn"),
            )
        return self._process_pool

    def startService(self) -> None:
        self.threadpool.start()
        super().startService()
        log.info(
            "callnet node {name} serving {count} procedures on {listen}",
            name=self.config.name,
            count=len(self.registry),
            listen=", ".join(self.config.listen),
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop gracefully: stop listening, refuse new calls, give the calls in
        flight C{shutdown_grace} seconds, cancel the rest, then stop the peer
        links and the worker pools.
        """
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        Service.stopService(self)
        listeners = [s for s in self if isinstance(s, StreamServerEndpointService)]
        await gatherResults([maybeDeferred(s.stopService) for s in listeners])
        await self.factory.drain(self.config.shutdown_grace)
        others = [s for s in reversed(list(self)) if s not in listeners]
        await gatherResults([maybeDeferred(s.stopService) for s in others])
        self.threadpool.stop()
        if self._process_pool is not None:
            self._process_pool.shutdown(wait=False, cancel_futures=True)
            self._process_pool = None
        log.info("callnet node {name} stopped", name=self.config.name)
