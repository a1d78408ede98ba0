"""
One connection's rules, as a state machine without I/O.

L{Session} is what a node keeps per connection.  Its adapter feeds it events
(bytes read, a call finished, output paused or drained, a timer fired, input
ended, the connection lost) and it answers each with actions, through the
adapter's L{Actions}.  This module holds its core: the states, every reason
to stop reading, admission of each call, and the end.  Its other parts are
written apart, below it: the reading of the client's bytes, held input's
bound and the end of input (L{callnet.session_reading}), the calls in flight
and the ordered queue of untagged replies (L{callnet.session_calls}), the
commands and AUTH's back-off (L{callnet.session_commands}), streams' grants
(L{callnet.session_streams}), the adapter's interface
(L{callnet.session_actions}) and the table of states
(L{callnet.session_states}).

It imports nothing from Twisted, so it is driven in tests by plain objects,
and its rules hold whatever the transport (TCP, TLS, memory) does.

The connection's life, in the manner of h11's state table::

    OPEN ──QUIT──► QUITTING ──owed answers written, bye──► CLOSED
      │                                                      ▲
      └──input ended, all of it read──► ENDING ──untagged────┘
                                                  answered

    OPEN, QUITTING or ENDING ──the node shuts down: BYE──► LEAVING ──client closes──► CLOSED

    any state ──close (a stated reason) or connection lost──► CLOSED

  - C{OPEN}: lines are read and served.
  - C{QUITTING}: C{QUIT} was read.  Every call read before it, tagged or
    not, is answered, then C{OK "bye"}, then the node closes.  Input after
    C{QUIT} is read and thrown away (so that the end of the connection is
    seen), never held; end of input changes nothing.
  - C{ENDING}: the client half-closed and every line it sent has been read.
    Untagged calls are answered (C{printf 'add 1 2\\n' | nc}); tagged ones
    were cancelled without a reply when input ended (a program that stops
    sending has gone), except keyed ones, which run on so a retry finds their
    outcome.  Then the node closes.
  - C{LEAVING}: the node is shutting down.  Every call read was answered
    (those still running with an error, and cancelled), then C{BYE}: the
    promise that nothing read after it runs, so a client may send whatever
    it had not had answered elsewhere.  Input is read and thrown away until
    the client closes, so that the node's close cannot be a reset that
    destroys the C{BYE} before the client reads it; the node's drain cuts
    off a client that does not close.
  - C{CLOSED}: the node asked for the connection to close, saying why, or it
    was lost.  Nothing more is written.  When it is lost, calls still running
    are cancelled, except keyed calls and casts, which are handed to the
    adapter to run on (L{Actions.detach_cast}).

Casts never hold a connection open: they are counted against the calls in
flight while it is open, and left to run on once it closes.
"""

from __future__ import annotations

from collections.abc import Callable

