"""
Trace ids: one id that follows a request across every node it touches.

A caller may send its own (C{+trace=...}, any printable token; a W3C
C{traceparent} such as C{00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01}
is accepted as is).  A call that arrives without one is given one where it
would be seen: in the access log, on calls it makes to other nodes, and in
its error reply.  Forwarded and nested calls carry it on, and error replies
show it, so a failure can be followed back through the logs of each node.
"""

from __future__ import annotations

import itertools
import secrets

from callnet.wire import Call


class TraceIds:
    """
    New trace ids, in W3C C{traceparent} form.

    A random prefix per node and a counter: unique across nodes without a
    random draw per call.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def new(self) -> str:
        """A trace id no other call of any node has."""
        number = next(self._count)
        return f"00-{self._prefix}{number:016x}-{number:016x}-01"


def with_trace(call: Call, trace: str) -> Call:
    """The same call, carrying C{trace}."""
    return Call(
        call.procedure,
        call.args,
        call.kwargs,
        call.tag,
        call.timeout,
        call.cast,
        call.key,
        trace,
        call.hops,
    )
