"""
Multicall: one call made on many nodes at once, under one deadline, with a
result or a typed failure for each node (Erlang's C{erpc:multicall}).

Every node serves the procedure C{multicall}; on the wire::

    #1 +timeout=2 multicall add [1,2]
    #1 OK {"alpha": {"ok": 3}, "beta": {"error": {"code": "UNAVAILABLE", ...}}}

The clients unpack the answer into a dict of node name -> result, or the
L{CallError} that node's call failed with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import DeferredList

from callnet.context import CallContext
from callnet.errors import CallError, InvalidArgumentError, Outcome, error_from_wire
from callnet.registry import procedure

if TYPE_CHECKING:
    from callnet.dispatch import Dispatcher

#: The name every node serves multicall under.
MULTICALL = "multicall"
#: How long before a multicall's deadline its per-node calls end (at most a
#: tenth of the budget), to leave time to gather and send the answer.
GATHER_MARGIN = 0.25


def serving_nodes(dispatcher: Dispatcher, name: str) -> list[str]:
    """Every node this one knows to serve C{name}, itself included, up or not."""
    nodes = [dispatcher.node_name] if dispatcher.registry.find(name) is not None else []
    if dispatcher.router is not None:
        nodes += [peer.name for peer in dispatcher.router.peers() if name in peer.procedures]
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
        if not isinstance(procedure, str) or "@" in procedure:
            raise InvalidArgumentError("procedure must be a name, without @node")
        if args is not None and not isinstance(args, list):
            raise InvalidArgumentError("args must be a list")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InvalidArgumentError("kwargs must be an object")
        if nodes is not None and not (
            isinstance(nodes, list) and all(isinstance(node, str) for node in nodes)
        ):
            raise InvalidArgumentError("nodes must be a list of node names")
        targets = sorted(set(nodes)) if nodes is not None else serving_nodes(dispatcher, procedure)
        # Each node's call ends a little before the multicall's own deadline,
        # so the answer, with a timeout for the slow nodes, is back in time.
        remaining = context.remaining()
        budget = remaining - min(GATHER_MARGIN, remaining / 10)
        calls = [
            context.call(f"{procedure}@{node}", *(args or ()), timeout=budget, **(kwargs or {}))
            for node in targets
        ]
        outcomes = await DeferredList(calls, consumeErrors=True)
        answer: dict[str, Any] = {}
        for node, (succeeded, value) in zip(targets, outcomes, strict=True):
            if succeeded:
                answer[node] = {"ok": value}
            else:
                error = value.value
                if not isinstance(error, CallError):
                    error = CallError(str(error), Outcome.MAY_HAVE_RUN, node)
                answer[node] = {
                    "error": {
                        "code": error.code,
                        "outcome": error.outcome.value,
                        "message": error.message,
                        "node": error.node or node,
                    }
                }
        return answer

    return multicall


def unpack(answer: dict[str, Any]) -> dict[str, Any]:
    """Turn a multicall's answer into node -> result, or node -> L{CallError}."""
    unpacked: dict[str, Any] = {}
    for node, outcome in answer.items():
        if "ok" in outcome:
            unpacked[node] = outcome["ok"]
        else:
            error = outcome["error"]
            unpacked[node] = error_from_wire(
                error["code"], Outcome(error["outcome"]), error["message"], error.get("node")
            )
    return unpacked
