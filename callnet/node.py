"""
A node: the service that builds the registry, dispatcher and listeners from a
L{NodeConfig} and a reactor, and starts and stops them with twistd.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import fields, replace
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger

from callnet.cluster import DISCOVER_SETTINGS
from callnet.config import NodeConfig
from callnet.errors import ConfigError, StartError
from callnet.metrics import Metrics, metrics_service
from callnet.reactors import DispatchReactor, twisted_clock
from callnet.registry import Registry
from callnet.server import DRAIN_FLUSH_TIMEOUT
from callnet.tls import (
    harden_ssl_endpoint,
    is_tls_listen,
    server_endpoint,
    with_handshake_deadline,
)
from callnet.wiring import build_node
from callnet.workers import WorkerThreads, start_worker_process

log = Logger()

#: How long past C{[node] shutdown_grace} a stopping node may take to end:
#: its last replies get DRAIN_FLUSH_TIMEOUT (2 s) to be written out, then its
#: peer links and worker pools get 1 s to end.  A supervisor's stop timeout
#: must be at least shutdown_grace plus this (see docs/operations.md).
STOP_MARGIN = DRAIN_FLUSH_TIMEOUT + 1.0
#: Seconds worker processes get to end on SIGTERM before they are killed:
#: a worker that is idle ends at once, and a busy one is not waited for.
PROCESS_STOP_TIMEOUT = 0.5


#: The settings a reload puts in force (the cluster's discover settings too,
#: not its timings): any other that changes waits for a restart, and the
#: reload's log line names it.
APPLIED_ON_RELOAD = frozenset(
    {"services", "builtins", "shutdown_grace", "peers", "security", "cluster"}
)


class NodeService(MultiService):
    """One node: its procedures, its worker pools and its listening endpoints."""

    def __init__(self, config: NodeConfig, reactor: DispatchReactor) -> None:
        """
        @raise ConfigError: the config names something the node cannot use
            (a service module with no procedures, unusable TLS material).
        """
        super().__init__()
        self._reactor = reactor
        self.threadpool = WorkerThreads(config.threads, f"callnet-{config.name}")
        self._process_pool: ProcessPoolExecutor | None = None
        self._processes_wanted = config.processes
        #: The node's registry, dispatcher, factory and cluster.
        self.parts = build_node(config, reactor, self.threadpool, process_pool=self._processes)
        self.dispatcher = self.parts.dispatcher
        self.factory = self.parts.factory
        self.cluster = self.parts.cluster
        #: Where reload() reads the config again, and the command-line values
        #: that win over the file: set by the twistd entry point.
        self.reload_from: Callable[[], NodeConfig] | None = None
        #: Each listening service -> the endpoint string it listens on.
        self._listeners: dict[IService, str] = {}
        self._listening = False
        if self.cluster is not None:
            self.cluster.setServiceParent(self)
        handshake_timeout = config.limits.tls_handshake_timeout
        for description in config.listen:
            if is_tls_listen(description):
                # tls:PORT[:interface=ADDR], with the node's [tls] certificate.
                endpoint = server_endpoint(reactor, description, config.tls, handshake_timeout)
            else:
                endpoint = serverFromString(reactor, description)
                if isinstance(endpoint, SSL4ServerEndpoint):
                    # Twisted's ssl: gets the node's TLS 1.2 suites and ALPN too.
                    harden_ssl_endpoint(endpoint)
                    endpoint = with_handshake_deadline(endpoint, reactor, handshake_timeout)
            self._listen(StreamServerEndpointService(endpoint, self.factory), description)
        #: The node's Prometheus figures, if it serves them ([node] metrics_listen).
        self.metrics: Metrics | None = None
        if config.metrics_listen is not None:
            self.metrics = Metrics(self.dispatcher, self.factory, self.cluster)
            self._listen(
                metrics_service(reactor, config.metrics_listen, self.metrics),
                config.metrics_listen,
            )

    def _listen(self, service: IService, description: str) -> None:
        """Add a listening service, whose failure to listen stops the node's start."""
        if isinstance(service, StreamServerEndpointService):
            # Raise from privilegedStartService rather than log and go on,
            # as twisted.application.strports.service does.
            service._raiseSynchronously = True
        self._listeners[service] = description
        service.setServiceParent(self)

    @property
    def config(self) -> NodeConfig:
        """The configuration in force: the one started with, or the last reloaded."""
        return self.parts.config

    @property
    def registry(self) -> Registry:
        """The procedures the node serves now."""
        return self.parts.registry

    def reload(self) -> bool:
        """
        Read the configuration again and apply what can change while running:
        the service modules (imported again), tokens and access rules, the
        peers and the shutdown grace.  Anything else waits for a restart,
        and the log says so.
        An invalid new configuration is refused, and the running one stays.

        @return: whether the new configuration was applied.
        """
        if self.reload_from is None:
            log.warn("reload asked for, but this node was not started from a config file")
            return False
        old, old_names = self.config, set(self.registry.names())
        try:
            new = self.reload_from()
            added, removed = self.parts.reload(new)
        except (ConfigError, OSError) as e:
            log.error("reload refused, the running configuration stays: {error}", error=str(e))
            return False
        new_names = set(self.registry.names())
        changes = []
        if new.services:
            changes.append(f"service modules imported again: {', '.join(new.services)}")
        if new_names != old_names:
            changes.append(
                f"procedures +{sorted(new_names - old_names)} -{sorted(old_names - new_names)}"
            )
        if (new.security.tokens, new.security.acl) != (old.security.tokens, old.security.acl):
            changes.append("tokens or access rules")
        if added or removed:
            changes.append(f"peers +{added} -{removed}")
        found_by = {key: getattr(new.cluster, key) for key in DISCOVER_SETTINGS}
        if found_by != {key: getattr(old.cluster, key) for key in DISCOVER_SETTINGS}:
            changes.append(f"discover {new.cluster.discover or 'off'}")
        if new.shutdown_grace != old.shutdown_grace:
            changes.append(f"shutdown_grace {new.shutdown_grace:g}s")
        # Every setting not applied here waits for a restart, and is said to.
        unapplied = [
            field.name
            for field in fields(new)
            if field.name not in APPLIED_ON_RELOAD
            and getattr(new, field.name) != getattr(old, field.name)
        ]
        # The discover settings apply on reload; the cluster's timings wait.
        kept = {key: getattr(old.cluster, key) for key in DISCOVER_SETTINGS}
        if replace(new.cluster, **kept) != old.cluster:
            unapplied.append("cluster")
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
            # Workers ignore SIGINT (a Ctrl-C reaches the whole process
            # group, and the node, not the signal, ends its workers), and
            # end themselves if the node is killed outright.
            self._process_pool = ProcessPoolExecutor(
                max_workers=self._processes_wanted or None,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start_worker_process,
                initargs=(os.getpid(),),
            )
        return self._process_pool

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint now: C{twistd} calls this before it sheds
        privileges and runs the reactor, so a node that cannot listen never
        runs.

        @raise StartError: an endpoint cannot be listened on; the log says
            which and why.
        """
        self._listening = True
        Service.privilegedStartService(self)
        for service in self:
            try:
                service.privilegedStartService()
            except Exception as e:
                description = self._listeners.get(service)
                if description is None:
                    raise
                reason = str(e)
                if isinstance(e, CannotListenError) and isinstance(e.socketError, OSError):
                    reason = e.socketError.strerror or reason
                log.critical(
                    "callnet node {name} cannot listen on {endpoint}: {reason}; not starting",
                    name=self.config.name,
                    endpoint=description,
                    reason=reason,
                )
                # The reason first: a daemonizing twistd passes the starting
                # process only the first 100 bytes of this, class name and all.
                raise StartError(f"{reason}: cannot listen on {description}") from e

    def startService(self) -> None:
        if not self._listening:
            self.privilegedStartService()
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
        links and the worker pools; all within C{shutdown_grace} plus
        L{STOP_MARGIN} seconds.
        """
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        Service.stopService(self)
        clock = self._reactor
        deadline = clock.seconds() + self.config.shutdown_grace + STOP_MARGIN
        listeners = [s for s in self if isinstance(s, StreamServerEndpointService)]
        try:
            await gatherResults([maybeDeferred(s.stopService) for s in listeners])
            await self.factory.drain(self.config.shutdown_grace)
            others = [s for s in reversed(list(self)) if s not in listeners]
            stopped = gatherResults([maybeDeferred(s.stopService) for s in others])
            allowed = max(0.0, deadline - PROCESS_STOP_TIMEOUT - clock.seconds())
            if not await _within(stopped, allowed, clock):
                log.warn(
                    "callnet node {name}: peer links and metrics did not stop within"
                    " {seconds:.1f}s; going on",
                    name=self.config.name,
                    seconds=allowed,
                )
        finally:
            # A thread cannot be stopped, and a procedure may ignore the
            # cancellation of its call: its thread is left to end with the
            # process (a daemon thread does not keep it alive).
            abandoned = self.threadpool.stop(timeout=0)
            if abandoned:
                log.warn(
                    "abandoning {count} thread procedure{s} still running: {procedures}",
                    count=len(abandoned),
                    s="" if len(abandoned) == 1 else "s",
                    procedures=", ".join(abandoned),
                )
            await self._stop_processes()
        log.info("callnet node {name} stopped", name=self.config.name)

    async def _stop_processes(self) -> None:
        """
        End the worker processes, busy or not, and multiprocessing's resource
        tracker, so that no child outlives the node and nothing is left for
        the tracker to warn about.
        """
        pool, self._process_pool = self._process_pool, None
        if pool is None:
            return
        # Python 3.11's executor cannot end busy workers (3.14 adds
        # terminate_workers()): end them by their Process objects.
        workers: list[BaseProcess] = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        _signal_all(workers, kill=False)
        until = self._reactor.seconds() + PROCESS_STOP_TIMEOUT
        while any(w.is_alive() for w in workers) and self._reactor.seconds() < until:
            await deferLater(twisted_clock(self._reactor), 0.01)
        _signal_all(workers, kill=True)
        # With its workers gone the pool's manager thread ends at once.
        pool.shutdown(wait=True)
        # Release the pool's queues now, so that their semaphores are
        # unlinked here, not reported leaked by the tracker: twistd ends by
        # the signal it caught, so exit-time finalizers would never run.
        del pool
        workers.clear()
        gc.collect()
        stop_tracker = getattr(resource_tracker._resource_tracker, "_stop", None)
        if stop_tracker is not None:
            stop_tracker()


async def _within(waiting: Deferred[Any], seconds: float, clock: Any) -> bool:
    """
    Wait for C{waiting} at most C{seconds}: whether it fired in time (its
    failure is raised).  It is not cancelled: a stop left behind may still end.
    """
    race: Deferred[bool] = Deferred()

    def expired() -> None:
        if not race.called:
            race.callback(False)

    timer = clock.callLater(seconds, expired)

    def fired(result: object) -> object:
        if timer.active():
            timer.cancel()
        if not race.called:
            race.callback(True)
            return result
        return None  # too late: nobody waits for it now

    waiting.addBoth(fired)
    if await race:
        await waiting
        return True
    return False


def _signal_all(processes: list[BaseProcess], kill: bool) -> None:
    """SIGTERM every process; or SIGKILL those still running and reap them all."""
    for process in processes:
        if not kill:
            process.terminate()
        elif process.is_alive():
            process.kill()
    if kill:
        for process in processes:
            process.join()
