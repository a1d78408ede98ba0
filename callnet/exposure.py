"""
Protected mode's question: would this listener take plain text from other
machines?

The answer comes from the endpoint Twisted would build from the string, not
from the string's spelling, so C{TCP6:7600}, C{haproxy:tcp:7600} and
C{tcp:port=7600} are judged for what they listen on.  What cannot be judged
(a descriptor passed by systemd, an endpoint type from a plugin) is taken to
be exposed: the operator says otherwise with C{--allow-insecure}.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    StandardIOEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    _WrapperServerEndpoint,
    serverFromString,
)
from twisted.internet.testing import MemoryReactor
from twisted.protocols._sni import TLSServerEndpoint

from callnet.errors import ConfigError

#: Host names that always mean this machine.
_LOCAL_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
#: How an endpoint says it listens on every interface (named, to say so).
_EVERY_INTERFACE = frozenset({"", "0.0.0.0", "::"})  # noqa: S104


def is_loopback(interface: str) -> bool:
    """Whether an address to listen on is reachable from this machine only."""
    if interface.lower() in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return False  # every interface (""), or a name that may not be local
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def plaintext_exposure(description: str, own_tls: bool = False) -> str | None:
    """
    Where a listen string takes plain text from other machines, or C{None}.

    @param own_tls: the string is the node's own C{tls:} form, which the
        node builds itself (always TLS).
    @return: a phrase naming the address (C{"every interface"},
        C{"192.0.2.1"}, C{"an address it cannot tell"}).
    @raise ConfigError: the string is not an endpoint Twisted can build.
    """
    if own_tls:
        return None
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception as e:  # any parser's error means the string is bad
        raise ConfigError(f'bad endpoint "{description}": {type(e).__name__}: {e}') from None
    return _exposure(endpoint)


def _exposure(endpoint: object) -> str | None:
    if isinstance(endpoint, SSL4ServerEndpoint | TLSServerEndpoint):
        return None  # encrypted: the operator chose who may connect
    if isinstance(endpoint, _WrapperServerEndpoint):
        # A wrapper (haproxy:) changes what is read, not where it listens.
        return _exposure(endpoint._wrappedEndpoint)
    if isinstance(endpoint, UNIXServerEndpoint | StandardIOEndpoint):
        return None
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        interface = endpoint._interface
        if is_loopback(interface):
            return None
        return "every interface" if interface in _EVERY_INTERFACE else interface
    return "an address it cannot tell"
