"""
Idempotency keys: a call retried with the same key gets the first call's
outcome instead of running again.

A caller that cannot tell whether its call ran (a lost connection, a
deadline) may send it again with the same C{+key}.  The node that runs the
procedure keeps each key with its outcome: while the first call runs, a
retry waits for it (within its own deadline); once it has ended, a retry gets
its result or its error at once.

Safe by construction:

 - Keys belong to an identity (the C{scope}): two callers never see each
   other's keys, whatever names they choose.
 - A key names one call.  Each key keeps a fingerprint of its call (a hash
   of the procedure and its arguments, not the arguments themselves); a call
   that reuses the key for anything else is refused, not answered with
   another call's result.
 - Everything is bounded.  Keyed calls in progress (running, left running
   after their caller went away, or waiting on a running key) are bounded
   node-wide and per identity, and are never forgotten while they run: past
   the bound, a new keyed call is refused C{RESOURCE_EXHAUSTED} and does not
   run.  Ended outcomes are a cache of answers, bounded by count and bytes
   and kept for a window; to make room, the oldest of the identity that holds
   the most go first, so one caller's flood evicts its own outcomes.  An
   outcome too large to keep is not kept, but the fact that the call ran is:
   a retry hears so, and the call never runs twice.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from callnet.config import Limits
from callnet.errors import (
    CallCancelledError,
    CallError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    Outcome,
    ResourceExhaustedError,
    error_from_wire,
)
from callnet.reactors import Clock, DelayedCall
from callnet.wire import encode_json

#: What a finished entry holds: a result as JSON text, an error as the
#: parts its reply is made of, or only the size of a result too large to keep.
_RESULT, _ERROR, _TOO_LARGE = range(3)


def fingerprint(procedure: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """
    What a keyed call is, in 16 bytes: a hash of its procedure and the
    canonical JSON of its arguments (keyword arguments in name order).

    Arguments are compared as JSON values: C{1} and C{1.0} differ, as do
    C{[1, 2]} and C{[2, 1]}.

    @raise TypeError: an argument is not JSON.
    @raise ValueError: an argument holds NaN or infinity.
    """
    text = json.dumps(
        [procedure, args, kwargs],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return hashlib.blake2b(text.encode("ascii"), digest_size=16).digest()


class _Entry:
    """One key: its call's fingerprint, and its outcome once it has ended."""

    __slots__ = (
        "expires",
        "fingerprint",
        "key",
        "kind",
        "outcome",
        "running",
        "scope",
        "size",
        "waiters",
    )

    def __init__(self, scope: str, key: str, fingerprint: bytes) -> None:
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint
        self.running = True
        self.kind = _RESULT
        self.outcome: Any = None
        self.size = 0
        self.expires = 0.0
        self.waiters: list[_Waiter] = []


class _Holder:
    """What one identity holds in the store."""

    __slots__ = ("bytes", "ended", "in_progress")

    def __init__(self) -> None:
        #: Keyed calls running or waiting on a running key.
        self.in_progress = 0
        #: Bytes of kept outcomes.
        self.bytes = 0
        #: Ended entries, oldest first.
        self.ended: OrderedDict[str, _Entry] = OrderedDict()


