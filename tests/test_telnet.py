"""
Tests for L{callnet.telnet}, the filter that takes telnet's commands out of
the byte stream.

Every vector holds the exact bytes a telnet client sends, and is fed whole
and one byte at a time; Hypothesis checks that any split of any input gives
the same result, and that a stream built from known pieces comes out as its
data alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from callnet.telnet import (
    MAX_SUBNEGOTIATION,
    TelnetEvent,
    TelnetFilter,
    TelnetResult,
)
from callnet.wire import Call, LineDecoder

EXAMPLES = settings(max_examples=300, deadline=None)

INTERRUPT = TelnetEvent.INTERRUPT
ABORT_OUTPUT = TelnetEvent.ABORT_OUTPUT
BREAK = TelnetEvent.BREAK

#: What telnet sends for Ctrl-C: IAC IP, then IAC DO TIMING-MARK.
CTRL_C = bytes.fromhex("fff4 fffd06")
#: The node's answer to it: IAC WILL TIMING-MARK.
WILL_TIMING_MARK = bytes.fromhex("fffb06")


def feed_chunks(
    chunks: Sequence[bytes], max_subnegotiation: int = MAX_SUBNEGOTIATION
) -> TelnetResult:
    """Feed chunks to a fresh filter and join what they came to."""
    telnet = TelnetFilter(max_subnegotiation)
    results = [telnet.feed(chunk) for chunk in chunks]
    return TelnetResult(
        b"".join(r.data for r in results),
        b"".join(r.reply for r in results),
        tuple(event for r in results for event in r.events),
    )


def bytewise(data: bytes) -> list[bytes]:
    """The bytes one at a time."""
    return [data[i : i + 1] for i in range(len(data))]


def receive_log(chunks: Sequence[bytes]) -> tuple[list[object], bytes]:
    """
    Run chunks through L{TelnetFilter.receive}: the takes and interrupts in
    order (adjacent takes joined, as chunking may cut them), and all that was
    sent.
    """
    telnet = TelnetFilter()
    log: list[object] = []
    sent: list[bytes] = []

    def take(data: bytes) -> None:
        assert data, "take was given empty bytes"
        if log and type(log[-1]) is bytes:
            log[-1] += data
        else:
            log.append(data)

    for chunk in chunks:
        telnet.receive(chunk, take, lambda: log.append(INTERRUPT), sent.append)
    return log, b"".join(sent)


class VectorTests(SynchronousTestCase):
    """The bytes telnet really sends, and what they come to."""

    def assertFilters(
        self,
        data: bytes,
        clean: bytes,
        reply: bytes = b"",
        events: Sequence[TelnetEvent] = (),
        max_subnegotiation: int = MAX_SUBNEGOTIATION,
    ) -> None:
        """C{data} gives C{clean}, C{reply} and C{events}, fed whole and byte by byte."""
        expected = TelnetResult(clean, reply, tuple(events))
        self.assertEqual(feed_chunks([data], max_subnegotiation), expected, repr(data))
        self.assertEqual(feed_chunks(bytewise(data), max_subnegotiation), expected, repr(data))

    def test_ctrl_c(self) -> None:
        """Ctrl-C is an interrupt, and its timing mark is answered WILL TIMING-MARK."""
        self.assertFilters(CTRL_C, b"", WILL_TIMING_MARK, [INTERRUPT])

    def test_timing_mark(self) -> None:
        """DO TIMING-MARK alone is answered WILL TIMING-MARK each time it comes (RFC 860)."""
        self.assertFilters(bytes.fromhex("fffd06"), b"", WILL_TIMING_MARK)
        self.assertFilters(bytes.fromhex("fffd06 fffd06"), b"", WILL_TIMING_MARK * 2)

    def test_ctrl_c_before_a_line(self) -> None:
        """The line typed after Ctrl-C reaches the decoder clean, and is read as a call."""
        data = b"sleep 60\r\n" + CTRL_C + b"add 2 3\r\n"
        self.assertFilters(data, b"sleep 60\r\nadd 2 3\r\n", WILL_TIMING_MARK, [INTERRUPT])
        decoder = LineDecoder()
        decoder.feed(TelnetFilter().feed(CTRL_C + b"add 2 3\r\n").data)
        self.assertEqual(decoder.next_event(), Call("add", (2, 3)))

    def test_negotiation_at_connect(self) -> None:
        """Options a client offers or asks for at connect are refused, each once."""
        # WILL TERMINAL-TYPE, WILL NAWS, DO SUPPRESS-GO-AHEAD.
        self.assertFilters(
            bytes.fromhex("fffb18 fffb1f fffd03"),
            b"",
            bytes.fromhex("fffe18 fffe1f fffc03"),
        )
        # What a Linux telnet sends on connecting to port 23: DO SGA, WILL
        # TTYPE, NAWS, TSPEED, LFLOW, LINEMODE, NEW-ENVIRON, DO STATUS.
        self.assertFilters(
            bytes.fromhex("fffd03 fffb18 fffb1f fffb20 fffb21 fffb22 fffb27 fffd05"),
            b"",
            bytes.fromhex("fffc03 fffe18 fffe1f fffe20 fffe21 fffe22 fffe27 fffc05"),
        )

    def test_refusals_are_not_answered(self) -> None:
        """WONT and DONT are never answered, so refusals cannot bounce back and forth."""
        self.assertFilters(bytes.fromhex("fffc18 fffe03 fffc06 fffe06"), b"")

    def test_will_timing_mark_is_refused(self) -> None:
        """A peer's WILL TIMING-MARK is answered DONT, since the node never asked for one."""
        self.assertFilters(bytes.fromhex("fffb06"), b"", bytes.fromhex("fffe06"))

    def test_escaped_iac(self) -> None:
        """IAC IAC is one 255 byte of data, left for the decoder to refuse as not UTF-8."""
        self.assertFilters(b"a\xff\xffb\n", b"a\xffb\n")
        self.assertFilters(b"\xff\xff\xff\xff", b"\xff\xff")
        self.assertFilters(b"\xff\xff\xff\xf4", b"\xff", events=[INTERRUPT])

    def test_events(self) -> None:
        """IP, AO and BRK are events, in the order they came."""
        self.assertFilters(
            bytes.fromhex("fff5 61 fff3 fff4"), b"a", events=[ABORT_OUTPUT, BREAK, INTERRUPT]
        )

    def test_ignored_commands(self) -> None:
        """NOP, DM, GA, AYT, EC, EL and a stray SE are dropped without an answer."""
        self.assertFilters(
            b"ad" + bytes.fromhex("fff1 fff2 fff9 fff6 fff7 fff8 fff0") + b"d 1 2\n", b"add 1 2\n"
        )

    def test_lone_iac_before_data(self) -> None:
        """An IAC before a byte that is no command is dropped and the byte kept."""
        # Telnet's synch sends IAC DM as urgent data; the kernel takes the DM away.
        self.assertFilters(b"\xffadd 1 2\n", b"add 1 2\n")
        self.assertFilters(b"\xff\x00\xff\xef", b"\x00\xef")

    def test_subnegotiation(self) -> None:
        """A subnegotiation is dropped whole, escaped 255s and all."""
        # IAC SB TERMINAL-TYPE IS "xterm" IAC SE
        self.assertFilters(b"a\xff\xfa\x18\x00xterm\xff\xf0b", b"ab")
        # IAC SB NAWS 255x24 (the 255 escaped) IAC SE
        self.assertFilters(bytes.fromhex("fffa 1f 00ff ff00 18 fff0") + b"ok\n", b"ok\n")
        # An IAC DO inside stays inside, until SE.
        self.assertFilters(b"\xff\xfa\x18\xff\xff\xfd\xff\xf0x", b"x")

    def test_subnegotiation_cut_by_a_command(self) -> None:
        """A command inside a subnegotiation ends it, and is acted on."""
        self.assertFilters(
            b"\xff\xfa\x18abc" + CTRL_C + b"add\n", b"add\n", WILL_TIMING_MARK, [INTERRUPT]
        )

    def test_subnegotiation_bound(self) -> None:
        """A subnegotiation that does not end within the bound is given up, and data reads again."""
        self.assertFilters(b"\xff\xfa" + b"x" * 8 + b"add\n", b"add\n", max_subnegotiation=8)
        self.assertFilters(
            b"\xff\xfa" + b"x" * 7 + b"\xff\xf0add\n", b"add\n", max_subnegotiation=8
        )
        self.assertFilters(
            b"\xff\xfa" + b"x" * 7 + b"\xff\xffadd\n", b"add\n", max_subnegotiation=8
        )
        self.assertFilters(b"\xff\xfa" + b"x" * MAX_SUBNEGOTIATION + b"PING\n", b"PING\n")
        # The bound is exact: the P is the last byte waited out.
        self.assertFilters(b"\xff\xfa" + b"x" * (MAX_SUBNEGOTIATION - 1) + b"PING\n", b"ING\n")

    def test_smallest_bound(self) -> None:
        """A bound of one byte waits out only the option byte, and a bound below one is refused."""
        self.assertFilters(b"\xff\xfa\x18ok", b"ok", max_subnegotiation=1)
        self.assertRaises(ValueError, TelnetFilter, 0)

    def test_command_cut_at_every_point(self) -> None:
        """A command split between any two chunks gives what it gives whole."""
        data = b"ab" + CTRL_C + b"\xff\xfa\x18\x00vt\xff\xff\xff\xf0c\xff\xffd\xff\xfb\x1f\n"
        whole = feed_chunks([data])
        self.assertEqual(whole.data, b"abc\xffd\n")
        for cut in range(len(data) + 1):
            self.assertEqual(feed_chunks([data[:cut], data[cut:]]), whole, cut)


