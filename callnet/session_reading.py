"""
The reading side of a session, without I/O.

L{Reading} is the part of L{callnet.session.Session} that takes the client's
bytes: through the byte filter into the decoder, then out again one event at
a time, and only while the session wants the connection read.  Pulling one
event at a time is what lets the session stop mid-chunk when a limit is
reached: the rest waits in the decoder's buffer, bounded by
C{max_held_input_bytes} (a transport that honours a pause delivers at most
one more read).  It also runs the timer on a line begun and not finished,
refuses a client that speaks HTTP, and sees input to its end.  The session
supplies the members declared here without a value: its state and limits,
whether it reads, and what it does with each request.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from callnet.config import Limits
from callnet.errors import CallError, InvalidArgumentError, ResourceExhaustedError
from callnet.session_actions import LINE_TIMER, SHUTTING_DOWN
from callnet.session_calls import CallsInFlight
from callnet.session_states import CLOSED, LEAVING, OPEN, QUITTING
from callnet.wire import BadLine, Call, Command, Event, LineDecoder

_HTTP_REQUEST = re.compile(rb"[A-Z]{3,7} \S+ HTTP/\d")
_HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"}
)
_NOT_HTTP = (
    "this is a callnet node, not an HTTP server; type HELP in a line-based"
    " client such as nc, or see docs/protocol.md"
)


class Reading(CallsInFlight):
    """The client's bytes in, and the requests out of them, while reading."""

    # Supplied by the session.
    _limits: Limits
    _reading: bool
    _timers: set[str]

    def __init__(self, max_line: int, byte_filter: Callable[[bytes], bytes] | None) -> None:
        super().__init__()
        self._filter = byte_filter
        self._decoder = LineDecoder(max_line)
        #: Whether the client half-closed: it will send nothing more.
        self.input_ended = False
        self._first = True
        self._pumping = False

    def _handle_call(self, call: Call) -> None:
        raise NotImplementedError  # the session's: admit the call, or refuse it

    def _handle_command(self, command: Command) -> None:
        raise NotImplementedError  # the session's: the table of commands

    def _error_and_close(self, error: CallError, reason: str) -> None:
        raise NotImplementedError  # the session's: a last error, then close

    def _close(self, reason: str, abort: bool) -> None:
        raise NotImplementedError  # the session's

    def _move(self, event: str) -> None:
        raise NotImplementedError  # the session's: the table of states

    def _maybe_finish(self) -> None:
        raise NotImplementedError  # the session's: close once nothing more is owed

    def _start_timer(self, timer: str, delay: float) -> None:
        raise NotImplementedError  # the session's

    def _stop_timer(self, timer: str) -> None:
        raise NotImplementedError  # the session's

    # --- What a test or an adapter may look at ----------------------------------

    @property
    def held_input(self) -> int:
        """Bytes read and not yet handled."""
        return self._decoder.buffered

    # --- Events -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes arrived from the client."""
        if self.state is not OPEN or self.input_ended:
            return  # after QUIT, or closing: read and thrown away
        if self._filter is not None:
            data = self._filter(data)
        if self._first and _HTTP_REQUEST.match(data):
            self._refuse_http()
            return
        decoder = self._decoder
        if not self._reading:
            # A transport that honours a pause delivers at most one more read.
            bound = self._limits.max_held_input_bytes
            if decoder.buffered + len(data) > bound:
                self._error_and_close(
                    ResourceExhaustedError(
                        f"more than {bound} bytes sent while the node was not reading"
                    ),
                    "it sent too much while not being read",
                )
                return
        decoder.feed(data)
        self._pump()

    def end_input(self) -> None:
        """The client half-closed: it will send nothing more."""
        if self.input_ended or self.state is CLOSED:
            return
        self.input_ended = True
        if self.state is QUITTING:
            return  # QUIT already said so: what it owes is answered
        if self.state is LEAVING:
            self._close(SHUTTING_DOWN, False)  # the client heard BYE and closed
            return
        self._cancel_tagged()
        self._after_call()
        if not self._reading and not self._decoder.buffered and self.state is OPEN:
            self._input_done()  # nothing left to read: no need to wait for reading
        else:
            self._pump()

    def input_closing(self) -> None:
        """
        The client closed its side, with lines it sent still unread (the
        node is not reading it, its calls at the limit).  The end of its
        input will cancel its tagged calls: cancel them now, so that reading
        resumes and reaches that end, rather than waiting for their deadlines.
        """
        if self.input_ended or self.state is not OPEN:
            return
        self._cancel_tagged()
        self._after_call()

    # --- Reading ----------------------------------------------------------------------

    def _pump(self) -> None:
        """Handle held events until none is left or reading stops."""
        if self._pumping:
            return
        self._pumping = True
        decoder = self._decoder
        handled = False
        try:
            while self._reading and self.state is OPEN:
                event = decoder.next_event()
                if event is None:
                    if self.input_ended:
                        self._input_done()
                    break
                handled = True
                self._handle(event)
        finally:
            self._pumping = False
        if self.input_ended and self.state is OPEN and not decoder.buffered:
            # Everything sent was read, though reading stopped on the last
            # line (an AUTH to answer after its delay): input is done now.
            self._input_done()
        if self.state is OPEN and decoder.buffered and self._reading and not self.input_ended:
            if handled:
                self._stop_timer(LINE_TIMER)
            self._start_timer(LINE_TIMER, self._limits.line_timeout)
        elif LINE_TIMER in self._timers:
            self._stop_timer(LINE_TIMER)

    def _handle(self, event: Event) -> None:
        if self._first:
            self._first = False
            if _looks_like_http(event):
                self._refuse_http()
                return
        kind = type(event)
        if kind is Call:
            self._handle_call(event)  # type: ignore[arg-type]
        elif kind is Command:
            self._handle_command(event)  # type: ignore[arg-type]
        elif kind is BadLine:
            self._reply_error(event.error, event.tag)  # type: ignore[union-attr]
        else:
            self._reply_error(
                InvalidArgumentError("a node takes requests here, not replies"), None
            )

    def _refuse_http(self) -> None:
        self._error_and_close(InvalidArgumentError(_NOT_HTTP), "it spoke HTTP")

    def _input_done(self) -> None:
        """Input ended and every line of it was read."""
        unfinished = self._decoder.end_of_input()
        if unfinished is not None:
            self._reply_error(unfinished.error, unfinished.tag)
        # Tagged calls read after the end of input was seen go as the others did.
        self._cancel_tagged()
        self._move("input done")
        self._maybe_finish()


def _looks_like_http(event: Event) -> bool:
    """Whether a first request is an HTTP request line that came in pieces."""
    return (
        type(event) is Call
        and event.procedure in _HTTP_METHODS
        and bool(event.args)
        and str(event.args[-1]).startswith("HTTP/")
    )