class KeyStore:
    """
    The outcomes of keyed calls, per identity and key, within the bounds of
    a L{Limits}: C{key_window}, C{max_keys}, C{max_key_bytes},
    C{max_key_result_bytes}, C{max_running_keys} and
    C{max_running_keys_per_caller}.
    """

    def __init__(
        self, clock: Clock, limits: Limits | None = None, node: str | None = None
    ) -> None:
        self._clock = clock
        self._limits = limits or Limits()
        self._node = node
        self._entries: dict[tuple[str, str], _Entry] = {}
        #: Ended entries in the order they ended, which is the order their
        #: windows close in.
        self._ended: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._holders: dict[str, _Holder] = {}
        self._in_progress = 0
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> dict[str, int]:
        """The store's use, for C{STATS}."""
        return {
            "keys": len(self._entries),
            "in_progress": self._in_progress,
            "bytes": self._bytes,
        }

    def run(
        self,
        scope: str,
        key: str,
        fingerprint: bytes,
        timeout: float,
        start: Callable[[], Any],
    ) -> Any:
        """
        Run C{start} unless this identity's key ran already; return its outcome.

        @param scope: the caller's identity; keys of other identities are
            never seen.
        @param fingerprint: the call's L{fingerprint}.
        @param timeout: the caller's time budget in seconds: a retry waiting
            on a running key gives up after it, the first call going on.
        @param start: begins the call; returns what L{Dispatcher.start}
            returns (a Deferred, a Failure, or a value).
        @return: the same kind of thing: the first call's outcome for a
            repeated key, or a Deferred that fires with it while it runs.
        """
        self._expire()
        entry_key = (scope, key)
        entry = self._entries.get(entry_key)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                return self._failure(
                    FailedPreconditionError(
                        f"key {key!r} was used for another call (another procedure or other"
                        " arguments); a new call needs a new key",
                        Outcome.NOT_RUN,
                    )
                )
            if not entry.running:
                return self._answer(key, entry)
            return self._wait(scope, key, entry, timeout)
        refusal = self._refusal(scope)
        if refusal is not None:
            return self._failure(refusal)
        # Looked up after making room, which may have dropped this holder.
        holder = self._holders.get(scope)
        if holder is None:
            holder = self._holders[scope] = _Holder()
        entry = self._entries[entry_key] = _Entry(scope, key, fingerprint)
        holder.in_progress += 1
        self._in_progress += 1
        try:
            outcome = start()
        except BaseException:
            self._settle(entry, Failure())
            raise
        if not isinstance(outcome, Deferred):
            self._settle(entry, outcome)
            return outcome

        def settled(result: Any) -> Any:
            self._settle(entry, result)
            return result

        return outcome.addBoth(settled)

    # --- Admission ------------------------------------------------------------

    def _refusal(self, scope: str) -> CallError | None:
        """Why a new key cannot be taken now, or None once there is room."""
        limits = self._limits
        holder = self._holders.get(scope)
        if self._in_progress >= limits.max_running_keys:
            return ResourceExhaustedError(
                f"this node has {self._in_progress} keyed calls in progress, its limit"
                " (max_running_keys); try again later",
                Outcome.NOT_RUN,
            )
        if holder is not None and holder.in_progress >= limits.max_running_keys_per_caller:
            return ResourceExhaustedError(
                f"{scope} has {holder.in_progress} keyed calls in progress, the limit for"
                " one caller (max_running_keys_per_caller); try again later",
                Outcome.NOT_RUN,
            )
        while len(self._entries) >= limits.max_keys:
            if not self._evict():
                return ResourceExhaustedError(
                    f"this node keeps {len(self._entries)} keys, its limit (max_keys), and"
                    " every one is in progress; try again later",
                    Outcome.NOT_RUN,
                )
        return None

    def _evict(self) -> bool:
        """Forget the oldest ended outcome of the identity that keeps the most."""
        holders = [holder for holder in self._holders.values() if holder.ended]
        if not holders:
            return False
        holder = max(holders, key=lambda h: (len(h.ended), h.bytes))
        self._forget(next(iter(holder.ended.values())))
        return True

    def _evict_bytes(self, wanted: int) -> bool:
        """Make room for C{wanted} more bytes of outcomes; false if there can be none."""
        limit = self._limits.max_key_bytes
        if wanted > limit:
            return False
        while self._bytes + wanted > limit:
            holders = [holder for holder in self._holders.values() if holder.bytes]
            holder = max(holders, key=lambda h: h.bytes)
            for entry in holder.ended.values():
                if entry.size:
                    self._forget(entry)
                    break
        return True

    # --- Ending ---------------------------------------------------------------

    def _settle(self, entry: _Entry, outcome: Any) -> None:
        """The first call with this key ended: keep its outcome, answer its waiters."""
        scope, key = entry.scope, entry.key
        entry.running = False
        holder = self._holders[scope]
        entry_key = (scope, key)
        if _did_not_run(outcome):
            # Nothing happened that a retry could repeat: forget the key, so
            # that the next call with it runs; those waiting hear it did not run.
            del self._entries[entry_key]
            error = outcome.value
            fresh = [
                Failure(error_from_wire(error.code, error.outcome, error.message, error.node))
                for _ in entry.waiters
            ]
        else:
            self._keep(key, entry, outcome)
            # Room is made while this call still counts as in progress, so
            # that its holder stays.
            if entry.size and not self._evict_bytes(entry.size):
                entry.kind, entry.outcome = _TOO_LARGE, entry.size
                entry.size = 0
            self._bytes += entry.size
            holder.bytes += entry.size
            entry.expires = self._clock.seconds() + self._limits.key_window
            self._ended[entry_key] = entry
            holder.ended[key] = entry
            fresh = [self._answer(key, entry) for _ in entry.waiters]
        holder.in_progress -= 1
        self._in_progress -= 1
        self._drop_if_empty(scope, holder)
        waiters, entry.waiters = entry.waiters, []
        for waiter, answer in zip(waiters, fresh, strict=True):
            waiter.end(answer)

    def _keep(self, key: str, entry: _Entry, outcome: Any) -> None:
        """Put in C{entry} what a retry will be answered with, and its size."""
        limit = self._limits.max_key_result_bytes
        if isinstance(outcome, Failure):
            error = outcome.value
            if not isinstance(error, CallError):
                error = InternalError("the node failed to handle this request", Outcome.RAN)
            # An error is kept whatever its size, its message cut to the limit.
            message = error.message[:limit]
            entry.kind = _ERROR
            entry.outcome = (error.code, error.outcome, message, error.node)
            entry.size = len(message)
            return
        try:
            text = encode_json(outcome)
        except (TypeError, ValueError) as e:
            entry.kind = _ERROR
            message = f"the result is not JSON ({e})"[:limit]
            entry.outcome = ("INTERNAL", Outcome.RAN, message, self._node)
            entry.size = len(message)
            return
        if len(text) > limit:
            entry.kind, entry.outcome, entry.size = _TOO_LARGE, len(text), 0
            return
        entry.kind, entry.outcome, entry.size = _RESULT, text, len(text)

    def _answer(self, key: str, entry: _Entry) -> Any:
        """A retry's answer, made fresh from what the entry keeps."""
        if entry.kind == _RESULT:
            return json.loads(entry.outcome)
        if entry.kind == _ERROR:
            code, outcome, message, node = entry.outcome
            return Failure(error_from_wire(code, outcome, message, node))
        return self._failure(
            FailedPreconditionError(
                f"the call with key {key!r} ran and succeeded, but its result"
                f" ({entry.outcome} bytes) was too large to keep (max_key_result_bytes);"
                " it is not run again",
                Outcome.RAN,
            )
        )

    # --- Waiting --------------------------------------------------------------

    def _wait(self, scope: str, key: str, entry: _Entry, timeout: float) -> Any:
        """A retry while the first call runs: wait for it, within C{timeout}."""
        holder = self._holders[scope]
        limits = self._limits
        if (
            self._in_progress >= limits.max_running_keys
            or holder.in_progress >= limits.max_running_keys_per_caller
        ):
            return self._failure(
                ResourceExhaustedError(
                    f"the call with key {key!r} is running, and too many keyed calls are in"
                    " progress to wait for it; try again later",
                    Outcome.MAY_HAVE_RUN,
                )
            )
        holder.in_progress += 1
        self._in_progress += 1

        def left() -> None:
            holder.in_progress -= 1
            self._in_progress -= 1
            if entry.running:
                entry.waiters.remove(waiter)
            else:
                self._drop_if_empty(scope, holder)

        waiter = _Waiter(self._clock, key, timeout, self._node, left)
        entry.waiters.append(waiter)
        return waiter.result

    # --- Forgetting -----------------------------------------------------------

    def _expire(self) -> None:
        """Forget the outcomes whose window has passed."""
        now = self._clock.seconds()
        ended = self._ended
        while ended:
            oldest = next(iter(ended.values()))
            if oldest.expires > now:
                return
            self._forget(oldest)

    def _forget(self, entry: _Entry) -> None:
        """Forget an ended entry."""
        scope, key = entry_key = entry.scope, entry.key
        del self._ended[entry_key]
        del self._entries[entry_key]
        holder = self._holders[scope]
        del holder.ended[key]
        holder.bytes -= entry.size
        self._bytes -= entry.size
        self._drop_if_empty(scope, holder)

    def _drop_if_empty(self, scope: str, holder: _Holder) -> None:
        # An identity with nothing in progress (each running key counts) and
        # nothing kept has no holder: holders are bounded by entries.
        if not holder.in_progress and not holder.ended and self._holders.get(scope) is holder:
            del self._holders[scope]

    def _failure(self, error: CallError) -> Failure:
        error.node = self._node
        return Failure(error)


