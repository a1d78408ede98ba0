"""
The codec's fast parsers (L{callnet.wire_fast}) read every line they answer
exactly as the general parser does, and hand every other line back to it.

Numbers follow one rule, the general parser's JSON one: the fast parsers'
values are compared with C{json}'s by type and by C{repr}, so C{-0.0} and
C{0}, C{1} and C{1.0} never pass for each other.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from callnet.wire import (
    _DECODER,
    _SIMPLE_MAX,
    BadLine,
    Call,
    Item,
    Success,
    _parse_general,
    _parse_long_string,
    _parse_simple_call,
    _parse_simple_success,
    _parse_value,
    encode_json,
    parse_line,
)
from callnet.wire_fast import _SIMPLE_NUMBER, _number
from callnet.wire_fast import NUMBER_RE as _NUMBER_RE
from tests.test_wire import comparable, typed

EXAMPLES = settings(max_examples=300, deadline=None)

# --- Numbers ----------------------------------------------------------------

#: Words on both sides of the number rule: JSON numbers with and without
#: fraction and exponent, signed zeros, huge exponents, and near misses.
NUMBER_EDGES = [
    "0", "-0", "0.0", "-0.0", "0e0", "-0e-0", "-0E+0", "1e5", "1E-3", "1e+5", "1E+400",
    "1e999", "-1e999", "1e-999", "-1e-400", "1.7976931348623157e308", "1.8e308",
    "4.9e-324", "2.5e-324", "123456789012345678901234567890", "-9223372036854775809",
    "0.1000000000000000055511151231257827", "1" * 4300, "1" * 4301, "-" + "9" * 4300,
    "007", "-01", "00", "1.", ".5", "-.5", "1e", "1e+", "+1", "-", "--1", "1_000", "0x10",
    "1.5.5", "Infinity", "-Infinity", "NaN", "1e5.5", "\u0661",
]  # fmt: skip

json_numbers = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,4})?", fullmatch=True
)
number_words = (
    st.sampled_from(NUMBER_EDGES) | json_numbers | st.text("0123456789-+.eE", max_size=8)
)


def _json_reads(word: str) -> Any:
    """What the reference, the general parser's C{json} decoder, makes of a number."""
    try:
        return ("value", typed(_DECODER.decode(word)))
    except ValueError:
        return ("refused",)


def _refuse(name: str) -> Any:
    raise ValueError(name)


def _json_kind(word: str) -> str | None:
    """Whether json reads the word as an int or a float literal, or as no number at all."""
    try:
        parsed = json.loads(
            word,
            parse_int=lambda text: ("int", text),
            parse_float=lambda text: ("float", text),
            parse_constant=_refuse,
        )
    except ValueError:
        return None
    return parsed[0] if isinstance(parsed, tuple) else None


class NumberRuleTests(SynchronousTestCase):
    """One rule says which words are numbers and what they are worth."""

    @EXAMPLES
    @given(number_words)
    def test_same_words(self, word: str) -> None:
        """Text and bytes patterns match exactly the JSON numbers, and tell ints as json does."""
        kind = _json_kind(word)
        text_match = _NUMBER_RE.match(word)
        bytes_match = _SIMPLE_NUMBER.match(word.encode())
        self.assertEqual(text_match is not None, kind is not None)
        self.assertEqual(bytes_match is not None, kind is not None)
        if bytes_match is not None:
            self.assertEqual("int" if bytes_match.lastindex is None else "float", kind)

    @EXAMPLES
    @given(number_words)
    def test_same_values(self, word: str) -> None:
        """Where the pattern matches, the fast reading is json's value, or None where json refuses."""
        match = _SIMPLE_NUMBER.match(word.encode())
        if match is None:
            return
        fast = _number(word.encode(), match.lastindex is None)
        expected = _json_reads(word)
        self.assertEqual(("refused",) if fast is None else ("value", typed(fast)), expected)

    @EXAMPLES
    @given(number_words)
    def test_bare_word(self, word: str) -> None:
        """The general parser reads a bare number word as json does, and refuses what json refuses."""
        if _NUMBER_RE.match(word) is None:
            self.assertEqual(_parse_value(word, 0, None), (word, len(word)))
        elif _json_reads(word) == ("refused",):
            self.assertIsInstance(_parse_general(f"f {word}".encode()), BadLine)
        else:
            value, end = _parse_value(word, 0, None)
            self.assertEqual((("value", typed(value)), end), (_json_reads(word), len(word)))

    def test_digit_limit_follows_int(self) -> None:
        """A word past int()'s digit limit, whatever it is set to, falls back rather than raising."""
        limit = sys.get_int_max_str_digits()
        self.addCleanup(sys.set_int_max_str_digits, limit)
        sys.set_int_max_str_digits(640)
        word = b"1" * 700
        self.assertIsNone(_parse_simple_call(b"#1 f " + word))
        self.assertIsNone(_parse_simple_success(b"#1 OK " + word))
        self.assertIsInstance(_parse_general(b"#1 f " + word), BadLine)
        sys.set_int_max_str_digits(0)  # no limit: both read it
        self.assertEqual(
            comparable(_parse_simple_call(b"#1 f " + word)),
            comparable(_parse_general(b"#1 f " + word)),
        )


