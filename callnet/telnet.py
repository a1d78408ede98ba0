"""
Telnet's commands, taken out of the byte stream before the line decoder sees
it.  No I/O, no Twisted.

A person may talk to a node with C{telnet}, which mixes commands into the
bytes it sends: each starts with the byte IAC (255), which never occurs in
UTF-8 text, so a stream without it passes through untouched.  The commands
(RFC 854, 855, 860) are handled so:

  - C{IAC IP} (Ctrl-C), C{IAC AO} and C{IAC BRK} are reported as
    L{TelnetEvent}s, in their place in the stream.
  - C{IAC DO TIMING-MARK} is answered C{IAC WILL TIMING-MARK} (RFC 860).
    Telnet sends it with every Ctrl-C and throws away all output until it
    has the answer, so without one the session would fall silent.
  - Every other option is refused: C{DO x} is answered C{WONT x} and
    C{WILL x} C{DONT x}.  C{WONT} and C{DONT} are never answered: the node
    keeps every option off, so they change nothing (RFC 854 and 1143: a
    request for the state one is in is not acknowledged), and two parties
    can never answer each other's answers in a loop.
  - A subnegotiation, C{IAC SB ... IAC SE}, is dropped whole.  Nothing of it
    is kept, and after L{MAX_SUBNEGOTIATION} bytes without C{IAC SE} it is
    given up on and what follows is read as data again, so a stray
    C{IAC SB} cannot swallow the rest of a connection.
  - C{IAC IAC} stands for one 255 byte (which the decoder then refuses as
    not UTF-8, like any other).  C{NOP}, C{DM}, C{GA}, C{AYT}, C{EC} and
    C{EL} are dropped.  An IAC followed by a byte that is no command is
    dropped and the byte kept: telnet's "synch" sends C{IAC DM} as urgent
    data, and the kernel takes the C{DM} out of the stream.

Commands may be cut anywhere by the chunks the bytes come in: the filter
keeps the little state needed (a few integers) between chunks.

A connection puts a L{TelnetFilter} in front of its line decoder and hands
each chunk to L{TelnetFilter.receive}, which calls back in stream order::

    # when the connection is made
    self._telnet = TelnetFilter()
    # in dataReceived, instead of feeding the decoder directly
    self._telnet.receive(data, self._take, self._interrupt, self._write)

where C{_take(clean)} feeds the decoder and handles the events it yields,
C{_interrupt()} cancels the connection's untagged calls in flight, and
C{_write(answer)} sends negotiation answers to the peer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

#: "Interpret as command": the byte that starts every telnet command.
IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
#: Subnegotiation begins.
SB = 250
GA = 249
EL = 248
EC = 247
AYT = 246
#: Abort output.
AO = 245
#: Interrupt process: what telnet sends for Ctrl-C.
IP = 244
BRK = 243
#: Data mark, the end of a telnet "synch".
DM = 242
NOP = 241
#: Subnegotiation ends.
SE = 240
#: The option telnet asks for after Ctrl-C, to learn when to show output again.
TIMING_MARK = 6

#: The longest subnegotiation (option byte and parameters, escapes counted
#: once) that is waited out.  The node refuses every option, so a well-behaved
#: client never sends one; those it might send unasked (terminal type, window
#: size) are a few dozen bytes.  Nothing of it is held, so the bound is about
#: giving up on a stray C{IAC SB}, not about memory.
MAX_SUBNEGOTIATION = 1024


class TelnetEvent(enum.Enum):
    """A telnet command that means something to the session."""

    #: C{IAC IP}: the person pressed Ctrl-C.
    INTERRUPT = "interrupt"
    #: C{IAC AO}: the person asked for output to be discarded.
    ABORT_OUTPUT = "abort-output"
    #: C{IAC BRK}: the break key.
    BREAK = "break"


_EVENTS = {
    IP: TelnetEvent.INTERRUPT,
    AO: TelnetEvent.ABORT_OUTPUT,
    BRK: TelnetEvent.BREAK,
}
_IAC_BYTE = b"\xff"

# Where the filter stands between two bytes.
_DATA = 0  # in plain data
_COMMAND = 1  # after IAC
_OPTION = 2  # after IAC and WILL, WONT, DO or DONT: the option comes next
_SUBNEGOTIATION = 3  # after IAC SB, until IAC SE
_SUBNEGOTIATION_IAC = 4  # after IAC inside a subnegotiation


@dataclass(frozen=True, slots=True)
class TelnetResult:
    """What one chunk of input came to."""

    #: The bytes for the line decoder, with every telnet command taken out.
    data: bytes
    #: Negotiation answers to send back to the peer.
    reply: bytes = b""
    #: The commands that mean something to the session, in order.
    events: tuple[TelnetEvent, ...] = ()


_Piece = bytes | TelnetEvent


class TelnetFilter:
    """
    Take telnet commands out of a byte stream, and answer its negotiation.

    One filter per connection: it remembers where a command cut by the end
    of a chunk stands.
    """

    def __init__(self, max_subnegotiation: int = MAX_SUBNEGOTIATION) -> None:
        """
        @param max_subnegotiation: how many bytes of a subnegotiation to wait
            out for its end; at least 1.
        """
        if max_subnegotiation < 1:
            raise ValueError(f"max_subnegotiation must be at least 1, not {max_subnegotiation}")
        self.max_subnegotiation = max_subnegotiation
        self._state = _DATA
        # The verb (WILL, WONT, DO or DONT) awaiting its option byte.
        self._verb = 0
        # Bytes of the current subnegotiation seen so far.
        self._subnegotiated = 0

    def feed(self, data: bytes) -> TelnetResult:
        """Filter one chunk; the data, answers and events it came to."""
        # The byte as an int: "in" finds an int at once, but tries a bytes
        # needle as an int first, which costs an exception.
        if self._state == _DATA and IAC not in data:
            return TelnetResult(data)
        pieces, reply = self._filter(data)
        return TelnetResult(
            b"".join(piece for piece in pieces if type(piece) is bytes),
            reply,
            tuple(piece for piece in pieces if isinstance(piece, TelnetEvent)),
        )

    def receive(
        self,
        data: bytes,
        take: Callable[[bytes], None],
        interrupt: Callable[[], None],
        send: Callable[[bytes], None],
    ) -> None:
        """
        Filter one chunk and act on it, in the order the peer sent it.

        Answers go first to C{send}, so that telnet shows again whatever
        follows, the replies of interrupted calls included.  Then the clean
        bytes go to C{take}, and C{interrupt} is called at each C{IAC IP}
        between them: lines before a Ctrl-C are taken before it, and lines
        after it are not interrupted.  C{take} is never given empty bytes.
        Other events (C{AO}, C{BRK}) are dropped.
        """
        if self._state == _DATA and IAC not in data:
            if data:
                take(data)
            return
        pieces, reply = self._filter(data)
        if reply:
            send(reply)
        clean: list[bytes] = []
        for piece in pieces:
            if type(piece) is bytes:
                clean.append(piece)
            elif piece is TelnetEvent.INTERRUPT:
                if clean:
                    take(b"".join(clean))
                    clean = []
                interrupt()
        if clean:
            take(b"".join(clean))

    def _filter(self, data: bytes) -> tuple[list[_Piece], bytes]:
        """Run the state machine over a chunk: data pieces and events in order, and answers."""
        pieces: list[_Piece] = []
        reply = bytearray()
        state = self._state
        pos = 0
        length = len(data)
        while pos < length:
            if state == _DATA:
                end = data.find(_IAC_BYTE, pos)
                if end < 0:
                    pieces.append(data[pos:])
                    break
                if end > pos:
                    pieces.append(data[pos:end])
                pos = end + 1
                state = _COMMAND
                continue
            byte = data[pos]
            pos += 1
            if state == _COMMAND:
                state = _DATA
                if byte == IAC:
                    pieces.append(_IAC_BYTE)
                elif byte >= WILL and byte <= DONT:
                    self._verb = byte
                    state = _OPTION
                elif byte == SB:
                    self._subnegotiated = 0
                    state = _SUBNEGOTIATION
                elif byte in _EVENTS:
                    pieces.append(_EVENTS[byte])
                elif byte < SE:
                    # Not a command: keep the byte, drop the lone IAC.
                    pieces.append(bytes((byte,)))
                # Any other command (NOP, DM, GA, AYT, EC, EL, a stray SE) is dropped.
            elif state == _OPTION:
                state = _DATA
                reply += _answer(self._verb, byte)
            elif state == _SUBNEGOTIATION:
                # Skip to the next IAC, within the bound.
                pos -= 1
                room = self.max_subnegotiation - self._subnegotiated
                end = data.find(_IAC_BYTE, pos, pos + room)
                if end < 0:
                    skipped = min(length - pos, room)
                    self._subnegotiated += skipped
                    pos += skipped
                    if self._subnegotiated >= self.max_subnegotiation:
                        state = _DATA
                    continue
                self._subnegotiated += end - pos
                pos = end + 1
                state = _SUBNEGOTIATION_IAC
            else:  # _SUBNEGOTIATION_IAC
                if byte == SE:
                    state = _DATA
                elif byte == IAC:
                    # An escaped 255 among the parameters.
                    self._subnegotiated += 1
                    state = _SUBNEGOTIATION
                    if self._subnegotiated >= self.max_subnegotiation:
                        state = _DATA
                else:
                    # IAC and a command inside a subnegotiation: it never
                    # ended properly; read this command as one.
                    state = _COMMAND
                    pos -= 1
        self._state = state
        return pieces, bytes(reply)


def _answer(verb: int, option: int) -> bytes:
    """The answer to a negotiation command: refuse all but the timing mark."""
    if verb == DO:
        if option == TIMING_MARK:
            return bytes((IAC, WILL, option))
        return bytes((IAC, WONT, option))
    if verb == WILL:
        return bytes((IAC, DONT, option))
    return b""
