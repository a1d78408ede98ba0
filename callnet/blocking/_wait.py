"""
Waiting for an outcome from another thread: a one-shot event, the
bounds every wait of the blocking client keeps, and the one thread on which
no wait may block: a running reactor's.
"""

from __future__ import annotations

import sys
import threading
from typing import Protocol

from twisted.python import threadable

from callnet.errors import WrongThreadError

#: How much longer than a call's deadline its caller waits.  The side that
#: does the I/O enforces the deadline itself (and tells the node); the grace
#: lets that error, which knows more, arrive first, while still bounding the
#: wait when that side is too busy or gone.
GRACE = 0.25
#: How often a wait on the main thread wakes to let Python run a pending
#: KeyboardInterrupt.  A real SIGINT interrupts the wait at once on POSIX;
#: one raised by C{_thread.interrupt_main} (or a signal on Windows) is only
#: noticed when the thread next runs Python code.
INTERRUPT_CHECK_INTERVAL = 0.1


class _Waitable(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def _wait_event(event: _Waitable, timeout: float) -> bool:
    return event.wait(timeout)


class _Done:
    """
    A L{threading.Event} that is set once, made of one lock held until then:
    a waiter takes the lock and hands it on, so setting it and waking a
    caller cost a lock each, not a condition variable's several.

    Kept over L{concurrent.futures.Future}, which waits on a condition
    variable: C{benchmarks/handover.py} measured 32 us per hand-over from a
    worker thread to a waiting caller, against 49 us for a Future and 64 us
    for an Event, in one run on a 2-CPU machine.
    """

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set it (once; from one thread at a time)."""
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until it is set, C{timeout} seconds at most; whether it is."""
        if self._set:
            return True
        if self._lock.acquire(True, -1 if timeout is None else timeout):
            self._lock.release()  # for the next waiter
            return True
        return self._set


def on_running_reactor_thread() -> bool:
    """Whether the calling thread runs a Twisted reactor that is running now."""
    io_thread = threadable.ioThread
    if io_thread is None or io_thread != threading.get_ident():
        return False
    reactor = sys.modules.get("twisted.internet.reactor")
    return bool(getattr(reactor, "running", False))


def refuse_reactor_thread(what: str) -> None:
    """Raise L{WrongThreadError} if called on a running reactor's thread."""
    if on_running_reactor_thread():
        raise WrongThreadError(
            f"{what} blocks, and was called on the reactor thread, which it would"
            f" deadlock. Code running under the reactor must use the asynchronous API:"
            f" callnet.client.Client, whose call() returns a Deferred to await."
        )
