"""
When node and client send what they wrote: during a long read every
C{SEND_EVERY} lines and at its end, not on the reactor's next round, so the
other side starts on them at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IWriteDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from callnet.client import ClientProtocol, _tag_text
from callnet.protocol import NodeProtocol
from callnet.reactors import SEND_EVERY, sender
from callnet.registry import procedure
from callnet.testing import MemoryNode
from callnet.wire import encode_success


@implementer(IWriteDescriptor)
class SocketTransport(StringTransport):
    """
    A L{StringTransport} that notes how many lines had been written each time
    it is told to send them, as a socket's transport would send them.
    """

    def __init__(self) -> None:
        super().__init__()
        #: Lines written so far, at each call of doWrite.
        self.sends: list[int] = []

    def doWrite(self) -> None:
        self.sends.append(self.value().count(b"\n"))

    def fileno(self) -> int:
        return -1

    def connectionLost(self, reason: Any) -> None:  # IWriteDescriptor
        pass


def connect_node(node: MemoryNode) -> tuple[NodeProtocol, SocketTransport]:
    protocol = node.factory.buildProtocol(None)
    assert isinstance(protocol, NodeProtocol)
    transport = SocketTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def node_with_add() -> MemoryNode:
    node = MemoryNode(name="test", threads="manual")

    @procedure(run="reactor")
    def add(a: int, b: int) -> int:
        return a + b

    node.registry.add(add)
    return node


class SenderTests(SynchronousTestCase):
    def test_only_for_write_descriptors(self) -> None:
        """A transport the reactor does not write for itself (TLS, tests) gets no sender."""
        self.assertIsNone(sender(StringTransport()))
        self.assertIsNotNone(sender(SocketTransport()))

    def test_not_while_closing(self) -> None:
        """A closing transport is left to the reactor: its doWrite would finish the close."""
        transport = SocketTransport()
        send = sender(transport)
        assert send is not None
        send()
        transport.loseConnection()
        send()
        self.assertEqual(transport.sends, [0])


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


class ClientSendingTests(SynchronousTestCase):
    def test_calls_made_by_replies_go_out_as_they_pile_up(self) -> None:
        """
        Calls made by the callbacks of 100 replies read at once are sent every
        SEND_EVERY replies and at the end; calls made outside a read are left
        to the reactor.
        """
        protocol = ClientProtocol(Clock())
        transport = SocketTransport()
        protocol.makeConnection(transport)
        answers: list[Any] = []

        def again(value: Any) -> None:
            answers.append(value)
            protocol.call("add", (1, 2), {}, 10.0)

        for _ in range(100):
            protocol.call("add", (1, 2), {}, 10.0).addCallback(again)
        self.assertEqual(transport.sends, [])
        protocol.dataReceived(b"".join(encode_success(3, _tag_text(tag)) for tag in range(1, 101)))
        self.assertEqual(answers, [3] * 100)
        every = [100 + n for n in range(SEND_EVERY, 100, SEND_EVERY)]
        self.assertEqual(transport.sends, [*every, 200])
