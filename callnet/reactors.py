"""
The reactor capabilities callnet's library code uses, as typing protocols.

Library code takes its reactor as a parameter typed by these, never the
global reactor, so tests can pass a L{twisted.internet.testing.MemoryReactorClock}
and move time by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IWriteDescriptor

#: Lines written while handling one read before they are sent there and then
#: (see L{sender}), rather than all together once the read is handled.
SEND_EVERY = 32


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


def sender(transport: object) -> Callable[[], None] | None:
    """
    A function that sends what C{transport} has buffered now, in this reactor
    iteration, or None for a transport that cannot (TLS, test transports).

    A transport's writes go out when the reactor next finds its socket
    writable, after the read being handled.  A node handling a read of many
    pipelined calls, or a client the replies to many, would then send nothing
    until it has handled them all, while the other side waits idle: the two
    take turns instead of working at once.  Sending every L{SEND_EVERY} lines
    keeps both busy.  This is L{IWriteDescriptor.doWrite}, which the reactor
    calls when the socket is writable; for a non-blocking socket that is not,
    it sends nothing and the reactor goes on as before.
    """
    if not IWriteDescriptor.providedBy(transport):
        return None
    descriptor: Any = transport

    def send() -> None:
        # A closing transport's doWrite finishes the close: leave that to the
        # reactor.
        if descriptor.connected and not descriptor.disconnecting:
            descriptor.doWrite()

    return send
