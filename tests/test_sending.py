"""
When node and client send what they wrote (L{callnet.sending.Outbox}): during
a long read every C{SEND_EVERY} lines and at its end; outside a read at the
end of the reactor's turn; in either case at once past C{SEND_BYTES};
straight to an idle socket, else behind what the transport holds.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IWriteDescriptor
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from callnet.client import ClientProtocol, _tag_text
from callnet.protocol import NodeProtocol
from callnet.registry import procedure
from callnet.sending import (
    DIRECT_MAX_BYTES,
    SEND_BYTES,
    SEND_EVERY,
    SOCKET_SEND_LIMIT,
    Outbox,
)
from callnet.testing import MemoryNode
from callnet.wire import encode_success

# --- Transports that are not sockets (TLS, tests): written to as usual -------------


@implementer(IWriteDescriptor)
class WriteDescriptorTransport(StringTransport):
    """A L{StringTransport} that notes how many lines were written each time it is told to send."""

    def __init__(self) -> None:
        super().__init__()
        #: Lines written so far, at each call of doWrite.
        self.sends: list[int] = []

    def doWrite(self) -> None:
        self.sends.append(self.value().count(b"\n"))

    def fileno(self) -> int:
        return -1

    def connectionLost(self, reason: Any) -> None:
        pass


def connect_node(node: MemoryNode) -> tuple[NodeProtocol, WriteDescriptorTransport]:
    protocol = node.factory.buildProtocol(None)
    assert isinstance(protocol, NodeProtocol)
    transport = WriteDescriptorTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def node_with_add() -> MemoryNode:
    node = MemoryNode(name="test", threads="manual")

    @procedure(run="reactor")
    def add(a: int, b: int) -> int:
        return a + b

    node.registry.add(add)
    return node


class NodeSendingTests(SynchronousTestCase):
    def test_replies_to_a_long_read_go_out_as_they_pile_up(self) -> None:
        """Replies to 100 pipelined calls read at once are sent every SEND_EVERY, then the rest."""
        node_protocol, transport = connect_node(node_with_add())
        node_protocol.dataReceived(b"".join(b"#%d add 1 2\n" % i for i in range(100)))
        every = list(range(SEND_EVERY, 100, SEND_EVERY))
        self.assertEqual(transport.sends, [*every, 100])
        self.assertEqual(transport.value().count(b" OK 3\n"), 100)

    def test_a_short_read_is_answered_at_once(self) -> None:
        """A few calls: one send, at the end of the read."""
        node_protocol, transport = connect_node(node_with_add())
        node_protocol.dataReceived(b"add 1 2\n#a add 3 4\n")
        self.assertEqual(transport.sends, [2])

    def test_nothing_to_send(self) -> None:
        """A read that wrote nothing (a call still running) sends nothing."""
        node = MemoryNode(name="test", threads="manual")
        node.registry.add(lambda: None, name="slow")  # in the thread pool, held
        node_protocol, transport = connect_node(node)
        node_protocol.dataReceived(b"#1 slow\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.sends, [])

    def test_not_while_closing(self) -> None:
        """A closing transport is left to the reactor: its doWrite would finish the close."""
        transport = WriteDescriptorTransport()
        outbox = Outbox(transport, Clock())
        outbox.hold()
        outbox.write(b"a\n")
        transport.loseConnection()
        outbox.release()
        self.assertEqual((transport.value(), transport.sends), (b"a\n", []))


class ClientSendingTests(SynchronousTestCase):
    def test_calls_made_by_replies_go_out_as_they_pile_up(self) -> None:
        """
        Calls made by the callbacks of 100 replies read at once are sent every
        SEND_EVERY replies and at the end; calls made outside a read are
        written as they are made.
        """
        protocol = ClientProtocol(Clock())
        transport = WriteDescriptorTransport()
        protocol.makeConnection(transport)
        answers: list[Any] = []

        def again(value: Any) -> None:
            answers.append(value)
            protocol.call("add", (1, 2), {}, 10.0)

        for _ in range(100):
            protocol.call("add", (1, 2), {}, 10.0).addCallback(again)
        self.assertEqual((transport.value().count(b"\n"), transport.sends), (100, []))
        protocol.dataReceived(b"".join(encode_success(3, _tag_text(tag)) for tag in range(1, 101)))
        self.assertEqual(answers, [3] * 100)
        every = [100 + n for n in range(SEND_EVERY, 100, SEND_EVERY)]
        self.assertEqual(transport.sends, [*every, 200])


# --- Socket transports: straight to the socket when nothing is queued --------------


class FakeSocket:
    """A non-blocking socket that takes at most C{room} bytes per send, or fails."""

    def __init__(self) -> None:
        self.room = 1 << 30
        self.error: int | None = None
        #: The bytes of each send() it took.
        self.sends: list[bytes] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 99

    def setsockopt(self, *option: Any) -> None:
        pass

    def send(self, data: Any) -> int:
        if self.error is not None:
            raise OSError(self.error, "fake")
        taken = bytes(data[: self.room])
        if not taken:
            raise BlockingIOError(errno.EAGAIN, "fake")
        self.sends.append(taken)
        return len(taken)

    @property
    def received(self) -> bytes:
        return b"".join(self.sends)


class PeerConnection(Connection):
    """A socket connection that can say who its peer is, as a node's protocol asks."""

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 7000)


class SocketOutboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.socket = FakeSocket()
        self.connection = Connection(self.socket, Protocol(), self.reactor)  # type: ignore[arg-type]
        self.connection.connected = True
        self.outbox = Outbox(self.connection, self.reactor)

    def writing(self) -> bool:
        """Whether the connection waits for the reactor to send what it holds."""
        return self.connection in self.reactor.getWriters()

    def reactor_sends(self) -> None:
        """What the reactor does when the socket is writable."""
        while self.writing():
            self.connection.doWrite()

    def test_end_of_turn(self) -> None:
        """Lines written outside a read go out together, straight, when the reactor's turn ends."""
        self.outbox.write(b"a\n")
        self.outbox.write(b"b\n")
        self.assertEqual(self.socket.sends, [])
        self.reactor.advance(0)
        self.assertEqual(self.socket.sends, [b"a\nb\n"])
        self.assertFalse(self.writing())

    def test_during_a_read(self) -> None:
        """While a read is handled: every SEND_EVERY lines, then the rest when it is done."""
        self.outbox.hold()
        for n in range(70):
            self.outbox.write(b"%d\n" % n)
        self.outbox.release()
        self.assertEqual(
            [send.count(b"\n") for send in self.socket.sends], [SEND_EVERY, SEND_EVERY, 6]
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(self.writing())

    def test_a_full_socket(self) -> None:
        """What the socket does not take waits in the transport, and later lines behind it."""
        self.socket.room = 3
        self.outbox.hold()
        self.outbox.write(b"first\n")
        self.outbox.release()
        self.assertEqual(self.socket.sends, [b"fir"])
        self.assertTrue(self.writing())
        self.socket.room = 0
        self.outbox.hold()
        self.outbox.write(b"second\n")
        self.outbox.release()
        self.socket.room = 1 << 30
        self.reactor_sends()
        self.assertEqual(self.socket.received, b"first\nsecond\n")

    def test_a_failed_socket(self) -> None:
        """A send that fails leaves the lines to the transport, which reports the loss its way."""
        self.socket.error = errno.ECONNRESET
        self.outbox.write(b"a\n")
        self.reactor.advance(0)
        self.assertTrue(self.writing())
        self.assertIsNotNone(self.connection.doWrite())

    def test_large_writes_go_through_the_transport(self) -> None:
        """Past DIRECT_MAX_BYTES the transport sends, piece by piece, without copying."""
        value = b"x" * (DIRECT_MAX_BYTES * 3) + b"\n"
        self.socket.room = DIRECT_MAX_BYTES
        self.outbox.hold()
        self.outbox.write(value)
        self.outbox.release()
        self.assertEqual(len(self.socket.sends), 1)
        self.reactor_sends()
        self.assertEqual(self.socket.received, value)

    def test_large_lines_during_a_read(self) -> None:
        """While a read is handled, lines of SEND_BYTES in all go out at once, not at its end."""
        half = b"x" * (SEND_BYTES // 2 - 1) + b"\n"
        self.outbox.hold()
        self.outbox.write(half)
        self.assertEqual(self.socket.sends, [])
        self.outbox.write(half)
        self.assertEqual(self.socket.received, half + half)
        self.outbox.write(b"small\n")
        self.assertEqual(self.socket.received, half + half)
        self.outbox.release()
        self.assertEqual(self.socket.received, half + half + b"small\n")

    def test_large_lines_outside_a_read(self) -> None:
        """Outside a read, lines of SEND_BYTES in all go out at once, not at the turn's end."""
        self.outbox.write(b"first\n")
        line = b"x" * SEND_BYTES + b"\n"
        self.outbox.write(line)
        self.assertEqual(self.socket.received, b"first\n" + line)
        self.reactor.advance(0)
        self.assertEqual(self.socket.received, b"first\n" + line)

    def test_a_stream_of_large_items_stops_at_a_full_socket(self) -> None:
        """
        A stream of large items granted during one read is sent item by item,
        so a socket that takes nothing pauses its producer at once: it has
        made an item (and perhaps the one it looks ahead), not its window.
        """
        made: list[int] = []

        @procedure
        async def blobs(n: int) -> Any:
            for i in range(n):
                made.append(i)
                yield "x" * SEND_BYTES

        node = MemoryNode(name="test", threads="manual")
        node.registry.add(blobs)
        protocol = node.factory.buildProtocol(None)
        assert isinstance(protocol, NodeProtocol)
        connection = PeerConnection(self.socket, protocol, self.reactor)  # type: ignore[arg-type]
        connection.connected = True
        protocol.makeConnection(connection)
        self.connection = connection  # the one reactor_sends drives
        self.socket.room = 0
        protocol.dataReceived(b"#1 +window=32 blobs 64\n")
        self.assertLessEqual(len(made), 2)
        self.socket.room = 1 << 30
        self.reactor_sends()
        self.assertEqual(len(made), 33)
        self.assertEqual(self.socket.received.count(b"#1 ITEM "), 32)

    def test_a_large_line_in_one_send(self) -> None:
        """A line of SOCKET_SEND_LIMIT goes to a socket that takes it in one send, not in slices."""
        line = b"x" * (SOCKET_SEND_LIMIT - 1) + b"\n"
        self.outbox.write(line)
        self.assertEqual([len(sent) for sent in self.socket.sends], [SOCKET_SEND_LIMIT])
        self.assertFalse(self.writing())

    def test_closing(self) -> None:
        """A closing connection's lines go through the transport, before it closes."""
        self.outbox.write(b"a\n")
        self.connection.disconnecting = True
        self.reactor.advance(0)
        self.assertEqual(self.socket.sends, [])
        self.assertTrue(self.writing())

    def test_discard(self) -> None:
        """A lost connection's lines are dropped, and the send at the turn's end cancelled."""
        self.outbox.write(b"a\n")
        self.outbox.discard()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual((self.socket.sends, self.writing()), ([], False))


class HoldSendsTests(SynchronousTestCase):
    def test_calls_held_then_sent_together(self) -> None:
        """Calls made between hold_sends() and its release go out in one send, at the release."""
        from callnet.client import Client

        clock = Clock()
        client = Client("tcp:127.0.0.1:1", clock)
        release = client.hold_sends()
        release()  # not connected yet: nothing to hold
        protocol = ClientProtocol(clock)
        transport = WriteDescriptorTransport()
        protocol.makeConnection(transport)
        client._protocol = protocol
        release = client.hold_sends()
        for n in range(3):
            client.call("add", n, 1)
        self.assertEqual(transport.value(), b"")
        release()
        self.assertEqual(transport.sends, [3])
