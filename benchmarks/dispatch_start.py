"""
What it costs the dispatcher to hand back a reactor procedure's plain value
as it is, beside wrapping it in a fired Deferred (C{succeed}) that its caller
then reads with C{addBoth}, as it would if C{Dispatcher.start} always
returned a Deferred.

    python benchmarks/dispatch_start.py [--calls N]

Prints nanoseconds per call for each, and for a whole call read from a line
and answered on a connection in memory, measured in the same run.
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from twisted.internet.defer import Deferred, succeed

from callnet.registry import procedure
from callnet.testing import MemoryNode
from callnet.wire import Call


@procedure(run="reactor")
def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    n = parser.parse_args().calls
    node = MemoryNode(name="bench", threads="manual")
    node.registry.add(add)
    start = node.dispatcher.start
    call = Call("add", (1, 2), {})
    seen: list[Any] = []
    take = seen.append

    def plain() -> None:
        # The caller tells a plain value from a Deferred, as the protocol does.
        outcome = start(call)
        if type(outcome) is Deferred:
            outcome.addBoth(take)
        else:
            take(outcome)
        seen.clear()

    def wrapped() -> None:
        succeed(start(call)).addBoth(take)
        seen.clear()

    connection = node.connect_raw()
    line = b"add 1 2\n"

    def whole() -> None:
        connection.send(line)
        node.flush()
        connection.lines()

    runs = (("plain value", plain), ("succeed() + addBoth", wrapped), ("whole call", whole))
    for name, run in runs:
        best = min(timeit.repeat(run, number=n, repeat=3))
        print(f"{name:22} {best / n * 1e9:7.0f} ns per call (best of 3)")


if __name__ == "__main__":
    main()
