"""
One result handed from a worker thread to a waiting caller: the blocking
client's one-shot L{callnet.blocking._wait._Done} beside the standard
library's L{threading.Event} and L{concurrent.futures.Future}.

    python benchmarks/handover.py [--rounds N]

Prints microseconds per hand-over for each, measured in the same run.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from callnet.blocking._wait import _Done

_Put = Callable[[Any], object]


def per_handover(
    make: Callable[[], Any], put: Callable[[Any], object], take: Callable[[Any], object], n: int
) -> float:
    """Microseconds per round: make a one-shot, have a worker set it, wait for it."""
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def worker() -> None:
        while (job := jobs.get()) is not None:
            put(job)

    thread = threading.Thread(target=worker)
    thread.start()
    start = time.perf_counter()
    for _ in range(n):
        one = make()
        jobs.put(one)
        take(one)
    elapsed = time.perf_counter() - start
    jobs.put(None)
    thread.join()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    rounds = parser.parse_args().rounds
    kinds: dict[
        str, tuple[Callable[[], Any], Callable[[Any], object], Callable[[Any], object]]
    ] = {
        "_Done": (_Done, lambda d: d.set(), lambda d: d.wait(5)),
        "threading.Event": (threading.Event, lambda e: e.set(), lambda e: e.wait(5)),
        "concurrent.futures.Future": (Future, lambda f: f.set_result(1), lambda f: f.result(5)),
    }
    for name, (make, put, take) in kinds.items():
        figures = sorted(per_handover(make, put, take, rounds) for _ in range(3))
        print(f"{name:28} {figures[1]:6.1f} us per hand-over (median of 3)")


if __name__ == "__main__":
    main()
