"""
Tests for L{callnet.wire}, the sans-I/O line codec.

Every decoding vector is fed whole and one byte at a time, and both ways must
give the same events.  Events are compared through L{comparable}, which keeps
the types of JSON values apart (C{1}, C{1.0} and C{True} are equal in Python
but not on the wire) and compares errors by class, code, outcome, node and
message, since exceptions compare by identity.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from callnet.errors import (
    ERRORS_BY_CODE,
    CallCancelledError,
    CallError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    ResourceExhaustedError,
    UnavailableError,
    UnknownError,
)
from callnet.wire import (
    COMMANDS,
    DEFAULT_MAX_LINE,
    RESERVED_NAMES,
    BadLine,
    Bye,
    Call,
    Command,
    ErrorReply,
    Event,
    Item,
    LineDecoder,
    Progress,
    Success,
    Text,
    encode_bye,
    encode_call,
    encode_command,
    encode_failure,
    encode_item,
    encode_json,
    encode_more,
    encode_progress,
    encode_success,
    encode_text,
    parse_line,
)

# --- Helpers (also used by test_wire_properties) ----------------------------


def decode_chunks(
    chunks: Iterable[bytes], max_line: int = DEFAULT_MAX_LINE, end: bool = False
) -> list[Event]:
    """
    Feed chunks to a fresh decoder, pulling every event after each one.

    With C{end}, finish with L{LineDecoder.end_of_input} and keep its event.
    """
    decoder = LineDecoder(max_line)
    events: list[Event] = []
    for chunk in chunks:
        decoder.feed(chunk)
        while (event := decoder.next_event()) is not None:
            events.append(event)
    if end:
        last = decoder.end_of_input()
        if last is not None:
            events.append(last)
    return events


def decode_whole(data: bytes, max_line: int = DEFAULT_MAX_LINE, end: bool = False) -> list[Event]:
    """Decode bytes fed in one piece."""
    return decode_chunks([data], max_line, end)


def decode_bytewise(
    data: bytes, max_line: int = DEFAULT_MAX_LINE, end: bool = False
) -> list[Event]:
    """Decode bytes fed one byte at a time."""
    return decode_chunks([data[i : i + 1] for i in range(len(data))], max_line, end)


def split_every(data: bytes, size: int) -> list[bytes]:
    """Cut bytes into chunks of C{size} (the last may be shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def typed(value: Any) -> Any:
    """A form of a JSON value in which values of different types never compare equal."""
    if isinstance(value, dict):
        return ("dict", sorted((key, typed(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(item) for item in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def comparable_error(error: CallError) -> tuple[Any, ...]:
    """Everything an error carries across the wire."""
    return (type(error), error.code, error.outcome, error.node, error.message)


def comparable(event: Event | None) -> Any:
    """A value equal for two events exactly when they mean the same thing."""
    if isinstance(event, Call):
        return (
            "Call",
            event.procedure,
            typed(event.args),
            typed(dict(event.kwargs)),
            event.tag,
            typed(event.timeout),
            event.cast,
            event.key,
            event.trace,
            typed(event.hops),
            event.window,
            event.progress,
        )
    if isinstance(event, Command):
        return ("Command", event.verb, typed(event.args), event.tag)
    if isinstance(event, Success):
        return ("Success", typed(event.value), event.tag)
    if isinstance(event, Item):
        return ("Item", typed(event.value), event.tag)
    if isinstance(event, Progress):
        return ("Progress", typed(event.done), typed(event.total), event.message, event.tag)
    if isinstance(event, ErrorReply):
        return ("ErrorReply", comparable_error(event.error), event.tag)
    if isinstance(event, BadLine):
        return ("BadLine", comparable_error(event.error), event.tag)
    if isinstance(event, Text):
        return ("Text", event.text)
    if isinstance(event, Bye):
        return ("Bye", event.reason)
    assert event is None, event
    return None


@dataclass(frozen=True)
class Bad:
    """Expect a L{BadLine} with this error class and tag, whose message says C{says}."""

    error_class: type[CallError] = InvalidArgumentError
    tag: str | None = None
    says: str = ""


Expected = Event | Bad
Vector = tuple[bytes, Sequence[Expected]]


class WireTestCase(SynchronousTestCase):
    """Assertions shared by the codec's tests."""

    def assertEventsEqual(self, actual: Sequence[Event], expected: Sequence[Event]) -> None:
        self.assertEqual([comparable(e) for e in actual], [comparable(e) for e in expected])

    def assertDecodes(
        self, data: bytes, expected: Sequence[Expected], max_line: int = DEFAULT_MAX_LINE
    ) -> list[Event]:
        """
        Check that C{data} decodes to C{expected}, fed whole and byte by byte.
        """
        whole = decode_whole(data, max_line)
        bytewise = decode_bytewise(data, max_line)
        self.assertEqual(
            [comparable(e) for e in whole],
            [comparable(e) for e in bytewise],
            f"whole and byte-by-byte decoding differ for {data!r}",
        )
        self.assertEqual(
            len(whole), len(expected), f"{data!r} gave {whole!r}, expected {expected!r}"
        )
        for actual, want in zip(whole, expected, strict=True):
            if isinstance(want, Bad):
                self.assertIsInstance(actual, BadLine, f"{data!r} gave {actual!r}")
                assert isinstance(actual, BadLine)
                self.assertIs(type(actual.error), want.error_class, repr(data))
                self.assertEqual(actual.tag, want.tag, repr(data))
                self.assertIn(want.says, actual.error.message, repr(data))
                # Nothing was run for a line that could not be read.
                self.assertIs(actual.error.outcome, Outcome.NOT_RUN, repr(data))
            else:
                self.assertEqual(comparable(actual), comparable(want), f"{data!r} gave {actual!r}")
        return whole

    def assertTable(self, table: Sequence[Vector], max_line: int = DEFAULT_MAX_LINE) -> None:
        for data, expected in table:
            self.assertDecodes(data, expected, max_line)


# --- Decoding vectors -------------------------------------------------------


class RequestVectorTests(WireTestCase):
    """Request lines, inline and tagged."""

    def test_inline(self) -> None:
        """Words a person types become JSON values where they parse, strings otherwise."""
        self.assertTable(
            [
                (b"add 1 2\n", [Call("add", (1, 2))]),
                (b"echo hello\n", [Call("echo", ("hello",))]),
                (b"echo hello world\n", [Call("echo", ("hello", "world"))]),
                (b"echo\n", [Call("echo")]),
                (b"time\n", [Call("time")]),
                (b"math.add 1\n", [Call("math.add", (1,))]),
                (b"my_proc-2 x\n", [Call("my_proc-2", ("x",))]),
                (b"_private\n", [Call("_private")]),
            ]
        )

    def test_quoted_strings(self) -> None:
        """A JSON string may hold spaces, quotes, escapes and any Unicode."""
        self.assertTable(
            [
                (b'echo "hello world"\n', [Call("echo", ("hello world",))]),
                (b'echo "say \\"hi\\""\n', [Call("echo", ('say "hi"',))]),
                (b'echo "a\\nb" "\\t"\n', [Call("echo", ("a\nb", "\t"))]),
                (b'echo ""\n', [Call("echo", ("",))]),
                (
                    'echo "\\u00e9t\\u00e9" été "日本"\n'.encode(),
                    [Call("echo", ("été", "été", "日本"))],
                ),
                (b'echo "1" "true" "null"\n', [Call("echo", ("1", "true", "null"))]),
            ]
        )

    def test_json_arguments(self) -> None:
        """Arrays and objects are JSON, and may contain spaces inside them."""
        self.assertTable(
            [
                (b"echo [1,2,3]\n", [Call("echo", ([1, 2, 3],))]),
                (b"echo [1, 2, 3] 4\n", [Call("echo", ([1, 2, 3], 4))]),
                (b'echo {"a": [1, {"b": null}]}\n', [Call("echo", ({"a": [1, {"b": None}]},))]),
                (b"echo [] {}\n", [Call("echo", ([], {}))]),
                (b'echo ["x y", "z"]\n', [Call("echo", (["x y", "z"],))]),
            ]
        )

    def test_constants(self) -> None:
        """true, false and null are the JSON constants; other spellings are strings."""
        self.assertTable(
            [
                (b"echo true false null\n", [Call("echo", (True, False, None))]),
                (b"echo True FALSE Null\n", [Call("echo", ("True", "FALSE", "Null"))]),
            ]
        )

    def test_numbers(self) -> None:
        """JSON numbers are numbers: integers, negatives, fractions and exponents."""
        self.assertTable(
            [
                (b"echo 0 -7 42\n", [Call("echo", (0, -7, 42))]),
                (b"echo 3.5 -0.25\n", [Call("echo", (3.5, -0.25))]),
                (b"echo 1e3 2E-2 -1.5e+2\n", [Call("echo", (1000.0, 0.02, -150.0))]),
                (b"echo -0\n", [Call("echo", (0,))]),
                (
                    b"echo 123456789012345678901234567890\n",
                    [Call("echo", (123456789012345678901234567890,))],
                ),
            ]
        )

    def test_not_quite_numbers(self) -> None:
        """Words that are not JSON numbers stay strings rather than being guessed at."""
        words = ["01", "1.", ".5", "+1", "0x10", "1e", "1_000", "--1", "1.2.3", "12abc"]
        self.assertDecodes(
            ("echo " + " ".join(words) + "\n").encode(), [Call("echo", tuple(words))]
        )

    def test_nan_and_infinity_words(self) -> None:
        """The words NaN and Infinity are plain strings, never floats."""
        self.assertDecodes(
            b"echo NaN Infinity -Infinity\n", [Call("echo", ("NaN", "Infinity", "-Infinity"))]
        )

    def test_keyword_arguments(self) -> None:
        """A word name=value passes a keyword argument, after any positional ones."""
        self.assertTable(
            [
                (b"f a=1\n", [Call("f", (), {"a": 1})]),
                (
                    b'f 1 two=2 s=hello j=[1] q="a b"\n',
                    [Call("f", (1,), {"two": 2, "s": "hello", "j": [1], "q": "a b"})],
                ),
                (b"f a=b=c\n", [Call("f", (), {"a": "b=c"})]),
                (b"f x=\n", [Call("f", (), {"x": ""})]),
                (b"f _x9=null\n", [Call("f", (), {"_x9": None})]),
            ]
        )

    def test_keyword_lookalikes(self) -> None:
        """A quoted k=v, or one whose name is no identifier, is a positional string."""
        self.assertTable(
            [
                (b'f "x=1"\n', [Call("f", ("x=1",))]),
                (b"f 2=3\n", [Call("f", ("2=3",))]),
                (b"f =3\n", [Call("f", ("=3",))]),
                (b"f a-b=3\n", [Call("f", ("a-b=3",))]),
            ]
        )

    def test_options(self) -> None:
        """Options before the procedure name set the call's timeout, cast, key, trace, hops."""
        self.assertTable(
            [
                (b"+timeout=2.5 f\n", [Call("f", timeout=2.5)]),
                (b"+timeout=0 f\n", [Call("f", timeout=0.0)]),
                (b"+timeout=30 f\n", [Call("f", timeout=30.0)]),
                (b"+timeout=0.001 f\n", [Call("f", timeout=0.001)]),
                (b"+cast log hi\n", [Call("log", ("hi",), cast=True)]),
                (b"+key=abc-123 f\n", [Call("f", key="abc-123")]),
                (b"+trace=t:1/2~x f\n", [Call("f", trace="t:1/2~x")]),
                (b"+hops=3 f\n", [Call("f", hops=3)]),
                (b"+hops=0 f\n", [Call("f", hops=0)]),
                (b"+hops=999 f\n", [Call("f", hops=999)]),
                (b"+key=" + b"k" * 256 + b" f\n", [Call("f", key="k" * 256)]),
                (
                    b"+hops=2 +trace=t +key=k +cast +timeout=1 add 1 2\n",
                    [Call("add", (1, 2), timeout=1.0, cast=True, key="k", trace="t", hops=2)],
                ),
            ]
        )

    def test_tags(self) -> None:
        """A leading #tag is kept on the call, before any options."""
        self.assertTable(
            [
                (b"#17 add 1 2\n", [Call("add", (1, 2), tag="17")]),
                (b"#a.b:c_d-9 f\n", [Call("f", tag="a.b:c_d-9")]),
                (b"#" + b"t" * 64 + b" f\n", [Call("f", tag="t" * 64)]),
                (
                    b"#7 +timeout=5 +cast f x=1\n",
                    [Call("f", (), {"x": 1}, tag="7", timeout=5.0, cast=True)],
                ),
            ]
        )

    def test_procedure_at_node(self) -> None:
        """A procedure may name the node to run on as name@node."""
        self.assertTable(
            [
                (b"add@node-2 1 2\n", [Call("add@node-2", (1, 2))]),
                (b"#1 add@10.0.0.3 1\n", [Call("add@10.0.0.3", (1,), tag="1")]),
            ]
        )

    def test_marker_words_after_the_procedure(self) -> None:
        """#, + and | only mean something at the start; as arguments they are strings."""
        self.assertDecodes(
            b"echo #x +cast | OK ERR help\n",
            [Call("echo", ("#x", "+cast", "|", "OK", "ERR", "help"))],
        )

    def test_line_endings_and_spacing(self) -> None:
        """CRLF is accepted, and runs of spaces and tabs separate words."""
        self.assertTable(
            [
                (b"add 1 2\r\n", [Call("add", (1, 2))]),
                (b"  add\t1   2  \n", [Call("add", (1, 2))]),
                (b"#3\t+cast  f \r\n", [Call("f", tag="3", cast=True)]),
            ]
        )

    def test_several_lines(self) -> None:
        """Several lines in one input give one event each, in order."""
        self.assertDecodes(
            b"add 1 2\r\n#1 mul 3 4\nPING\n",
            [Call("add", (1, 2)), Call("mul", (3, 4), tag="1"), Command("PING")],
        )


class CommandVectorTests(WireTestCase):
    """Control verbs."""

    def test_verbs_ignore_case(self) -> None:
        """Command verbs are recognised in any case and reported in upper case."""
        self.assertTable(
            [
                (b"help\n", [Command("HELP")]),
                (b"Help add\n", [Command("HELP", ("add",))]),
                (b"PING\n", [Command("PING")]),
                (b"ping\r\n", [Command("PING")]),
                (b"LIST\n", [Command("LIST")]),
                (b"stats\n", [Command("STATS")]),
                (b"QuIt\n", [Command("QUIT")]),
            ]
        )

    def test_every_verb(self) -> None:
        """Every name in COMMANDS decodes as a command, never a call."""
        for verb in sorted(COMMANDS):
            self.assertDecodes(f"{verb.lower()}\n".encode(), [Command(verb)])

    def test_cancel(self) -> None:
        """CANCEL takes the tag of the call to cancel, as a JSON value or a word."""
        self.assertTable(
            [
                (b"cancel 17\n", [Command("CANCEL", (17,))]),
                (b'#5 CANCEL "17"\n', [Command("CANCEL", ("17",), tag="5")]),
                (b"CANCEL a.b\n", [Command("CANCEL", ("a.b",))]),
            ]
        )

    def test_no_keywords(self) -> None:
        """Commands take no keyword arguments: k=v is a plain string there."""
        self.assertDecodes(b"HELP k=v\n", [Command("HELP", ("k=v",))])

    def test_tagged(self) -> None:
        """A command may carry a tag like a call."""
        self.assertDecodes(b"#9 stats\n", [Command("STATS", tag="9")])


class ReplyVectorTests(WireTestCase):
    """OK and ERR replies."""

    def test_success(self) -> None:
        """OK carries one JSON value; OK alone means null."""
        self.assertTable(
            [
                (b"OK\n", [Success(None)]),
                (b"OK 3\n", [Success(3)]),
                (b"OK null\n", [Success(None)]),
                (b'OK "hello"\n', [Success("hello")]),
                (b'OK "hello world"\n', [Success("hello world")]),
                (b"OK [1, 2]\n", [Success([1, 2])]),
                (b'OK {"a": true}\n', [Success({"a": True})]),
                (b"OK   -1.5e3  \r\n", [Success(-1500.0)]),
                (b"#17 OK 3\n", [Success(3, "17")]),
                (b"#17 OK\n", [Success(None, "17")]),
            ]
        )

    def test_failure(self) -> None:
        """ERR carries a code, an outcome, an optional @node and a message."""
        self.assertTable(
            [
                (
                    b"ERR NOT_FOUND not-run no procedure named 'ad'; try HELP\n",
                    [
                        ErrorReply(
                            NotFoundError("no procedure named 'ad'; try HELP", Outcome.NOT_RUN)
                        )
                    ],
                ),
                (
                    b"#4 ERR INTERNAL ran @node-1 boom: it  broke\n",
                    [ErrorReply(InternalError("boom: it  broke", Outcome.RAN, "node-1"), "4")],
                ),
                (
                    b"#17 ERR CANCELLED may-have-run cancelled by caller\r\n",
                    [
                        ErrorReply(
                            CallCancelledError("cancelled by caller", Outcome.MAY_HAVE_RUN), "17"
                        )
                    ],
                ),
                (
                    b"ERR INVALID_ARGUMENT ran\n",
                    [ErrorReply(InvalidArgumentError("", Outcome.RAN))],
                ),
                (
                    b"ERR UNAVAILABLE not-run @n2\n",
                    [ErrorReply(UnavailableError("", Outcome.NOT_RUN, "n2"))],
                ),
            ]
        )

    def test_outcome_is_taken_from_the_wire(self) -> None:
        """The outcome on the line wins over the class's default outcome."""
        (event,) = self.assertDecodes(
            b"ERR NOT_FOUND ran no such user\n",
            [ErrorReply(NotFoundError("no such user", Outcome.RAN))],
        )
        assert isinstance(event, ErrorReply)
        self.assertIs(event.error.outcome, Outcome.RAN)

    def test_every_code(self) -> None:
        """Every code in the error table decodes to its own class."""
        for code, cls in ERRORS_BY_CODE.items():
            (event,) = self.assertDecodes(
                f"ERR {code} may-have-run x\n".encode(),
                [ErrorReply(cls("x", Outcome.MAY_HAVE_RUN))],
            )
            assert isinstance(event, ErrorReply)
            self.assertEqual(event.error.code, code)

    def test_unknown_code(self) -> None:
        """An unknown code gives UnknownError, keeping the code in its message."""
        (event,) = self.assertDecodes(
            b"#2 ERR TEAPOT ran @pot I am a teapot\n",
            [ErrorReply(UnknownError("[TEAPOT] I am a teapot", Outcome.RAN, "pot"), "2")],
        )
        assert isinstance(event, ErrorReply)
        self.assertIn("TEAPOT", str(event.error))

    def test_the_unknown_code_itself(self) -> None:
        """The code UNKNOWN gives UnknownError with its message untouched."""
        self.assertDecodes(b"ERR UNKNOWN ran x\n", [ErrorReply(UnknownError("x", Outcome.RAN))])


class StreamVectorTests(WireTestCase):
    """Streams: +window and MORE from the caller, ITEM and PROGRESS lines back."""

    def test_stream_requests(self) -> None:
        """+window grants a stream's first items; +progress asks for progress lines."""
        self.assertTable(
            [
                (b"#1 +window=64 count 3\n", [Call("count", (3,), tag="1", window=64)]),
                (b"+progress build\n", [Call("build", progress=True)]),
                (
                    b"#2 +timeout=5 +window=1 +progress tail x\n",
                    [Call("tail", ("x",), tag="2", timeout=5.0, window=1, progress=True)],
                ),
            ]
        )

    def test_bad_stream_options(self) -> None:
        """A window is a whole number from 1 to 999,999,999; +progress takes no value."""
        for line in [b"+window=0 f\n", b"+window=-1 f\n", b"+window=1.5 f\n",
                     b"+window=01 f\n", b"+window=1000000000 f\n", b"+window= f\n"]:  # fmt: skip
            with self.subTest(line=line):
                self.assertDecodes(line, [Bad(says="+window")])
        self.assertDecodes(b"+progress=1 f\n", [Bad(says="+progress takes no value")])

    def test_more(self) -> None:
        """MORE is a command: the stream's tag and how many more items it may send."""
        self.assertTable(
            [
                (b"MORE #7 64\n", [Command("MORE", ("#7", 64))]),
                (b"more 7 1\n", [Command("MORE", (7, 1))]),
            ]
        )

    def test_items(self) -> None:
        """ITEM carries one JSON value, like OK; ITEM alone is null."""
        self.assertTable(
            [
                (b"ITEM 0\n", [Item(0)]),
                (b"#7 ITEM 1\n", [Item(1, "7")]),
                (b"#7 ITEM\n", [Item(None, "7")]),
                (b'#7 ITEM {"row": [1, "a"]}\n', [Item({"row": [1, "a"]}, "7")]),
                (b"#7 ITEM 1 2\n", [Bad(tag="7", says="bad JSON in ITEM reply")]),
            ]
        )

    def test_progress(self) -> None:
        """PROGRESS carries done, total and message; anything else is refused."""
        self.assertTable(
            [
                (b'#3 PROGRESS {"done": 3, "total": 10}\n', [Progress(3, 10, None, "3")]),
                (
                    b'PROGRESS {"done": 0.5, "total": null, "message": "copying", "eta": 2}\n',
                    [Progress(0.5, None, "copying")],
                ),
                (b'PROGRESS {"done": -1}\n', [Bad(says="PROGRESS takes")]),
                (b'PROGRESS {"done": true}\n', [Bad(says="PROGRESS takes")]),
                (b'PROGRESS {"done": 1, "message": 5}\n', [Bad(says="PROGRESS takes")]),
                (b"PROGRESS 3\n", [Bad(says="PROGRESS takes")]),
            ]
        )

    def test_round_trips(self) -> None:
        """What the encoders write, the decoder reads back."""
        self.assertDecodes(
            encode_item("a b", "7") + encode_item(None) + encode_item([1, {"x": 1.5}], "8"),
            [Item("a b", "7"), Item(None), Item([1, {"x": 1.5}], "8")],
        )
        self.assertDecodes(
            encode_progress(3, 10, "two\nlines", "4") + encode_progress(0.25),
            [Progress(3, 10, "two lines", "4"), Progress(0.25)],
        )
        self.assertDecodes(encode_more("a.b", 64), [Command("MORE", ("#a.b", 64))])
        call = Call("count", (3,), tag="1", timeout=2.0, window=16, progress=True)
        self.assertDecodes(encode_call(call), [call])

    def test_bad_encodings_refused(self) -> None:
        """The encoders refuse what the decoder would: a bad window, tag or count."""
        self.assertRaises(ValueError, encode_call, Call("f", window=0))
        self.assertRaises(ValueError, encode_more, "bad tag", 1)
        self.assertRaises(ValueError, encode_more, "7", 0)


class ByeTests(WireTestCase):
    """BYE: a node's last line on a connection it closes."""

    def test_bye(self) -> None:
        """BYE carries a JSON string, why the node closes."""
        self.assertTable(
            [
                (b'BYE "alpha is shutting down"\n', [Bye("alpha is shutting down")]),
                (b'BYE  "x"  \r\n', [Bye("x")]),
            ]
        )

    def test_bad_bye(self) -> None:
        """BYE is never tagged and says why in a string; a bare or numeric BYE is refused."""
        self.assertTable(
            [
                (b'#1 BYE "x"\n', [Bad(tag="1", says="BYE is untagged")]),
                (b"BYE\n", [Bad(says="BYE is untagged")]),
                (b"BYE 3\n", [Bad(says="takes a JSON string")]),
                (b"bye\n", [Bad(says="not a procedure name")]),
            ]
        )

    def test_encode_bye(self) -> None:
        """The encoder keeps the reason on one line, and the decoder reads it back."""
        self.assertEqual(encode_bye("a is\nshutting  down"), b'BYE "a is shutting down"\n')
        self.assertDecodes(encode_bye("\u00e9t\u00e9 ends"), [Bye("\u00e9t\u00e9 ends")])


class TextAndBlankTests(WireTestCase):
    """Lines for people, and lines with nothing on them."""

    def test_text(self) -> None:
        """A line starting with | is text; one space after the bar is dropped."""
        self.assertTable(
            [
                (b"| hello world\n", [Text("hello world")]),
                (b"|\n", [Text("")]),
                (b"| \n", [Text("")]),
                (b"|x\n", [Text("x")]),
                (b"|   indented\n", [Text("  indented")]),
                (b"| a\r\n", [Text("a")]),
                (b"| OK 3\n", [Text("OK 3")]),
                ("| añadir\n".encode(), [Text("añadir")]),
            ]
        )

    def test_blank_lines_ignored(self) -> None:
        """Empty and all-blank lines produce no event."""
        self.assertTable(
            [
                (b"\n", []),
                (b"\r\n", []),
                (b"   \t \n", []),
                (b"\n\n\nPING\n\r\n", [Command("PING")]),
            ]
        )

    def test_parse_line_blank(self) -> None:
        """parse_line gives None for a blank line and an event otherwise."""
        self.assertIsNone(parse_line(b""))
        self.assertIsNone(parse_line(b" \t\r"))
        self.assertEqual(comparable(parse_line(b"PING")), comparable(Command("PING")))


class BadLineTests(WireTestCase):
    """Lines that cannot be understood are reported, with their tag when it was readable."""

    def test_bad_tag(self) -> None:
        """A malformed tag is refused, and no tag is reported for it."""
        self.assertTable(
            [
                (b"#bad! f\n", [Bad(says="tag")]),
                (b"#" + b"t" * 65 + b" f\n", [Bad(says="tag")]),
                (b"# f\n", [Bad(says="tag")]),
                ("#é f\n".encode(), [Bad(says="tag")]),
            ]
        )

    def test_tag_alone(self) -> None:
        """A tag with nothing after it is refused with that tag."""
        self.assertTable(
            [
                (b"#17\n", [Bad(tag="17", says="followed by a request")]),
                (b"#17   \r\n", [Bad(tag="17", says="followed by a request")]),
            ]
        )

    def test_reserved_names(self) -> None:
        """Reply words and command verbs cannot be used as procedure names."""
        self.assertTable(
            [
                (b"ok 1\n", [Bad(says="not a procedure name")]),
                (b"Ok\n", [Bad()]),
                (b"err\n", [Bad()]),
                (b"#3 +cast help\n", [Bad(tag="3", says="not a procedure name")]),
                (b"+timeout=1 PING\n", [Bad()]),
                (b"+cast OK 3\n", [Bad()]),
            ]
        )
        self.assertEqual(
            RESERVED_NAMES,
            {verb.lower() for verb in COMMANDS} | {"ok", "err", "item", "progress", "bye"},
        )

    def test_not_a_procedure_name(self) -> None:
        """A first word that cannot be a procedure name is refused."""
        self.assertTable(
            [
                (b"1add\n", [Bad(says="not a procedure name")]),
                (b"#1 [1] f\n", [Bad(tag="1")]),
                (b'"echo" x\n', [Bad()]),
                (b"add@ 1\n", [Bad()]),
                (b"a" * 129 + b"\n", [Bad()]),
                ("añadir 1\n".encode(), [Bad()]),
                (b" | x\n", [Bad()]),
            ]
        )

    def test_bad_options(self) -> None:
        """Unknown, repeated or ill-valued options are refused with the line's tag."""
        self.assertTable(
            [
                (b"#3 +bogus f\n", [Bad(tag="3", says="unknown option +bogus")]),
                (b"+ f\n", [Bad(says="unknown option")]),
                (b"+cast +cast f\n", [Bad(says="given twice")]),
                (b"#4 +timeout=1 +timeout=2 f\n", [Bad(tag="4", says="given twice")]),
                (b"+cast=1 f\n", [Bad(says="+cast takes no value")]),
                (b"+key f\n", [Bad(says="needs a value")]),
                (b"+key= f\n", [Bad(says="needs a value")]),
                (b"+key=" + b"k" * 257 + b" f\n", [Bad(says="printable ASCII")]),
                ("+key=é f\n".encode(), [Bad(says="printable ASCII")]),
                (b"+hops=x f\n", [Bad(says="+hops")]),
                (b"+hops=-1 f\n", [Bad(says="+hops")]),
                (b"+hops=1000 f\n", [Bad(says="+hops")]),
                (b"#5 +cast\n", [Bad(tag="5", says="followed by a procedure")]),
            ]
        )

    def test_bad_timeout(self) -> None:
        """A timeout must be a finite, non-negative number of seconds."""
        self.assertTable(
            [
                (b"#1 +timeout f\n", [Bad(tag="1", says="needs a value")]),
                (b"#1 +timeout=abc f\n", [Bad(tag="1", says="+timeout")]),
                (b"+timeout=-1 f\n", [Bad(says="+timeout")]),
                (b"+timeout=nan f\n", [Bad(says="+timeout")]),
                (b"+timeout=inf f\n", [Bad(says="+timeout")]),
                (b"+timeout=1e999 f\n", [Bad(says="+timeout")]),
                (b"+timeout=1e-3 f\n", [Bad(says="+timeout")]),
            ]
        )

    def test_bad_arguments(self) -> None:
        """Positional after keyword, and a keyword given twice, are refused."""
        self.assertTable(
            [
                (b"#2 f 1 x=2 3\n", [Bad(tag="2", says="positional argument after")]),
                (b"f x=1 x=2\n", [Bad(says="given twice")]),
            ]
        )

    def test_nan_and_infinity_refused(self) -> None:
        """Non-finite numbers are refused, bare and inside JSON."""
        self.assertTable(
            [
                (b"echo 1e999\n", [Bad(says="out of range")]),
                (b"echo -1e999\n", [Bad(says="out of range")]),
                (b"#6 f x=1e400\n", [Bad(tag="6", says="out of range")]),
                (b"echo [NaN]\n", [Bad(says="bad JSON")]),
                (b"echo [Infinity]\n", [Bad(says="bad JSON")]),
                (b'#6 echo {"a": -Infinity}\n', [Bad(tag="6", says="bad JSON")]),
                (b"OK NaN\n", [Bad(says="OK reply")]),
                (b"#6 OK [Infinity]\n", [Bad(tag="6", says="OK reply")]),
            ]
        )

    def test_invalid_utf8(self) -> None:
        """A line that is not UTF-8 is refused, keeping its tag when readable."""
        self.assertTable(
            [
                (b"#9 echo \xff\n", [Bad(tag="9", says="UTF-8")]),
                (b"#9 echo \xc3\n", [Bad(tag="9", says="UTF-8")]),
                (b"\xff\xfe\n", [Bad(says="UTF-8")]),
                (b"#\xff echo\n", [Bad(says="UTF-8")]),
                (b"echo \xed\xa0\x80\n", [Bad(says="UTF-8")]),  # encoded surrogate
            ]
        )

    def test_bad_json(self) -> None:
        """Malformed JSON is refused, keeping the line's tag."""
        self.assertTable(
            [
                (b"#9 echo [1,\n", [Bad(tag="9", says="bad JSON")]),
                (b'#9 echo "unterminated\n', [Bad(tag="9", says="bad JSON")]),
                (b"echo {a: 1}\n", [Bad(says="bad JSON")]),
                (b"echo [1,,2]\n", [Bad(says="bad JSON")]),
                (b'echo "tab\there"\n', [Bad(says="bad JSON")]),
                (b"echo [" + b"9" * 5000 + b"]\n", [Bad(says="bad JSON")]),
                (b"OK hello\n", [Bad(says="OK reply")]),
                (b"#2 OK 1 2\n", [Bad(tag="2", says="OK reply")]),
            ]
        )

    def test_trailing_junk_after_json(self) -> None:
        """A JSON value must end at a space or the end of the line."""
        self.assertTable(
            [
                (b"#1 echo [1]x\n", [Bad(tag="1", says="after JSON")]),
                (b'echo "a"b\n', [Bad(says="after JSON")]),
                (b"echo {}[]\n", [Bad(says="after JSON")]),
                (b'f k="v"w\n', [Bad(says="after JSON")]),
            ]
        )

    def test_bad_error_replies(self) -> None:
        """An ERR line without a valid code and outcome is refused."""
        self.assertTable(
            [
                (b"ERR\n", [Bad(says="ERR")]),
                (b"#8 ERR NOT_FOUND\n", [Bad(tag="8", says="ERR")]),
                (b"ERR not_found not-run x\n", [Bad(says="ERR")]),
                (b"ERR NOT_FOUND maybe x\n", [Bad(says="ERR")]),
                (b"ERR NOT-FOUND ran x\n", [Bad(says="ERR")]),
            ]
        )

    def test_deep_json_nesting(self) -> None:
        """Absurdly nested JSON gives a BadLine, never a RecursionError."""
        for data, tag in [
            (b"#5 echo " + b"[" * 100_000 + b"\n", "5"),
            (b"echo " + b"[" * 100_000 + b"]" * 100_000 + b"\n", None),
            (b"#5 f x=" + b'{"a":' * 100_000 + b"\n", "5"),
            (b"#6 OK " + b"[" * 100_000 + b"\n", "6"),
        ]:
            whole = decode_whole(data)
            chunked = decode_chunks(split_every(data, 997))
            self.assertEventsEqual(chunked, whole)
            self.assertEqual(len(whole), 1)
            (event,) = whole
            assert isinstance(event, BadLine), event
            self.assertIsInstance(event.error, InvalidArgumentError)
            self.assertIn("nested too deeply", event.error.message)
            self.assertEqual(event.tag, tag)

    def test_decoder_usable_after_bad_lines(self) -> None:
        """A bad line affects only itself: the lines around it decode normally."""
        self.assertDecodes(
            b"add 1 2\n#1 +bogus f\n\xff\n#2 echo [\nPING\n",
            [
                Call("add", (1, 2)),
                Bad(tag="1"),
                Bad(),
                Bad(tag="2"),
                Command("PING"),
            ],
        )


class EdgeCaseTests(WireTestCase):
    """Inputs that once escaped the codec as exceptions or depended on chunking."""

    def test_huge_bare_integer_is_a_bad_line(self) -> None:
        """A bare integer past Python's 4300-digit limit gives a BadLine, not ValueError."""
        # Python refuses to convert integers of over 4300 digits.
        data = b"#1 echo 1" + b"0" * 5000 + b"\nPING\n"
        self.assertDecodes(data, [Bad(tag="1"), Command("PING")])

    def test_non_ascii_digits_in_hops(self) -> None:
        """+hops takes ASCII digits only; others give a BadLine, not ValueError."""
        # str.isdigit() is true for U+00B2 and U+0663; the grammar is ASCII.
        self.assertTable(
            [
                ("#1 +hops=\u00b2 f\n".encode(), [Bad(tag="1", says="+hops")]),
                ("#1 +hops=\u0663 f\n".encode(), [Bad(tag="1", says="+hops")]),
            ]
        )

    def test_overflowing_number_inside_json(self) -> None:
        """A number that overflows to infinity inside JSON is refused, as it is bare."""
        # An infinity could never be sent back: encode_json refuses it.
        self.assertTable(
            [
                (b"#1 echo [1e999]\n", [Bad(tag="1")]),
                (b'f x={"a": -1e999}\n', [Bad()]),
                (b"#2 OK 1e999\n", [Bad(tag="2")]),
            ]
        )

    def test_overflow_tag_does_not_depend_on_chunking(self) -> None:
        """With max_line under 65, an over-long line's tag does not depend on chunking."""
        # A truncated tag would send the error to the wrong caller.
        data = b"#abcdefghijklmnopq add 1\n"
        self.assertEventsEqual(decode_bytewise(data, 16), decode_whole(data, 16))


class LineLimitTests(WireTestCase):
    """The line length bound."""

    def test_default(self) -> None:
        """A decoder accepts lines of up to 2 MiB by default."""
        self.assertEqual(DEFAULT_MAX_LINE, 2 * 1024 * 1024)
        self.assertEqual(LineDecoder().max_line, DEFAULT_MAX_LINE)

    def test_at_the_limit(self) -> None:
        """A line of exactly max_line bytes before its LF is accepted; one more is not."""
        fits = b"echo " + b"x" * 95
        self.assertEqual(len(fits), 100)
        self.assertDecodes(fits + b"\n", [Call("echo", ("x" * 95,))], max_line=100)
        self.assertDecodes(
            b"#1 " + fits + b"\n", [Bad(ResourceExhaustedError, "1", "100")], max_line=100
        )

    def test_over_the_limit(self) -> None:
        """An over-long line gives one RESOURCE_EXHAUSTED BadLine with its tag, then goes on."""
        self.assertTable(
            [
                (
                    b"#7 echo " + b"x" * 500 + b"\nPING\n",
                    [Bad(ResourceExhaustedError, "7", "limit of 100 bytes"), Command("PING")],
                ),
                (
                    b"echo " + b"x" * 500 + b"\n#8 add 1 2\n",
                    [Bad(ResourceExhaustedError), Call("add", (1, 2), tag="8")],
                ),
                (
                    b"#bad! " + b"x" * 500 + b"\nPING\n",
                    [Bad(ResourceExhaustedError), Command("PING")],
                ),
                (b"\xff" * 500 + b"\nPING\n", [Bad(ResourceExhaustedError), Command("PING")]),
            ],
            max_line=100,
        )

    def test_over_the_limit_in_chunks(self) -> None:
        """An over-long line arriving in many chunks is dropped without growing the buffer."""
        max_line, chunk = 1000, b"x" * 100
        decoder = LineDecoder(max_line)
        decoder.feed(b"#3 echo ")
        events: list[Event] = []
        for _ in range(10_000):  # a 1 MB line, a thousand times the limit
            decoder.feed(chunk)
            self.assertLessEqual(decoder.buffered, max_line + len(chunk))
            while (event := decoder.next_event()) is not None:
                events.append(event)
            self.assertLessEqual(decoder.buffered, max_line)
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(len(events), 1)
        (event,) = events
        assert isinstance(event, BadLine)
        self.assertIsInstance(event.error, ResourceExhaustedError)
        self.assertEqual(event.tag, "3")
        decoder.feed(b"xxx\nPI")
        self.assertIsNone(decoder.next_event())
        decoder.feed(b"NG\n")
        self.assertEventsEqual([decoder.next_event()], [Command("PING")])
        self.assertIsNone(decoder.next_event())
        self.assertEqual(decoder.buffered, 0)

    def test_limit_is_per_line(self) -> None:
        """Many short lines in one chunk are fine even when together they pass the limit."""
        self.assertDecodes(b"PING\n" * 100, [Command("PING")] * 100, max_line=10)


class LongLineTests(WireTestCase):
    """Long lines arriving in pieces, as a stream of large items does."""

    #: A stream's 1 MiB item and the line after it.
    ITEM = b'#s ITEM "' + b"x" * (1 << 20) + b'"\n'
    AFTER = b"#s OK 1\n"
    EVENTS = (Item("x" * (1 << 20), "s"), Success(1, "s"))

    def test_many_pieces(self) -> None:
        """A 1 MiB line fed in a thousand pieces is read as when fed whole, and held meanwhile."""
        data = self.ITEM + self.AFTER
        decoder = LineDecoder()
        events: list[Event] = []
        fed = 0
        for chunk in split_every(data, 1000):
            decoder.feed(chunk)
            fed += len(chunk)
            while (event := decoder.next_event()) is not None:
                events.append(event)
            if not events:
                self.assertEqual(decoder.buffered, fed)
        self.assertEventsEqual(events, self.EVENTS)
        self.assertEqual(decoder.buffered, 0)

    def test_split_at_the_lf(self) -> None:
        """Wherever the pieces of a long line end around its LF, the same events come."""
        data = self.ITEM + self.AFTER
        lf = len(self.ITEM) - 1
        for cuts in [
            (lf,),  # the LF opens the next piece
            (lf + 1,),  # the LF ends a piece
            (lf, lf + 1),  # the LF alone
            (lf - 1, lf + 1),  # the closing quote and the LF alone
            (10, lf),
            (10, lf + 1),
            (10, lf + 3),  # the LF, then part of the next line
            (10, lf, lf + 1, lf + 2),
        ]:
            bounds = [0, *cuts, len(data)]
            chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
            self.assertEventsEqual(decode_chunks(chunks), self.EVENTS)

    def test_fed_without_pulling(self) -> None:
        """Pieces fed one after another with no event taken between them give every line, in order."""
        decoder = LineDecoder()
        decoder.feed(self.ITEM[:100])
        decoder.feed(self.ITEM[100:-50])
        decoder.feed(self.ITEM[-50:] + self.AFTER[:3])
        decoder.feed(self.AFTER[3:] + b"PING\n")
        events = [decoder.next_event() for _ in range(4)]
        self.assertEventsEqual(events, [*self.EVENTS, Command("PING"), None])
        self.assertEqual(decoder.buffered, 0)

    def test_bound_in_pieces(self) -> None:
        """A long line past the limit fed in pieces with its LF, unpulled, is one BadLine with its tag."""
        decoder = LineDecoder(100_000)
        for chunk in split_every(self.ITEM, 30_000):
            decoder.feed(chunk)
        decoder.feed(self.AFTER)
        (bad, after, none) = [decoder.next_event() for _ in range(3)]
        assert isinstance(bad, BadLine)
        self.assertIsInstance(bad.error, ResourceExhaustedError)
        self.assertEqual(bad.tag, "s")
        self.assertEventsEqual([after, none], [Success(1, "s"), None])

    def test_bound_while_pulling(self) -> None:
        """Pulled between pieces, a long line is refused once past the limit and no more is held."""
        decoder = LineDecoder(100_000)
        events: list[Event] = []
        for chunk in split_every(self.ITEM + self.AFTER, 30_000):
            decoder.feed(chunk)
            while (event := decoder.next_event()) is not None:
                events.append(event)
            self.assertLessEqual(decoder.buffered, 100_000)
        (bad, after) = events
        assert isinstance(bad, BadLine)
        self.assertEqual((type(bad.error), bad.tag), (ResourceExhaustedError, "s"))
        self.assertEventsEqual([after], [Success(1, "s")])

    def test_end_of_input_in_pieces(self) -> None:
        """A long line cut off in its pieces is reported, with its tag, at end of input."""
        decoder = LineDecoder()
        for chunk in split_every(self.ITEM[:-1], 100_000):
            decoder.feed(chunk)
            self.assertIsNone(decoder.next_event())
        bad = decoder.end_of_input()
        assert isinstance(bad, BadLine)
        self.assertEqual((type(bad.error), bad.tag), (InvalidArgumentError, "s"))
        self.assertEqual(decoder.buffered, 0)


class PullParserTests(WireTestCase):
    """The decoder hands out events one at a time, on demand."""

    def test_needs_a_newline(self) -> None:
        """Nothing is decoded until the line's LF arrives."""
        decoder = LineDecoder()
        decoder.feed(b"add 1 2")
        self.assertIsNone(decoder.next_event())
        self.assertEqual(decoder.buffered, 7)
        decoder.feed(b"\r")
        self.assertIsNone(decoder.next_event())
        decoder.feed(b"\n")
        self.assertEventsEqual([decoder.next_event()], [Call("add", (1, 2))])
        self.assertEqual(decoder.buffered, 0)

    def test_rest_stays_buffered(self) -> None:
        """A user that stops pulling leaves the remaining lines buffered, in order."""
        decoder = LineDecoder()
        decoder.feed(b"a\nb\nc\n")
        self.assertEventsEqual([decoder.next_event()], [Call("a")])
        self.assertEqual(decoder.buffered, 4)
        decoder.feed(b"d\n")
        rest = [decoder.next_event() for _ in range(4)]
        self.assertEventsEqual(rest, [Call("b"), Call("c"), Call("d"), None])

    def test_empty_feed(self) -> None:
        """Feeding no bytes changes nothing."""
        decoder = LineDecoder()
        decoder.feed(b"")
        self.assertIsNone(decoder.next_event())
        self.assertEqual(decoder.buffered, 0)


class EndOfInputTests(WireTestCase):
    """end_of_input reports an unfinished last line and never acts on it."""

    def test_clean_end(self) -> None:
        """After whole lines, end of input reports nothing."""
        decoder = LineDecoder()
        self.assertIsNone(decoder.end_of_input())
        decoder.feed(b"PING\n")
        self.assertIsNotNone(decoder.next_event())
        self.assertIsNone(decoder.next_event())
        self.assertIsNone(decoder.end_of_input())

    def test_unfinished_line(self) -> None:
        """An unfinished line is reported as a BadLine with its tag, never as a call."""
        for data in [b"#4 add 1", b"#4 add 1 2\r", b"#4"]:
            events = decode_whole(data, end=True)
            self.assertEqual(len(events), 1, events)
            (event,) = events
            assert isinstance(event, BadLine)
            self.assertIsInstance(event.error, InvalidArgumentError)
            self.assertIn("middle of a line", event.error.message)
            self.assertEqual(event.tag, "4")
            self.assertEventsEqual(decode_bytewise(data, end=True), events)

    def test_unfinished_untagged(self) -> None:
        """An unfinished untagged line is reported without a tag."""
        (event,) = decode_whole(b"add 1", end=True)
        assert isinstance(event, BadLine)
        self.assertIsNone(event.tag)

    def test_unfinished_blank(self) -> None:
        """An unfinished line of only whitespace is not worth reporting."""
        self.assertEqual(decode_whole(b" \t\r", end=True), [])

    def test_while_discarding(self) -> None:
        """An over-long unfinished line was already reported, so end of input adds nothing."""
        decoder = LineDecoder(10)
        decoder.feed(b"#1 " + b"x" * 50)
        event = decoder.next_event()
        assert isinstance(event, BadLine)
        self.assertIsInstance(event.error, ResourceExhaustedError)
        self.assertIsNone(decoder.end_of_input())

    def test_empties_the_buffer(self) -> None:
        """End of input releases what was buffered."""
        decoder = LineDecoder()
        decoder.feed(b"x" * 1000)
        self.assertIsNone(decoder.next_event())
        decoder.end_of_input()
        self.assertEqual(decoder.buffered, 0)
        self.assertIsNone(decoder.end_of_input())


# --- Encoding ---------------------------------------------------------------

#: Strings that would mean something else if sent as bare words.
AWKWARD_STRINGS = [
    "",
    " ",
    "hello world",
    "line1\nline2",
    "cr\rlf\r\n",
    'quote "q"',
    "back\\slash",
    "tab\there",
    "123",
    "-1.5",
    "1e3",
    "01",
    "true",
    "false",
    "null",
    "NaN",
    "Infinity",
    "k=v",
    "x=1",
    "#x",
    "#17",
    "+cast",
    "+timeout=1",
    "|pipe",
    "| text",
    "OK",
    "ERR",
    "help",
    "[1]",
    "{}",
    '"',
    "\\",
    "é",
    "日本語",
    "😀",
    "\u2028\u2029\x85",
    "\x00\x1f\x7f",
    "\x1c\x1d\x1e",
]

JSON_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    10**30,
    -(10**30),
    0.1,
    -0.0,
    1.5e-300,
    1.7976931348623157e308,
    [],
    {},
    [1, [2, [3, []]]],
    {"a": {"b": [None, True, "c d"]}, "": 0, "k=v": "x", "é": "日本"},
    *AWKWARD_STRINGS,
    AWKWARD_STRINGS,
    {s: s for s in AWKWARD_STRINGS},
]


class EncodeCallTests(WireTestCase):
    def test_refuses_what_would_break_the_line(self) -> None:
        """A name, tag, option or keyword that would inject words or lines is refused, not sent."""
        for call in [
            Call("add 1 2\nQUIT"),
            Call("help"),
            Call("add", tag="a b"),
            Call("add", key="k\nQUIT"),
            Call("add", trace="has space"),
            Call("add", kwargs={"x y": 1}),
            Call("add", hops=1000),
        ]:
            with self.assertRaises(ValueError, msg=repr(call)):
                encode_call(call)

    """encode_call, and decoding what it produced."""

    def assertRoundTrip(self, call: Call) -> bytes:
        data = encode_call(call)
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(data.count(b"\n"), 1, data)
        self.assertDecodes(data, [call])
        return data

    def test_exact_bytes(self) -> None:
        """Calls encode to the documented compact form."""
        self.assertEqual(encode_call(Call("add", (1, 2))), b"add 1 2\n")
        self.assertEqual(encode_call(Call("echo", ("hello",))), b'echo "hello"\n')
        self.assertEqual(encode_call(Call("echo", ([1, "a b"],))), b'echo [1,"a b"]\n')
        self.assertEqual(
            encode_call(
                Call(
                    "f", (), {"x": 1}, tag="7", timeout=2.5, cast=True, key="k", trace="t", hops=1
                )
            ),
            b"#7 +timeout=2.5 +cast +key=k +trace=t +hops=1 f x=1\n",
        )
        self.assertEqual(encode_call(Call("echo", ("é",))), 'echo "é"\n'.encode())

    def test_values_round_trip(self) -> None:
        """Every JSON value, as positional or keyword argument, decodes to itself."""
        for value in JSON_VALUES:
            self.assertRoundTrip(Call("echo", (value,)))
            self.assertRoundTrip(Call("f", (), {"x": value}))
        self.assertRoundTrip(Call("echo", tuple(JSON_VALUES), {"a": JSON_VALUES, "b": 1}))

    def test_awkward_strings_stay_strings(self) -> None:
        """Strings looking like numbers, constants, keywords, tags or options stay strings."""
        for text in AWKWARD_STRINGS:
            self.assertRoundTrip(Call("echo", (text, text), {"k": text}))

    def test_options_round_trip(self) -> None:
        """Tag, timeout, cast, key, trace, hops and name@node survive a round trip."""
        for call in [
            Call("f", tag="17"),
            Call("f", tag="a.b:c_d-" + "9" * 56),
            Call("f", timeout=0.0),
            Call("f", timeout=0.5),
            Call("f", timeout=30.0),
            Call("f", timeout=3600.0),
            Call("f", timeout=0.000125),
            Call("f", cast=True),
            Call("f", key="k-" + "x" * 254),
            Call("f", key="!~\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"),
            Call("f", trace="00-4bf92f3577b34da6-01"),
            Call("f", hops=1),
            Call("f", hops=999),
            Call("add@node-2", (1, 2), {"z": None}, "t", 1.5, True, "k", "tr", 3),
        ]:
            self.assertRoundTrip(call)

    def test_timeout_precision(self) -> None:
        """The timeout travels as a plain decimal, to the microsecond."""
        self.assertEqual(encode_call(Call("f", timeout=1.23456789)), b"+timeout=1.234568 f\n")
        self.assertEqual(encode_call(Call("f", timeout=1e-3)), b"+timeout=0.001 f\n")
        self.assertEqual(encode_call(Call("f", timeout=30.0)), b"+timeout=30.0 f\n")

    def test_lone_surrogates(self) -> None:
        """Values with lone surrogates encode as ASCII escapes and decode to themselves."""
        for value in ["\ud800", "a\udfffb", ["\udc80", {"\ud83d": "x"}], "é\udc80日"]:
            data = self.assertRoundTrip(Call("echo", (value, "é"), {"k": value}))
            data.decode("utf-8")  # strict: the line is valid UTF-8

    def test_not_json(self) -> None:
        """Arguments that are not JSON are refused by the encoder."""
        self.assertRaises(TypeError, encode_call, Call("f", ({1, 2},)))
        self.assertRaises(TypeError, encode_call, Call("f", (b"bytes",)))
        self.assertRaises(TypeError, encode_call, Call("f", (), {"x": object()}))
        self.assertRaises(ValueError, encode_call, Call("f", (float("nan"),)))
        self.assertRaises(ValueError, encode_call, Call("f", (), {"x": [float("inf")]}))


class EncodeJsonTests(WireTestCase):
    """encode_json, the value encoder behind every encoder."""

    def test_compact_utf8(self) -> None:
        """Values encode as compact JSON, non-ASCII left as is."""
        self.assertEqual(encode_json({"a": [1, 2]}), '{"a":[1,2]}')
        self.assertEqual(encode_json("é"), '"é"')
        self.assertEqual(encode_json("a\nb"), '"a\\nb"')

    def test_surrogate_fallback(self) -> None:
        """A value with a lone surrogate falls back to ASCII escapes."""
        self.assertEqual(encode_json(["é", "\ud800"]), '["\\u00e9","\\ud800"]')

    def test_too_deep(self) -> None:
        """A value nested past the recursion limit raises ValueError."""
        value: list[Any] = []
        for _ in range(100_000):
            value = [value]
        self.assertRaises(ValueError, encode_json, value)

    def test_not_finite(self) -> None:
        """NaN and infinities are not JSON and raise ValueError."""
        for number in [float("nan"), float("inf"), float("-inf")]:
            self.assertRaises(ValueError, encode_json, number)


class EncodeReplyTests(WireTestCase):
    """encode_success, encode_failure, encode_text and encode_command."""

    def test_success_exact_bytes(self) -> None:
        """OK replies encode to the documented form."""
        self.assertEqual(encode_success(3), b"OK 3\n")
        self.assertEqual(encode_success(3, "17"), b"#17 OK 3\n")
        self.assertEqual(encode_success(None), b"OK\n")
        self.assertEqual(encode_success(None, "1"), b"#1 OK\n")
        self.assertEqual(encode_success("hello"), b'OK "hello"\n')
        self.assertEqual(encode_success(["é"]), 'OK ["é"]\n'.encode())

    def test_success_round_trip(self) -> None:
        """Every JSON value sent in an OK reply decodes to itself, with its tag."""
        for tag in [None, "17"]:
            for value in [*JSON_VALUES, "\ud800", ["a\udfffb"]]:
                data = encode_success(value, tag)
                self.assertEqual(data.count(b"\n"), 1)
                self.assertDecodes(data, [Success(value, tag)])

    def test_failure_exact_bytes(self) -> None:
        """ERR replies encode to the documented form."""
        self.assertEqual(
            encode_failure(NotFoundError("no procedure named 'ad'; try HELP")),
            b"ERR NOT_FOUND not-run no procedure named 'ad'; try HELP\n",
        )
        self.assertEqual(
            encode_failure(InternalError("boom", node="n1"), "4"),
            b"#4 ERR INTERNAL ran @n1 boom\n",
        )
        self.assertEqual(
            encode_failure(CallCancelledError("cancelled"), "17"),
            b"#17 ERR CANCELLED may-have-run cancelled\n",
        )

    def test_failure_round_trip(self) -> None:
        """Every error class, outcome and node survives a round trip."""
        for cls in ERRORS_BY_CODE.values():
            for outcome in Outcome:
                for node in [None, "node-1"]:
                    for tag in [None, "t1"]:
                        error = cls("something failed: x=1 [2]", outcome, node)
                        data = encode_failure(error, tag)
                        self.assertDecodes(data, [ErrorReply(error, tag)])

    def test_default_outcomes(self) -> None:
        """An error without an outcome travels with its class's default outcome."""
        for cls in ERRORS_BY_CODE.values():
            (event,) = decode_whole(encode_failure(cls("x")))
            assert isinstance(event, ErrorReply)
            self.assertIs(event.error.outcome, cls.default_outcome)

    def test_unknown_code_round_trip(self) -> None:
        """An UnknownError read from the wire can be passed on, keeping the original code."""
        (event,) = decode_whole(b"ERR TEAPOT ran short and stout\n")
        assert isinstance(event, ErrorReply)
        (again,) = decode_whole(encode_failure(event.error))
        assert isinstance(again, ErrorReply)
        self.assertIsInstance(again.error, UnknownError)
        self.assertIn("TEAPOT", again.error.message)
        self.assertIn("short and stout", again.error.message)

    def test_failure_one_line(self) -> None:
        """A message with newlines and other line breaks still gives exactly one line."""
        message = "first\nsecond\r\nthird\rfourth\x0bfifth\x85sixth\u2028seventh\n"
        data = encode_failure(InternalError(message), "3")
        self.assertEqual(data.count(b"\n"), 1)
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(len(decode_whole(data)), 1)
        self.assertDecodes(
            data,
            [ErrorReply(InternalError("first second third fourth fifth sixth seventh"), "3")],
        )

    def test_failure_empty_message(self) -> None:
        """An empty message is replaced by words from the code, so the line is never bare."""
        data = encode_failure(NotFoundError(""))
        self.assertEqual(data, b"ERR NOT_FOUND not-run not found\n")

    def test_failure_message_like_a_node(self) -> None:
        """A message starting with @ is not mistaken for a node name."""
        (event,) = decode_whole(encode_failure(InternalError("@home is down")))
        assert isinstance(event, ErrorReply)
        self.assertIsNone(event.error.node)
        self.assertIn("home is down", event.error.message)
        (event,) = decode_whole(encode_failure(InternalError("@home is down", node="n")))
        assert isinstance(event, ErrorReply)
        self.assertEqual(event.error.node, "n")
        self.assertEqual(event.error.message, "@home is down")

    def test_failure_surrogates(self) -> None:
        """A message with a lone surrogate still encodes, as valid UTF-8 on one line."""
        data = encode_failure(InternalError("bad \udc80 byte"))
        data.decode("utf-8")
        self.assertEqual(data.count(b"\n"), 1)
        (event,) = decode_whole(data)
        self.assertIsInstance(event, ErrorReply)

    def test_text(self) -> None:
        """Text encodes as lines marked with | and decodes line by line."""
        self.assertEqual(encode_text("hello"), b"| hello\n")
        self.assertEqual(encode_text(""), b"|\n")
        self.assertEqual(encode_text("a\nb\n\nc  "), b"| a\n| b\n|\n| c\n")
        self.assertEqual(encode_text("add(a, b)\r\n  Add."), b"| add(a, b)\n|   Add.\n")
        self.assertDecodes(
            encode_text("a\n  b\n\nc  \nOK 3"),
            [Text("a"), Text("  b"), Text(""), Text("c"), Text("OK 3")],
        )

    def test_text_surrogates(self) -> None:
        """Text with a lone surrogate still encodes as valid UTF-8."""
        data = encode_text("x\ud800")
        data.decode("utf-8")
        self.assertEqual(len(decode_whole(data)), 1)

    def test_command(self) -> None:
        """Commands encode with JSON arguments and decode to themselves."""
        self.assertEqual(encode_command("PING"), b"PING\n")
        self.assertEqual(encode_command("CANCEL", (17,)), b"CANCEL 17\n")
        self.assertEqual(encode_command("CANCEL", ("17",), "3"), b'#3 CANCEL "17"\n')
        for verb in sorted(COMMANDS):
            for args in [(), ("add",), ("a b", 1, None, ["x"], "k=v")]:
                for tag in [None, "9"]:
                    self.assertDecodes(encode_command(verb, args, tag), [Command(verb, args, tag)])
        self.assertDecodes(encode_command("help", ("add",)), [Command("HELP", ("add",))])


# --- Trace ids on error replies -------------------------------------------

#: A W3C traceparent, as nodes make and callers send them.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#: Trace ids with the characters that once ended the suffix early, or began a false one.
AWKWARD_TRACES = [
    TRACEPARENT,
    "]",
    "[",
    "[]",
    "a]b",
    "]]]",
    "[trace",
    "x]y[trace",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "t" * 255 + "]",
]


def expected_message(error: CallError) -> str:
    """The message as an ERR line carries it: on one line, never bare, never read as a node."""
    message = " ".join(error.message.split()) or error.code.lower().replace("_", " ")
    if message.startswith("@") and not error.node:
        message = "(at)" + message[1:]
    return message


traces = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256
) | st.from_regex(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fullmatch=True)
messages = st.text(st.characters(exclude_categories=("Cs",)), max_size=60) | st.sampled_from(
    ["x [trace y]", "x [trace ]", "[trace a]", "@n [trace a]b] c", " [trace ]]"]
)


class TraceSuffixTests(WireTestCase):
    """The C{[trace ID]} that ends an error reply of a traced call."""

    def test_exact_bytes(self) -> None:
        """The trace id ends the line as it is, brackets and all."""
        error = NotFoundError("no item named 'gizmo'", Outcome.RAN, "beta")
        error.trace = TRACEPARENT
        self.assertEqual(
            encode_failure(error),
            f"ERR NOT_FOUND ran @beta no item named 'gizmo' [trace {TRACEPARENT}]\n".encode(),
        )
        error.trace = "a]b"
        self.assertEqual(
            encode_failure(error, "3"),
            (b"#3 ERR NOT_FOUND ran @beta no item named 'gizmo' [trace a]b]\n"),
        )

    def test_decoding(self) -> None:
        """The suffix is read off the message into the error's trace, whatever the id holds."""
        for line, message, trace in [
            (b"ERR INTERNAL ran boom [trace t1]\n", "boom", "t1"),
            (b"ERR INTERNAL ran boom [trace a]b]\n", "boom", "a]b"),
            (b"ERR INTERNAL ran boom [trace ]]\r\n", "boom", "]"),
            (b"ERR INTERNAL ran boom [trace [x]]\n", "boom", "[x]"),
            (b"ERR INTERNAL ran [trace a] [trace b]\n", "[trace a]", "b"),
            (b"ERR INTERNAL ran boom [trace a] b\n", "boom [trace a] b", None),
            (b"ERR INTERNAL ran boom [trace a b]\n", "boom [trace a b]", None),
            (b"ERR INTERNAL ran boom [trace ]\n", "boom [trace ]", None),
        ]:
            (event,) = self.assertDecodes(line, [ErrorReply(InternalError(message, Outcome.RAN))])
            assert isinstance(event, ErrorReply)
            self.assertEqual(event.error.trace, trace, line)

    def test_awkward_traces_round_trip(self) -> None:
        """Every awkward trace id comes back whole, and the message without it."""
        for trace in AWKWARD_TRACES:
            for node in [None, "n1"]:
                error = InternalError("it broke [really]", Outcome.RAN, node)
                error.trace = trace
                (event,) = self.assertDecodes(
                    encode_failure(error, "7"),
                    [ErrorReply(InternalError("it broke [really]", Outcome.RAN, node), "7")],
                )
                assert isinstance(event, ErrorReply)
                self.assertEqual(event.error.trace, trace)

    def test_trace_option(self) -> None:
        """Calls carry any printable trace id, brackets included, and a traceparent unchanged."""
        for trace in AWKWARD_TRACES:
            self.assertDecodes(encode_call(Call("f", trace=trace)), [Call("f", trace=trace)])
        self.assertEqual(
            encode_call(Call("f", trace=TRACEPARENT)), f"+trace={TRACEPARENT} f\n".encode()
        )

    def test_no_suffix_without_a_valid_trace(self) -> None:
        """An error whose trace could not travel as a +trace value gets no suffix at all."""
        for trace in [None, "", "has space", "é", "x" * 257]:
            error = InternalError("boom")
            error.trace = trace
            self.assertEqual(encode_failure(error), b"ERR INTERNAL ran boom\n", repr(trace))

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(sorted(ERRORS_BY_CODE.values(), key=lambda c: c.code)),
        st.sampled_from(list(Outcome)),
        messages,
        st.none() | st.from_regex(r"[A-Za-z0-9_.\-]{1,20}", fullmatch=True),
        st.none() | st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True),
        traces,
    )
    def test_round_trip_property(
        self,
        cls: type[CallError],
        outcome: Outcome,
        message: str,
        node: str | None,
        tag: str | None,
        trace: str,
    ) -> None:
        """For every trace the encoder takes, the decoded error has that trace and the same message."""
        error = cls(message, outcome, node)
        error.trace = trace
        data = encode_failure(error, tag)
        self.assertIn(f" [trace {trace}]\n".encode(), data)
        (event,) = decode_whole(data)
        assert isinstance(event, ErrorReply), event
        self.assertEqual(event.tag, tag)
        self.assertEqual(event.error.trace, trace)
        self.assertEqual(event.error.message, expected_message(error))
        self.assertEqual(event.error.node, node)
        self.assertIs(event.error.outcome, outcome)