class FastPathTests(SynchronousTestCase):
    """Input without IAC, which is all input but telnet's."""

    def test_data_passes_as_is(self) -> None:
        """A chunk without a 255 byte is handed on as the same object, with nothing else."""
        data = b"#1 add 1 2\n" * 100
        result = TelnetFilter().feed(data)
        self.assertIs(result.data, data)
        self.assertEqual((result.reply, result.events), (b"", ()))
        taken: list[bytes] = []
        TelnetFilter().receive(data, taken.append, self.fail, self.fail)
        self.assertEqual(len(taken), 1)
        self.assertIs(taken[0], data)

    def test_nothing_for_nothing(self) -> None:
        """An empty chunk, or one that is all commands, gives C{take} nothing."""
        telnet = TelnetFilter()
        telnet.receive(b"", self.fail, self.fail, self.fail)
        sent: list[bytes] = []
        telnet.receive(b"\xff\xfd\x03", self.fail, self.fail, sent.append)
        self.assertEqual(sent, [b"\xff\xfc\x03"])

    def test_state_carries_across_chunks(self) -> None:
        """After a chunk that ends in an IAC, the next one is filtered even without one."""
        telnet = TelnetFilter()
        self.assertEqual(telnet.feed(b"a\xff").data, b"a")
        self.assertEqual(telnet.feed(b"\xf4b"), TelnetResult(b"b", b"", (INTERRUPT,)))


