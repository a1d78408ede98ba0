"""
The line codec: bytes in, frozen events out, and back.  No I/O, no Twisted.

Every message is one UTF-8 line ending in LF (CRLF is accepted).  The grammar
is specified with examples in C{docs/protocol.md}; in short::

    request  = [ "#" tag SP ] *( "+" option SP ) procedure *( SP argument )
    command  = [ "#" tag SP ] VERB *( SP argument )       ; HELP, PING, ...
    success  = [ "#" tag SP ] "OK" [ SP json ]
    error    = [ "#" tag SP ] "ERR" SP CODE SP outcome [ SP "@" node ] SP message
    item     = [ "#" tag SP ] "ITEM" [ SP json ]           ; a stream's items
    progress = [ "#" tag SP ] "PROGRESS" SP json           ; how far a call got
    bye      = "BYE" SP json-string                       ; the node closes: see Bye
    text     = "|" [ SP text ]                             ; for people only

An argument is a JSON value where the word parses as one and a string
otherwise, so a person can type C{add 1 2} or C{echo hello} and a program can
send any JSON.  C{name=value} passes a keyword argument.  Nothing is ever
evaluated: values are read by the C{json} module and nothing else.

This module is the decoder's framing (lines out of bytes, within the line
limit); one line's grammar is L{callnet.wire_parse}, the encoders are in
L{callnet.wire_encode} and the shared patterns in L{callnet.wire_grammar},
and every name of the codec is imported from here.

L{LineDecoder} is a pull parser in the manner of h11: L{LineDecoder.feed}
takes bytes, L{LineDecoder.next_event} hands out one event at a time (or
C{None} when it needs more bytes), so its user can stop pulling when it has
enough work in hand and the rest stays buffered, bounded by what it was fed.
"""

from __future__ import annotations

from callnet.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
)
from callnet.wire_encode import _encode_string as _encode_string
from callnet.wire_encode import encode_bye as encode_bye
from callnet.wire_encode import encode_call as encode_call
from callnet.wire_encode import encode_command as encode_command
from callnet.wire_encode import encode_failure as encode_failure
from callnet.wire_encode import encode_item as encode_item
from callnet.wire_encode import encode_json as encode_json
from callnet.wire_encode import encode_more as encode_more
from callnet.wire_encode import encode_progress as encode_progress
from callnet.wire_encode import encode_simple_call as encode_simple_call
from callnet.wire_encode import encode_success as encode_success
from callnet.wire_encode import encode_text as encode_text
from callnet.wire_encode import format_seconds as format_seconds
from callnet.wire_encode import valid_procedure_name as valid_procedure_name

# Re-exported: the rest of callnet imports the codec's names from here.
from callnet.wire_events import COMMANDS as COMMANDS
from callnet.wire_events import REPLY_WORDS as REPLY_WORDS
from callnet.wire_events import RESERVED_NAMES as RESERVED_NAMES
from callnet.wire_events import BadLine as BadLine
from callnet.wire_events import Bye as Bye
from callnet.wire_events import Call as Call
from callnet.wire_events import Command as Command
from callnet.wire_events import ErrorReply as ErrorReply
from callnet.wire_events import Event as Event
from callnet.wire_events import Item as Item
from callnet.wire_events import Progress as Progress
from callnet.wire_events import Success as Success
from callnet.wire_events import Text as Text
from callnet.wire_fast import _LONG_HEAD as _LONG_HEAD
from callnet.wire_fast import _LONG_TAIL as _LONG_TAIL
from callnet.wire_fast import _SIMPLE_CALL as _SIMPLE_CALL
from callnet.wire_fast import _SIMPLE_CONSTANTS as _SIMPLE_CONSTANTS
from callnet.wire_fast import _SIMPLE_MAX as _SIMPLE_MAX
from callnet.wire_fast import _SIMPLE_NUMBER as _SIMPLE_NUMBER
from callnet.wire_fast import _SIMPLE_SUCCESS as _SIMPLE_SUCCESS
from callnet.wire_fast import _parse_simple_call as _parse_simple_call
from callnet.wire_fast import _parse_simple_success as _parse_simple_success
from callnet.wire_grammar import DEFAULT_CALL_TIMEOUT as DEFAULT_CALL_TIMEOUT
from callnet.wire_grammar import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from callnet.wire_grammar import MAX_WINDOW as MAX_WINDOW
from callnet.wire_grammar import OPTIONS as OPTIONS
from callnet.wire_grammar import PROTOCOL_VERSION as PROTOCOL_VERSION
from callnet.wire_grammar import is_procedure_name as is_procedure_name
from callnet.wire_parse import _DECODER as _DECODER
from callnet.wire_parse import _LONG_JSON, _peek_tag
from callnet.wire_parse import _parse_general as _parse_general
from callnet.wire_parse import _parse_long_string as _parse_long_string
from callnet.wire_parse import _parse_value as _parse_value
from callnet.wire_parse import parse_line as parse_line
from callnet.wire_parse import parse_words as parse_words

