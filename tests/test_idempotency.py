"""
Idempotency keys: a retried call with the same key returns the first
outcome instead of running twice, and no caller can use keys against another.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from callnet import (
    CallError,
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    Outcome,
    ResourceExhaustedError,
    procedure,
)
from callnet.cluster.routing import rendezvous_order
from callnet.config import Limits, Security
from callnet.errors import CallCancelledError
from callnet.errors import DeadlineExceededError as Deadline
from callnet.idempotency import KeyStore, fingerprint
from callnet.testing import MemoryCluster, MemoryNode
from callnet.wire import ErrorReply, Success


class Counter:
    """A procedure that counts its runs and returns the count."""

    def __init__(self) -> None:
        self.runs = 0
        self.pending: list[Deferred[Any]] = []
        self.cancelled = 0

    def now(self, *args: Any, **kwargs: Any) -> int:
        self.runs += 1
        return self.runs

    def later(self, *args: Any) -> Deferred[Any]:
        self.runs += 1
        d: Deferred[Any] = Deferred(lambda _: self._cancelled())
        self.pending.append(d)
        return d

    def echo_count(self, value: Any) -> list[Any]:
        self.runs += 1
        return [value, self.runs]

    def big(self, size: int) -> str:
        self.runs += 1
        return "x" * size

    def _cancelled(self) -> None:
        self.cancelled += 1


def counting_node(security: Security | None = None, **limits: Any) -> tuple[MemoryNode, Counter]:
    node = MemoryNode(limits=Limits(**limits), security=security)
    counter = Counter()
    node.registry.add(counter.now, name="bump", run="reactor")
    node.registry.add(counter.later, name="bump_later", run="reactor")
    node.registry.add(counter.big, name="big", run="reactor")
    node.registry.add(counter.echo_count, name="echo_count", run="reactor")
    return node, counter


ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
CALLERS = Security(
    tokens=(("alice", ALICE), ("bob", BOB)), cluster_token="cluster-token-0123456789"
)


def P(text: str) -> bytes:
    return fingerprint(text, (), {})


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

    def test_stats_show_the_key_store(self) -> None:
        """STATS says how many keys the node keeps, how many are in progress, and their bytes."""
        node, counter = counting_node()
        client = node.client()
        client.call("bump_later", key="a")
        client.call("bump", key="b")
        node.flush()
        keys = node.factory.stats()["keys"]
        self.assertEqual((keys["keys"], keys["in_progress"]), (2, 1))
        counter.pending[0].callback(3)
        node.flush()
        keys = node.factory.stats()["keys"]
        self.assertEqual(keys["in_progress"], 0)
        self.assertGreater(keys["bytes"], 0)

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

    def test_keys_are_per_caller(self) -> None:
        """Two identities using one key name two calls: neither is answered with the other's result."""
        node, counter = counting_node(CALLERS)
        alice, bob = node.client(token=ALICE), node.client(token=BOB)
        first = alice.call("echo_count", "alice-private-data", key="order-17")
        node.flush()
        theirs = bob.call("echo_count", "x", key="order-17")
        copied = bob.call("echo_count", "alice-private-data", key="order-17")
        again = alice.call("echo_count", "alice-private-data", key="order-17")
        node.flush()
        self.assertEqual(self.successResultOf(first), ["alice-private-data", 1])
        self.assertEqual(self.successResultOf(theirs), ["x", 2])
        self.failureResultOf(copied, FailedPreconditionError)
        self.assertEqual(self.successResultOf(again), ["alice-private-data", 1])
        self.assertEqual(counter.runs, 2)

    def test_other_arguments_refused(self) -> None:
        """The same key with other arguments is refused, not run, and not answered with the first result."""
        node, counter = counting_node()
        client = node.client()
        first = client.call("bump", "alice-private-data", key="order-17")
        reused = client.call("bump", "x", key="order-17")
        node.flush()
        self.assertEqual(self.successResultOf(first), 1)
        error = self.failureResultOf(reused, FailedPreconditionError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertIn("'order-17' was used for another call", error.message)
        self.assertEqual(counter.runs, 1)

    def test_other_procedure_refused(self) -> None:
        """The same key for another procedure is refused, even while the first call runs."""
        node, counter = counting_node()
        client = node.client()
        first = client.call("bump_later", key="k")
        reused = client.call("bump", key="k")
        keyword = client.call("bump_later", n=1, key="k")
        node.flush()
        for d in (reused, keyword):
            self.assertEqual(
                self.failureResultOf(d, FailedPreconditionError).value.outcome, Outcome.NOT_RUN
            )
        self.assertNoResult(first)
        self.assertEqual(counter.runs, 1)

    def test_waiter_honours_its_deadline(self) -> None:
        """A retry waiting on a running key fails at its own deadline, may-have-run; the first call runs on."""
        node, counter = counting_node()
        first = node.client().call("bump_later", key="k", timeout=60)
        node.flush()
        retry = node.client().call("bump_later", key="k", timeout=1)
        node.advance(1.01)
        error = self.failureResultOf(retry, DeadlineExceededError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(counter.cancelled, 0)
        self.assertNoResult(first)
        counter.pending[0].callback("done")
        node.flush()
        self.assertEqual(self.successResultOf(first), "done")
        self.assertEqual(counter.runs, 1)
        self.assertEqual(node.dispatcher.keys.describe()["in_progress"], 0)

    def test_waiter_cancel(self) -> None:
        """CANCEL of a retry waiting on a running key answers CANCELLED and leaves the first call running."""
        node, counter = counting_node()
        first = node.connect_raw()
        first.send("#1 +key=k bump_later\n")
        retry = node.connect_raw()
        retry.send("#2 +key=k bump_later\n")
        retry.send("CANCEL 2\n")
        [answer, *_] = [e for e in retry.events() if isinstance(e, ErrorReply)]
        self.assertEqual((answer.tag, answer.error.code), ("2", "CANCELLED"))
        self.assertEqual(answer.error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(counter.cancelled, 0)
        counter.pending[0].callback(5)
        self.assertEqual(first.events(), [Success(5, "1")])
        self.assertEqual(counter.runs, 1)

    def test_running_key_never_evicted(self) -> None:
        """However many other keys follow, a running key is kept: its retry waits instead of running again."""
        node, counter = counting_node(max_keys=3)
        client = node.client()
        first = client.call("bump_later", key="slow")
        others = [client.call("bump", key=f"other-{i}") for i in range(10)]
        node.flush()
        self.assertEqual([self.successResultOf(d) for d in others], list(range(2, 12)))
        retry = node.client().call("bump_later", key="slow")
        node.flush()
        self.assertNoResult(retry)
        counter.pending[0].callback("once")
        node.flush()
        self.assertEqual((self.successResultOf(first), self.successResultOf(retry)), ("once",) * 2)
        self.assertEqual(counter.runs, 11)
        self.assertLessEqual(len(node.dispatcher.keys), 3)

    def test_full_of_running_keys_refuses(self) -> None:
        """With max_keys in progress, a new keyed call is refused RESOURCE_EXHAUSTED and does not run."""
        node, counter = counting_node(max_keys=2)
        client = node.client()
        running = [client.call("bump_later", key=f"k{i}") for i in range(2)]
        refused = client.call("bump_later", key="k2")
        node.flush()
        error = self.failureResultOf(refused, ResourceExhaustedError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertIn("max_keys", error.message)
        self.assertEqual(counter.runs, 2)
        # An unkeyed call is not affected, and once one ends there is room.
        plain = client.call("bump")
        counter.pending[0].callback("done")
        again = client.call("bump_later", key="k2")
        node.flush()
        self.assertEqual(self.successResultOf(plain), 3)
        self.assertNoResult(again)
        self.assertEqual(self.successResultOf(running[0]), "done")

    def test_calls_left_running_are_bounded(self) -> None:
        """Keyed calls whose caller left run on, within max_running_keys: past it, new keyed calls are refused."""
        node, counter = counting_node(max_running_keys=3)
        lost = [node.client().call("bump_later", key=f"k{i}") for i in range(3)]
        node.flush()
        for pump in node._pumps:
            pump.serverIO.loseConnection()
        node.flush()
        for d in lost:
            self.failureResultOf(d)
        self.assertEqual(counter.cancelled, 0)
        self.assertEqual(node.dispatcher.keys.describe()["in_progress"], 3)
        refused = node.client().call("bump_later", key="k3")
        node.flush()
        error = self.failureResultOf(refused, ResourceExhaustedError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertIn("max_running_keys", error.message)
        self.assertEqual(counter.runs, 3)
        # They end at their deadline at the latest, and make room.
        node.advance(Limits().default_timeout)
        self.assertEqual(counter.cancelled, 3)
        accepted = node.client().call("bump", key="k3")
        node.flush()
        self.assertEqual(self.successResultOf(accepted), 4)

    def test_result_too_large_to_keep(self) -> None:
        """A result past max_key_result_bytes reaches its caller but is not kept; a retry hears it ran and does not run it."""
        node, counter = counting_node(max_key_result_bytes=100)
        client = node.client()
        first = client.call("big", 1000, key="k")
        node.flush()
        self.assertEqual(self.successResultOf(first), "x" * 1000)
        retry = client.call("big", 1000, key="k")
        node.flush()
        error = self.failureResultOf(retry, FailedPreconditionError).value
        self.assertEqual(error.outcome, Outcome.RAN)
        self.assertIn("too large to keep", error.message)
        self.assertEqual(counter.runs, 1)
        self.assertEqual(node.dispatcher.keys.describe()["bytes"], 0)

    def test_kept_bytes_bounded(self) -> None:
        """Kept results stay within max_key_bytes: the oldest are forgotten to make room."""
        node, counter = counting_node(max_key_bytes=250)
        client = node.client()
        for i in range(5):
            client.call("big", 98, key=f"k{i}")  # 100 bytes of JSON each
        node.flush()
        self.assertEqual(node.dispatcher.keys.describe()["bytes"], 200)
        newest = client.call("big", 98, key="k4")
        oldest = client.call("big", 98, key="k0")
        node.flush()
        self.successResultOf(newest)
        self.successResultOf(oldest)
        self.assertEqual(counter.runs, 6)


class KeyStoreTests(SynchronousTestCase):
    """The store itself, driven by hand."""

    def run_value(self, store: KeyStore, scope: str, key: str, value: Any, call: str = "p") -> Any:
        return store.run(scope, key, P(call), 60, lambda: value)

    def test_window(self) -> None:
        """An outcome is forgotten once its window has passed."""
        clock = Clock()
        store = KeyStore(clock, Limits(key_window=10))
        runs: list[int] = []

        def start() -> Any:
            runs.append(1)
            return len(runs)

        self.assertEqual(store.run("s", "k", P("p"), 60, start), 1)
        clock.advance(9)
        self.assertEqual(store.run("s", "k", P("p"), 60, start), 1)
        clock.advance(2)
        self.assertEqual(store.run("s", "k", P("p"), 60, start), 2)

    def test_scoped_per_identity(self) -> None:
        """Two identities using the same key name two calls: neither sees the other's outcome."""
        store = KeyStore(Clock())
        self.assertEqual(
            self.run_value(store, "alice", "order-17", "alice-private-data"), "alice-private-data"
        )
        self.assertEqual(self.run_value(store, "bob", "order-17", "x"), "x")
        self.assertEqual(self.run_value(store, "alice", "order-17", "again"), "alice-private-data")
        self.assertEqual(len(store), 2)

    def test_scoped_while_running(self) -> None:
        """Another identity's call with the same key runs at once rather than waiting on the first."""
        store = KeyStore(Clock())
        held: Deferred[Any] = Deferred()
        store.run("alice", "k", P("p"), 60, lambda: held)
        self.assertEqual(self.run_value(store, "bob", "k", "bob's"), "bob's")

    def test_max_keys_evicts_ended_oldest_first(self) -> None:
        """Past max_keys the oldest ended outcomes are forgotten first."""
        store = KeyStore(Clock(), Limits(max_keys=3))
        for i in range(5):
            self.run_value(store, "s", str(i), i)
        self.assertEqual(len(store), 3)
        self.assertEqual(self.run_value(store, "s", "0", "again"), "again")
        self.assertEqual(self.run_value(store, "s", "4", "again"), 4)

    def test_flood_evicts_its_own_first(self) -> None:
        """One identity flooding the store forgets its own outcomes, not another's."""
        store = KeyStore(Clock(), Limits(max_keys=4))
        self.run_value(store, "alice", "a", "alice's")
        for i in range(20):
            self.run_value(store, "mallory", str(i), i)
        self.assertEqual(self.run_value(store, "alice", "a", "again"), "alice's")
        self.assertEqual(len(store), 4)

    def test_share_per_caller(self) -> None:
        """One identity may hold only its share of keyed calls in progress; others still may start theirs."""
        store = KeyStore(Clock(), Limits(max_running_keys_per_caller=2))
        for i in range(2):
            store.run("mallory", str(i), P("p"), 60, Deferred)
        refused = store.run("mallory", "2", P("p"), 60, Deferred)
        self.assertIsInstance(refused, Failure)
        self.assertIsInstance(refused.value, ResourceExhaustedError)
        self.assertIn("max_running_keys_per_caller", refused.value.message)
        self.assertEqual(self.run_value(store, "alice", "0", "fine"), "fine")

    def test_waiters_count_toward_the_bound(self) -> None:
        """Retries waiting on a running key are calls in progress too, and are bounded with them."""
        store = KeyStore(Clock(), Limits(max_running_keys=3))
        held: Deferred[Any] = Deferred()
        store.run("s", "k", P("p"), 60, lambda: held)
        waiting = [store.run("s", "k", P("p"), 60, Deferred) for _ in range(2)]
        refused = store.run("s", "k", P("p"), 60, Deferred)
        self.assertIsInstance(refused.value, ResourceExhaustedError)
        self.assertEqual(refused.value.outcome, Outcome.MAY_HAVE_RUN)
        held.callback("v")
        self.assertEqual([self.successResultOf(d) for d in waiting], ["v", "v"])
        self.assertEqual(store.describe()["in_progress"], 0)

    def test_waiter_cancel_does_not_cancel_work(self) -> None:
        """Cancelling a retry that waits fails it CANCELLED; the first call's work is not cancelled."""
        store = KeyStore(Clock())
        cancelled: list[object] = []
        held: Deferred[Any] = Deferred(cancelled.append)
        first = store.run("s", "k", P("p"), 60, lambda: held)
        waiter = store.run("s", "k", P("p"), 60, Deferred)
        waiter.cancel()
        error = self.failureResultOf(waiter, CallCancelledError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(cancelled, [])
        held.callback("v")
        self.assertEqual(self.successResultOf(first), "v")

    def test_errors_are_kept_and_answered_fresh(self) -> None:
        """A call that ran and failed is answered with the same error on a retry, as a new error object."""
        store = KeyStore(Clock())
        failure = Failure(NotFoundError("no such item", Outcome.RAN, "alpha"))
        store.run("s", "k", P("p"), 60, lambda: failure)
        again = store.run("s", "k", P("p"), 60, lambda: "ran again")
        self.assertIsInstance(again.value, NotFoundError)
        self.assertIsNot(again.value, failure.value)
        self.assertEqual(
            (again.value.message, again.value.outcome, again.value.node),
            ("no such item", Outcome.RAN, "alpha"),
        )

    def test_deadline_exceeded_is_kept(self) -> None:
        """A call that may have run (its deadline passed) is not run again by a retry."""
        store = KeyStore(Clock())
        timed_out = Failure(Deadline("deadline passed", Outcome.MAY_HAVE_RUN))
        store.run("s", "k", P("p"), 60, lambda: timed_out)
        again = store.run("s", "k", P("p"), 60, lambda: "ran again")
        self.assertIsInstance(again.value, DeadlineExceededError)

    def test_fingerprint(self) -> None:
        """A fingerprint tells procedures and arguments apart, but not the order of keyword arguments."""
        self.assertEqual(
            fingerprint("p", (1,), {"a": 1, "b": 2}), fingerprint("p", (1,), {"b": 2, "a": 1})
        )
        self.assertNotEqual(fingerprint("p", (1,), {}), fingerprint("q", (1,), {}))
        self.assertNotEqual(fingerprint("p", (1,), {}), fingerprint("p", (2,), {}))
        self.assertNotEqual(fingerprint("p", ("1",), {}), fingerprint("p", (1,), {}))
        self.assertNotEqual(fingerprint("p", (), {"a": 1}), fingerprint("p", (1,), {}))
        self.assertEqual(len(fingerprint("p", ("x" * 100_000,), {})), 16)


class Ledger:
    """A non-idempotent procedure on one node, which records each run."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.runs: list[str] = []
        self.held: list[Deferred[Any]] = []

    def procedures(self) -> list[Any]:
        @procedure(run="reactor", name="record")
        def record(order: str) -> str:
            self.runs.append(order)
            return f"{order} on {self.node}"

        @procedure(run="reactor", name="record_later")
        def record_later(order: str) -> Deferred[Any]:
            self.runs.append(order)
            d: Deferred[Any] = Deferred()
            self.held.append(d)
            return d

        return [record, record_later]


def ledger_cluster(
    entry_serves: bool = True, security: Security | None = None
) -> tuple[MemoryCluster, dict[str, Ledger]]:
    """alpha, beta and gamma; each serves the ledger (alpha only if C{entry_serves})."""
    ledgers = {name: Ledger(name) for name in ("alpha", "beta", "gamma")}
    cluster = MemoryCluster(
        {
            name: ledger.procedures() if entry_serves or name != "alpha" else []
            for name, ledger in ledgers.items()
        },
        security=dict.fromkeys(ledgers, security) if security else None,
    )
    cluster.start()
    return cluster, ledgers


class KeysAcrossTheClusterTests(SynchronousTestCase):
    """A key lives on one owner node, whichever node its calls enter by."""

    def runs(self, ledgers: dict[str, Ledger]) -> list[str]:
        return sorted(order for ledger in ledgers.values() for order in ledger.runs)

    def test_retry_through_another_node_runs_once(self) -> None:
        """A keyed call through alpha and its retries through beta and gamma run the procedure once."""
        cluster, ledgers = ledger_cluster()
        orders = [f"order-{i}" for i in range(40)]
        answers = {}
        for entry in ("alpha", "beta", "gamma"):
            client = cluster[entry].client()
            calls = {order: client.call("record", order, key=order) for order in orders}
            cluster.flush()
            answers[entry] = {order: self.successResultOf(d) for order, d in calls.items()}
        self.assertEqual(answers["alpha"], answers["beta"])
        self.assertEqual(answers["alpha"], answers["gamma"])
        self.assertEqual(self.runs(ledgers), sorted(orders))
        # The owners are spread over the nodes, not all on one.
        self.assertTrue(all(ledger.runs for ledger in ledgers.values()))
        cluster.stop()

    def test_keys_are_per_caller_across_the_cluster(self) -> None:
        """The original caller's identity scopes a key on its owner, whichever node forwards the call."""
        cluster, ledgers = ledger_cluster(security=CALLERS)
        answers = []
        for entry, token, order in [
            ("alpha", ALICE, "alice-private-data"),
            ("beta", BOB, "x"),
            ("gamma", ALICE, "alice-private-data"),
            ("alpha", BOB, "x"),
        ]:
            d = cluster[entry].client(token=token).call("record", order, key="order-17")
            cluster.flush()
            answers.append(self.successResultOf(d).split(" on ")[0])
        self.assertEqual(answers, ["alice-private-data", "x", "alice-private-data", "x"])
        self.assertEqual(self.runs(ledgers), ["alice-private-data", "x"])
        cluster.stop()

    def test_retry_through_another_node_waits(self) -> None:
        """A retry through beta while the first call (through alpha) runs waits for it at the owner."""
        cluster, ledgers = ledger_cluster()
        first = cluster["alpha"].client().call("record_later", "o", key="k")
        cluster.flush()
        retry = cluster["beta"].client().call("record_later", "o", key="k")
        cluster.flush()
        self.assertNoResult(retry)
        [owner] = [ledger for ledger in ledgers.values() if ledger.held]
        owner.held[0].callback("done")
        cluster.flush()
        self.assertEqual((self.successResultOf(first), self.successResultOf(retry)), ("done",) * 2)
        self.assertEqual(self.runs(ledgers), ["o"])
        cluster.stop()

    def test_reuse_through_another_node_refused(self) -> None:
        """The same key with other arguments through another node is refused by the owner."""
        cluster, ledgers = ledger_cluster()
        first = cluster["alpha"].client().call("record", "mine", key="k")
        cluster.flush()
        other = cluster["gamma"].client().call("record", "theirs", key="k")
        cluster.flush()
        self.successResultOf(first)
        error = self.failureResultOf(other, FailedPreconditionError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertEqual(self.runs(ledgers), ["mine"])
        cluster.stop()

    def test_entry_node_that_does_not_serve(self) -> None:
        """Through a node that does not serve the procedure, keyed calls still reach their owner."""
        cluster, ledgers = ledger_cluster(entry_serves=False)
        orders = [f"order-{i}" for i in range(20)]
        for entry in ("alpha", "beta", "gamma", "alpha"):
            client = cluster[entry].client()
            calls = [client.call("record", order, key=order) for order in orders]
            cluster.flush()
            for d in calls:
                self.successResultOf(d)
        self.assertEqual(self.runs(ledgers), sorted(orders))
        self.assertEqual(ledgers["alpha"].runs, [])
        cluster.stop()

    def test_named_node_keeps_the_key(self) -> None:
        """A keyed call for name@node is kept by that node, whichever node it enters by."""
        cluster, ledgers = ledger_cluster()
        for entry in ("alpha", "beta", "gamma"):
            d = cluster[entry].client().call("record@gamma", "o", key="k")
            cluster.flush()
            self.assertEqual(self.successResultOf(d), "o on gamma")
        self.assertEqual(ledgers["gamma"].runs, ["o"])
        self.assertEqual(self.runs(ledgers), ["o"])
        cluster.stop()

    def test_owner_down(self) -> None:
        """With the owner down, a keyed call goes to the next node in the key's order, and then stays there."""
        cluster, ledgers = ledger_cluster()
        order = rendezvous_order("anonymous", "k", ["alpha", "beta", "gamma"])
        first = cluster["alpha"].client().call("record", "o", key="k")
        cluster.flush()
        self.assertEqual(self.successResultOf(first), f"o on {order[0]}")
        cluster.kill(order[0])
        entry = order[2]
        retries = [cluster[entry].client().call("record", "o", key="k") for _ in range(2)]
        cluster.flush()
        self.assertEqual([self.successResultOf(d) for d in retries], [f"o on {order[1]}"] * 2)
        self.assertEqual(ledgers[order[1]].runs, ["o"])
        cluster.stop()

    def test_rendezvous_order(self) -> None:
        """The order depends on the caller, the key and the node names only, and a node leaving keeps the others' order."""
        nodes = ["alpha", "beta", "gamma", "delta"]
        order = rendezvous_order("alice", "k", nodes)
        self.assertEqual(sorted(order), sorted(nodes))
        self.assertEqual(rendezvous_order("alice", "k", reversed(nodes)), order)
        without = rendezvous_order("alice", "k", [n for n in nodes if n != order[0]])
        self.assertEqual(without, order[1:])
        owners = {rendezvous_order(scope, "k", nodes)[0] for scope in map(str, range(50))}
        self.assertEqual(owners, set(nodes))


LIMITS = Limits(
    max_keys=6,
    max_key_bytes=40,
    max_key_result_bytes=20,
    max_running_keys=4,
    max_running_keys_per_caller=3,
    key_window=5,
)


class KeyStoreMachine(RuleBasedStateMachine):
    """
    Any interleaving of keyed calls, retries, endings, cancellations and
    time keeps the store within its bounds, and never runs a call twice
    while its key is remembered.
    """

    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = KeyStore(self.clock, LIMITS)
        #: (scope, key) -> how many times its work started
        self.starts: dict[tuple[str, str], int] = {}
        #: (scope, key) -> work Deferreds not yet ended
        self.running: dict[tuple[str, str], Deferred[Any]] = {}
        self.answers: list[Deferred[Any]] = []

    @rule(
        target=calls,
        scope=st.sampled_from(["alice", "bob"]),
        key=st.sampled_from(["k1", "k2", "k3", "k4"]),
        argument=st.integers(0, 1),
        timeout=st.sampled_from([1.0, 10.0]),
    )
    def call(self, scope: str, key: str, argument: int, timeout: float) -> tuple[str, str]:
        def start() -> Deferred[Any]:
            if (scope, key) in self.running:
                raise AssertionError(f"{scope}'s {key} started while it runs")
            self.starts[scope, key] = self.starts.get((scope, key), 0) + 1
            work: Deferred[Any] = Deferred()
            self.running[scope, key] = work
            return work

        outcome = self.store.run(scope, key, fingerprint("p", (argument,), {}), timeout, start)
        if isinstance(outcome, Deferred):
            self.answers.append(outcome)
        return (scope, key)

    @rule(which=consumes(calls), size=st.sampled_from([1, 15, 30]))
    def finish(self, which: tuple[str, str], size: int) -> None:
        work = self.running.pop(which, None)
        if work is not None:
            work.callback("x" * size)

    @rule(which=consumes(calls), not_run=st.booleans())
    def fail(self, which: tuple[str, str], not_run: bool) -> None:
        work = self.running.pop(which, None)
        if work is not None:
            outcome = Outcome.NOT_RUN if not_run else Outcome.RAN
            work.errback(Failure(CallError("failed", outcome)))

    @precondition(lambda self: bool(self.answers))
    @rule(index=st.integers(0, 100))
    def cancel_an_answer(self, index: int) -> None:
        answer = self.answers[index % len(self.answers)]
        if answer not in self.running.values():
            answer.cancel()

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def within_bounds(self) -> None:
        used = self.store.describe()
        assert used["keys"] <= LIMITS.max_keys
        assert used["bytes"] <= LIMITS.max_key_bytes
        assert used["in_progress"] <= LIMITS.max_running_keys

    @invariant()
    def running_keys_are_kept(self) -> None:
        for scope, key in self.running:
            assert (scope, key) in self.store._entries

    @invariant()
    def accounts_agree(self) -> None:
        store = self.store
        holders = store._holders
        assert sum(h.bytes for h in holders.values()) == store._bytes
        assert sum(h.in_progress for h in holders.values()) == store._in_progress
        for (scope, key), entry in store._entries.items():
            assert scope in holders
            assert entry.running or holders[scope].ended[key] is entry

    def teardown(self) -> None:
        for work in list(self.running.values()):
            work.callback("end")
        for answer in self.answers:
            answer.addErrback(lambda _: None)
        self.clock.advance(100)
        assert self.store.describe()["in_progress"] == 0
        assert self.clock.getDelayedCalls() == []


KeyStoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestKeyStoreMachine = KeyStoreMachine.TestCase
