"""
The codec's grammar: the patterns of tags, names, options and values, the
protocol's constants, and the defaults both ends share.  No I/O, no
Twisted.  The decoder (L{callnet.wire}) and the encoders
(L{callnet.wire_encode}) read the same patterns from here, so what one
writes the other reads.
"""

from __future__ import annotations

import re
from typing import Any

from callnet.errors import Outcome
from callnet.wire_events import RESERVED_NAMES

#: The version of the node-to-node handshake (C{HELLO}); a peer that speaks
#: another is refused.
PROTOCOL_VERSION = 1

#: The longest line a decoder accepts by default, newline excluded.  Big
#: enough for a 1 MiB argument after JSON escaping, small enough that one
#: connection cannot make the node buffer more than a few MiB.
DEFAULT_MAX_LINE = 2 * 1024 * 1024
#: A call's deadline in seconds when nothing names one: the client's default
#: and the node's C{[limits] default_timeout} (a call from a plain telnet
#: session names none).  Long enough for any ordinary call, short enough that
#: a call to a hung procedure fails while its caller still cares.
DEFAULT_CALL_TIMEOUT = 30.0


#: Options a request may carry before its procedure name.
OPTIONS = frozenset({"timeout", "cast", "key", "trace", "hops", "caller", "window", "progress"})
#: The largest window a caller may grant in one word (C{+window=N}, C{MORE}).
MAX_WINDOW = 999_999_999

TAG_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")
PROCEDURE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}(@[A-Za-z0-9_.\-]{1,128})?\Z")
KEYWORD_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
OPTION_VALUE_RE = re.compile(r"[\x21-\x7e]{1,256}\Z")
HOPS_RE = re.compile(r"[0-9]{1,3}\Z")
WINDOW_RE = re.compile(r"[1-9][0-9]{0,8}\Z")
#: An identity, as config names them (a token's name, a certificate's name).
IDENTITY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")
SECONDS_RE = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?\Z")
#: An error's trace id ends its message as C{" [trace ID]"}.  ID is any
#: C{+trace} value (no spaces), brackets included: the suffix is read from the
#: last space of the line, so a C{]} inside the id cannot end it early.
TRACE_SUFFIX = re.compile(r" \[trace ([\x21-\x7e]{1,256})\]\Z")
CODE_RE = re.compile(r"[A-Z][A-Z_]{0,63}\Z")
WHITESPACE = " \t"
JSON_OPENERS = frozenset('"[{')
BARE_CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None}
OUTCOMES = {outcome.value: outcome for outcome in Outcome}


def is_procedure_name(name: str) -> bool:
    """Whether a word may name a procedure (C{name} or C{name@node})."""
    return bool(PROCEDURE_RE.match(name)) and name.partition("@")[0].lower() not in RESERVED_NAMES