class _Waiter:
    """A retry waiting on a running key, under its own deadline and cancel."""

    __slots__ = ("_key", "_left", "_node", "_timer", "result")

    def __init__(
        self,
        clock: Clock,
        key: str,
        timeout: float,
        node: str | None,
        left: Callable[[], None],
    ) -> None:
        self._key = key
        self._node = node
        self._left = left
        self.result: Deferred[Any] = Deferred(self._cancel)
        self._timer: DelayedCall | None = clock.callLater(timeout, self._expire, timeout)

    def _expire(self, timeout: float) -> None:
        self._timer = None
        self.end(
            Failure(
                DeadlineExceededError(
                    f"deadline of {timeout:g}s passed while waiting for the call with key"
                    f" {self._key!r}, which runs on",
                    Outcome.MAY_HAVE_RUN,
                    self._node,
                )
            )
        )

    def _cancel(self, result: Deferred[Any]) -> None:
        # Only this caller stops waiting: the first call's work runs on.
        self.end(
            Failure(
                CallCancelledError(
                    f"cancelled by its caller while waiting for the call with key {self._key!r},"
                    " which runs on",
                    Outcome.MAY_HAVE_RUN,
                    self._node,
                )
            )
        )

    def end(self, outcome: Any) -> None:
        """Answer this retry with C{outcome}, once."""
        if self.result.called:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._left()
        if isinstance(outcome, Failure):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)


def _did_not_run(outcome: Any) -> bool:
    if not isinstance(outcome, Failure):
        return False
    error = outcome.value
    return isinstance(error, CallError) and error.outcome is Outcome.NOT_RUN
