"""
The checks of the configuration schema: each takes a value as TOML or an
option gives it, and returns it as the config holds it, or raises
L{ExpectationError} saying what it must be instead.  L{callnet.config}
declares which setting each check guards.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

#: A check: the value as given -> the value as held.
Check = Callable[[object], object]


class ExpectationError(ValueError):
    """A value failed its check; the message says what it must be instead."""


def whole(minimum: int) -> Check:
    expectation = f"a whole number >= {minimum}"

    def check(value: object) -> object:
        # bool is an int to Python, but "threads = true" is a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ExpectationError(expectation)
        return value

    return check


def seconds(value: object) -> object:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ExpectationError("a number of seconds > 0")
    return float(value)


def flag(value: object) -> object:
    if not isinstance(value, bool):
        raise ExpectationError("true or false")
    return value


def text(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise ExpectationError("a non-empty string")
    return value


def strings(expectation: str, minimum: int) -> Check:
    def check(value: object) -> object:
        if (
            not isinstance(value, list | tuple)
            or len(value) < minimum
            or not all(isinstance(item, str) and item.strip() for item in value)
        ):
            raise ExpectationError(expectation)
        return tuple(value)

    return check


_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")

#: Identities no token may be named: each already means something to access
#: rules (anyone, no authentication, a node of the cluster, the node itself),
#: and a token named so would read as that.
RESERVED_IDENTITIES = frozenset({"*", "anonymous", "peer", "node"})


def node_name(value: object) -> object:
    """A node's name: it is one word on the wire (C{@name}), so no spaces."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ExpectationError("a node name of letters, digits and _.- (at most 128)")
    return value


def peers(value: object) -> object:
    """A mapping or pairs of peer name -> client endpoint string."""
    pairs = value.items() if isinstance(value, dict) else value
    expectation = "pairs of a node name (letters, digits, _.-) and an endpoint string"
    if not isinstance(pairs, Iterable) or isinstance(pairs, str):
        raise ExpectationError(expectation)
    checked = []
    for pair in pairs:
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(item, str) for item in pair)
            or not _NAME.match(pair[0])
            or not pair[1].strip()
        ):
            raise ExpectationError(expectation)
        checked.append((pair[0], pair[1]))
    names = [name for name, _ in checked]
    if len(set(names)) != len(names):
        raise ExpectationError("pairs with each peer name once")
    return tuple(checked)


#: A token must be long enough that guessing it is hopeless.
MIN_TOKEN_LENGTH = 16


def secret(value: object) -> object:
    if not isinstance(value, str) or len(value) < MIN_TOKEN_LENGTH or value != value.strip():
        raise ExpectationError(
            f"a token of at least {MIN_TOKEN_LENGTH} characters, without spaces around it"
        )
    return value


def tokens(value: object) -> object:
    """A table of identity -> token."""
    if not isinstance(value, dict):
        raise ExpectationError("a table of identity = token")
    checked = []
    for identity, token in value.items():
        if not _NAME.match(identity):
            raise ExpectationError("identities made of letters, digits and _.-")
        if identity in RESERVED_IDENTITIES:
            raise ExpectationError(
                f"identities other than {', '.join(sorted(RESERVED_IDENTITIES))}"
                f" ({identity!r} already means something to access rules)"
            )
        checked.append((identity, secret(token)))
    tokens = [token for _, token in checked]
    if len(set(tokens)) != len(tokens):
        raise ExpectationError("a different token for each identity")
    return tuple(checked)


def acl(value: object) -> object:
    """A table of identity (or *) -> list of procedure patterns."""
    if not isinstance(value, dict):
        raise ExpectationError("a table of identity = [procedure patterns]")
    checked = []
    for identity, patterns in value.items():
        if identity != "*" and not _NAME.match(identity):
            raise ExpectationError("identities made of letters, digits and _.-, or *")
        if not isinstance(patterns, list) or not all(
            isinstance(pattern, str) and pattern for pattern in patterns
        ):
            raise ExpectationError("lists of procedure name patterns")
        checked.append((identity, tuple(patterns)))
    return tuple(checked)