from callnet.config import Limits
from callnet.errors import (
    CallError,
    InvalidArgumentError,
    Outcome,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from callnet.session_actions import (
    AUTH_DEADLINE_TIMER,
    AUTH_TIMER,
    CHECK_TIMER,
    INPUT_ENDED,
    LINE_TIMER,
    ORDINARY_ENDS,
    SAID_QUIT,
    SHUTTING_DOWN,
    STALL_TIMER,
    Actions,
)
from callnet.session_commands import (
    AUTH_DELAY,
    AUTH_DELAY_MAX,
    COMMANDS,
    MAX_AUTH_FAILURES,
    Verb,
    handle_command,
    refuse_auth,
    unauthenticated,
)
from callnet.session_reading import Reading
from callnet.session_states import CLOSED, ENDING, LEAVING, OPEN, QUITTING, next_state
from callnet.session_streams import Producer, Slot
from callnet.wire import (
    Call,
    Command,
    encode_bye,
    encode_success,
)

__all__ = [
    "AUTH_DEADLINE_TIMER",
    "AUTH_DELAY",
    "AUTH_DELAY_MAX",
    "AUTH_TIMER",
    "CHECK_TIMER",
    "CLOSED",
    "COMMANDS",
    "ENDING",
    "INPUT_ENDED",
    "LEAVING",
    "LINE_TIMER",
    "MAX_AUTH_FAILURES",
    "OPEN",
    "ORDINARY_ENDS",
    "QUITTING",
    "SAID_QUIT",
    "SHUTTING_DOWN",
    "STALL_TIMER",
    "Actions",
    "Producer",
    "Session",
    "Slot",
    "Verb",
]

# --- The session ------------------------------------------------------------------


class Session(Reading):
    """
    The state of one connection and its rules.

    @param limits: the node's bounds.
    @param node_name: names the node in the errors the session writes.
    @param actions: the adapter that performs the session's actions.
    @param authenticated: whether calls are served before any C{AUTH}.
    @param byte_filter: applied to every chunk of bytes before it is
        decoded (for example to remove telnet negotiation); C{None}: none.
    """

    def __init__(
        self,
        limits: Limits,
        node_name: str,
        actions: Actions,
        authenticated: bool = True,
        byte_filter: Callable[[bytes], bytes] | None = None,
    ) -> None:
        # Keep the attributes below 30: past that CPython stops sharing the
        # keys of instance dicts, and each connection's session costs 1.3 KiB
        # more (benchmarks/run.py --workloads idle-mem).
        super().__init__(limits.max_line_bytes, byte_filter)
        self._limits = limits
        self._node_name = node_name
        self._actions = actions
        self.state: str = OPEN
        #: Why the connection was closed, once it is.
        self.close_reason: str | None = None
        #: Whether calls are served; before C{AUTH} only some commands are.
        self.authenticated = authenticated
        #: Whether the client is a peer node (it said C{HELLO}): never paused,
        #: refused past the limit instead, so its heartbeats are still read.
        self.peer = False
        #: Set while the node shuts down: new calls are refused.
        self.draining = False
        self._quit_slot: Slot | None = None
        self._quit_tag: str | None = None
        self._auth_failures = 0
        self._auth_slot: Slot | None = None
        self._auth_tag: str | None = None
        # Reasons to stop reading.
        self._over_limit = False
        self._output_paused = False
        self._auth_wait = False
        self._reading = True
        #: Bytes written since output backed up.
        self.unsent = 0
        self._timers: set[str] = set()
        if not authenticated:
            self._start_timer(AUTH_DEADLINE_TIMER, limits.auth_timeout)

    # --- What a test or an adapter may look at ----------------------------------

    @property
    def reading(self) -> bool:
        """Whether the session wants the connection read."""
        return self._reading

    @property
    def timers(self) -> frozenset[str]:
        """The timers running now."""
        return frozenset(self._timers)

    # --- Events -----------------------------------------------------------------------

    def refuse(self, error: CallError, reason: str) -> None:
        """The connection is not admitted: say why, and close."""
        self._error_and_close(error, reason)

    def connection_lost(self) -> None:
        """The connection is gone: cancel what runs for it, detach the rest."""
        self._move("lost")
        self._stop_timers()
        self._let_go()

    def output_paused(self) -> None:
        """The transport's output is full: stop reading until it drains."""
        if self.state is CLOSED:
            return
        self._output_paused = True
        self._streams.hold()
        self._update_reading()
        self._start_timer(STALL_TIMER, self._limits.write_stall_timeout)

    def output_resumed(self) -> None:
        """The transport's output drained."""
        self._stop_timer(STALL_TIMER)
        self._output_paused = False
        self.unsent = 0
        self._streams.release()
        self._update_reading()

    def timer_fired(self, timer: str) -> None:
        """A timer started by the session ran out."""
        if timer not in self._timers:
            return
        self._timers.discard(timer)
        if timer == LINE_TIMER:
            self._error_and_close(
                ResourceExhaustedError(
                    f"a line was begun and not finished within {self._limits.line_timeout:g}s"
                ),
                "a line was begun and not finished in time",
            )
        elif timer == STALL_TIMER:
            self._close(
                f"it left its replies unread for {self._limits.write_stall_timeout:g}s", True
            )
        elif timer == AUTH_TIMER:
            refuse_auth(self)
        elif timer == AUTH_DEADLINE_TIMER:
            if not self.authenticated:  # a client certificate may have done it
                self._error_and_close(
                    UnauthenticatedError(
                        f"not authenticated within {self._limits.auth_timeout:g}s"
                    ),
                    "it did not authenticate in time",
                )
        elif timer == CHECK_TIMER:
            self._actions.check_closed()
            self._check_while_over_limit()

    def shut_down(self, error: CallError) -> None:
        """
        The node is stopping: answer what runs with C{error} and cancel it,
        say C{BYE}, then read and drop input until the client closes.
        """
        if self.state is CLOSED or self.state is LEAVING:
            return
        self._answer_all(error)
        if self.state is not CLOSED:
            self._write(encode_bye(f"{self._node_name} is shutting down"))
        if self.state is CLOSED:
            # Answering finished a QUIT (which closed with its "bye"), or
            # passed the bound on replies left unread (which cut it off).
            return
        if self.input_ended:
            self._close(SHUTTING_DOWN, False)  # nothing more can come to be read
            return
        self._move("bye")
        self._stop_timers()
        if not self._reading:
            self._reading = True
            self._actions.resume_reading()

    # --- Admission ------------------------------------------------------------------------

    def _refusal(self, call: Call) -> CallError | None:
        """Why this connection cannot take the call now, if it cannot."""
        if not self.authenticated:
            return unauthenticated()
        if self.draining:
            return UnavailableError(f"{self._node_name} is shutting down", Outcome.NOT_RUN)
        tag = call.tag
        if tag is not None and tag in self._tagged:
            return InvalidArgumentError(f"tag #{tag} is already in use by a call in flight")
        if self.peer and self.load >= self._limits.max_calls_in_flight:
            return UnavailableError(
                f"{self._node_name} is busy: {self.load} calls in flight from this peer",
                Outcome.NOT_RUN,
            )
        return None

    def _handle_call(self, call: Call) -> None:
        tag = call.tag
        if not self.authenticated or self.draining or self.peer or tag in self._tagged:
            refusal = self._refusal(call)
            if refusal is not None:
                self._reply_error(refusal, tag)
                return
        work = self._actions.start_call(call)
        if type(work) is bytes:
            if not call.cast:
                self._reply_line(work, tag)
            return
        if call.cast:
            self._casts.add(work)
            self._actions.follow(work, call, None)
        elif tag is None:
            slot = Slot(work)
            self._untagged.append(slot)
            producer = self._actions.follow(work, call, slot)
            if producer is not None and slot.line is None:
                slot.items = []
                self._streams.open(work, producer, None, slot, 1, self._output_paused)
        else:
            self._tagged[tag] = work
            if call.key is not None:
                self._keyed.add(tag)
            producer = self._actions.follow(work, call, None)
            if producer is not None and self._tagged.get(tag) is work:
                window = call.window or 1
                self._streams.open(work, producer, tag, None, window, self._output_paused)
        # Checked here without a call, as this runs once per call.
        if (
            len(self._untagged) + len(self._tagged) + len(self._casts)
            >= self._limits.max_calls_in_flight
        ):
            self._check_load()

    def _handle_command(self, command: Command) -> None:
        handle_command(self, command)
        self._check_load()

    # --- Writing --------------------------------------------------------------------------

    def _write(self, line: bytes) -> None:
        if self.state is CLOSED or self.state is LEAVING:
            return  # nothing is written after BYE
        if self._output_paused:
            self.unsent += len(line)
            if self.unsent > self._limits.max_unsent_bytes:
                self._close("its unread replies passed the limit", True)
                return
        self._actions.write(line)

    def _error_and_close(self, error: CallError, reason: str) -> None:
        self._write(self._encode_error(error, None))
        self._close(reason, False)

    # --- Flow control and the end -----------------------------------------------------

    def _check_load(self) -> None:
        """Stop reading once the calls in flight and answers waiting reach the limit."""
        if self._over_limit:
            return
        # A peer's link is never paused for its calls (they are refused past
        # the limit instead); only untagged answers piling up stop it.
        load = len(self._untagged)
        if not self.peer:
            load += len(self._tagged) + len(self._casts)
        if load >= self._limits.max_calls_in_flight:
            self._over_limit = True
            self._update_reading()
            self._check_while_over_limit()

    def _check_while_over_limit(self) -> None:
        # A connection not read does not show its client leaving: look, now
        # and then, so that a client gone at the limit has its calls cancelled.
        if self._over_limit and self.state is not CLOSED and self.state is not LEAVING:
            self._start_timer(CHECK_TIMER, self._limits.paused_check_interval)

    def _after_call(self) -> None:
        if self._over_limit:
            load = len(self._untagged) if self.peer else self.load
            if load <= self._limits.max_calls_in_flight // 2:
                self._over_limit = False
                self._stop_timer(CHECK_TIMER)
                self._update_reading()
        if self.state is not OPEN:
            self._maybe_finish()

    def _update_reading(self) -> None:
        reading = not (self._over_limit or self._output_paused or self._auth_wait)
        if reading == self._reading or self.state is CLOSED or self.state is LEAVING:
            return  # after BYE input is read to its end, whatever else happens
        self._reading = reading
        if reading:
            self._actions.resume_reading()
            self._pump()
        else:
            self._actions.pause_reading()

    def _maybe_finish(self) -> None:
        """After QUIT or the end of input: close once nothing more is owed."""
        state = self.state
        if state is QUITTING:
            if self._tagged or self._auth_wait:
                return
            quit_slot = self._quit_slot
            if quit_slot is not None:
                if self._untagged[0] is not quit_slot:
                    return
                quit_slot.line = encode_success("bye")
                self._flush_untagged()
            else:
                if self._untagged:
                    return
                self._write(encode_success("bye", self._quit_tag))
                self._quit_tag = None
            self._close(SAID_QUIT, False)
        elif state is ENDING:
            if self._tagged or self._untagged or self._auth_wait:
                return
            self._close(INPUT_ENDED, False)

    def _close(self, reason: str, abort: bool) -> None:
        if self.state is CLOSED:
            return
        self._move("close")
        self.close_reason = reason
        self._stop_timers()
        self._actions.close(reason, abort)

    def _move(self, event: str) -> None:
        # Its own table, not Automat: see callnet/session_states.py.
        self.state = next_state(self.state, event)

    # --- Timers -----------------------------------------------------------------------

    def _start_timer(self, timer: str, delay: float) -> None:
        if timer not in self._timers:
            self._timers.add(timer)
            self._actions.start_timer(timer, delay)

    def _stop_timer(self, timer: str) -> None:
        if timer in self._timers:
            self._timers.discard(timer)
            self._actions.stop_timer(timer)

    def _stop_timers(self) -> None:
        for timer in list(self._timers):
            self._stop_timer(timer)
