"""
The node's counters, as C{STATS} and the metrics report them: calls,
errors and calls in flight, for the node and per procedure, with a
histogram of how long calls took.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Upper bounds in seconds of the call duration buckets, from a reactor
#: procedure's fraction of a millisecond to the longest deadline a node may
#: allow (C{max_timeout}, an hour by default).  A node keeps those up to its own
#: C{max_timeout} (see L{duration_buckets}); a last bucket takes the rest.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

#: The procedure label of calls for a name this node neither serves nor can
#: forward: one label for them all, so that callers cannot add a series to
#: the metrics per name they make up.
UNKNOWN_PROCEDURE = "(unknown)"


def duration_buckets(max_timeout: float) -> tuple[float, ...]:
    """
    The duration buckets of a node whose calls run at most C{max_timeout}
    seconds: the L{DURATION_BUCKETS} below it, then C{max_timeout} itself,
    so that no bucket is one no call can reach and the longest calls still
    get one of their own before C{+Inf}.
    """
    below = tuple(bound for bound in DURATION_BUCKETS if bound < max_timeout)
    return (*below, float(max_timeout))


def _bucket_label(bound: float) -> str:
    return f"{bound:g}"


@dataclass
class ProcedureStats:
    """
    Counters for one procedure (or for L{UNKNOWN_PROCEDURE}).

    C{calls} counts every call for it, refused or run; the duration
    histogram only the calls that started, so a refusal's zero seconds do
    not pull its latency down.
    """

    #: The upper bounds of the duration buckets (see L{duration_buckets}).
    buckets: tuple[float, ...] = DURATION_BUCKETS
    calls: int = 0
    errors: int = 0
    in_flight: int = 0
    #: Failed calls by error code (the rest of C{calls} ended OK).
    error_codes: dict[str, int] = field(default_factory=dict)
    #: Finished calls per duration bucket (not cumulative): one count per
    #: bound in C{buckets}, then one for longer calls.
    durations: list[int] = field(default_factory=list)
    #: Seconds taken by the finished calls, all told.
    duration_sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.durations:
            self.durations = [0] * (len(self.buckets) + 1)

    def outcomes(self) -> dict[str, int]:
        """Finished calls by outcome: C{"OK"} or the error code."""
        ok = self.calls - self.errors
        return {**({"OK": ok} if ok else {}), **dict(sorted(self.error_codes.items()))}

    def as_dict(self) -> dict[str, Any]:
        cumulative, buckets = 0, {}
        labels = [*map(_bucket_label, self.buckets), "+Inf"]
        for label, count in zip(labels, self.durations, strict=True):
            cumulative += count
            buckets[label] = cumulative
        return {
            "calls": self.calls,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "outcomes": self.outcomes(),
            "seconds": {"sum": self.duration_sum, "le": buckets},
        }


@dataclass
class NodeStats:
    """Counters for the whole node, as C{STATS} reports them."""

    #: The upper bounds of every procedure's duration buckets.
    buckets: tuple[float, ...] = DURATION_BUCKETS
    calls: int = 0
    errors: int = 0
    in_flight: int = 0
    by_procedure: dict[str, ProcedureStats] = field(default_factory=dict)
    #: Calls refused before they started, by error code (each is counted
    #: under its procedure too).
    refusals: dict[str, int] = field(default_factory=dict)

    def entry(self, name: str) -> ProcedureStats:
        """The counters of procedure C{name}, new ones if it has none yet."""
        entry = self.by_procedure.get(name)
        if entry is None:
            entry = self.by_procedure[name] = ProcedureStats(self.buckets)
        return entry

    def started(self, name: str) -> ProcedureStats:
        entry = self.entry(name)
        self.in_flight += 1
        entry.in_flight += 1
        return entry

    def finished(
        self,
        entry: ProcedureStats,
        error: str | None,
        seconds: float,
        _bucket: Callable[[tuple[float, ...], float], int] = bisect_left,
    ) -> None:
        """A call ended after C{seconds}, failing with the code C{error} or not."""
        self.in_flight -= 1
        self.calls += 1
        entry.in_flight -= 1
        entry.calls += 1
        if error is not None:
            self.errors += 1
            entry.errors += 1
            codes = entry.error_codes
            codes[error] = codes.get(error, 0) + 1
        entry.durations[_bucket(entry.buckets, seconds)] += 1
        entry.duration_sum += seconds

    def refused(self, label: str, code: str) -> None:
        """
        A call failed with C{code} before it started.

        @param label: its procedure as the metrics name it: see
            L{Dispatcher.label}.
        """
        self.calls += 1
        self.errors += 1
        self.refusals[code] = self.refusals.get(code, 0) + 1
        entry = self.entry(label)
        entry.calls += 1
        entry.errors += 1
        entry.error_codes[code] = entry.error_codes.get(code, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "refused": dict(sorted(self.refusals.items())),
            "procedures": {
                name: stats.as_dict() for name, stats in sorted(self.by_procedure.items())
            },
        }
