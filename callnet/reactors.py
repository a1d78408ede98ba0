"""
The reactor capabilities callnet's library code uses, as typing protocols.

Library code takes its reactor as a parameter typed by these, never the
global reactor, so tests can pass a L{twisted.internet.testing.MemoryReactorClock}
and move time by hand.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable
from typing import Any, Literal, Protocol, cast

from twisted.internet.interfaces import IReactorTime


class DelayedCall(Protocol):
    """What callnet does with an L{IDelayedCall}: cancel it."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """L{IReactorTime}, as far as callnet uses it: deadlines and timers."""

    def callLater(
        self, delay: float, callable: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> DelayedCall: ...

    def seconds(self) -> float: ...


class DispatchReactor(Clock, Protocol):
    """
    What the dispatcher needs of a reactor: a L{Clock} for deadlines and
    L{IReactorFromThreads} to hear back from worker threads.
    """

    def callFromThread(
        self, callable: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> None: ...


def twisted_clock(clock: Clock) -> IReactorTime:
    """
    A L{Clock} as Twisted's typed APIs take one (C{deferLater},
    C{ClientService}, C{wrapClientTLS}): they name the zope interface
    C{IReactorTime}, which no structural type can meet, though every reactor
    and test clock callnet is given provides it.
    """
    return cast(IReactorTime, clock)


def set_no_delay(transport: object) -> None:
    """
    Turn off Nagle's algorithm on a TCP transport (others are left alone).

    An RPC reply is a small write that must go at once: delayed waiting for an
    acknowledgement, a large value's last segment can stall for tens of
    milliseconds.
    """
    set_option = getattr(transport, "setTcpNoDelay", None)
    if set_option is not None:
        with contextlib.suppress(OSError):  # not a TCP socket after all
            set_option(True)


def peer_closed(transport: object) -> Literal["open", "ending", "ended", "reset"]:
    """
    Whether the client of a connection the node is not reading has gone:
    C{"ended"} if it closed its side and every byte it sent has been read,
    C{"ending"} if it closed its side with bytes still unread (seen on Linux
    only, from the TCP state), C{"reset"} if the connection failed (a reset),
    C{"open"} otherwise, or when the transport has no socket to look at (a
    test's, a pipe).

    A transport that is not read is not watched by the reactor, so it sees
    neither the end of its input nor a reset until it reads again.  This
    looks at the socket without taking anything from it: it peeks.  Under
    TLS the socket is the one the TLS layer wraps.
    """
    handle = _socket_of(transport)
    dont_wait = getattr(socket, "MSG_DONTWAIT", None)  # not on Windows
    if handle is None or dont_wait is None:
        return "open"
    try:
        waiting = handle.recv(1, socket.MSG_PEEK | dont_wait)
    except (BlockingIOError, InterruptedError):
        return "open"  # nothing waiting: the client is there, or idle
    except OSError:
        return "reset"
    if not waiting:
        return "ended"
    return "ending" if _tcp_state(handle) == _TCP_CLOSE_WAIT else "open"


#: Linux's TCP_CLOSE_WAIT, the first byte of its C{struct tcp_info}: the
#: client has sent its FIN, and the node has not closed.
_TCP_CLOSE_WAIT = 8


def _tcp_state(handle: socket.socket) -> int | None:
    """Linux's state of a TCP socket, or C{None} elsewhere or for other sockets."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None or sys.platform != "linux" or handle.type != socket.SOCK_STREAM:
        return None
    if handle.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        return handle.getsockopt(socket.IPPROTO_TCP, option, 1)[0]
    except OSError:
        return None


def _socket_of(transport: object) -> socket.socket | None:
    """The socket under a transport, through wrapping layers such as TLS."""
    for _ in range(4):  # TCP, TLS over TCP, and a wrapper or two more
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None
