"""
The service module the benchmark's callnet node loads (C{--service
benchmarks.procs}): the thread-pool variant of C{add}.

The built-in C{add} is declared C{run="reactor"}; this one is a plain
function, so every call crosses into the node's thread pool and back.
"""

from callnet import procedure


@procedure
def add_threaded(a: float, b: float) -> float:
    """Return a + b, computed in one of the node's worker threads."""
    return a + b