class ReceiveTests(SynchronousTestCase):
    """L{TelnetFilter.receive}, the call a connection makes for each chunk."""

    def test_order(self) -> None:
        """The answer goes first; lines before Ctrl-C are taken before the interrupt, the rest after."""
        data = b"sleep 9\n" + CTRL_C + b"add 1 2\n"
        calls: list[object] = []
        TelnetFilter().receive(data, calls.append, lambda: calls.append(INTERRUPT), calls.append)
        self.assertEqual(calls, [WILL_TIMING_MARK, b"sleep 9\n", INTERRUPT, b"add 1 2\n"])

    def test_other_events_are_dropped(self) -> None:
        """AO and BRK interrupt nothing."""
        log, sent = receive_log([b"a\xff\xf5b\xff\xf3c"])
        self.assertEqual((log, sent), ([b"abc"], b""))

    def test_order_byte_by_byte(self) -> None:
        """Fed a byte at a time, the takes and interrupts come in the same order."""
        data = b"x\n" + CTRL_C + CTRL_C + b"y\n\xff\xfb\x18" + CTRL_C
        self.assertEqual(receive_log([data]), receive_log(bytewise(data)))
        self.assertEqual(
            receive_log([data]),
            (
                [b"x\n", INTERRUPT, INTERRUPT, b"y\n", INTERRUPT],
                WILL_TIMING_MARK * 2 + b"\xff\xfe\x18" + WILL_TIMING_MARK,
            ),
        )


