"""
How much a client's connection reads at once (L{callnet.reading.ReadSize}):
more while reads fill the buffer, up to L{READ_MAX}; the transport's own
size again after a small read.
"""

from __future__ import annotations

import errno

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from callnet.client import ClientProtocol
from callnet.reading import READ_MAX, READ_SMALL, ReadSize
from callnet.wire import Call, encode_item, encode_success

#: Twisted's own read size.
DEFAULT = Connection.bufferSize


class QueueSocket:
    """A non-blocking socket whose peer has sent C{pending}: recv takes what is asked, or less."""

    def __init__(self) -> None:
        self.pending = bytearray()
        #: The size asked of each recv().
        self.asked: list[int] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 99

    def setsockopt(self, *option: object) -> None:
        pass

    def send(self, data: bytes) -> int:
        return len(data)  # what the client sends is not looked at here

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        if not self.pending:
            raise BlockingIOError(errno.EAGAIN, "fake")
        data = bytes(self.pending[:size])
        del self.pending[:size]
        return data


class ReadSizeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.connection = Connection(QueueSocket(), Protocol(), MemoryReactorClock())  # type: ignore[arg-type]
        self.size = ReadSize(self.connection)

    def test_grows_while_reads_fill_it(self) -> None:
        """Each read that fills the buffer lets the next take four times as much, up to READ_MAX."""
        seen = []
        for _ in range(5):
            self.size.read(self.connection.bufferSize)
            seen.append(self.connection.bufferSize)
        self.assertEqual(seen, [DEFAULT * 4, DEFAULT * 16, READ_MAX, READ_MAX, READ_MAX])
        self.assertEqual(READ_MAX, DEFAULT * 16)

    def test_a_small_read_brings_it_back(self) -> None:
        """A read of less than READ_SMALL bytes sets the transport's own size again."""
        self.size.read(DEFAULT)
        self.size.read(READ_SMALL)
        self.assertEqual(self.connection.bufferSize, DEFAULT * 4)
        self.size.read(READ_SMALL - 1)
        self.assertEqual(self.connection.bufferSize, DEFAULT)

    def test_a_short_read_keeps_it(self) -> None:
        """A read that did not fill the buffer, but was not small, changes nothing."""
        self.size.read(DEFAULT)
        self.size.read(DEFAULT * 4 - 1)
        self.assertEqual(self.connection.bufferSize, DEFAULT * 4)

    def test_other_transports(self) -> None:
        """A transport that is not a socket connection (TLS, tests) is left alone."""
        transport = StringTransport()
        size = ReadSize(transport)
        size.read(1 << 30)
        self.assertFalse(hasattr(transport, "bufferSize"))


class ClientReadsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.socket = QueueSocket()
        self.protocol = ClientProtocol(Clock())
        self.connection = Connection(self.socket, self.protocol, MemoryReactorClock())  # type: ignore[arg-type]
        self.connection.connected = True
        self.protocol.makeConnection(self.connection)

    def read_all(self) -> None:
        """What the reactor does while the socket is readable."""
        while self.socket.pending:
            self.connection.doRead()

    def test_large_items_in_few_reads(self) -> None:
        """A stream of 1 MiB items is read in 1 MiB reads once the first reads came full."""
        items: list[object] = []
        tag, done = self.protocol.call_with_events(
            Call("items", (), {}, window=8), 10.0, lambda event: items.append(event.value)
        )
        payload = "x" * (1 << 20)
        self.socket.pending += encode_item(payload, tag) * 4
        self.read_all()
        # 4 MiB and some: the rest after three reads of READ_MAX fits in one more.
        self.assertEqual(
            self.socket.asked, [DEFAULT, DEFAULT * 4, READ_MAX, READ_MAX, READ_MAX, READ_MAX]
        )
        self.assertEqual(items, [payload] * 4)
        self.socket.pending += encode_success(4, tag)
        self.read_all()
        self.assertEqual(self.successResultOf(done), 4)
        self.assertEqual(self.connection.bufferSize, DEFAULT)
