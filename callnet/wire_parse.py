"""
The grammar of one line: a line's bytes to the event it says (a request, a
command, a reply, text), by the fast parsers of L{callnet.wire_fast} where
they fit and the general parser here otherwise.  No I/O, no Twisted.

L{callnet.wire.LineDecoder} cuts bytes into lines and hands each to
L{parse_line}; the rest of callnet imports these names from L{callnet.wire}.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from callnet.errors import InvalidArgumentError, error_from_wire
from callnet.wire_events import (
    COMMANDS,
    BadLine,
    Bye,
    Call,
    Command,
    ErrorReply,
    Event,
    Item,
    Progress,
    Success,
    Text,
)
from callnet.wire_fast import _LONG_TAIL, _SIMPLE_MAX, _parse_simple_call, _parse_simple_success
from callnet.wire_fast import NUMBER_RE as _NUMBER_RE
from callnet.wire_fast import _parse_long_string as _parse_long_string_with
from callnet.wire_grammar import (
    BARE_CONSTANTS,
    CODE_RE,
    HOPS_RE,
    IDENTITY_RE,
    JSON_OPENERS,
    KEYWORD_RE,
    MAX_WINDOW,
    OPTION_VALUE_RE,
    OPTIONS,
    OUTCOMES,
    SECONDS_RE,
    TAG_RE,
    TRACE_SUFFIX,
    WHITESPACE,
    WINDOW_RE,
    is_procedure_name,
)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number out of range: {text[:40]}")
    return number


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _peek_tag(line: bytes, complete: bool = True) -> str | None:
    """
    Read the tag at the start of a line, if it has a valid one.

    With C{complete} false the line may be cut short, so a tag counts only
    if the space after it was seen.
    """
    if not line.startswith(b"#"):
        return None
    head = line[1:66].split(None, 1)
    if not head or (not complete and len(head) < 2):
        return None
    try:
        tag = head[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    return tag if TAG_RE.match(tag) else None


def parse_line(line: bytes | memoryview) -> Event | None:
    """
    Turn one line (without its LF) into an event; C{None} for a blank line.

    A long line may come as a memoryview of the decoder's buffer, so that a
    large value is not copied to be read.
    """
    if len(line) <= _SIMPLE_MAX:
        # A reply is refused by the request pattern only after a full match,
        # but a request fails the reply pattern at its second word.
        simple = _parse_simple_success(line) or _parse_simple_call(line)  # type: ignore[arg-type]
        if simple is not None:
            return simple
    elif len(line) > _LONG_JSON:
        event = _parse_long_string_with(line, _parse_general)
        if event is not None:
            return event
    return _parse_general(bytes(line))


def _parse_long_string(line: bytes | memoryview) -> Event | None:
    """L{callnet.wire_fast._parse_long_string}, reading the head with the general parser."""
    return _parse_long_string_with(line, _parse_general)


def _parse_general(line: bytes) -> Event | None:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadLine(
            InvalidArgumentError(f"line is not valid UTF-8 (byte {e.start})"), _peek_tag(line)
        )
    if text.endswith("\r"):
        text = text[:-1]
    try:
        return _parse_text(text)
    except _MalformedError as e:
        return BadLine(InvalidArgumentError(e.reason), e.tag)


class _MalformedError(Exception):
    def __init__(self, reason: str, tag: str | None) -> None:
        self.reason = reason
        self.tag = tag


def _next_word(text: str, pos: int) -> tuple[str, int]:
    """Return the word starting at C{pos} and the position after it."""
    end = pos
    length = len(text)
    while end < length and text[end] not in WHITESPACE:
        end += 1
    return text[pos:end], end


def _skip_space(text: str, pos: int) -> int:
    length = len(text)
    while pos < length and text[pos] in WHITESPACE:
        pos += 1
    return pos


def _parse_text(text: str) -> Event | None:
    if text.startswith("|"):
        return Text(text[2:] if text.startswith("| ") else text[1:])
    pos = _skip_space(text, 0)
    if pos == len(text):
        return None
    tag = None
    word, pos = _next_word(text, pos)
    if word.startswith("#"):
        tag = word[1:]
        if not TAG_RE.match(tag):
            raise _MalformedError(
                "a tag is # and 1 to 64 letters, digits or _.:- characters", None
            )
        pos = _skip_space(text, pos)
        if pos == len(text):
            raise _MalformedError("a tag must be followed by a request", tag)
        word, pos = _next_word(text, pos)

    if word == "OK":
        return _parse_success(text, pos, tag)
    if word == "ERR":
        return _parse_failure(text, pos, tag)
    if word == "ITEM":
        return Item(_parse_reply_value(text, pos, tag, "ITEM"), tag)
    if word == "PROGRESS":
        return _parse_progress(text, pos, tag)
    if word == "BYE":
        return _parse_bye(text, pos, tag)
    verb = word.upper()
    if verb in COMMANDS:
        return Command(verb, _parse_arguments(text, pos, tag, allow_keywords=False)[0], tag)

    options: dict[str, Any] = {}
    while word.startswith("+"):
        _parse_option(word, options, tag)
        pos = _skip_space(text, pos)
        if pos == len(text):
            raise _MalformedError("options must be followed by a procedure name", tag)
        word, pos = _next_word(text, pos)
    if not is_procedure_name(word):
        raise _MalformedError(f"not a procedure name or command: {word[:80]!r}", tag)
    args, kwargs = _parse_arguments(text, pos, tag, allow_keywords=True)
    return Call(word, args, kwargs, tag, **options)


def _parse_option(word: str, options: dict[str, Any], tag: str | None) -> None:
    name, _, value = word[1:].partition("=")
    if name not in OPTIONS:
        raise _MalformedError(f"unknown option +{name[:40]}", tag)
    if name in options:
        raise _MalformedError(f"option +{name} given twice", tag)
    if name in ("cast", "progress"):
        if value:
            raise _MalformedError(f"+{name} takes no value", tag)
        options[name] = True
        return
    if not value:
        raise _MalformedError(f"+{name} needs a value: +{name}=...", tag)
    if name == "timeout":
        if not SECONDS_RE.match(value):
            raise _MalformedError(f"+timeout takes seconds such as 2.5, not {value[:40]!r}", tag)
        options["timeout"] = float(value)
    elif name == "window":
        if not WINDOW_RE.match(value):
            raise _MalformedError(
                f"+window takes a whole number of items from 1 to {MAX_WINDOW:,}", tag
            )
        options["window"] = int(value)
    elif name == "hops":
        if not HOPS_RE.match(value):
            raise _MalformedError("+hops takes a small whole number", tag)
        options["hops"] = int(value)
    elif name == "caller":
        if not IDENTITY_RE.match(value):
            raise _MalformedError(
                "+caller takes an identity: 1 to 128 letters, digits or _.-", tag
            )
        options["caller"] = value
    else:
        if not OPTION_VALUE_RE.match(value):
            raise _MalformedError(f"+{name} takes 1 to 256 printable ASCII characters", tag)
        options[name] = value


def _parse_arguments(
    text: str, pos: int, tag: str | None, allow_keywords: bool
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    length = len(text)
    while True:
        pos = _skip_space(text, pos)
        if pos >= length:
            return tuple(args), kwargs
        keyword = None
        if allow_keywords:
            match = KEYWORD_RE.match(text, pos)
            if match is not None:
                keyword = match.group(1)
                pos = match.end()
                if keyword in kwargs:
                    raise _MalformedError(f"keyword argument {keyword} given twice", tag)
        value, pos = _parse_value(text, pos, tag)
        if keyword is None:
            if kwargs:
                raise _MalformedError("positional argument after a keyword argument", tag)
            args.append(value)
        else:
            kwargs[keyword] = value


#: A JSON string longer than this that ends its line is read by orjson, which
#: is several times faster on long values than the standard decoder.
_LONG_JSON = 4096


def _long_string(text: str, pos: int) -> str | None:
    """
    The JSON string at C{pos} if it ends the line, else None (and the
    standard decoder reads it, with its own errors: orjson refuses lone
    surrogates, which the protocol takes).  For what L{_parse_long_string}
    leaves: a keyword argument's value, words apart by tabs.
    """
    if not text[-_LONG_TAIL:].rstrip(WHITESPACE).endswith('"'):
        return None  # orjson takes CR and LF after a value; the protocol does not
    try:
        value = orjson.loads(text[pos:])
    except orjson.JSONDecodeError:
        return None
    return value if type(value) is str else None


def _parse_value(text: str, pos: int, tag: str | None) -> tuple[Any, int]:
    if len(text) - pos > _LONG_JSON and text[pos] == '"':
        value = _long_string(text, pos)
        if value is not None:
            return value, len(text)
    if pos < len(text) and text[pos] in JSON_OPENERS:
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except ValueError as e:
            raise _MalformedError(f"bad JSON at column {pos + 1}: {_reason(e)}", tag) from None
        except RecursionError:
            raise _MalformedError(f"JSON nested too deeply at column {pos + 1}", tag) from None
        if end < len(text) and text[end] not in WHITESPACE:
            raise _MalformedError(f"unexpected text after JSON value at column {end + 1}", tag)
        return value, end
    word, end = _next_word(text, pos)
    if word in BARE_CONSTANTS:
        return BARE_CONSTANTS[word], end
    if _NUMBER_RE.match(word):
        try:
            return _DECODER.decode(word), end
        except ValueError:
            raise _MalformedError(f"number out of range at column {pos + 1}", tag) from None
    return word, end


def parse_words(words: list[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """
    Read already-split words (a command line's) as a request's arguments:
    each word is one value, JSON where it parses and a string otherwise, and
    C{name=value} is a keyword argument.

    @raise ValueError: a word is malformed, naming it.
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for word in words:
        match = KEYWORD_RE.match(word)
        start = match.end() if match else 0
        try:
            if word[start : start + 1] in JSON_OPENERS:
                value = _DECODER.decode(word[start:])
            else:
                value, end = _parse_value(word, start, None)
                if end < len(word):
                    value = word[start:]  # one shell word with spaces in it: a string
        except (ValueError, RecursionError, _MalformedError) as e:
            raise ValueError(f"bad argument {word[:80]!r}: {getattr(e, 'reason', e)}") from None
        if match:
            kwargs[match.group(1)] = value
        elif kwargs:
            raise ValueError(f"positional argument {word[:80]!r} after a keyword argument")
        else:
            args.append(value)
    return tuple(args), kwargs


def _reason(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return error.msg
    return str(error)


def _parse_success(text: str, pos: int, tag: str | None) -> Success:
    return Success(_parse_reply_value(text, pos, tag, "OK"), tag)


def _parse_reply_value(text: str, pos: int, tag: str | None, word: str) -> Any:
    """The JSON value after a reply's word (C{OK}, C{ITEM}); none is C{null}."""
    pos = _skip_space(text, pos)
    if pos == len(text):
        return None
    try:
        # raw_decode reads in place: no copy of a long value to strip it.
        value, end = _DECODER.raw_decode(text, pos)
        if text[end:].strip(WHITESPACE):
            raise ValueError("Extra data")
    except ValueError as e:
        raise _MalformedError(f"bad JSON in {word} reply: {_reason(e)}", tag) from None
    except RecursionError:
        raise _MalformedError(f"JSON nested too deeply in {word} reply", tag) from None
    return value


def _parse_bye(text: str, pos: int, tag: str | None) -> Bye:
    """C{BYE "why"}: said once, untagged, by a node closing the connection."""
    reason = _parse_reply_value(text, pos, tag, "BYE")
    if tag is not None or not isinstance(reason, str):
        raise _MalformedError("BYE is untagged and takes a JSON string", tag)
    return Bye(reason)


def _parse_progress(text: str, pos: int, tag: str | None) -> Progress:
    """C{PROGRESS {"done": 3, "total": 10, "message": "..."}}; other keys are ignored."""
    value = _parse_reply_value(text, pos, tag, "PROGRESS")
    usage = 'PROGRESS takes {"done": N, "total": N or null, "message": text or null}'
    if not isinstance(value, dict):
        raise _MalformedError(usage, tag)
    done, total, message = value.get("done"), value.get("total"), value.get("message")
    if not _is_amount(done) or not (total is None or _is_amount(total)):
        raise _MalformedError(usage, tag)
    if not (message is None or isinstance(message, str)):
        raise _MalformedError(usage, tag)
    return Progress(done, total, message, tag)  # type: ignore[arg-type]


def _is_amount(value: object) -> bool:
    """A finite number >= 0, as progress counts."""
    return type(value) in (int, float) and 0 <= value < math.inf  # type: ignore[operator]


def _parse_failure(text: str, pos: int, tag: str | None) -> ErrorReply:
    parts = text[pos:].split(None, 2)
    if len(parts) < 2 or not CODE_RE.match(parts[0]) or parts[1] not in OUTCOMES:
        raise _MalformedError("an ERR reply is: ERR CODE OUTCOME message", tag)
    code, outcome = parts[0], OUTCOMES[parts[1]]
    message = parts[2] if len(parts) > 2 else ""
    node = None
    if message.startswith("@"):
        node, _, message = message[1:].partition(" ")
        message = message.lstrip(WHITESPACE)
    trace = TRACE_SUFFIX.search(message)
    if trace is not None:
        message = message[: trace.start()]
    error = error_from_wire(code, outcome, message, node or None)
    error.trace = trace.group(1) if trace is not None else None
    return ErrorReply(error, tag)
