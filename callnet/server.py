"""
The node's listening side: L{NodeFactory} makes a L{NodeProtocol} per
connection, counts connections (in all and per address), keeps casts that
outlive their connection within a node-wide bound, and drains the node
gracefully when it stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from callnet.access import AccessPolicy, Caller
from callnet.config import Limits
from callnet.dispatch import Dispatcher
from callnet.errors import NotFoundError
from callnet.protocol import NodeProtocol
from callnet.reactors import DispatchReactor
from callnet.wire import PROTOCOL_VERSION, Command, encode_failure, encode_success, encode_text

log = Logger()

#: How often a draining node looks whether its calls have ended, in seconds.
DRAIN_CHECK_INTERVAL = 0.05
#: How long a stopping node waits, after C{BYE}, for its last replies to be
#: written and its clients to close, before it cuts the connections left.
DRAIN_FLUSH_TIMEOUT = 2.0


def format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"node {stats['node']}: {stats['connections']} connections,"
        f" {stats['calls']} calls, {stats['errors']} errors, {stats['in_flight']} in flight",
    ]
    peers = stats.get("peers")
    procedures = stats["procedures"]
    if procedures:
        width = max(len(name) for name in procedures)
        lines.append(f"{'procedure':<{width}}  {'calls':>8}  {'errors':>8}  {'in flight':>9}")
        for name, entry in procedures.items():
            lines.append(
                f"{name:<{width}}  {entry['calls']:>8}  {entry['errors']:>8}"
                f"  {entry['in_flight']:>9}"
            )
    if peers:
        width = max(len(name) for name in peers)
        lines.append(f"{'peer':<{width}}  {'state':<10}  {'in flight':>9}  endpoint")
        for name, peer in sorted(peers.items()):
            lines.append(
                f"{name:<{width}}  {peer['state']:<10}  {peer['in_flight']:>9}  {peer['endpoint']}"
            )
    return "\n".join(lines)


def node_hello(node_name: str, dispatcher: Dispatcher) -> dict[str, Any]:
    """What a node says of itself in the handshake: its name and what it serves now."""
    return {
        "node": node_name,
        "version": PROTOCOL_VERSION,
        "procedures": [entry.describe() for entry in dispatcher.registry.procedures()],
    }


class NodeFactory(Factory):
    """Makes a L{NodeProtocol} for each connection, sharing one dispatcher."""

    protocol = NodeProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: Limits,
        node_name: str,
        clock: DispatchReactor,
        *,
        identify: Callable[[object], str | None] | None = None,
        access_log: bool = False,
        describe_cluster: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self.node_name = node_name
        self.clock = clock
        self.connections = 0
        #: The connections open now.
        self.open: set[NodeProtocol] = set()
        #: Set once the node has begun to shut down: new calls are refused.
        self.draining = False
        #: Log every call: procedure, caller, duration, outcome, trace id.
        self.access_log = access_log
        #: Connections open now, by the address they come from.
        self.by_address: dict[str | None, int] = {}
        #: Who a connection is, from its transport (a TLS client
        #: certificate), before any AUTH; None if the transport cannot say.
        self.identify: Callable[[object], str | None] = identify or (lambda transport: None)
        #: For a node with peers: how it sees them, for C{STATS}.
        self.describe_cluster = describe_cluster
        #: Casts still running whose connection has closed.
        self.detached_casts = 0
        #: Recent wrong tokens by address: how many, and when the last came;
        #: the address heard from least recently first.
        self.auth_failures: dict[str | None, tuple[int, float]] = {}

    @property
    def access(self) -> AccessPolicy:
        """Tokens and access rules: the dispatcher's, the one policy in force."""
        return self.dispatcher.access

    @access.setter
    def access(self, policy: AccessPolicy) -> None:
        self.dispatcher.access = policy

    def admit(self, protocol: NodeProtocol, host: str | None) -> str | None:
        """Count a new connection, or say why it cannot be taken."""
        limits = self.limits
        if self.connections >= limits.max_connections:
            return f"too many connections ({limits.max_connections}); try again later"
        per_address = limits.max_connections_per_address
        if host is not None and self.by_address.get(host, 0) >= per_address:
            return f"too many connections from {host} ({per_address})"
        self.connections += 1
        self.open.add(protocol)
        self.by_address[host] = self.by_address.get(host, 0) + 1
        return None

    def release(self, protocol: NodeProtocol, host: str | None) -> None:
        """A connection counted by L{admit} has closed."""
        self.connections -= 1
        self.open.discard(protocol)
        left = self.by_address.get(host, 1) - 1
        if left:
            self.by_address[host] = left
        else:
            self.by_address.pop(host, None)

    def auth_failed(self, host: str | None) -> int:
        """
        Count a wrong token given from C{host}: how many it has given within
        C{auth_failure_window}, this one included, over all its connections.
        """
        limits, now = self.limits, self.clock.seconds()
        failures = self.auth_failures
        count, last = failures.pop(host, (0, now))
        if now - last > limits.auth_failure_window:
            count = 0
        failures[host] = (count + 1, now)
        while len(failures) > limits.max_auth_failure_addresses:
            del failures[next(iter(failures))]
        return count + 1

    def detach_cast(self, work: Deferred[Any]) -> None:
        """
        A cast outlived its connection: let it run on to its deadline, within
        C{max_detached_casts} node-wide; past that it is cancelled, so that
        clients that cast and leave cannot pile up work without end.
        """
        if self.detached_casts >= self.limits.max_detached_casts:
            log.warn(
                "cancelling a cast whose connection closed: {count} such casts already run",
                count=self.detached_casts,
            )
            work.cancel()
            return
        self.detached_casts += 1
        work.addBoth(self._detached_cast_done)

    def _detached_cast_done(self, result: object) -> object:
        self.detached_casts -= 1
        return result

    def drain(self, grace: float) -> Deferred[None]:
        """
        Shut down gracefully: refuse new calls (C{UNAVAILABLE}, not run, so
        callers and peers send them elsewhere), let the calls in flight end
        within C{grace} seconds, then cancel the rest, end every connection
        with C{BYE} and close it once its client has (see
        L{callnet.session.Session.shut_down}), or after
        L{DRAIN_FLUSH_TIMEOUT}.

        @return: a Deferred that fires once every connection is closed.
        """
        self.draining = True
        for protocol in self.open:
            protocol.session.draining = True
        log.info(
            "node {node} draining: {count} calls in flight, up to {grace}s to end",
            node=self.node_name,
            count=self.dispatcher.stats.in_flight,
            grace=grace,
        )
        done: Deferred[None] = Deferred()
        deadline = self.clock.seconds() + grace

        def check() -> None:
            if self.dispatcher.stats.in_flight and self.clock.seconds() < deadline:
                self.clock.callLater(DRAIN_CHECK_INTERVAL, check)
                return
            left = self.dispatcher.stats.in_flight
            if left:
                log.warn(
                    "node {node}: cancelling {count} calls still running after {grace}s",
                    node=self.node_name,
                    count=left,
                    grace=grace,
                )
            self.dispatcher.shut_down()
            for protocol in list(self.open):
                protocol.shut_down()
            closed(self.clock.seconds() + DRAIN_FLUSH_TIMEOUT)

        def closed(flush_deadline: float) -> None:
            # Wait for the last replies to be written out; a client that
            # will not read them is cut off after a moment.
            if self.open and self.clock.seconds() < flush_deadline:
                self.clock.callLater(DRAIN_CHECK_INTERVAL, closed, flush_deadline)
                return
            for protocol in list(self.open):
                protocol.abort()
            done.callback(None)

        check()
        return done

    def answer(self, command: Command, caller: Caller | None = None) -> bytes:
        """
        The reply to C{PING}, C{LIST}, C{HELP} or C{STATS}: the node's own
        commands.  C{LIST} names only what C{caller} may call, when given.
        """
        verb, args, tag = command.verb, command.args, command.tag
        registry = self.dispatcher.registry
        result: Any
        if verb == "PING":
            result = "pong"
        elif verb == "LIST":
            # Every name a caller may call here: this node's and its peers'.
            result = sorted({*registry.names(), *self._peer_catalog()})
            access = self.access
            if caller is not None and access.restricts(caller):
                result = [name for name in result if access.check(caller, name) is None]
        elif verb == "STATS":
            result = self.stats()
            if tag is None:
                return encode_text(format_stats(result)) + encode_success(None)
        else:  # HELP
            return self._help(str(args[0]) if args else None, tag)
        return encode_success(result, tag)

    def _peer_catalog(self) -> dict[str, dict[str, Any]]:
        forwarder = self.dispatcher.forwarder
        return forwarder.catalog() if forwarder is not None else {}

    def _help(self, name: str | None, tag: str | None) -> bytes:
        """
        C{HELP}: this node's procedures and those its peers serve, each
        marked with where it runs; C{HELP name} describes one, wherever it is.
        """
        registry, remote = self.dispatcher.registry, self._peer_catalog()
        here = self.node_name
        if name is not None and name not in registry and name not in remote:
            why = f"no procedure named {name[:80]!r} here or on a peer; try HELP"
            return encode_failure(NotFoundError(why, node=here), tag)
        described = {
            entry.name: {
                **entry.describe(),
                "nodes": [here, *remote.get(entry.name, {}).get("nodes", [])],
            }
            for entry in registry.procedures()
        }
        for peer_name, info in remote.items():
            if peer_name not in described:
                described[peer_name] = {
                    "name": peer_name,
                    "signature": info["signature"],
                    "doc": info["doc"],
                    "idempotent": info["idempotent"],
                    **({"stream": True} if info.get("stream") else {}),
                    "nodes": info["nodes"],
                }
        if tag is not None:
            if name is None:
                return encode_success([described[key] for key in sorted(described)], tag)
            return encode_success(described[name], tag)
        if name is not None and name in registry:
            text = registry.help_text(name)
            others = described[name]["nodes"][1:]
            if others:
                text += f"\nalso on: {', '.join(others)}"
        elif name is not None:
            text = _remote_help(described[name])
        else:
            text = registry.help_text(None, _remote_lines(described, registry.names()))
        return encode_text(text) + encode_success(None)

    def hello(self) -> dict[str, Any]:
        """What this node says of itself in the handshake: name, procedures."""
        return node_hello(self.node_name, self.dispatcher)

    def stats(self) -> dict[str, Any]:
        """The node's counters, as C{STATS} reports them."""
        stats = {
            "node": self.node_name,
            "connections": self.connections,
            **self.dispatcher.stats.as_dict(),
            "keys": self.dispatcher.keys.describe(),
        }
        if self.describe_cluster is not None:
            stats["peers"] = self.describe_cluster()
        return stats


def _remote_help(entry: dict[str, Any]) -> str:
    """C{HELP name} for a procedure only peers serve."""
    lines = [f"{entry['name']}{entry['signature']}"]
    if entry["doc"]:
        lines += ["", *("    " + line if line else "" for line in entry["doc"].splitlines())]
    notes = [f"runs on: {', '.join(entry['nodes'])}"]
    if entry.get("stream"):
        notes.insert(0, "a stream: answers with ITEM lines, then OK")
    if entry["idempotent"]:
        notes.append("idempotent")
    return "\n".join([*lines, "", "; ".join(notes)])


def _remote_lines(described: dict[str, dict[str, Any]], local: list[str]) -> list[tuple[str, str]]:
    """The rows C{HELP}'s table shows for procedures only peers serve: usage, summary."""
    rows = []
    for name in sorted(set(described) - set(local)):
        entry = described[name]
        summary = entry["doc"].strip().splitlines()[0] if entry["doc"].strip() else ""
        stream = " [stream]" if entry.get("stream") else ""
        rows.append(
            (f"{name}{entry['signature']}{stream}", f"[on {', '.join(entry['nodes'])}] {summary}")
        )
    return rows
