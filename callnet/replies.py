"""
From a call's outcome to what its caller and the node's logs see: the reply
line, the trace id a failure shows, and the access log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from callnet.errors import CallError, InternalError, Outcome
from callnet.logs import failure_level
from callnet.reactors import Clock
from callnet.tracing import TraceIds
from callnet.wire import Call, encode_failure, encode_success

log = Logger(namespace="callnet.protocol")
#: One event per call when the access log is on, in its own namespace so it
#: can be routed apart from the node's other logs.
access_log = Logger(namespace="callnet.access")


def encode_result(result: Any, tag: str | None, node_name: str) -> bytes:
    """
    The reply line for a call's result (a value or a L{Failure}).  An error
    that is not a L{CallError} is answered C{INTERNAL}, without its details.
    """
    if isinstance(result, Failure):
        error = result.value
        if not isinstance(error, CallError):
            error = InternalError("the node failed to handle this request")
        if error.node is None:
            error.node = node_name
        return encode_failure(error, tag)
    try:
        return encode_success(result, tag)
    except (TypeError, ValueError) as e:
        error = InternalError(f"the result is not JSON ({e})", Outcome.RAN, node_name)
        return encode_failure(error, tag)


def trace_failure(failure: Failure, call: Call, trace_ids: TraceIds) -> Failure:
    """
    Give a failed call's error its trace id, to show in the reply: the
    call's own, or for a program's (tagged) call a new one, so that every
    failure a program sees can be found in the nodes' logs.  A person's
    untagged line is answered without one unless it carried one.
    """
    error = failure.value
    if isinstance(error, CallError) and error.trace is None:
        error.trace = call.trace
        if error.trace is None and call.tag is not None:
            error.trace = trace_ids.new()
        # Refusals (not run) are not logged: anyone can cause them cheaply.
        if error.trace is not None and error.outcome is not Outcome.NOT_RUN:
            log.emit(
                failure_level(error.code),
                "{procedure} failed {code} (trace {trace}): {why}",
                procedure=call.procedure,
                code=error.code,
                trace=error.trace,
                why=error.message,
            )
    return failure


def log_access(call: Call, outcome: Any, clock: Clock, caller: object, address: object) -> Any:
    """Log the call once it ends (the access log), passing its outcome on."""
    started = clock.seconds()

    def record(result: Any) -> Any:
        error = result.value if isinstance(result, Failure) else None
        access_log.info(
            "{procedure} by {caller} from {address}: {outcome} in {duration_ms:.2f} ms"
            " (trace {trace})",
            procedure=call.procedure,
            caller=caller,
            address=address,
            outcome="OK" if error is None else getattr(error, "code", "INTERNAL"),
            duration_ms=(clock.seconds() - started) * 1000,
            trace=call.trace,
            tag=call.tag,
        )
        return result

    if isinstance(outcome, Deferred):
        return outcome.addBoth(record)
    return record(outcome)
