"""
The shape of a multicall's answer, shared by the node that makes it and the
clients that read it, so neither side imports the other::

    {"alpha": {"ok": 3},
     "beta": {"error": {"code": "UNAVAILABLE", "outcome": "not-run",
                        "message": "...", "node": "alpha"}}}
"""

from __future__ import annotations

from typing import Any

from callnet.errors import CallError, Outcome, error_from_wire

#: The name every node serves multicall under.
MULTICALL = "multicall"


def error_entry(error: BaseException, node: str) -> dict[str, Any]:
    """A node's failure as an entry of the answer (an untyped one as may-have-run)."""
    if not isinstance(error, CallError):
        error = CallError(str(error), Outcome.MAY_HAVE_RUN, node)
    return {
        "error": {
            "code": error.code,
            "outcome": error.outcome.value,
            "message": error.message,
            "node": error.node or node,
        }
    }


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
