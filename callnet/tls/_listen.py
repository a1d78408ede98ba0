"""
The node's own listen form, C{tls:PORT[:interface=ADDR][:backlog=N]}: what
it says, read without Twisted, whose own C{tls:} prefix means something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callnet.errors import ConfigError

#: The listen form of a node's own TLS listener: C{tls:PORT[:interface=ADDR]}.
LISTEN_PREFIX = "tls:"


def is_tls_listen(description: str) -> bool:
    """Whether a listen string is the node's own C{tls:} form."""
    return description.startswith(LISTEN_PREFIX)


@dataclass(frozen=True)
class ListenSpec:
    """What a C{tls:} listen string says."""

    port: int
    interface: str = ""
    backlog: int = 50


def _split(description: str) -> list[str]:
    """Split an endpoint string at colons not escaped by a backslash."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_listen(description: str) -> ListenSpec:
    """
    Read C{tls:PORT[:interface=ADDR][:backlog=N]} (colons in an IPv6
    address escaped as C{\\:}).

    @raise ConfigError: naming what is wrong with it.
    """
    usage = "tls:PORT[:interface=ADDRESS][:backlog=N]"
    if not is_tls_listen(description):
        raise ConfigError(f'not a tls: listener: "{description}" (expected {usage})')
    port_text, *options = _split(description[len(LISTEN_PREFIX) :])
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f'bad tls: listener "{description}": the port must be 0 to 65535')
    spec: dict[str, Any] = {"port": int(port_text)}
    for option in options:
        key, sep, value = option.partition("=")
        if key == "interface" and sep:
            spec["interface"] = value
        elif key == "backlog" and sep and value.isdigit() and int(value) > 0:
            spec["backlog"] = int(value)
        else:
            raise ConfigError(
                f'bad tls: listener "{description}": unknown or malformed option'
                f' "{option}" (expected {usage}; the certificate comes from [tls])'
            )
    return ListenSpec(**spec)
