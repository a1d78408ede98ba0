"""
Properties of L{callnet.wire} checked with Hypothesis.

Chunking never changes what is decoded, no input makes the decoder raise, what
the encoders write decodes to what they were given, and the decoder's buffer
stays bounded by the line limit.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from callnet.errors import ERRORS_BY_CODE, Outcome
from callnet.wire import (
    COMMANDS,
    DEFAULT_MAX_LINE,
    RESERVED_NAMES,
    BadLine,
    Call,
    Command,
    ErrorReply,
    Item,
    LineDecoder,
    Progress,
    Success,
    Text,
    encode_call,
    encode_command,
    encode_failure,
    encode_item,
    encode_progress,
    encode_success,
    encode_text,
)
from tests.test_wire import comparable, decode_chunks, decode_whole

EXAMPLES = settings(max_examples=200, deadline=None)

# --- Values -----------------------------------------------------------------

#: A few lone surrogates mixed into text, which plain st.text() almost never draws.
_characters = st.one_of(st.characters(), st.sampled_from(["\ud800", "\udbff", "\udc80", "\udfff"]))
texts = st.text(_characters, max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=12,
)

# --- Names and options ------------------------------------------------------


def _not_reserved(word: str) -> bool:
    name = word.partition("@")[0]  # OK@node is as reserved as OK
    return name.lower() not in RESERVED_NAMES and name.upper() not in COMMANDS


procedures = st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}(@[A-Za-z0-9_.\-]{1,12})?", fullmatch=True
).filter(_not_reserved)
tags = st.none() | st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True)
keywords = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
option_values = st.none() | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256
)
#: Timeouts travel with six significant digits, so draw ones that have no more.
timeouts = st.none() | st.floats(0, 3600).map(lambda t: float(f"{t:.6f}"))
nodes = st.none() | st.from_regex(r"[A-Za-z0-9_.\-]{1,20}", fullmatch=True)

calls = st.builds(
    Call,
    procedure=procedures,
    args=st.lists(json_values, max_size=4).map(tuple),
    kwargs=st.dictionaries(keywords, json_values, max_size=3),
    tag=tags,
    timeout=timeouts,
    cast=st.booleans(),
    key=option_values,
    trace=option_values,
    hops=st.integers(0, 999),
    window=st.none() | st.integers(1, 999_999_999),
    progress=st.booleans(),
)
amounts = st.integers(0, 10**12) | st.floats(0, 1e12, allow_nan=False, allow_infinity=False)

# --- Plausible input --------------------------------------------------------

_WORDS = [
    "add", "echo", "help", "PING", "cancel", "OK", "ERR", "ok", "#17", "#x!", "#",
    "+timeout=1", "+timeout=-1", "+cast", "+key=k", "+trace=t", "+hops=2", "+bogus",
    "1", "-2.5e3", "1e999", "true", "null", "NaN", "[1,", "[1]", "]", "{", '"a b"', '"',
    "k=v", "x=[1]", "@n", "NOT_FOUND", "not-run", "ran", "may-have-run", "|", "| hi",
    "é", "\ud800",
]  # fmt: skip
_word_lines = st.lists(
    st.sampled_from(_WORDS) | st.text(st.characters(codec="utf-8"), max_size=6), max_size=8
).map(lambda words: " ".join(words).encode("utf-8", "surrogatepass"))
_terminators = st.sampled_from([b"\n", b"\r\n", b"", b"\r"])
_encoded_lines = st.one_of(
    calls.map(encode_call),
    st.tuples(json_values, tags).map(lambda vt: encode_success(*vt)),
    st.tuples(json_values, tags).map(lambda vt: encode_item(*vt)),
    st.tuples(amounts, st.none() | amounts, st.none() | texts, tags).map(
        lambda parts: encode_progress(*parts)
    ),
    st.tuples(st.sampled_from(sorted(COMMANDS)), tags).map(
        lambda vt: encode_command(vt[0], (), vt[1])
    ),
    texts.map(encode_text),
)
_lines = st.one_of(
    st.tuples(_word_lines, _terminators).map(b"".join),
    _encoded_lines,
    st.binary(max_size=40),
    st.sampled_from([b"\n", b"\r\n", b"  \n", b"\xff\n", b"#1 " + b"x" * 300 + b"\n"]),
)
#: Byte strings: either arbitrary bytes or a run of protocol-like lines.
inputs = st.one_of(st.binary(max_size=300), st.lists(_lines, max_size=8).map(b"".join))


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Cut C{data} into chunks at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def inputs_and_splits(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(inputs)
    return data, draw(splits(data))


# The tag of an over-long line is read from its first 65 bytes; below that
# limit see KnownBugTests.test_BUG_overflow_tag_does_not_depend_on_chunking.
max_lines = st.sampled_from([65, 80, 128, 300, DEFAULT_MAX_LINE]) | st.integers(65, 400)
#: Any limit at all, for properties that do not compare chunkings.
any_max_lines = st.integers(0, 400) | st.just(DEFAULT_MAX_LINE)


def _events_of(data: bytes) -> list[Any]:
    return [comparable(event) for event in decode_whole(data)]


class ChunkingProperties(SynchronousTestCase):
    """How bytes are cut into chunks never changes the events."""

    @EXAMPLES
    @given(inputs_and_splits(), max_lines)
    def test_any_split(self, case: tuple[bytes, list[bytes]], max_line: int) -> None:
        """Any split of any input gives the same events as the input fed whole."""
        data, chunks = case
        self.assertEqual(b"".join(chunks), data)
        whole = decode_chunks([data], max_line, end=True)
        split = decode_chunks(chunks, max_line, end=True)
        self.assertEqual([comparable(e) for e in split], [comparable(e) for e in whole])

    @EXAMPLES
    @given(st.lists(_lines, min_size=1, max_size=6).map(b"".join))
    def test_byte_by_byte(self, data: bytes) -> None:
        """Feeding protocol-like lines one byte at a time gives the same events as whole."""
        bytewise = decode_chunks([data[i : i + 1] for i in range(len(data))], end=True)
        whole = decode_chunks([data], end=True)
        self.assertEqual([comparable(e) for e in bytewise], [comparable(e) for e in whole])

    @EXAMPLES
    @given(inputs_and_splits(), max_lines, st.lists(st.booleans(), max_size=31))
    def test_pulls_anywhere(
        self, case: tuple[bytes, list[bytes]], max_line: int, pulls: list[bool]
    ) -> None:
        """Taking the events after only some chunks gives the events of the input fed whole."""
        data, chunks = case
        whole = decode_chunks([data], max_line, end=True)
        self.assertEqual(
            [comparable(e) for e in decode_pulling(chunks, pulls, max_line)],
            [comparable(e) for e in whole],
        )


def decode_pulling(chunks: list[bytes], pulls: list[bool], max_line: int) -> list[Any]:
    """Feed chunks, taking the events after those whose C{pulls} is true, and all at the end."""
    decoder = LineDecoder(max_line)
    events: list[Any] = []
    for chunk, pull in zip(chunks, itertools.chain(pulls, itertools.repeat(False)), strict=False):
        decoder.feed(chunk)
        while pull and (event := decoder.next_event()) is not None:
            events.append(event)
    while (event := decoder.next_event()) is not None:
        events.append(event)
    last = decoder.end_of_input()
    return events if last is None else [*events, last]


class RobustnessProperties(SynchronousTestCase):
    """The decoder reports problems as events and never raises."""

    @EXAMPLES
    @given(inputs_and_splits(), any_max_lines)
    def test_never_raises(self, case: tuple[bytes, list[bytes]], max_line: int) -> None:
        """No input makes feed, next_event or end_of_input raise anything."""
        decoder = LineDecoder(max_line)
        event_types = (Call, Command, Success, ErrorReply, Item, Progress, Text, BadLine)
        for chunk in case[1]:
            decoder.feed(chunk)
            while (event := decoder.next_event()) is not None:
                self.assertIsInstance(event, event_types)
        last = decoder.end_of_input()
        self.assertTrue(last is None or isinstance(last, BadLine), last)
        self.assertEqual(decoder.buffered, 0)

    @EXAMPLES
    @given(st.integers(1, 64), st.lists(st.binary(max_size=100), max_size=40))
    def test_memory_bound(self, max_line: int, chunks: list[bytes]) -> None:
        """The buffer never holds more than max_line bytes plus the last chunk."""
        decoder = LineDecoder(max_line)
        for chunk in chunks:
            decoder.feed(chunk)
            self.assertLessEqual(decoder.buffered, max_line + len(chunk))
            while decoder.next_event() is not None:
                self.assertLessEqual(decoder.buffered, max_line + len(chunk))
            self.assertLessEqual(decoder.buffered, max_line)


class RoundTripProperties(SynchronousTestCase):
    """What the encoders write decodes to what they were given."""

    @EXAMPLES
    @given(calls)
    def test_call(self, call: Call) -> None:
        """decode(encode_call(call)) == call for any JSON arguments and valid options."""
        data = encode_call(call)
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(_events_of(data), [comparable(call)])

    @EXAMPLES
    @given(json_values, tags)
    def test_success(self, value: Any, tag: str | None) -> None:
        """decode(encode_success(value)) is a Success with the same value and tag."""
        data = encode_success(value, tag)
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(_events_of(data), [comparable(Success(value, tag))])

    @EXAMPLES
    @given(json_values, tags)
    def test_item(self, value: Any, tag: str | None) -> None:
        """decode(encode_item(value)) is an Item with the same value and tag."""
        data = encode_item(value, tag)
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(_events_of(data), [comparable(Item(value, tag))])

    @EXAMPLES
    @given(amounts, st.none() | amounts, st.none() | texts, tags)
    def test_progress(
        self, done: float, total: float | None, message: str | None, tag: str | None
    ) -> None:
        """decode(encode_progress(...)) keeps done, total, the message on one line, and the tag."""
        data = encode_progress(done, total, message, tag)
        self.assertEqual(data.count(b"\n"), 1)
        [event] = _events_of(data)
        shown = None if message is None else " ".join(message.split())
        self.assertEqual(event, comparable(Progress(done, total, shown, tag)))

    @EXAMPLES
    @given(
        st.sampled_from(sorted(ERRORS_BY_CODE.values(), key=lambda cls: cls.code)),
        st.sampled_from(Outcome),
        nodes,
        st.text(min_size=1)
        .map(lambda s: " ".join(s.split()))
        .filter(lambda s: s and not s.startswith("@")),
        tags,
    )
    def test_failure(
        self, cls: Any, outcome: Outcome, node: str | None, message: str, tag: str | None
    ) -> None:
        """decode(encode_failure(error)) keeps class, code, outcome, node and message."""
        error = cls(message, outcome, node)
        data = encode_failure(error, tag)
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(_events_of(data), [comparable(ErrorReply(error, tag))])

    @EXAMPLES
    @given(st.text(alphabet=st.characters(codec="utf-8")), tags)
    def test_failure_any_message(self, message: str, tag: str | None) -> None:
        """Any message at all gives exactly one ERR line that decodes as a ErrorReply."""
        data = encode_failure(ERRORS_BY_CODE["INTERNAL"](message), tag)
        self.assertEqual(data.count(b"\n"), 1)
        (event,) = decode_whole(data)
        assert isinstance(event, ErrorReply), event
        self.assertEqual(event.tag, tag)
        self.assertEqual(event.error.code, "INTERNAL")

    @EXAMPLES
    @given(st.text(alphabet=st.characters(codec="utf-8")))
    def test_text(self, text: str) -> None:
        """encode_text gives one Text event per line, trailing spaces dropped."""
        expected = [Text(line.rstrip()) for line in text.splitlines() or [""]]
        self.assertEqual(_events_of(encode_text(text)), [comparable(e) for e in expected])

    @EXAMPLES
    @given(
        st.sampled_from(sorted(COMMANDS)),
        st.sampled_from([str.lower, str.upper, str.title]),
        st.lists(json_values, max_size=3).map(tuple),
        tags,
    )
    def test_command(self, verb: str, case: Any, args: tuple[Any, ...], tag: str | None) -> None:
        """decode(encode_command(...)) is the command, in upper case, with its arguments."""
        data = encode_command(case(verb), args, tag)
        self.assertEqual(_events_of(data), [comparable(Command(verb, args, tag))])


simple_words = st.text("abcXYZ019_.-eE", min_size=1, max_size=12) | st.sampled_from(
    ["true", "false", "null", "0", "-0", "-0.0", "1e5", "1E-3", "007", "1.", ".5", "-", "1" * 4100]
)
simple_lines = st.builds(
    lambda tag, timeout, cast, name, words, crlf: (
        (f"#{tag} " if tag else "")
        + (f"+timeout={timeout} " if timeout else "")
        + ("+cast " if cast else "")
        + name
        + "".join(" " + word for word in words)
        + ("\r" if crlf else "")
    ).encode(),
    st.none() | st.text("ab1_.:-", min_size=1, max_size=6),
    st.none() | st.sampled_from(["0", "2.5", "30", "0.000001", "123456789.5"]),
    st.booleans(),
    st.sampled_from(["add", "Add", "x.y-z", "_f", "help", "ping", "ok", "Echo2"]),
    st.lists(simple_words, max_size=5),
    st.booleans(),
)


class FastPathProperties(SynchronousTestCase):
    """The fast path for common requests reads them exactly as the general parser does."""

    @settings(max_examples=300, deadline=None)
    @given(simple_lines)
    def test_same_event(self, line: bytes) -> None:
        """Wherever the fast path answers, its event equals the general parser's."""
        from callnet.wire import _parse_general, _parse_simple_call

        fast = _parse_simple_call(line)
        if fast is not None:
            self.assertEqual(comparable(fast), comparable(_parse_general(line)))

    @settings(max_examples=300, deadline=None)
    @given(
        st.text("ab1_.:-", min_size=1, max_size=6),
        st.none()
        | st.sampled_from(["0", "-0", "0123", "42", "-7", "1.5", "1e3", "true", '"x"', '"a b"'])
        | st.text(max_size=8).map(lambda text: '"' + text + '"')
        | st.integers().map(str),
        st.booleans(),
    )
    def test_same_reply(self, tag: str, body: str | None, crlf: bool) -> None:
        """Wherever the fast path reads an OK reply, it reads what the general parser reads."""
        from callnet.wire import _parse_general, _parse_simple_success

        line = f"#{tag} OK{'' if body is None else ' ' + body}{chr(13) if crlf else ''}".encode()
        fast = _parse_simple_success(line)
        if fast is not None:
            self.assertEqual(comparable(fast), comparable(_parse_general(line)))