# --- Decoding ---------------------------------------------------------------


class LineDecoder:
    """
    Split bytes into lines and lines into events, within a line length bound.

    A line longer than C{max_line} yields one L{BadLine} (with the line's tag,
    when it had one) and the rest of that line is dropped as it arrives,
    without being buffered.

    Each byte fed is searched for LF once, and copied at most once: a chunk
    is read where it lies, and a line that spans chunks is kept as the
    chunks that hold it, joined once when its LF comes.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        # Bytes to read lines from (a chunk as it came), and where the unread
        # part of it starts: lines are sliced out from there, so a chunk of
        # many lines is not copied once per line.
        self._buffer: bytes = b""
        self._start = 0
        # A line that spanned chunks, joined when its LF came: read before
        # the buffer, which holds what came after it.
        self._joined: bytes | None = None
        # The pieces of a line still waiting for its LF, and their length.
        self._pieces: list[bytes | memoryview] = []
        self._held = 0
        self._discarding = False

    @property
    def buffered(self) -> int:
        """How many bytes are held, waiting to be read as events."""
        joined = self._joined
        return (
            len(self._buffer) - self._start + self._held + (0 if joined is None else len(joined))
        )

    def feed(self, data: bytes) -> None:
        """Take more bytes from the peer."""
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            self._discarding = False
            data = data[end + 1 :]
        if self._pieces:
            newline = data.find(b"\n")
            if newline < 0:
                self._pieces.append(data)
                self._held += len(data)
                return
            self._pieces.append(memoryview(data)[:newline])
            self._joined = b"".join(self._pieces)
            self._pieces = []
            self._held = 0
            self._buffer, self._start = data, newline + 1
        elif self._start < len(self._buffer):
            self._buffer = self._buffer[self._start :] + data
            self._start = 0
        else:
            self._buffer, self._start = data, 0

    def next_event(self) -> Event | None:
        """Return the next event, or C{None} until more bytes are fed."""
        joined = self._joined
        if joined is not None:
            self._joined = None
            if len(joined) > self.max_line:
                return self._overflow(joined, discard_rest=False)
            event = parse_line(memoryview(joined) if len(joined) > _LONG_JSON else joined)
            if event is not None:
                return event
        if self._pieces:
            return self._check_partial()
        buffer = self._buffer
        while True:
            start = self._start
            end = buffer.find(b"\n", start)
            if end < 0:
                if start < len(buffer):
                    # The start of a line: kept where it lies when it is
                    # most of its chunk, copied out of it when it is not.
                    rest = len(buffer) - start
                    if not start:
                        self._pieces.append(buffer)
                    elif rest > start:
                        self._pieces.append(memoryview(buffer)[start:])
                    else:
                        self._pieces.append(buffer[start:])
                    self._held = rest
                self._buffer, self._start = b"", 0
                return self._check_partial()
            self._start = end + 1
            if end - start > self.max_line:
                return self._overflow(buffer[start:end], discard_rest=False)
            # A long line is read in place (see parse_line).
            event = parse_line(
                memoryview(buffer)[start:end] if end - start > _LONG_JSON else buffer[start:end]
            )
            if event is not None:
                return event

    def _check_partial(self) -> BadLine | None:
        """An unfinished line past the limit is refused now, and dropped."""
        if self._held > self.max_line:
            return self._overflow(_head(self._pieces, _TAG_PEEK), discard_rest=True)
        return None

    def end_of_input(self) -> BadLine | None:
        """
        The peer will send nothing more: report an unfinished last line.

        Call it once every event has been taken with L{next_event}.  An
        unterminated line is not acted on, since the peer may have been cut
        off in the middle of it.
        """
        rest = self._buffer[self._start :] + b"".join(self._pieces)
        self._reset()
        if self._discarding or not rest.strip():
            return None
        return BadLine(
            InvalidArgumentError("input ended in the middle of a line"), _peek_tag(rest)
        )

    def _reset(self) -> None:
        """Let go of every byte held."""
        self._buffer, self._start = b"", 0
        self._joined = None
        self._pieces = []
        self._held = 0

    def _overflow(self, line: bytes, discard_rest: bool) -> BadLine:
        if discard_rest:
            self._reset()
            self._discarding = True
        # Read the tag only from what a byte-at-a-time feed would have held
        # when the limit was passed, so the answer does not depend on chunking.
        return BadLine(
            ResourceExhaustedError(f"line longer than the limit of {self.max_line} bytes"),
            _peek_tag(line[: self.max_line + 1], complete=False),
        )


#: Bytes at the start of a line enough to read its tag: C{#}, 64 characters, a space.
_TAG_PEEK = 80


def _head(pieces: list[bytes | memoryview], size: int) -> bytes:
    """The first C{size} bytes of a line held in pieces."""
    head = b""
    for piece in pieces:
        head += piece[: size - len(head)]
        if len(head) >= size:
            break
    return head
