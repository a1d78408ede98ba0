"""
What a procedure ended with, as its caller receives it.

A result is sent only if it encodes as JSON; what a procedure raised becomes
a typed L{CallError}: its own if it raised one, the error it declared for
that exception, or C{INTERNAL} with an incident the node logs (never a
traceback, unless the node is told to send them).
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from callnet.errors import CallError, InternalError, Outcome
from callnet.wire import encode_json

#: Logged under the dispatcher's namespace, which log filters and readers know.
log = Logger(namespace="callnet.dispatch")

#: What a procedure declares it raises: each exception class and the error
#: its caller receives for it.
DeclaredErrors = tuple[tuple[type[BaseException], type[CallError]], ...]


def checked_result(name: str, value: Any, node: str) -> Any:
    """
    C{value} if it can be sent as a reply; otherwise a L{Failure} of the
    C{INTERNAL} error its caller receives for it, so that the metrics and
    the logs count the call as its caller sees it.

    The commonest results (C{None}, an int, a string, a bool) are known to
    encode without trying; the others are encoded once to find out.
    """
    kind = type(value)
    if value is None or kind is int or kind is str or kind is bool:
        return value
    try:
        encode_json(value)
    except (TypeError, ValueError) as e:
        # A fault of the procedure, as an undeclared error is: logged at error.
        log.error(
            "procedure {procedure} returned a result that is not JSON: {why}",
            procedure=name,
            why=str(e),
        )
        return Failure(InternalError(f"the result of {name} is not JSON ({e})", Outcome.RAN, node))
    return value


def to_call_error(
    name: str,
    errors: DeclaredErrors,
    failure: Failure,
    node: str,
    send_tracebacks: bool = False,
) -> CallError:
    """
    Map what procedure C{name} raised to the error its caller receives.

    @param errors: the errors the procedure declares.
    @param node: the node that ran it, named in the error.
    @param send_tracebacks: put the traceback of an undeclared error in its
        message (for development only: it shows the node's code).
    """
    error = failure.value
    if isinstance(error, CallError):
        if not error.outcome_given:
            error.outcome = Outcome.RAN
    else:
        for declared, error_class in errors:
            if isinstance(error, declared):
                error = error_class(_describe(error), Outcome.RAN)
                break
        else:
            incident = uuid.uuid4().hex[:12]
            log.failure(
                "procedure {procedure} raised an undeclared error (incident {incident})",
                failure,
                level=LogLevel.error,
                procedure=name,
                incident=incident,
            )
            message = f"procedure {name} failed; the node logged incident {incident}"
            if send_tracebacks:
                message += ": " + failure.getTraceback().replace("\n", " | ")
            error = InternalError(message, Outcome.RAN)
    error.node = error.node or node
    return error


def _describe(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    return text or type(error).__name__
