"""
Trace ids: one id that follows a request across every node it touches.

A caller may send its own (C{+trace=...}).  Two kinds are accepted:

  - A W3C Trace Context C{traceparent}
    (U{https://www.w3.org/TR/trace-context/}), such as
    C{00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01}.  Any value
    shaped like one (four dash-separated parts of hex digits, of any case
    or length, perhaps followed by more) is held to its rules: lowercase hex, a trace id of
    32 digits and a parent id of 16, neither all zeros, a version other than
    C{ff}, nothing after the flags in version C{00}.  One that breaks them is
    treated as absent, as the specification says: the node starts a new
    trace in its place and logs that it did.  A valid one is continued: each
    hop to another node keeps its trace id and flags and gets a new parent
    id.
  - Any other token (1 to 256 printable characters) is an opaque id, kept
    and passed on as it is, so that a person at a terminal can follow
    C{+trace=my-test-1} through the logs.

A call that arrives without one is given one where it would be seen: in the
access log, on calls it makes to other nodes, and in its error reply.
Forwarded and nested calls carry it on, and error replies show it, so a
failure can be followed back through the logs of each node.
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass

from twisted.logger import Logger

from callnet.wire import Call

__all__ = ["TraceIds", "TraceParent", "is_traceparent_shaped", "parse_traceparent", "with_trace"]

log = Logger()

#: A value meant as a traceparent: four dash-separated parts of hex digits
#: (of any case and length), and perhaps more after another dash.
_SHAPED = re.compile(r"[0-9A-Fa-f]+(?:-[0-9A-Fa-f]*){3}(?:-.*)?\Z")

#: The four parts of a traceparent in lowercase hex, then, for a version
#: after 00, whatever that version adds after a dash.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?\Z"
)

_ZERO_TRACE_ID = "0" * 32
_ZERO_PARENT_ID = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    """A valid W3C C{traceparent}: which trace, which span sent it, its flags."""

    trace_id: str
    parent_id: str
    flags: str

    def __str__(self) -> str:
        # Version 00 is the one this node speaks, whatever version it read.
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"

    def child(self) -> TraceParent:
        """The same trace and flags, sent on by a new span: a fresh parent id."""
        return TraceParent(self.trace_id, _random_id(), self.flags)


def _random_id() -> str:
    while True:
        parent_id = secrets.token_hex(8)
        if parent_id != _ZERO_PARENT_ID:
            return parent_id


def is_traceparent_shaped(value: str) -> bool:
    """Whether C{value} is meant as a traceparent, valid or not (see the module)."""
    return _SHAPED.match(value) is not None


def parse_traceparent(value: str) -> TraceParent | None:
    """
    Read a W3C C{traceparent}, by the specification's rules.

    @return: the traceparent; C{None} for a value that breaks the rules
        (uppercase hex, wrong lengths, an all-zero trace or parent id,
        version C{ff}, anything after the flags in version C{00}).  Of a
        later version, the four parts of version 00 are read and what
        follows them (after a dash) is ignored, as the specification asks.
    """
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.group(
        "version", "trace_id", "parent_id", "flags", "rest"
    )
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    return TraceParent(trace_id, parent_id, flags)


class TraceIds:
    """
    New trace ids, in W3C C{traceparent} form, and the ids calls carry on.

    A random prefix per node and a counter: unique across nodes without a
    random draw per call.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def new(self) -> str:
        """A trace id no other call of any node has: a valid traceparent, sampled."""
        number = next(self._count)
        return f"00-{self._prefix}{number:016x}-{number:016x}-01"

    def accept(self, trace: str) -> str:
        """
        The trace id to give a call that arrived with C{trace}: C{trace}
        itself, unless it is a traceparent that breaks the rules; then a new
        one, and a line in the log saying so.
        """
        if not is_traceparent_shaped(trace) or parse_traceparent(trace) is not None:
            return trace
        replacement = self.new()
        log.info(
            "replaced an invalid traceparent {given} with {trace}", given=trace, trace=replacement
        )
        return replacement

    def next_hop(self, trace: str | None) -> str:
        """
        The trace id a call with C{trace} carries to another node: a new
        parent id for a traceparent, the same opaque id, or a new trace.
        """
        if trace is None:
            return self.new()
        parsed = parse_traceparent(trace)
        if parsed is not None:
            return str(parsed.child())
        if is_traceparent_shaped(trace):
            return self.new()
        return trace


def with_trace(call: Call, trace: str) -> Call:
    """The same call, carrying C{trace} (and everything else it carried)."""
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
        call.caller,
    )
