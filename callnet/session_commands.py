"""
The commands a session answers: the table of verbs and their handlers.

Each verb names who answers it, whether it is allowed before C{AUTH}, and
its help line.  The node's own commands (C{PING}, C{HELP}, ...) go to the
adapter; C{CANCEL}, C{MORE}, C{QUIT} and C{AUTH} (with its back-off) act on
the session's own state.  The handlers are the session's parts written
apart: they take the session as a L{Host}, the members of
L{callnet.session.Session} they use, so that this module does not import
the session.  L{callnet.session} re-exports what others import from here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from callnet.errors import (
    CallError,
    InvalidArgumentError,
    UnauthenticatedError,
    UnimplementedError,
)
from callnet.session_actions import AUTH_DEADLINE_TIMER, AUTH_TIMER, LINE_TIMER, Actions
from callnet.session_streams import Slot, Streams
from callnet.wire import MAX_WINDOW, Command, LineDecoder, encode_success

#: The delay before a wrong token is answered; it doubles with each failure
#: on a connection, or lately from its address, up to AUTH_DELAY_MAX, so
#: guessing is slow however many connections it uses.
AUTH_DELAY = 0.5
AUTH_DELAY_MAX = 8.0
#: Wrong tokens after which a connection is closed.
MAX_AUTH_FAILURES = 5


class Host(Protocol):
    """What the command handlers use of their session: its own members."""

    authenticated: bool
    _actions: Actions
    _tagged: dict[str, Any]
    _untagged: deque[Slot]
    _streams: Streams
    _auth_failures: int
    _auth_slot: Slot | None
    _auth_tag: str | None
    _auth_wait: bool
    _quit_slot: Slot | None
    _quit_tag: str | None
    _decoder: LineDecoder

    def _move(self, event: str) -> None: ...
    def _maybe_finish(self) -> None: ...
    def _stop_timer(self, timer: str) -> None: ...
    def _reply_line(self, line: bytes, tag: str | None) -> None: ...
    def _reply_error(self, error: CallError, tag: str | None) -> None: ...
    def _encode_error(self, error: CallError, tag: str | None) -> bytes: ...
    def _write(self, line: bytes) -> None: ...
    def _flush_untagged(self) -> None: ...
    def _update_reading(self) -> None: ...
    def _after_call(self) -> None: ...
    def _start_timer(self, timer: str, delay: float) -> None: ...
    def _close(self, reason: str, abort: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Verb:
    """A wire command: who answers it, whether it is allowed before AUTH, its help."""

    handler: Callable[[Host, Command], None]
    before_auth: bool
    help: str


def handle_command(session: Host, command: Command) -> None:
    """Answer a command by the table: unknown verbs, and most before C{AUTH}, are refused."""
    verb = COMMANDS.get(command.verb)
    if verb is None:
        session._reply_error(
            UnimplementedError(f"{command.verb} is not available on this node"), command.tag
        )
    elif not session.authenticated and not verb.before_auth:
        session._reply_error(unauthenticated(), command.tag)
    else:
        verb.handler(session, command)


def unauthenticated() -> CallError:
    """The error for a request that needs C{AUTH} first."""
    return UnauthenticatedError("authenticate first: AUTH <token>")


def _node_command(session: Host, command: Command) -> None:
    session._reply_line(session._actions.run_command(command), command.tag)


def _quit(session: Host, command: Command) -> None:
    """Answer C{QUIT} once every earlier call is answered, then close."""
    tag = command.tag
    session._move("quit")
    if tag is None:
        session._quit_slot = Slot()
        session._untagged.append(session._quit_slot)
    else:
        session._quit_tag = tag
    # What follows QUIT is never acted on: let go of it now.
    session._decoder.end_of_input()
    # No MORE can follow, so a tagged stream is granted the rest of its
    # items, paced from now on by the connection's own backpressure.
    session._streams.grant_tagged(MAX_WINDOW)
    session._stop_timer(LINE_TIMER)
    session._maybe_finish()


def _cancel(session: Host, command: Command) -> None:
    if len(command.args) != 1:
        session._reply_error(InvalidArgumentError("usage: CANCEL tag"), command.tag)
        return
    work = session._tagged.get(str(command.args[0]).removeprefix("#"))
    if work is not None:
        session._actions.cancel_call(work)
    session._reply_line(encode_success(work is not None, command.tag), command.tag)


def _more(session: Host, command: Command) -> None:
    """
    C{MORE #tag count}: grant a stream more items.  Never answered; one
    for a tag with no stream in flight is ignored (it may have just
    ended).  Only a malformed one is answered, with an error.
    """
    args = command.args
    count = args[1] if len(args) == 2 else None
    if type(count) is not int or not 1 <= count <= MAX_WINDOW:
        session._reply_error(
            InvalidArgumentError(f"usage: MORE #tag count (count from 1 to {MAX_WINDOW:,})"),
            command.tag,
        )
        return
    work = session._tagged.get(str(args[0]).removeprefix("#"))
    if work is not None:
        session._streams.grant(work, count)


def _auth(session: Host, command: Command) -> None:
    """
    Check a token.  A wrong one is answered only after a delay that
    doubles with each failure, while the connection is not read, and
    after a few the connection is closed: guessing is slow.
    """
    tag = command.tag
    outcome = session._actions.authenticate(command.args)
    if isinstance(outcome, CallError):
        session._reply_error(outcome, tag)
        return
    if outcome is not None:
        session.authenticated = True
        session._auth_failures = 0
        session._stop_timer(AUTH_DEADLINE_TIMER)
        session._reply_line(encode_success(outcome, tag), tag)
        return
    session._auth_failures += 1
    # Counted by address too, so that many connections guess no faster than one.
    failures = max(session._auth_failures, session._actions.auth_failed())
    delay = min(AUTH_DELAY * 2 ** min(failures - 1, 16), AUTH_DELAY_MAX)
    # The answer keeps its place among the untagged replies.
    session._auth_slot = Slot() if tag is None else None
    session._auth_tag = tag
    if session._auth_slot is not None:
        session._untagged.append(session._auth_slot)
    session._auth_wait = True
    session._update_reading()
    session._start_timer(AUTH_TIMER, delay)


def refuse_auth(session: Host) -> None:
    """The delay after a wrong token passed: answer it, and close after too many."""
    line = session._encode_error(
        UnauthenticatedError("that token is not valid"), session._auth_tag
    )
    slot, session._auth_slot = session._auth_slot, None
    if slot is not None:
        slot.line = line
        session._flush_untagged()
    else:
        session._write(line)
    if session._auth_failures >= MAX_AUTH_FAILURES:
        session._close(f"{session._auth_failures} failed AUTH attempts", False)
        return
    session._auth_wait = False
    session._update_reading()
    session._after_call()


#: Every command a node answers.  A verb the decoder knows and this table
#: does not is answered C{UNIMPLEMENTED}.
COMMANDS: Final[dict[str, Verb]] = {
    "PING": Verb(_node_command, True, "PING: answers pong"),
    "HELP": Verb(_node_command, True, "HELP [name]: the procedures, or one in full"),
    "LIST": Verb(_node_command, False, "LIST: the procedures' names"),
    "STATS": Verb(_node_command, False, "STATS: the node's counters"),
    "HELLO": Verb(_node_command, False, "HELLO {info}: a peer node's handshake"),
    "CANCEL": Verb(_cancel, False, "CANCEL tag: cancel a tagged call in flight"),
    "MORE": Verb(_more, False, "MORE #tag n: grant a stream n more items (never answered)"),
    "QUIT": Verb(_quit, True, "QUIT: answer what is owed, say bye, close"),
    "AUTH": Verb(_auth, True, "AUTH token: say who is calling"),
}
