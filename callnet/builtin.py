"""
The procedures a node serves when told nothing: small, safe, and enough to
try every kind of call from a terminal.
"""

from __future__ import annotations

import time as _time
from collections.abc import AsyncIterator, Callable
from typing import Any

from twisted.internet.task import deferLater

from callnet.errors import ERRORS_BY_CODE, InvalidArgumentError, Outcome
from callnet.reactors import Clock, twisted_clock
from callnet.registry import procedure

#: The longest C{sleep} or C{block} a caller may ask for, in seconds.
MAX_NAP = 3600.0
#: C{fib} is exponential: bound it so one call cannot hold a worker forever.
MAX_FIB = 35


def _seconds(seconds: Any) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidArgumentError(f"seconds must be a number, not {seconds!r}")
    if not 0 <= seconds <= MAX_NAP:
        raise InvalidArgumentError(f"seconds must be between 0 and {MAX_NAP:g}")
    return float(seconds)


@procedure(run="reactor", idempotent=True)
def echo(value: Any) -> Any:
    """Return the value unchanged."""
    return value


@procedure(run="reactor", idempotent=True)
def add(a: float, b: float) -> float:
    """Return a + b."""
    for value in (a, b):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgumentError(f"add takes numbers, not {value!r}")
    return a + b


@procedure(run="reactor", idempotent=True)
def time() -> float:
    """Return the node's clock: seconds since the Unix epoch."""
    return _time.time()


@procedure(run="reactor")
def fail(code: str = "INTERNAL", message: str = "failed on purpose") -> None:
    """Fail with the given error code, to see how errors look."""
    error_class = ERRORS_BY_CODE.get(code)
    if error_class is None:
        raise InvalidArgumentError(f"unknown code {code!r}; one of {', '.join(ERRORS_BY_CODE)}")
    raise error_class(message)


@procedure(run="thread")
def block(seconds: float) -> float:
    """Hold a worker thread for some seconds, as blocking code does; return them."""
    seconds = _seconds(seconds)
    _time.sleep(seconds)
    return seconds


@procedure(run="process", idempotent=True)
def fib(n: int) -> int:
    """Return the n-th Fibonacci number, the slow way, in a worker process."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_FIB:
        raise InvalidArgumentError(f"n must be a whole number from 0 to {MAX_FIB}")
    return n if n < 2 else _fib(n)


def _fib(n: int) -> int:
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


def builtin_procedures(clock: Clock) -> list[Callable[..., Any]]:
    """The built-in procedures, with C{sleep} bound to the node's clock."""

    @procedure(run="reactor", idempotent=True)
    async def sleep(seconds: float) -> float:
        """Wait some seconds without holding a thread, then return them."""
        seconds = _seconds(seconds)
        await deferLater(twisted_clock(clock), seconds)
        return seconds

    @procedure(run="reactor", idempotent=True)
    async def count(n: int, interval: float = 0) -> AsyncIterator[int]:
        """Stream 0 ... n-1, an item every interval seconds; end with n."""
        # Checked before the first item: nothing was made, so nothing ran.
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidArgumentError(
                f"n must be a whole number >= 0, not {n!r}", Outcome.NOT_RUN
            )
        try:
            interval = _seconds(interval)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(e.message, Outcome.NOT_RUN) from None
        for i in range(n):
            if i and interval:
                await deferLater(twisted_clock(clock), interval)
            yield i

    return [echo, add, sleep, time, fail, block, fib, count]
