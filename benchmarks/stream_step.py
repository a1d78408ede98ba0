"""
What one item of an async generator stream costs the node in the reactor:
each step resumed by hand (an item made at once needs no Deferred) against
each step wrapped in C{ensureDeferred}, in one run, alternating.

    python benchmarks/stream_step.py [items]

Prints microseconds and Python function calls per item for both.  The
calls are counted by cProfile and do not depend on the machine's load.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.defer import ensureDeferred

from callnet.streaming import InReactorSource
from callnet.wire import encode_item


async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def _next(generator: AsyncIterator[Any]) -> Any:
    return await generator.__anext__()


def through_deferreds(n: int) -> list[bytes]:
    """Every step through ensureDeferred, as the node did before."""
    out: list[bytes] = []
    generator = numbers(n)
    done = []

    def step() -> None:
        while not done:
            d = ensureDeferred(_next(generator))
            if not d.called:
                raise AssertionError("numbers() never waits")
            d.addCallbacks(lambda value: out.append(encode_item(value)), done.append)

    step()
    return out


def by_hand(n: int) -> list[bytes]:
    """The node's own source, which resumes each step itself."""
    out: list[bytes] = []
    source = InReactorSource(numbers(n), encode_item, out.append)
    source.grant(n + 1)
    return out


def measure(run: Any, n: int) -> tuple[float, float]:
    started = time.perf_counter()
    assert len(run(n)) == n
    seconds = time.perf_counter() - started
    profile = cProfile.Profile()
    profile.enable()
    run(n)
    profile.disable()
    return seconds / n * 1e6, pstats.Stats(profile).total_calls / n  # type: ignore[attr-defined]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    results: dict[str, list[tuple[float, float]]] = {"by hand": [], "ensureDeferred": []}
    for _ in range(5):
        results["by hand"].append(measure(by_hand, n))
        results["ensureDeferred"].append(measure(through_deferreds, n))
    for name, runs in results.items():
        times = sorted(t for t, _ in runs)
        print(
            f"{name:>15}: {times[len(times) // 2]:.2f} us/item (median of 5), "
            f"{runs[0][1]:.1f} Python calls/item"
        )


if __name__ == "__main__":
    main()
