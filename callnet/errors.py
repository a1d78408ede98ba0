"""
Every error callnet raises or sends, and the one table of its wire codes.

A call fails with a L{CallError} subclass.  Each class has a stable wire code
(the gRPC canonical names) and each instance says what became of the
procedure: it did not run, it may have run, or it ran and failed.  The same
table turns a code read from the wire back into the class, so a remote error
is raised in the caller as the very class the node chose.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Outcome(enum.Enum):
    """What became of the procedure when a call failed."""

    #: The procedure was never started: the call is safe to retry anywhere.
    NOT_RUN = "not-run"
    #: The call may or may not have started (a lost connection, a deadline
    #: that passed while it ran): retry only what is idempotent.
    MAY_HAVE_RUN = "may-have-run"
    #: The procedure ran and raised.
    RAN = "ran"


class CallError(Exception):
    """
    A call failed.

    @ivar code: the stable wire code, such as C{"NOT_FOUND"}.
    @ivar message: a human-readable explanation, never a traceback.
    @ivar outcome: whether the procedure ran (L{Outcome}).
    @ivar node: the name of the node where the error arose, if known.
    """

    code: ClassVar[str] = "UNKNOWN"
    #: The outcome an error of this class has unless it is told otherwise.
    default_outcome: ClassVar[Outcome] = Outcome.RAN

    def __init__(
        self,
        message: str = "",
        outcome: Outcome | None = None,
        node: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.outcome = self.default_outcome if outcome is None else outcome
        #: Whether the outcome was given rather than this class's default.
        self.outcome_given = outcome is not None
        self.node = node
        #: The trace id of the call that failed, when it had one.
        self.trace: str | None = None

    @property
    def did_not_run(self) -> bool:
        """True when the procedure certainly did not run (safe to retry)."""
        return self.outcome is Outcome.NOT_RUN

    def __str__(self) -> str:
        where = f" at {self.node}" if self.node else ""
        trace = f" [trace {self.trace}]" if self.trace else ""
        return f"{self.code} ({self.outcome.value}){where}: {self.message}{trace}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, outcome={self.outcome.value!r},"
            f" node={self.node!r})"
        )


class UnknownError(CallError):
    """The node reported a code this client does not know."""

    code = "UNKNOWN"


class CallCancelledError(CallError):
    """
    The call was cancelled by its caller before it completed.

    Named apart from Twisted's and asyncio's C{CancelledError}, which a
    procedure or a client's own code may meet in the same C{except}.
    """

    code = "CANCELLED"
    default_outcome = Outcome.MAY_HAVE_RUN


#: The former name of L{CallCancelledError}, kept so that code written
#: against it still runs.
CancelledError = CallCancelledError


class InvalidArgumentError(CallError):
    """The request was malformed, or its arguments do not fit the procedure."""

    code = "INVALID_ARGUMENT"
    default_outcome = Outcome.NOT_RUN


class DeadlineExceededError(CallError):
    """The call's deadline passed before it completed."""

    code = "DEADLINE_EXCEEDED"
    default_outcome = Outcome.MAY_HAVE_RUN


class NotFoundError(CallError):
    """No such procedure (or, raised by a procedure, no such thing)."""

    code = "NOT_FOUND"
    default_outcome = Outcome.NOT_RUN


class AlreadyExistsError(CallError):
    """The thing the call would create exists already."""

    code = "ALREADY_EXISTS"


class PermissionDeniedError(CallError):
    """The caller may not make this call."""

    code = "PERMISSION_DENIED"
    default_outcome = Outcome.NOT_RUN


class ResourceExhaustedError(CallError):
    """A limit was reached: line length, calls in flight, connections."""

    code = "RESOURCE_EXHAUSTED"
    default_outcome = Outcome.NOT_RUN


class FailedPreconditionError(CallError):
    """The system is not in a state in which the call can run."""

    code = "FAILED_PRECONDITION"


class AbortedError(CallError):
    """The call was aborted, typically by a concurrency conflict."""

    code = "ABORTED"


class OutOfRangeError(CallError):
    """An argument was past the valid range."""

    code = "OUT_OF_RANGE"


class UnimplementedError(CallError):
    """The node does not implement this operation."""

    code = "UNIMPLEMENTED"
    default_outcome = Outcome.NOT_RUN


class InternalError(CallError):
    """The procedure failed in a way it did not declare; the node logged it."""

    code = "INTERNAL"


class UnavailableError(CallError):
    """The node or connection is unavailable (refused, lost, shutting down)."""

    code = "UNAVAILABLE"
    default_outcome = Outcome.NOT_RUN


class DataLossError(CallError):
    """Unrecoverable data loss or corruption."""

    code = "DATA_LOSS"


class UnauthenticatedError(CallError):
    """The caller has not authenticated."""

    code = "UNAUTHENTICATED"
    default_outcome = Outcome.NOT_RUN


#: Wire code -> class, the single table used in both directions.
ERRORS_BY_CODE: dict[str, type[CallError]] = {
    cls.code: cls
    for cls in (
        CallCancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}


def error_from_wire(
    code: str, outcome: Outcome, message: str, node: str | None = None
) -> CallError:
    """Build the exception a node's error reply stands for."""
    cls = ERRORS_BY_CODE.get(code, UnknownError)
    error = cls(message, outcome, node)
    if cls is UnknownError and code != UnknownError.code:
        error.message = f"[{code}] {message}"
    return error


class WrongThreadError(RuntimeError):
    """
    A blocking call was made on the reactor thread, where waiting would
    deadlock the reactor; or a reactor-only method was called elsewhere.
    """


class ForkedProcessError(RuntimeError):
    """
    This process was forked after callnet's reactor thread started.

    Threads do not survive C{fork()}, and the reactor's file descriptors are
    shared with the parent, so no call can be made from the child.
    """


class ConfigError(Exception):
    """A configuration file or option is invalid; the message names the key."""


class StartError(SystemExit, Exception):
    """
    A node cannot start: say, a listener cannot bind its address.  The node
    logs why once; the process then ends with status 1 and no traceback.

    It is a L{SystemExit} so that C{twistd -n} ends without a traceback, and
    an L{Exception} so that C{twistd} still removes its pid file and, when it
    daemonizes, tells the starting process (which exits 1, quoting it).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 1

    def __str__(self) -> str:
        return str(self.args[0])
