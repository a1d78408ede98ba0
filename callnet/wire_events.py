"""
The codec's vocabulary: the events a line decodes to, and the words that
can never name a procedure.  No I/O, no Twisted.

Both of the codec's parsers, the general one (L{callnet.wire_parse}) and the fast
ones (L{callnet.wire_fast}), build these; L{callnet.wire} re-exports them,
and that is where the rest of callnet imports them from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from callnet.errors import CallError

#: Command verbs, matched without regard to case so a person may type them
#: in lower case.  These names cannot be procedure names.
COMMANDS = frozenset(
    {"HELP", "LIST", "PING", "CANCEL", "STATS", "QUIT", "HELLO", "AUTH", "MULTI", "MORE"}
)
#: The words a reply line starts with (after its tag).
REPLY_WORDS = frozenset({"OK", "ERR", "ITEM", "PROGRESS", "BYE"})
#: Words that may never name a procedure.
RESERVED_NAMES = frozenset(word.lower() for word in COMMANDS | REPLY_WORDS)


# --- Events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """A request to run a procedure."""

    procedure: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    tag: str | None = None
    #: Remaining time budget in seconds, as the caller saw it when sending.
    timeout: float | None = None
    #: No reply is wanted (fire-and-forget).
    cast: bool = False
    #: Idempotency key: a retried call with the same key returns the first result.
    key: str | None = None
    trace: str | None = None
    #: How many nodes have forwarded this call already.
    hops: int = 0
    #: The identity a peer forwards this call for (believed only from a peer).
    caller: str | None = None
    #: The caller takes a stream: how many items it grants at first (more
    #: come with C{MORE}).  C{None}: a plain call.
    window: int | None = None
    #: The caller wants C{PROGRESS} lines while the call runs.
    progress: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """A control verb: HELP, LIST, PING, CANCEL, MORE, STATS, QUIT, ..."""

    verb: str
    args: tuple[Any, ...] = ()
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Success:
    """A successful reply carrying a JSON value."""

    value: Any
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An C{ERR} reply; L{ErrorReply.error} is the exception it stands for."""

    error: CallError
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a stream, sent as soon as it is made, before the final reply."""

    value: Any
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a long call has got: advisory, for the caller to show."""

    done: int | float
    total: int | float | None = None
    message: str | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Bye:
    """
    The node closes this connection (it is shutting down).  Every call it
    read here was answered before this line, and it runs nothing it reads
    after it: a call still unanswered did not run, and may go elsewhere.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Text:
    """A line of text meant for a person, sent before the reply it belongs to."""

    text: str


@dataclass(frozen=True, slots=True)
class BadLine:
    """
    A line that could not be understood.

    C{tag} is set when the line's tag could still be read, so the error reply
    reaches the right caller.
    """

    error: CallError
    tag: str | None = None


Event: TypeAlias = Call | Command | Success | ErrorReply | Item | Progress | Bye | Text | BadLine