# --- Properties -------------------------------------------------------------


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Cut C{data} into chunks at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


#: Bytes with many IACs and command bytes in them.
_noisy = st.lists(
    st.sampled_from([0xFF, 0xFF, 0xF0, 0xF4, 0xFA, 0xFB, 0xFD, 0x06, 0x0A, 0x61])
    | st.integers(0, 255),
    max_size=200,
).map(bytes)
inputs = st.binary(max_size=300) | _noisy

_plain = st.binary(max_size=20).map(lambda b: b.replace(b"\xff", b""))
_options = st.integers(0, 255)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, TelnetResult]:
    """
    A stream made of known pieces (data, escaped 255s, commands, negotiation,
    subnegotiations), and what the filter must make of it.
    """
    sent, data, reply = bytearray(), bytearray(), bytearray()
    events: list[TelnetEvent] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(
            st.sampled_from(["data", "iac", "event", "ignored", "do", "will", "refusal", "sb"])
        )
        if kind == "data":
            piece = draw(_plain)
            sent += piece
            data += piece
        elif kind == "iac":
            sent += b"\xff\xff"
            data += b"\xff"
        elif kind == "event":
            code, event = draw(
                st.sampled_from([(0xF4, INTERRUPT), (0xF5, ABORT_OUTPUT), (0xF3, BREAK)])
            )
            sent += bytes((0xFF, code))
            events.append(event)
        elif kind == "ignored":
            sent += bytes(
                (0xFF, draw(st.sampled_from([0xF0, 0xF1, 0xF2, 0xF6, 0xF7, 0xF8, 0xF9])))
            )
        elif kind == "do":
            option = draw(_options)
            sent += bytes((0xFF, 0xFD, option))
            reply += bytes((0xFF, 0xFB if option == 6 else 0xFC, option))
        elif kind == "will":
            option = draw(_options)
            sent += bytes((0xFF, 0xFB, option))
            reply += bytes((0xFF, 0xFE, option))
        elif kind == "refusal":
            sent += bytes((0xFF, draw(st.sampled_from([0xFC, 0xFE])), draw(_options)))
        else:
            body = draw(st.binary(max_size=30))
            sent += b"\xff\xfa" + body.replace(b"\xff", b"\xff\xff") + b"\xff\xf0"
    return bytes(sent), TelnetResult(bytes(data), bytes(reply), tuple(events))


