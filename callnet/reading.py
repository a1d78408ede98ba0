"""
How much a connection reads at once: L{ReadSize}.

A Twisted socket transport reads at most C{bufferSize} bytes (64 KiB) in a
turn of the reactor, each read into a new bytes object.  A stream of 1 MiB
items then takes sixteen turns per item, each a poll, a read, and a call up
through the protocol and the decoder: on the client, more than the item's
JSON decoding costs.  Reading more at once is not free either: a buffer
past the C allocator's threshold for mapping memory (128 KiB by default in
glibc) is mapped and unmapped for every read, some 25 us even when a reply
of 20 bytes is all that came.

So the size follows the reads: a read that filled the buffer says more was
waiting, and the next may take four times as much, up to L{READ_MAX}; a read
of less than L{READ_SMALL} says the bytes come a few at a time again, and
brings the size back to the transport's own.

Twisted also reads C{bufferSize} as the bytes a transport holds before it
pauses a producer writing to it; a client registers none.
"""

from __future__ import annotations

from twisted.internet.tcp import Connection

#: The most a socket connection reads in one turn of the reactor.  A 1 MiB
#: item then comes in one or two reads; more would map a larger buffer for
#: every read and hold it while the line is assembled.
READ_MAX = 1024 * 1024
#: A read shorter than this is one of small lines: the read size goes back
#: to the transport's default (Twisted's 64 KiB).
READ_SMALL = 16 * 1024


class ReadSize:
    """
    The read size of one connection, set from the length of each read
    (L{read}).  Transports other than a socket connection (TLS, test
    transports) are left as they are.
    """

    def __init__(self, transport: object) -> None:
        self._transport = transport if isinstance(transport, Connection) else None
        self._default = Connection.bufferSize
        if self._transport is not None:
            self._default = self._transport.bufferSize

    def read(self, length: int) -> None:
        """A read brought C{length} bytes."""
        transport = self._transport
        if transport is None:
            return
        size = transport.bufferSize
        if length >= size:
            if size < READ_MAX:
                transport.bufferSize = min(size * 4, READ_MAX)
        elif length < READ_SMALL and size != self._default:
            transport.bufferSize = self._default
