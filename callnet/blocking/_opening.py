"""
Opening a connection of the plain-socket path: the socket, its TLS
handshake and its C{AUTH}, each bounded by the deadline of the call that
needs the connection.  What fails here fails that call not-run: nothing of
it was sent.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from callnet.blocking._address import Address
from callnet.blocking._connection import Connection, _LostError
from callnet.errors import CallError, DeadlineExceededError, Outcome, UnavailableError
from callnet.wire import Success, encode_command


class Opener:
    """
    How one client opens its connections to one node.

    @param address: where the node listens.
    @param token: sent with C{AUTH} on each new connection; C{None}: none.
    @param connect_timeout: the deadline of a connection's C{AUTH}.
    @param max_line: the longest line a connection's decoder reads.
    @param monotonic: the clock that deadlines are read on.
    """

    def __init__(
        self,
        address: Address,
        *,
        token: str | None,
        connect_timeout: float,
        max_line: int,
        monotonic: Callable[[], float],
    ) -> None:
        self.address = address
        self._token = token
        self._connect_timeout = connect_timeout
        self._max_line = max_line
        self.monotonic = monotonic
        self._ssl_context = address.tls.ssl_context() if address.tls is not None else None

    def open(self, deadline: float, what: str) -> Connection:
        """Open, and authenticate, a new connection by C{deadline}, for C{what}."""
        address = self.address
        remaining = deadline - self.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"the deadline of {what} passed before it could be sent", Outcome.NOT_RUN
            )
        try:
            if address.family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(remaining)
                    sock.connect(address.target)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(address.target, timeout=remaining)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None and address.tls is not None:
                sock.settimeout(max(deadline - self.monotonic(), 1e-6))
                tls = address.tls
                try:
                    sock = self._ssl_context.wrap_socket(
                        sock, server_hostname=tls.name or tls.host
                    )
                except ssl.SSLCertVerificationError as e:
                    sock.close()
                    raise UnavailableError(
                        f"cannot connect to {address.text}: TLS handshake failed:"
                        f" certificate verify failed: {e.verify_message}",
                        Outcome.NOT_RUN,
                    ) from None
                except ssl.SSLError as e:
                    sock.close()
                    raise UnavailableError(
                        f"cannot connect to {address.text}: TLS handshake failed: {e.reason or e}",
                        Outcome.NOT_RUN,
                    ) from None
        except TimeoutError:
            raise DeadlineExceededError(
                f"the deadline of {what} passed while connecting to {address.text}",
                Outcome.NOT_RUN,
            ) from None
        except OSError as e:
            raise UnavailableError(
                f"cannot connect to {address.text}: {e.strerror or e}", Outcome.NOT_RUN
            ) from None
        connection = Connection(sock, self._max_line, self.monotonic)
        if self._token is not None:
            self._authenticate(connection, self._token, deadline)
        return connection

    def _authenticate(self, connection: Connection, token: str, deadline: float) -> None:
        """Send C{AUTH} on a new connection; raise the node's refusal, not-run."""
        auth_deadline = min(deadline, self.monotonic() + self._connect_timeout)
        tag = connection.next_tag()
        try:
            connection.send(encode_command("AUTH", (token,), tag), auth_deadline)
            reply = connection.read_reply(tag, auth_deadline, False)
        except TimeoutError:
            connection.close()
            raise DeadlineExceededError(
                f"the deadline passed while authenticating to {self.address.text}",
                Outcome.NOT_RUN,
            ) from None
        except (OSError, _LostError) as e:
            connection.close()
            raise UnavailableError(
                f"connection to {self.address.text} lost while authenticating: {e}",
                Outcome.NOT_RUN,
            ) from None
        except BaseException:
            connection.close()
            raise
        if type(reply) is not Success:
            connection.close()
            error: CallError = reply.error
            error.outcome = Outcome.NOT_RUN  # no call was sent
            raise error
