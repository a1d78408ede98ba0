"""
The service module the benchmark's callnet node loads (C{--service
benchmarks.procs}): the thread-pool variant of C{add}, and the streams of
the C{stream} and C{stream-1m} workloads.

The built-in C{add} is declared C{run="reactor"}; this one is a plain
function, so every call crosses into the node's thread pool and back.
Likewise C{stream_items} is an async generator (resumed in the reactor) and
C{stream_items_threaded} a plain generator (pulled in worker threads).
"""

from collections.abc import AsyncIterator, Iterator

from callnet import procedure


@procedure
def add_threaded(a: float, b: float) -> float:
    """Return a + b, computed in one of the node's worker threads."""
    return a + b


@procedure
async def stream_items(n: int, size: int = 0) -> AsyncIterator[int | str]:
    """Stream n items, made in the reactor: 0 ... n-1, or (size > 0) strings of size chars."""
    if size:
        # One string for every item: what is measured is moving it, not making it.
        payload = "x" * size
        for _ in range(n):
            yield payload
    else:
        for i in range(n):
            yield i


@procedure
def stream_items_threaded(n: int, size: int = 0) -> Iterator[int | str]:
    """Stream n items, made in worker threads: 0 ... n-1, or (size > 0) strings of size chars."""
    if size:
        payload = "x" * size
        for _ in range(n):
            yield payload
    else:
        yield from range(n)
