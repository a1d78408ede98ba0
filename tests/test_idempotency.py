"""
Idempotency keys: a retried call with the same key returns the first
outcome instead of running twice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from callnet import NotFoundError, Outcome
from callnet.idempotency import KeyStore
from callnet.testing import MemoryNode


class Counter:
    """A procedure that counts its runs and returns the count."""

    def __init__(self) -> None:
        self.runs = 0
        self.pending: list[Deferred[int]] = []

    def now(self) -> int:
        self.runs += 1
        return self.runs

    def later(self) -> Deferred[int]:
        self.runs += 1
        d: Deferred[int] = Deferred()
        self.pending.append(d)
        return d


def counting_node() -> tuple[MemoryNode, Counter]:
    node = MemoryNode()
    counter = Counter()
    node.registry.add(counter.now, name="bump", run="reactor")
    node.registry.add(counter.later, name="bump_later", run="reactor")
    return node, counter


class KeyedCallTests(SynchronousTestCase):
    """Keys as a caller sees them, through the protocol."""

    def test_retry_returns_first_result(self) -> None:
        """A second call with the same key returns the first result and does not run."""
        node, counter = counting_node()
        client = node.client()
        first = client.call("bump", key="k1")
        second = client.call("bump", key="k1")
        other = client.call("bump", key="k2")
        node.flush()
        self.assertEqual([self.successResultOf(d) for d in (first, second, other)], [1, 1, 2])
        self.assertEqual(counter.runs, 2)

    def test_retry_while_running_waits(self) -> None:
        """A retry that arrives while the first call runs waits for its outcome."""
        node, counter = counting_node()
        client = node.client()
        first = client.call("bump_later", key="k")
        node.flush()
        second = node.client().call("bump_later", key="k")
        node.flush()
        self.assertEqual(counter.runs, 1)
        self.assertNoResult(second)
        counter.pending[0].callback(7)
        node.flush()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (7, 7))

    def test_keyed_call_survives_lost_caller(self) -> None:
        """A keyed call is not cancelled when its caller's connection drops; a retry gets its result."""
        node, counter = counting_node()
        client = node.client()
        lost = client.call("bump_later", key="transfer-1")
        node.flush()
        node._pumps[0].serverIO.loseConnection()
        node.flush()
        self.failureResultOf(lost)
        counter.pending[0].callback("done")
        retry = node.client().call("bump_later", key="transfer-1")
        node.flush()
        self.assertEqual(self.successResultOf(retry), "done")
        self.assertEqual(counter.runs, 1)

    def test_not_run_is_not_remembered(self) -> None:
        """A keyed call that did not run (unknown procedure) does not block a later one."""
        node, _ = counting_node()
        client = node.client()
        missing = client.call("nosuch", key="k")
        node.flush()
        self.assertEqual(
            self.failureResultOf(missing, NotFoundError).value.outcome, Outcome.NOT_RUN
        )
        self.assertEqual(len(node.dispatcher.keys), 0)


class KeyStoreTests(SynchronousTestCase):
    """The store's bounds."""

    def test_window(self) -> None:
        """An outcome is forgotten once its window has passed."""
        node, _ = counting_node()
        store = KeyStore(node.clock, window=10)
        runs: list[int] = []

        def start() -> Any:
            runs.append(1)
            return len(runs)

        self.assertEqual(store.run("p", "k", start), 1)
        node.clock.advance(9)
        self.assertEqual(store.run("p", "k", start), 1)
        node.clock.advance(2)
        self.assertEqual(store.run("p", "k", start), 2)

    def test_max_keys(self) -> None:
        """Past the key limit the oldest keys are forgotten first."""
        node, _ = counting_node()
        store = KeyStore(node.clock, max_keys=3)
        for i in range(5):
            store.run("p", str(i), lambda i=i: i)
        self.assertEqual(len(store), 3)
        self.assertEqual(store.run("p", "0", lambda: "again"), "again")
        self.assertEqual(store.run("p", "4", lambda: "again"), 4)

    def test_keys_are_per_procedure(self) -> None:
        """The same key on two procedures names two calls."""
        node, _ = counting_node()
        store = KeyStore(node.clock)
        self.assertEqual(store.run("a", "k", lambda: "a"), "a")
        self.assertEqual(store.run("b", "k", lambda: "b"), "b")
