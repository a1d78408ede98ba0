"""
The reactor capabilities callnet's library code uses, as typing protocols.

Library code takes its reactor as a parameter typed by these, never the
global reactor, so tests can pass a L{twisted.internet.testing.MemoryReactorClock}
and move time by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol, cast

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
