"""
Where the blocking client's plain-socket path connects: the endpoint
strings it reads itself (C{tcp:HOST:PORT}, C{unix:PATH}) and L{TLSAddress}
for a node's C{tls:} listener, which the reactor path can use too.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from callnet.reactors import DispatchReactor


@dataclass(frozen=True)
class TLSAddress:
    """
    A node's C{tls:} listener, for a L{BlockingClient} on either path.

        client = BlockingClient(TLSAddress("127.0.0.1", 7601, ca="certs/ca.pem"))

    The node's certificate must be signed by C{ca} and name C{name} (by
    default C{host}), as L{callnet.tls.client_endpoint} checks for the
    reactor's client; C{cert} and C{key} are a client certificate to present.
    """

    host: str
    port: int
    ca: str | os.PathLike[str]
    cert: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                "a client certificate needs its key: give both cert and key, or neither"
            )

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"tls:{shown}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A context that trusts only C{ca} and checks the node's name."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(os.fspath(self.cert), os.fspath(self.key))
        context.set_alpn_protocols(["callnet"])
        return context

    def reactor_endpoint(self, reactor: DispatchReactor) -> Any:
        """The same address as an endpoint for the reactor's client."""
        from callnet.tls import client_endpoint

        return client_endpoint(
            reactor, self.host, self.port, self.ca, self.cert, self.key, name=self.name
        )


@dataclass(frozen=True)
class Address:
    """Where the plain-socket path connects: a TCP host and port, a UNIX path, or TLS."""

    text: str
    family: int
    target: Any
    tls: TLSAddress | None = None


_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def parse_address(endpoint: object) -> Address | None:
    """
    The address of a client endpoint that the plain-socket path can reach:
    a L{TLSAddress}, or a C{tcp:} or C{unix:} endpoint string with nothing
    but a host and port or a path (and C{timeout}, which deadlines replace).
    C{None} for anything else, which only the reactor's client can use.
    """
    if isinstance(endpoint, TLSAddress):
        return Address(str(endpoint), socket.AF_INET, (endpoint.host, endpoint.port), endpoint)
    if not isinstance(endpoint, str):
        return None
    kind, _, rest = endpoint.partition(":")
    positional: list[str] = []
    named: dict[str, str] = {}
    for part in _UNESCAPED_COLON.split(rest):
        part = part.replace("\\:", ":")
        name, equals, value = part.partition("=")
        if equals and name.isidentifier():
            named[name] = value
        else:
            positional.append(part)
    named.pop("timeout", None)
    if kind == "tcp":
        fields = dict(zip(("host", "port"), positional, strict=False)) | named
        if set(fields) != {"host", "port"} or len(positional) > 2:
            return None
        try:
            port = int(fields["port"])
        except ValueError:
            return None
        family = socket.AF_INET6 if ":" in fields["host"] else socket.AF_INET
        return Address(endpoint, family, (fields["host"], port))
    if kind == "unix" and hasattr(socket, "AF_UNIX"):
        named.pop("checkPID", None)
        fields = dict(zip(("path",), positional, strict=False)) | named
        if set(fields) != {"path"} or len(positional) > 1:
            return None
        return Address(endpoint, socket.AF_UNIX, fields["path"])
    return None