# --- Requests ---------------------------------------------------------------

_tags = st.none() | st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True)
_timeouts = st.none() | st.from_regex(r"[0-9]{1,9}(\.[0-9]{1,9})?", fullmatch=True)
_procedures = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True) | st.sampled_from(
    ["add", "help", "ping", "ok", "Ok", "err", "multi", "x" * 128, "x" * 129]
)
#: Words of the fast path's alphabet: numbers, constants and plain strings.
_simple_words = (
    st.from_regex(r"[A-Za-z0-9_.+\-]{1,12}", fullmatch=True)
    | st.sampled_from(["true", "false", "null", "True", "NaN", "-", "."])
    | json_numbers
    | st.sampled_from([word for word in NUMBER_EDGES if word.isascii()])
)


def _request(tag: str | None, timeout: str | None, cast: bool, name: str, words: list[str]) -> str:
    return (
        (f"#{tag} " if tag is not None else "")
        + (f"+timeout={timeout} " if timeout is not None else "")
        + ("+cast " if cast else "")
        + name
        + "".join(" " + word for word in words)
    )


requests = st.builds(
    _request, _tags, _timeouts, st.booleans(), _procedures, st.lists(_simple_words, max_size=6)
)
line_ends = st.sampled_from(["", "\r"])

#: Changes that put a request just outside the fast path's domain.
NEAR_MISSES = [
    lambda line: (line + " x").replace(" ", "  ", 1),
    lambda line: (line + " x").replace(" ", "\t", 1),
    lambda line: line + " k=1",
    lambda line: line + ' "a"',
    lambda line: line + " [1]",
    lambda line: line + " é",
    lambda line: line + " 1e999",
    lambda line: line + " a@b",
    lambda line: line + " ",
    lambda line: line + "\r\r",
    lambda line: "+key=k " + line if not line.startswith("#") else line + " =",
]


class SimpleCallTests(SynchronousTestCase):
    """The fast request parser gives the general parser's event or none."""

    @EXAMPLES
    @given(requests, line_ends)
    @example("#1 add 1 2", "")
    @example("f -0 -0.0 0e0 1E-3 007 1. .5", "\r")
    @example("f 1e999", "")
    @example("f " + "9" * 4301, "")
    def test_same_event(self, request: str, end: str) -> None:
        """A request of bare words reads the same on both paths, and finite numbers stay fast."""
        line = (request + end).encode()
        fast = _parse_simple_call(line)
        general = _parse_general(line)
        if type(general) is Call:
            self.assertEqual(comparable(fast), comparable(general))
        else:  # a command, a reserved or too long name, a number json refuses
            self.assertIsNone(fast)

    @EXAMPLES
    @given(requests, st.sampled_from(range(len(NEAR_MISSES))))
    def test_near_misses_fall_back(self, request: str, which: int) -> None:
        """A request changed to leave the fast path's domain is left to the general parser."""
        line = NEAR_MISSES[which](request).encode()
        self.assertIsNone(_parse_simple_call(line))
        if len(line) <= _SIMPLE_MAX and _parse_simple_success(line) is None:
            self.assertEqual(comparable(parse_line(line)), comparable(_parse_general(line)))


# --- Replies ----------------------------------------------------------------

_plain_strings = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10)
_reply_bodies = st.one_of(
    st.none(),
    number_words,
    _plain_strings.map(lambda text: encode_json(text)),
    st.text(max_size=6).map(lambda text: '"' + text + '"'),
    st.sampled_from(["true", "null", "[1]", '"a\\"b"', '"\\u0041"', "3 ", "3 4", ""]),
)


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    tag = draw(_tags)
    word = draw(st.sampled_from(["OK", "ITEM"]))
    body = draw(_reply_bodies)
    end = draw(line_ends)
    prefix = f"#{tag} " if tag is not None else ""
    text = prefix + word + ("" if body is None else " " + body) + end
    return text.encode("utf-8", "surrogatepass")


