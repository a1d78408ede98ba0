"""
Idempotency keys: a call retried with the same key gets the first call's
result instead of running again.

A caller that cannot tell whether its call ran (a lost connection, a
deadline) may send it again with the same C{+key}.  The node remembers each
key with its outcome for a bounded window and a bounded number of keys:
while the first call runs, a retry waits for it; once it has ended, a retry
gets its result (or its failure) at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from callnet.errors import CallError, Outcome
from callnet.reactors import DispatchReactor

#: How long a key's outcome is kept, in seconds: long enough to cover a
#: caller's retries across a failover, short enough not to grow for ever.
DEFAULT_WINDOW = 300.0
#: How many keys are kept at most; the oldest go first.
DEFAULT_MAX_KEYS = 100_000


class _Entry:
    __slots__ = ("expires", "outcome", "running", "waiters")

    def __init__(self) -> None:
        self.running = True
        self.outcome: Any = None
        self.expires = 0.0
        self.waiters: list[Deferred[Any]] = []


class KeyStore:
    """Remembers the outcome of keyed calls, per procedure and key."""

    def __init__(
        self,
        clock: DispatchReactor,
        window: float = DEFAULT_WINDOW,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._clock = clock
        self._window = window
        self._max_keys = max_keys
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def run(self, procedure: str, key: str, start: Callable[[], Any]) -> Any:
        """
        Run C{start} unless this key ran already; return its outcome.

        @param start: begins the call; returns what L{Dispatcher.start}
            returns (a Deferred, a Failure, or a value).
        @return: the same kind of thing: the first call's outcome for a
            repeated key, or a Deferred that fires with it while it runs.
        """
        self._expire()
        entry_key = (procedure, key)
        entry = self._entries.get(entry_key)
        if entry is not None:
            if not entry.running:
                return entry.outcome
            waiter: Deferred[Any] = Deferred()
            entry.waiters.append(waiter)
            return waiter
        entry = _Entry()
        self._entries[entry_key] = entry
        while len(self._entries) > self._max_keys:
            self._entries.popitem(last=False)
        outcome = start()
        if not isinstance(outcome, Deferred):
            self._settle(entry_key, entry, outcome)
            return outcome

        def settled(result: Any) -> Any:
            self._settle(entry_key, entry, result)
            return result

        return outcome.addBoth(settled)

    def _settle(self, entry_key: tuple[str, str], entry: _Entry, outcome: Any) -> None:
        entry.running = False
        entry.outcome = outcome
        entry.expires = self._clock.seconds() + self._window
        if _did_not_run(outcome):
            # Nothing happened that a retry could repeat: let it run.
            self._entries.pop(entry_key, None)
        waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def _expire(self) -> None:
        """Forget the oldest outcomes whose window has passed."""
        now = self._clock.seconds()
        entries = self._entries
        while entries:
            oldest_key = next(iter(entries))
            oldest = entries[oldest_key]
            # Keys are kept in start order; one still running, or not yet
            # expired, ends the sweep (max_keys bounds what stays behind it).
            if oldest.running or oldest.expires > now:
                return
            del entries[oldest_key]


def _did_not_run(outcome: Any) -> bool:
    if not isinstance(outcome, Failure):
        return False
    error = outcome.value
    return isinstance(error, CallError) and error.outcome is Outcome.NOT_RUN
