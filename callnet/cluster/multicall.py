"""
Multicall: one call made on many nodes at once, under one deadline, with a
result or a typed failure for each node (Erlang's C{erpc:multicall}).

Every node serves the procedure C{multicall}; on the wire::

    #1 +timeout=2 multicall add [1,2]
    #1 OK {"alpha": {"ok": 3}, "beta": {"error": {"code": "UNAVAILABLE", ...}}}

The clients unpack the answer into a dict of node name -> result, or the
L{CallError} that node's call failed with.

One line may cost the node only so much: it names at most
C{max_multicall_nodes} nodes (counted before anything else is done with the
list), a name that is no node is answered C{NOT_FOUND} without a call, and
the answer may not pass C{max_line_bytes}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from callnet.answers import MULTICALL, error_entry
from callnet.context import CallContext
from callnet.errors import (
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    ResourceExhaustedError,
)
from callnet.registry import procedure
from callnet.wire import encode_success

if TYPE_CHECKING:
    from callnet.dispatch import Dispatcher

#: How long before a multicall's deadline its per-node calls end (at most a
#: tenth of the budget), to leave time to gather and send the answer.
GATHER_MARGIN = 0.25


def serving_nodes(dispatcher: Dispatcher, name: str) -> list[str]:
    """Every node this one knows to serve C{name}, itself included, up or not."""
    nodes = [dispatcher.node_name] if dispatcher.registry.find(name) is not None else []
    if dispatcher.forwarder is not None:
        nodes += dispatcher.forwarder.serving(name)
    return sorted(nodes)


def make_multicall(dispatcher: Dispatcher) -> Callable[..., Any]:
    """The C{multicall} procedure of a node."""

    @procedure(name=MULTICALL, run="reactor", calls="procedure")
    async def multicall(
        procedure: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        nodes: list[str] | None = None,
        *,
        context: CallContext,
    ) -> dict[str, Any]:
        """Call a procedure on every node serving it (or on those named); an outcome per node."""
        limits = dispatcher.limits
        if not isinstance(procedure, str) or "@" in procedure:
            raise InvalidArgumentError("procedure must be a name, without @node")
        if args is not None and not isinstance(args, list):
            raise InvalidArgumentError("args must be a list")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InvalidArgumentError("kwargs must be an object")
        if nodes is None:
            # The nodes this one is configured with: no longer a list than that.
            targets = serving_nodes(dispatcher, procedure)
        else:
            if not isinstance(nodes, list):
                raise InvalidArgumentError("nodes must be a list of node names")
            # Counted before anything else is done with them.
            if len(nodes) > limits.max_multicall_nodes:
                raise ResourceExhaustedError(
                    f"a multicall may name at most {limits.max_multicall_nodes} nodes"
                    f" (max_multicall_nodes), not {len(nodes)}",
                    Outcome.NOT_RUN,
                )
            if not all(isinstance(node, str) for node in nodes):
                raise InvalidArgumentError("nodes must be a list of node names")
            targets = sorted(set(nodes))
        answer = _Answer(procedure, limits.max_line_bytes)
        known = [node for node in targets if _is_node(dispatcher, node)]
        for node in targets:
            if node not in known:
                # Answered here: a name that is no node costs no call.
                answer.add(
                    node,
                    error_entry(
                        NotFoundError(
                            f"no node named {node[:80]!r} in this node's cluster",
                            Outcome.NOT_RUN,
                            dispatcher.node_name,
                        ),
                        node,
                    ),
                )
        answer.check(sent=False)
        # Each node's call ends a little before the multicall's own deadline,
        # so the answer, with a timeout for the slow nodes, is back in time.
        remaining = context.remaining()
        budget = remaining - min(GATHER_MARGIN, remaining / 10)
        calls = []
        for node in known:
            if answer.over:
                break  # an answer already too big: start no more calls
            call = context.call(
                f"{procedure}@{node}", *(args or ()), timeout=budget, **(kwargs or {})
            )
            calls.append(call)
            call.addBoth(answer.arrived, node, calls)
        await DeferredList(calls, consumeErrors=True)
        answer.check(sent=True)
        return {node: answer.entries[node] for node in targets}

    return multicall


def _is_node(dispatcher: Dispatcher, name: str) -> bool:
    """Whether C{name} is this node or one of its peers."""
    if name == dispatcher.node_name:
        return True
    return dispatcher.forwarder is not None and dispatcher.forwarder.has_peer(name)


class _Answer:
    """
    A multicall's answer as it fills, node by node, with its size in bytes
    kept as it grows: past C{max_bytes} the calls still running are
    cancelled, and the multicall fails rather than send a line no client
    with the same line limit could read.
    """

    def __init__(self, procedure: str, max_bytes: int) -> None:
        self.procedure = procedure
        self.max_bytes = max_bytes
        self.entries: dict[str, Any] = {}
        self.size = 0
        self.over = False

    def add(self, node: str, entry: dict[str, Any]) -> None:
        self.entries[node] = entry
        if not self.over:
            # An entry alone as an answer: a few bytes more than its share.
            self.size += len(encode_success({node: entry}))
            self.over = self.size > self.max_bytes

    def arrived(self, outcome: Any, node: str, calls: list[Deferred[Any]]) -> None:
        """A node's call ended: note its outcome; stop the rest if the answer is too big."""
        if isinstance(outcome, Failure):
            self.add(node, error_entry(cast(BaseException, outcome.value), node))
        else:
            self.add(node, {"ok": outcome})
        if self.over:
            for call in calls:
                call.cancel()  # a call that has ended is left as it is

    def check(self, sent: bool) -> None:
        """Fail the multicall if its answer is over the limit."""
        if self.over:
            raise ResourceExhaustedError(
                f"the answer of multicall {self.procedure[:80]} is over the limit of"
                f" {self.max_bytes} bytes (max_line_bytes); call fewer nodes or ask for less",
                Outcome.MAY_HAVE_RUN if sent else Outcome.NOT_RUN,
            )