class PropertyTests(SynchronousTestCase):
    """What holds for every input and every way of cutting it."""

    @EXAMPLES
    @given(st.data())
    def test_any_split_same_result(self, data: st.DataObject) -> None:
        """Any split of any input gives the same data, answers and events as the whole, whatever the bound."""
        stream = data.draw(inputs)
        chunks = data.draw(splits(stream))
        bound = data.draw(st.sampled_from([MAX_SUBNEGOTIATION, 1, 2, 5, 17]))
        whole = feed_chunks([stream], bound)
        self.assertEqual(feed_chunks(chunks, bound), whole)
        self.assertEqual(feed_chunks(bytewise(stream), bound), whole)

    @EXAMPLES
    @given(st.data())
    def test_known_pieces(self, data: st.DataObject) -> None:
        """A stream of known pieces comes out as its data alone, with the right answers and events."""
        stream, expected = data.draw(streams())
        self.assertEqual(feed_chunks(data.draw(splits(stream))), expected)

    @EXAMPLES
    @given(inputs)
    def test_no_command_gets_through(self, stream: bytes) -> None:
        """
        No input raises; every 255 in the output comes from an escaped IAC IAC,
        and the answers are only refusals and timing marks.
        """
        result = feed_chunks([stream])
        self.assertLessEqual(result.data.count(b"\xff"), stream.count(b"\xff\xff"))
        self.assertLessEqual(len(result.data), len(stream))
        self.assertEqual(len(result.reply) % 3, 0)
        for i in range(0, len(result.reply), 3):
            answer = result.reply[i : i + 3]
            self.assertEqual(answer[0], 0xFF)
            self.assertIn(answer[1:2], (b"\xfc", b"\xfe", b"\xfb"))
            if answer[1] == 0xFB:
                self.assertEqual(answer[2], 6)

    @EXAMPLES
    @given(st.data())
    def test_receive_any_split(self, data: st.DataObject) -> None:
        """Through receive, any split gives the same takes and interrupts in order, and the same answers."""
        stream = data.draw(inputs)
        chunks = data.draw(splits(stream))
        log, sent = receive_log(chunks)
        self.assertEqual((log, sent), receive_log([stream]))
        result = feed_chunks([stream])
        self.assertEqual(b"".join(p for p in log if type(p) is bytes), result.data)
        self.assertEqual(sent, result.reply)
        self.assertEqual(log.count(INTERRUPT), result.events.count(INTERRUPT))


class NodeTests(SynchronousTestCase):
    """A node driven with the bytes a real telnet client sends."""

    def node(self) -> tuple[Any, list[Deferred[Any]]]:
        from callnet.registry import procedure
        from callnet.testing import MemoryNode

        held: list[Deferred[Any]] = []

        @procedure(run="reactor")
        def wait() -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append(d)
            return d

        @procedure(run="reactor")
        def add(a: int, b: int) -> int:
            return a + b

        return MemoryNode([wait, add], name="t"), held

    def test_negotiation_at_connect_is_refused_and_lines_still_work(self) -> None:
        """Telnet's opening offers (WILL TTYPE, WILL NAWS, DO SGA) are refused; the next line works."""
        node, _ = self.node()
        conn = node.connect_raw()
        conn.send(bytes.fromhex("fffb18fffb1ffffd03") + b"add 2 3\r\n")
        data = conn.transport.value()
        self.assertTrue(data.startswith(bytes.fromhex("fffe18fffe1ffffc03")), data)
        self.assertTrue(data.endswith(b"OK 5\n"), data)

    def test_ctrl_c_cancels_untagged_calls_and_answers_the_timing_mark(self) -> None:
        """IAC IP IAC DO TIMING-MARK cancels the running untagged call, is answered, and the next line works."""
        node, held = self.node()
        conn = node.connect_raw()
        conn.send(b"#1 wait\r\nwait\r\n")
        self.assertEqual(len(held), 2)
        conn.transport.clear()
        conn.send(bytes.fromhex("fff4fffd06"))
        data = conn.transport.value()
        self.assertTrue(data.startswith(bytes.fromhex("fffb06")), data)
        self.assertIn(b"ERR CANCELLED", data)
        self.assertNotIn(b"#1 ERR", data)  # the program's tagged call runs on
        conn.transport.clear()
        conn.send(b"add 2 3\r\n")
        self.assertEqual(conn.transport.value(), b"OK 5\n")
        held[0].callback("done")
        self.assertEqual(conn.transport.value(), b'OK 5\n#1 OK "done"\n')