class SimpleSuccessTests(SynchronousTestCase):
    """The fast reply parser gives the general parser's event or none."""

    @EXAMPLES
    @given(replies())
    @example(b"OK 3")
    @example(b"#1 OK -0")
    @example(b"#1 OK -0.0\r")
    @example(b"OK 1E+2")
    @example(b"OK 1e999")
    @example(b"OK 007")
    @example(b'#t OK "a\x7fb"')
    @example(b"#7 ITEM 12")
    @example(b"ITEM")
    def test_same_event(self, line: bytes) -> None:
        """Wherever the fast path reads an OK or ITEM reply, it reads what the general parser reads."""
        fast = _parse_simple_success(line)
        if fast is not None:
            self.assertEqual(comparable(fast), comparable(_parse_general(line)))

    @EXAMPLES
    @given(
        _tags,
        st.sampled_from(["OK", "ITEM"]),
        json_numbers | _plain_strings.map(encode_json),
        line_ends,
    )
    def test_stays_fast(self, tag: str | None, word: str, body: str, end: str) -> None:
        """A finite number or a plain string in an OK or ITEM reply takes the fast path."""
        line = ((f"#{tag} " if tag is not None else "") + f"{word} {body}{end}").encode()
        expected = _parse_general(line)
        if isinstance(expected, Success | Item) and "\\" not in body:
            self.assertEqual(comparable(_parse_simple_success(line)), comparable(expected))
        else:  # a number json refuses, a string with escapes
            self.assertIsNone(_parse_simple_success(line))

    def test_near_misses(self) -> None:
        """Replies just outside the fast path's domain are left to the general parser."""
        for line in [
            b"OK  3", b"OK 3 ", b"OK\t3", b"ok 3", b"OK 03", b"OK true", b"OK +1", b"OK 1e999",
            b'OK "a\\"b"', b'OK "\xc3\xa9"', b"#t  OK 3", b"#t OK 3\r\r", b"OK 3 4", b"OK [1]",
            b"ITEMS 3", b"item 3", b"#t ITEM  3", b"PROGRESS 3",
        ]:  # fmt: skip
            with self.subTest(line=line):
                self.assertIsNone(_parse_simple_success(line))


# --- Long strings -----------------------------------------------------------

_FILLER = "x" * 5000
_heads = st.sampled_from(
    [
        b"#t OK",
        b"OK",
        b"#t echo",
        b"echo",
        b"#t +timeout=5 +cast f 1 -0.0 x",
        b"#t f a=1",
        b"#t f\t",
    ]
)
#: Blank after the string: the general parser takes spaces and tabs, and
#: one CR at the very end; orjson also takes CR anywhere in it.
_tails = st.text(" \t\r", max_size=4).map(str.encode)


class LongStringTests(SynchronousTestCase):
    """A long line ending in a long string reads the same on orjson's path and json's."""

    @EXAMPLES
    @given(_heads, st.text(max_size=8), _tails, st.booleans())
    @example(b"#t OK", "", b"\r\r", False)
    @example(b"#t echo", "", b"\r\r", True)
    @example(b"#t OK", "", b" \r", False)
    @example(b"#t OK", "", b"\r ", False)
    def test_same_event(self, head: bytes, text: str, tail: bytes, as_view: bool) -> None:
        """parse_line and the general parser give the same event, whatever blank ends the line."""
        line = head + b" " + encode_json(_FILLER + text).encode() + tail
        given_line: bytes | memoryview = memoryview(line) if as_view else line
        self.assertEqual(comparable(parse_line(given_line)), comparable(_parse_general(line)))
        fast = _parse_long_string(given_line)
        if fast is not None:
            self.assertEqual(comparable(fast), comparable(_parse_general(line)))

    def test_long_and_short_alike(self) -> None:
        """A string followed by CR and more is refused the same whether it is long or short."""
        for value in ["short", _FILLER]:
            for head in [b"#t OK", b"#t echo"]:
                line = head + b" " + encode_json(value).encode() + b"\r\r"
                with self.subTest(value=len(value), head=head):
                    self.assertIsInstance(parse_line(line), BadLine)
                    self.assertIsInstance(_parse_general(line), BadLine)
