"""
The codec's one number rule, and its fast parsers.  No I/O, no Twisted.

A word is a number exactly when it is a JSON number (RFC 8259, section 6);
an int when it has neither fraction nor exponent, else a float, and a float
too large to be finite is refused.  L{NUMBER_RE} is that rule for the general
parser in L{callnet.wire_parse}, which then reads the word with the C{json} module;
the fast parsers here match the same pattern on bytes and read the word with
C{int} and C{float}, which give what C{json} gives for every word the pattern
matches.

The fast parsers read the commonest lines straight from bytes: a request
with bare-word arguments, an OK reply with a number or a plain string, and a
long line ending in a long JSON string.  Each returns C{None} for any line it
does not read exactly as the general parser would, and the general parser
then reads it, with its own errors.  Property tests in
C{tests/test_wire_fast.py} hold the two to the same events.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from callnet.wire_events import RESERVED_NAMES, Call, Event, Item, Success

#: A JSON number.  Its groups are the fraction and the exponent: a number
#: with neither is an int.
NUMBER_PATTERN = r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?"
#: The number rule for text (the general parser's bare words).
NUMBER_RE = re.compile(NUMBER_PATTERN + r"\Z")
#: The same rule for bytes (the fast parsers' words).
_SIMPLE_NUMBER = re.compile(NUMBER_PATTERN.encode("ascii") + rb"\Z")
#: The same rule, without groups, to be part of a larger pattern.
_NUMBER_NO_GROUPS = re.sub(r"\((?!\?)", "(?:", NUMBER_PATTERN).encode("ascii")


def _number(word: bytes, whole: bool) -> int | float | None:
    """
    The value of a word L{_SIMPLE_NUMBER} matched (C{whole}: with neither
    fraction nor exponent), as C{json} reads it; None where C{json} refuses
    it, and the general parser then says why.
    """
    try:
        if whole:
            return int(word)
        value = float(word)
    except ValueError:  # more digits than int() takes (sys.set_int_max_str_digits)
        return None
    return value if math.isfinite(value) else None


# The common request of a program: a tag, a procedure and bare-word
# arguments (numbers, true/false/null, simple strings), ASCII only.  Such a
# line is read straight from bytes; anything else takes the general path.
_SIMPLE_CALL = re.compile(
    rb"(?:#([A-Za-z0-9_.:\-]{1,64}) )?"
    rb"(?:\+timeout=([0-9]{1,9}(?:\.[0-9]{1,9})?) )?"
    rb"(\+cast )?"
    rb"([A-Za-z_][A-Za-z0-9_.\-]{0,127})"
    rb"((?: [A-Za-z0-9_.+\-]+)*)\r?\Z"
)
#: Lines longer than this skip the fast paths: a regex scan of a long value
#: costs more than the JSON decoder's.
_SIMPLE_MAX = 512
_SIMPLE_CONSTANTS: dict[bytes, Any] = {b"true": True, b"false": False, b"null": None}


def _parse_simple_call(line: bytes) -> Call | None:
    """A request with only bare-word arguments, or None."""
    match = _SIMPLE_CALL.match(line)
    if match is None:
        return None
    tag, timeout, cast, name, rest = match.groups()
    procedure = name.decode("ascii")
    if procedure.lower() in RESERVED_NAMES:
        return None
    args = []
    for word in rest.split():
        if word in _SIMPLE_CONSTANTS:
            args.append(_SIMPLE_CONSTANTS[word])
            continue
        number = _SIMPLE_NUMBER.match(word)
        if number is None:
            args.append(word.decode("ascii"))
        elif number.lastindex is None and len(word) < 20:
            args.append(int(word))  # the commonest argument, inline
        else:
            value = _number(word, number.lastindex is None)
            if value is None:
                return None
            args.append(value)
    return Call(
        procedure,
        tuple(args),
        {},
        tag.decode("ascii") if tag else None,
        None if timeout is None else float(timeout),
        cast is not None,
    )


# The commonest reply: OK (or a stream's ITEM) with a number, a string without
# escapes, or nothing.  A short int, by far the commonest number, is tried first and has
# its own group; any other number is matched by the one rule.  The tag's
# group is possessive (?+), which makes it as quick as a required one.
_SIMPLE_SUCCESS = re.compile(
    rb"(?:#([A-Za-z0-9_.:\-]{1,64}) )?+(OK|ITEM)"
    rb"(?: (?:(-?(?:0|[1-9][0-9]{0,17}))"
    rb"|(" + _NUMBER_NO_GROUPS + rb")"
    rb"|\"([^\"\\\\\x00-\x1f\x7f-\xff]*)\"))?\r?\Z"
)


def _parse_simple_success(line: bytes) -> Success | Item | None:
    """An OK or ITEM reply, tagged or not, with a number or a plain ASCII string, or None."""
    match = _SIMPLE_SUCCESS.match(line)
    if match is None:
        return None
    tag, word, short_int, number, string = match.groups()
    value: Any
    if short_int is not None:
        value = int(short_int)
    elif string is not None:
        value = string.decode("ascii")
    elif number is None:
        value = None
    else:
        whole = _SIMPLE_NUMBER.match(number).lastindex is None  # type: ignore[union-attr]
        value = _number(number, whole)
        if value is None:
            return None
    if word == b"ITEM":
        return Item(value, tag.decode("ascii") if tag else None)
    return Success(value, tag.decode("ascii") if tag else None)


#: How far into a long line its last value may start, for _parse_long_string.
_LONG_HEAD = 1024
#: How much blank may follow a long string for _parse_long_string to read it.
_LONG_TAIL = 256


def _ends_in_string(line: bytes | memoryview) -> bool:
    """
    Whether the line, less one trailing CR as the general parser drops it,
    ends in a quote and then only spaces and tabs.  orjson also takes CR and
    LF after a value; the general parser does not.
    """
    tail = bytes(line[-_LONG_TAIL:])
    if tail.endswith(b"\r"):
        tail = tail[:-1]
    return tail.rstrip(b" \t").endswith(b'"')


def _parse_long_string(
    line: bytes | memoryview, read_head: Callable[[bytes], Event | None]
) -> Event | None:
    """
    Read a long line that ends with a long JSON string, as a call's last
    positional argument, an OK reply's value or a stream's item, without decoding or copying
    the line: the words before the string go to C{read_head} (the general
    parser), the string to orjson.  None for any other line, or when either
    refuses (the general parser then reads the whole line, with its own
    errors: orjson refuses lone surrogates, which the protocol takes).
    """
    head = bytes(line[:_LONG_HEAD])
    quote = head.find(b' "')
    if quote < 0 or not _ends_in_string(line):
        return None
    try:
        value = orjson.loads(line[quote + 1 :])
    except orjson.JSONDecodeError:
        return None
    if type(value) is not str:
        return None
    before = read_head(head[:quote])
    if type(before) is Success and before.value is None:
        return Success(value, before.tag)
    if type(before) is Item and before.value is None:
        return Item(value, before.tag)
    if type(before) is Call and not before.kwargs:
        return replace(before, args=(*before.args, value))
    return None
