"""
The codec's encoders: events and values to bytes, one line each.  No I/O,
no Twisted.  Strings are written with orjson, byte for byte as the C{json}
module would write them (a property test checks it); L{callnet.wire}
re-exports every encoder.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import orjson

from callnet.errors import CallError
from callnet.wire_events import Call
from callnet.wire_grammar import (
    IDENTIFIER_RE,
    IDENTITY_RE,
    MAX_WINDOW,
    OPTION_VALUE_RE,
    TAG_RE,
    is_procedure_name,
)

_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode


def encode_json(value: Any) -> str:
    """
    Encode a value as compact one-line JSON.

    @raise TypeError: the value is not JSON (a set, an object, ...).
    @raise ValueError: it holds NaN or infinity, or nests too deeply.
    """
    try:
        encoded = _ENCODE(value)
    except RecursionError:
        raise ValueError("value nests too deeply") from None
    if not encoded.isascii():
        try:
            encoded.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates cannot travel as UTF-8; \\u escapes can.
            encoded = _ENCODE_ASCII(value)
    return encoded


@functools.lru_cache(maxsize=256)
def format_seconds(seconds: float) -> str:
    """Write a timeout as +timeout reads it: plain decimal, to the microsecond."""
    text = f"{min(max(seconds, 0.0), 999_999_999.0):.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _prefix(tag: str | None) -> str:
    return f"#{tag} " if tag is not None else ""


def _encode_string(value: str) -> str:
    """A string as L{encode_json} writes it, faster (a property test checks it)."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:  # lone surrogates
        return encode_json(value)


def _encode_argument(value: Any) -> str:
    """L{encode_json}, with the commonest argument types done directly."""
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is str:
        return str(_encode_string(value))
    return encode_json(value)


@functools.lru_cache(maxsize=1024)
def valid_procedure_name(name: str) -> bool:
    """L{is_procedure_name}, remembered: a client sends the same few names."""
    return is_procedure_name(name)


def encode_simple_call(tag: str, timeout: float, procedure: str, args: tuple[Any, ...]) -> bytes:
    """
    L{encode_call} for the commonest call: a tag, a timeout, positional
    arguments.  The tag must be valid (the caller made it).

    @raise ValueError: the procedure name is not valid, or an argument is
        not JSON (also C{TypeError}).
    """
    if not valid_procedure_name(procedure):
        raise ValueError(f"not a procedure name: {procedure[:80]!r}")
    text = " ".join(
        [f"#{tag} +timeout={format_seconds(timeout)} {procedure}", *map(_encode_argument, args)]
    )
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return encode_call(Call(procedure, args, {}, tag, timeout))


def encode_call(call: Call) -> bytes:
    """
    Encode a request line.

    @raise ValueError: the procedure name, tag or an option is not valid on
        the wire, or an argument is not JSON (also C{TypeError}).
    """
    if not is_procedure_name(call.procedure):
        raise ValueError(f"not a procedure name: {call.procedure[:80]!r}")
    words = []
    if call.tag is not None:
        if not TAG_RE.match(call.tag):
            raise ValueError(f"not a tag: {call.tag[:80]!r}")
        words.append(f"#{call.tag}")
    if call.timeout is not None:
        words.append(f"+timeout={format_seconds(call.timeout)}")
    if call.cast:
        words.append("+cast")
    for name in ("key", "trace"):
        value = getattr(call, name)
        if value is not None:
            if not OPTION_VALUE_RE.match(value):
                raise ValueError(f"+{name} takes 1 to 256 printable ASCII characters")
            words.append(f"+{name}={value}")
    if call.hops:
        if not 0 <= call.hops <= 999:
            raise ValueError("+hops must be from 0 to 999")
        words.append(f"+hops={call.hops}")
    if call.caller is not None:
        if not IDENTITY_RE.match(call.caller):
            raise ValueError(f"not an identity: {call.caller[:80]!r}")
        words.append(f"+caller={call.caller}")
    if call.window is not None:
        if type(call.window) is not int or not 1 <= call.window <= MAX_WINDOW:
            raise ValueError(f"+window must be a whole number from 1 to {MAX_WINDOW}")
        words.append(f"+window={call.window}")
    if call.progress:
        words.append("+progress")
    words.append(call.procedure)
    words.extend(map(_encode_argument, call.args))
    for name, value in call.kwargs.items():
        if not IDENTIFIER_RE.match(name):
            raise ValueError(f"not a keyword argument name: {name[:80]!r}")
        words.append(f"{name}={_encode_argument(value)}")
    line = " ".join(words) + "\n"
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:
        # A string held lone surrogates: send every value as ASCII JSON.
        head = words[: len(words) - len(call.args) - len(call.kwargs)]
        tail = [encode_json(value) for value in call.args]
        tail += [f"{name}={encode_json(value)}" for name, value in call.kwargs.items()]
        return (" ".join(head + tail) + "\n").encode("utf-8")


