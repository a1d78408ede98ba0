"""
When a connection's lines go out: L{Outbox}.

A Twisted transport sends what it is given when the reactor next finds its
socket writable: it registers the socket for writing, returns to the
reactor's poll, sends, then unregisters it.  For a request-response protocol
that is two system calls and a reactor round per reply, and while a node
handles a read of many pipelined calls (or a client the replies to many), it
sends nothing until it has handled them all, while the other side waits idle.

An L{Outbox} sends instead:

  - during a read, every L{SEND_EVERY} lines and when the read is handled,
    so that the other side works while this one reads on;
  - outside a read (a procedure finishing in a thread, a call made by a
    timer), at the end of the reactor's turn, together with whatever else
    was written in it;
  - in either case at once when the lines kept reach L{SEND_BYTES}, so that
    large lines (a stream's items) go out as they are made, and a full
    transport pauses their producer before it makes many more;
  - straight to the socket (C{writeSomeData}) when the transport has
    nothing queued, which is nearly always; else through the transport,
    after what it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IWriteDescriptor
from twisted.internet.tcp import Connection

from callnet.reactors import Clock, DelayedCall

#: Lines written while handling one read before they are sent there and
#: then, rather than all together once the read is handled.
SEND_EVERY = 32
#: Larger writes go through the transport, which sends them piece by piece
#: without copying.
DIRECT_MAX_BYTES = 64 * 1024
#: Bytes of lines kept (during a read, or until the end of the reactor's turn)
#: before they are sent there and then: a transport's own buffer size, past
#: which it tells its producer to pause.  Without it a stream of 1 MiB items
#: made during one read of C{MORE} piled up a window's worth (tens of MiB) in
#: memory before the first byte went out.
SEND_BYTES = 64 * 1024
#: Bytes a socket transport hands the kernel in one C{send}, at most.
#: Twisted's own limit (128 KiB) made a 1 MiB line take eight turns of the
#: reactor, each a poll and a send; the kernel takes what its buffer holds
#: (up to 4 MiB on Linux by default) either way, and the transport slices
#: its buffer without copying.
SOCKET_SEND_LIMIT = 1024 * 1024


class Outbox:
    """
    The lines a protocol writes, and when they are sent.

    Every line a protocol writes must go through its outbox, and the outbox
    must be L{send}-ed before the connection is closed, or order is lost.

    @param transport: the protocol's transport.
    @param clock: schedules the send at the end of a reactor turn.
    """

    def __init__(self, transport: Any, clock: Clock) -> None:
        self._transport = transport
        self._clock = clock
        self._lines: list[bytes] = []
        self._bytes = 0
        self._holding = False
        self._scheduled: DelayedCall | None = None
        # Only a socket connection's buffers are known well enough to write
        # past them; TLS and test transports are written to as usual.
        self._socket = isinstance(transport, Connection)
        if self._socket:
            transport.SEND_LIMIT = SOCKET_SEND_LIMIT
        self._can_write_now = IWriteDescriptor.providedBy(transport)

    def write(self, line: bytes) -> None:
        """Write one line, to be sent as the class describes."""
        lines = self._lines
        if self._holding:
            lines.append(line)
            self._bytes += len(line)
            if len(lines) >= SEND_EVERY or self._bytes >= SEND_BYTES:
                self.send()
        elif self._socket:
            lines.append(line)
            self._bytes += len(line)
            if self._bytes >= SEND_BYTES:
                self.send()
            elif self._scheduled is None:
                self._scheduled = self._clock.callLater(0, self._send_scheduled)
        else:
            self._transport.write(line)

    def write_lines(self, lines: Iterable[bytes]) -> None:
        """Write several lines in order."""
        for line in lines:
            self.write(line)

    def hold(self) -> None:
        """A read is being handled: keep lines until L{release} (or SEND_EVERY of them)."""
        self._holding = True

    def release(self) -> None:
        """The read is handled: send what it wrote."""
        self._holding = False
        if self._lines:
            self.send()

    def _send_scheduled(self) -> None:
        self._scheduled = None
        self.send()

    def send(self) -> None:
        """Send every line written so far, now."""
        lines = self._lines
        if not lines:
            return
        self._lines = []
        self._bytes = 0
        transport = self._transport
        if self._socket and _idle(transport):
            data = b"".join(lines)
            if len(data) <= DIRECT_MAX_BYTES:
                sent = transport.writeSomeData(data)
                if type(sent) is not int:
                    # The connection failed: the transport finds it out in
                    # its own time and reports it as it always does.
                    transport.write(data)
                elif sent < len(data):
                    transport.write(data[sent:])
                return
        transport.writeSequence(lines)
        if self._can_write_now and transport.connected and not transport.disconnecting:
            # A closing transport's doWrite finishes the close: left to the reactor.
            transport.doWrite()

    def discard(self) -> None:
        """The connection is gone: drop what is unsent, and the scheduled send."""
        self._lines = []
        self._bytes = 0
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None


def _idle(transport: Connection) -> bool:
    """Whether a socket transport is open for writing and holds nothing unsent."""
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not transport.TLS
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    )