#: Long strings: filler, then any text (lone surrogates and escapes included).
long_texts = st.builds(lambda head, tail: "x" * 5000 + head + tail, texts, texts)


class LongValueProperties(SynchronousTestCase):
    """Long strings, read and written by orjson, come out as the standard json module has them."""

    @EXAMPLES
    @given(texts | long_texts)
    def test_string_encoding(self, value: str) -> None:
        """A string argument is written exactly as encode_json writes it."""
        from callnet.wire import _encode_string, encode_json

        self.assertEqual(_encode_string(value), encode_json(value))

    @EXAMPLES
    @given(texts | long_texts, tags)
    def test_success_encoding(self, value: str, tag: str | None) -> None:
        """An OK reply with a string is written as with encode_json."""
        from callnet.wire import encode_json

        prefix = "" if tag is None else f"#{tag} "
        expected = f"{prefix}OK {encode_json(value)}\n".encode()
        self.assertEqual(encode_success(value, tag), expected)

    @EXAMPLES
    @given(texts | long_texts, tags)
    def test_item_encoding(self, value: str, tag: str | None) -> None:
        """An ITEM line with a string is written as with encode_json, as an OK reply is."""
        from callnet.wire import encode_json

        prefix = "" if tag is None else f"#{tag} "
        expected = f"{prefix}ITEM {encode_json(value)}\n".encode()
        self.assertEqual(encode_item(value, tag), expected)

    @EXAMPLES
    @given(
        st.sampled_from(
            [
                b"#t OK",
                b"OK",
                b"#t ITEM",
                b"ITEM",
                b"#t echo",
                b"echo",
                b"#a.b +timeout=5 +cast f 1 x true",
                b"#t f a=1",
                b"#t f {",
                b"#t f [1,",
                b"#t OK 5",
                b"#t ERR INTERNAL ran @n message",
                b"| text",
                b"PING",
                b"#t f\t",
                b"#t help",
            ]
        ),
        long_texts,
        st.sampled_from([b"", b" ", b"\r", b" 1", b"]", b' "b"']),
        st.booleans(),
    )
    def test_long_lines_read_alike(
        self, before: bytes, value: str, after: bytes, as_view: bool
    ) -> None:
        """A long line ending in a JSON string is read as the general parser reads it."""
        from callnet.wire import _parse_general, encode_json, parse_line

        line = before + b" " + encode_json(value).encode() + after
        given_line: bytes | memoryview = memoryview(line) if as_view else line
        self.assertEqual(comparable(parse_line(given_line)), comparable(_parse_general(line)))

    @EXAMPLES
    @given(long_texts, tags)
    def test_long_items_read_in_place(self, value: str, tag: str | None) -> None:
        """
        A stream's long string item is read by orjson in place, not by the
        general parser; one holding a lone surrogate, which orjson refuses and
        the protocol takes, is left to the general parser.
        """
        from callnet.wire import _parse_long_string

        line = encode_item(value, tag)[:-1]
        if any("\ud800" <= char <= "\udfff" for char in value):
            self.assertIsNone(_parse_long_string(memoryview(line)))
        else:
            self.assertEqual(_parse_long_string(memoryview(line)), Item(value, tag))

    @EXAMPLES
    @given(
        st.lists(
            st.one_of(
                long_texts.map(lambda value: encode_success(value, "t")),
                long_texts.map(lambda value: encode_call(Call("echo", (value,), tag="c"))),
                st.sampled_from([b"#1 add 1 2\n", b"OK 3\n", b"PING\n", b"\n", b"#2 f {\n"]),
            ),
            min_size=1,
            max_size=4,
        ).map(b"".join),
        st.lists(st.integers(1, 12000), min_size=1, max_size=8),
        st.sampled_from([4500, 6000, DEFAULT_MAX_LINE]),
        st.booleans(),
        st.lists(st.booleans(), max_size=20),
    )
    def test_long_lines_in_chunks(
        self, data: bytes, sizes: list[int], max_line: int, unfinished: bool, pulls: list[bool]
    ) -> None:
        """
        Long lines among short ones, cut anywhere, read as when fed whole,
        whether the events are taken after every chunk or only after some.
        """
        if unfinished:
            data += b'#9 echo "' + b"y" * 5000
        chunks, at = [], 0
        for size in itertools.cycle(sizes):
            if at >= len(data):
                break
            chunks.append(data[at : at + size])
            at += size
        whole = decode_chunks([data], max_line, end=True)
        split = decode_chunks(chunks, max_line, end=True)
        self.assertEqual([comparable(e) for e in split], [comparable(e) for e in whole])
        pulled = decode_pulling(chunks, pulls, max_line)
        self.assertEqual([comparable(e) for e in pulled], [comparable(e) for e in whole])