def encode_command(verb: str, args: tuple[Any, ...] = (), tag: str | None = None) -> bytes:
    """Encode a command line such as C{CANCEL 17}."""
    words = [verb, *map(encode_json, args)]
    return (_prefix(tag) + " ".join(words) + "\n").encode("utf-8")


def encode_success(value: Any, tag: str | None = None) -> bytes:
    """Encode an OK reply; C{OK} alone stands for C{None}."""
    if value is None:
        body = ""
    elif type(value) is int:
        body = " " + int.__repr__(value)  # no JSON encoder for the commonest result
    elif type(value) is str:
        # Straight to bytes: a long value is copied once, not three times.
        try:
            encoded = orjson.dumps(value)
        except orjson.JSONEncodeError:  # lone surrogates
            body = " " + encode_json(value)
        else:
            if tag is None:
                return b"OK %b\n" % encoded
            return b"#%b OK %b\n" % (tag.encode("ascii"), encoded)
    else:
        body = " " + encode_json(value)
    if tag is None:
        return f"OK{body}\n".encode()
    return f"#{tag} OK{body}\n".encode()


def encode_failure(error: CallError, tag: str | None = None) -> bytes:
    """Encode an ERR reply for an error, on one line whatever its message holds."""
    message = " ".join(error.message.split()) or error.code.lower().replace("_", " ")
    if message.startswith("@") and not error.node:
        message = "(at)" + message[1:]
    node = f"@{error.node} " if error.node else ""
    if error.trace and OPTION_VALUE_RE.match(error.trace):
        message += f" [trace {error.trace}]"
    line = f"{_prefix(tag)}ERR {error.code} {error.outcome.value} {node}{message}\n"
    return line.encode("utf-8", "backslashreplace")


def encode_item(value: Any, tag: str | None = None) -> bytes:
    """Encode one item of a stream: C{ITEM json}, before the stream's final reply."""
    if type(value) is str:
        # Straight to the line, as encode_success does: a stream of large
        # strings would otherwise copy each item four times.
        try:
            encoded = orjson.dumps(value)
        except orjson.JSONEncodeError:  # lone surrogates: as any other value, below
            pass
        else:
            if tag is None:
                return b"ITEM %b\n" % encoded
            return b"#%b ITEM %b\n" % (tag.encode("ascii"), encoded)
    # An item is written as a result is, with the same fast paths.
    body = encode_success(value).removeprefix(b"OK")
    if tag is None:
        return b"ITEM" + body
    return b"#%b ITEM%b" % (tag.encode("ascii"), body)


def encode_progress(
    done: int | float,
    total: int | float | None = None,
    message: str | None = None,
    tag: str | None = None,
) -> bytes:
    """Encode a C{PROGRESS} line; C{message} is cut to one line of text."""
    report: dict[str, Any] = {"done": done, "total": total}
    if message is not None:
        report["message"] = " ".join(message.split())
    return f"{_prefix(tag)}PROGRESS {encode_json(report)}\n".encode("utf-8", "backslashreplace")


def encode_more(tag: str, count: int) -> bytes:
    """Grant the stream C{tag} C{count} more items: C{MORE #tag count}."""
    if not TAG_RE.match(tag) or type(count) is not int or not 1 <= count <= MAX_WINDOW:
        raise ValueError(f"MORE takes a tag and a count from 1 to {MAX_WINDOW}")
    return f"MORE #{tag} {count}\n".encode("ascii")


def encode_text(text: str) -> bytes:
    """Encode lines of text for a person, each marked with C{|}."""
    lines = text.splitlines() or [""]
    return "".join(f"| {line}".rstrip() + "\n" for line in lines).encode(
        "utf-8", "backslashreplace"
    )


def encode_bye(reason: str) -> bytes:
    """Encode C{BYE "reason"}: the node closes the connection (see L{callnet.wire.Bye})."""
    return f"BYE {encode_json(' '.join(reason.split()))}\n".encode("utf-8", "backslashreplace")
