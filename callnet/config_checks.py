"""
The checks of the configuration schema: each takes a value as TOML or an
option gives it, and returns it as the config holds it, or raises
L{ExpectationError} saying what it must be instead.  L{callnet.config}
declares which setting each check guards.
"""

from __future__ import annotations

import math
import re
import socket
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


def is_node_name(value: object) -> bool:
    """Whether C{value} can name a node: one word on the wire (C{@name}), no spaces."""
    return isinstance(value, str) and _NAME.match(value) is not None


def node_name(value: object) -> object:
    """A node's name: it is one word on the wire (C{@name}), so no spaces."""
    if not is_node_name(value):
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


#: The ways a node may find its peers besides C{[peers]}: C{dns-srv:NAME}
#: (SRV records give each peer's host and port) and C{dns-a:NAME:PORT} (the
#: A and AAAA records of a headless service, every peer on one port).
DISCOVER_SCHEMES = ("dns-srv", "dns-a")

DNS_NAME = re.compile(
    r"(?=.{1,253}\.?\Z)([A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\.?\Z"
)


def discover_target(text: str) -> tuple[str, str, int | None]:
    """
    Read a C{discover} string: its scheme, the DNS name to look up, and for
    C{dns-a} the port every peer listens on.

    @raise ValueError: saying what the string must be instead.
    """
    scheme, _, rest = text.partition(":")
    if scheme == "dns-srv" and DNS_NAME.match(rest):
        return scheme, rest, None
    if scheme == "dns-a":
        name, _, port = rest.rpartition(":")
        if DNS_NAME.match(name) and port.isdigit() and 0 < int(port) < 65536:
            return scheme, name, int(port)
    raise ValueError(
        '"dns-srv:NAME" (SRV records) or "dns-a:NAME:PORT" (A/AAAA records, one port),'
        " NAME a DNS name"
    )


def discover(value: object) -> object:
    if not isinstance(value, str):
        raise ExpectationError('a string such as "dns-srv:_callnet._tcp.callnet.example"')
    try:
        discover_target(value)
    except ValueError as e:
        raise ExpectationError(str(e)) from None
    return value


def nameservers(value: object) -> object:
    """A list of C{HOST:PORT} or C{HOST} (port 53) of DNS servers."""
    expectation = 'a list of DNS servers as "HOST" or "HOST:PORT" (IPv6 as "[HOST]:PORT")'
    if not isinstance(value, list | tuple):
        raise ExpectationError(expectation)
    checked = []
    for item in value:
        if not isinstance(item, str):
            raise ExpectationError(expectation)
        found = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([0-9.]+)(?::(\d{1,5}))?", item)
        if found is None:
            raise ExpectationError(expectation)
        host = found.group(1) or found.group(3)
        port = int(found.group(2) or found.group(4) or 53)
        try:
            socket.inet_pton(socket.AF_INET6 if found.group(1) else socket.AF_INET, host)
        except OSError:
            raise ExpectationError(expectation) from None
        if not 0 < port < 65536:
            raise ExpectationError(expectation)
        checked.append(item)
    return tuple(checked)


def nameserver_address(text: str) -> tuple[str, int]:
    """The host and port of a checked C{discover_nameservers} entry."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        return host, int(port[1:]) if port else 53
    host, _, port = text.partition(":")
    return host, int(port) if port else 53


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
