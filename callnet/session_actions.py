"""
What a session asks of its adapter, and the names it uses when asking.

L{callnet.session.Session} acts on the world only through L{Actions}: the
adapter (L{callnet.protocol.NodeProtocol}, or a test's fake) writes, pauses,
starts and follows calls, runs timers and closes, as asked.  The timers it
starts and the reasons it gives for closing are named here, so the adapter
can tell an ordinary end from a failure.  L{callnet.session} re-exports them.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from callnet.session_streams import Producer, Slot
from callnet.wire import Call, Command

#: A line begun and not finished within C{line_timeout} (slowloris).
LINE_TIMER: Final = "line"
#: Output backed up for C{write_stall_timeout} (a client that does not read).
STALL_TIMER: Final = "stall"
#: The delay before a wrong token is answered.
AUTH_TIMER: Final = "auth"
#: The time a connection has to authenticate, on a node with tokens.
AUTH_DEADLINE_TIMER: Final = "auth deadline"
#: Between checks that a client not read for its calls in flight is still there.
CHECK_TIMER: Final = "check"

#: Why a connection closes when nothing went wrong.
SAID_QUIT: Final = "it said QUIT"
INPUT_ENDED: Final = "its input ended"
SHUTTING_DOWN: Final = "the node is shutting down"
ORDINARY_ENDS: Final = frozenset({SAID_QUIT, INPUT_ENDED, SHUTTING_DOWN})


class Actions(Protocol):
    """What a session asks of its adapter: the only way it acts on the world."""

    def write(self, line: bytes) -> None:
        """Send bytes (one or more whole lines) to the client."""

    def pause_reading(self) -> None:
        """Stop reading from the connection."""

    def resume_reading(self) -> None:
        """Read from the connection again."""

    def check_closed(self) -> None:
        """
        While the connection is not read: if its client has closed and left
        nothing unread, take in the end of the connection now.  A transport
        that is not read does not see its client go until it reads again.
        """

    def start_call(self, call: Call) -> Any:
        """
        Start a call.  Return its reply line if it was answered at once
        (C{bytes}; anything for a cast), else the running work, which the
        session gives back to L{follow}, L{cancel_call} and L{detach_cast}.
        """

    def follow(self, work: Any, call: Call, slot: Slot | None) -> Producer | None:
        """
        Report the running C{work}'s end to the session: by
        L{Session.tagged_finished}, L{Session.untagged_finished} (with
        C{slot}) or L{Session.cast_finished}, as C{call} is tagged, untagged
        or a cast; and, for a stream, each item by L{Session.stream_item}.

        @return: for a stream, how the session grants it items; else C{None}.
        """

    def cancel_call(self, work: Any) -> None:
        """Cancel running work (its end may be reported at once)."""

    def detach_cast(self, work: Any) -> None:
        """The connection is gone; this cast runs on without it."""

    def run_command(self, command: Command) -> bytes:
        """Answer a node command (C{PING}, C{HELP}, ...): its reply line(s)."""

    def authenticate(self, args: tuple[Any, ...]) -> Any:
        """
        Check C{AUTH}'s arguments: the reply value if they name a caller,
        C{None} for a wrong token, or a L{CallError} if no token can help.
        """

    def auth_failed(self) -> int:
        """
        A wrong token was given: count it against the client's address, over
        all its connections, and say how many it has given lately.
        """

    def start_timer(self, timer: str, delay: float) -> None:
        """Call L{Session.timer_fired} with C{timer} after C{delay} seconds."""

    def stop_timer(self, timer: str) -> None:
        """Forget a timer started with L{start_timer}."""

    def close(self, reason: str, abort: bool) -> None:
        """Close the connection after what was written (or at once, if C{abort})."""
