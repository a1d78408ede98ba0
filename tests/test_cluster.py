"""
The cluster, deterministically: nodes joined in memory on one clock, so
routing, deadlines, failover and failure detection are checked step by step.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tracemalloc
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from callnet import (
    CallCancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    Outcome,
    ResourceExhaustedError,
    UnavailableError,
    procedure,
)
from callnet.cluster import PeerState
from callnet.config import ClusterSettings, Limits
from callnet.testing import MemoryCluster, MemoryNode, MemoryReactor
from callnet.wire import Call


class Work:
    """Procedures whose runs a test counts and answers by hand."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.runs = 0
        self.held: list[Deferred[Any]] = []
        self.cancelled = 0
        self.timeouts: list[float] = []

    def procedures(self) -> list[Any]:
        @procedure(run="reactor", name="where")
        def where() -> str:
            self.runs += 1
            return self.node

        @procedure(run="reactor", name="hold")
        def hold() -> Deferred[Any]:
            self.runs += 1
            d: Deferred[Any] = Deferred(lambda _: self._cancelled())
            self.held.append(d)
            return d

        @procedure(run="reactor", name="hold_idempotent", idempotent=True)
        def hold_idempotent() -> Deferred[Any]:
            return hold()

        return [where, hold, hold_idempotent]

    def _cancelled(self) -> None:
        self.cancelled += 1


def reactor_turn(clock: MemoryReactor, seconds: float) -> None:
    """
    Move the clock on and run the calls then due, as one turn of a real
    reactor does: a call scheduled meanwhile, even for 0 s, waits for the
    next turn, and so for the reactor to read its sockets in between.
    """
    clock.rightNow += seconds
    for call in [call for call in clock.calls if call.getTime() <= clock.rightNow]:
        if call in clock.calls:  # not cancelled by an earlier one
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def three_nodes(**settings: Any) -> tuple[MemoryCluster, dict[str, Work]]:
    """alpha serves nothing of its own; beta and gamma serve the same procedures."""
    work = {name: Work(name) for name in ("beta", "gamma")}
    cluster = MemoryCluster(
        {
            "alpha": [],
            "beta": work["beta"].procedures(),
            "gamma": work["gamma"].procedures(),
        },
        ClusterSettings(**settings),
    )
    cluster.start()
    return cluster, work


class CatalogTests(SynchronousTestCase):
    """What each node learns of its peers."""

    def test_handshake_learns_procedures(self) -> None:
        """After the handshake each peer is up, with the procedures it serves."""
        cluster, _ = three_nodes()
        peers = {peer.name: peer for peer in cluster.clusters["alpha"].peers}
        self.assertEqual(
            {name: peer.state for name, peer in peers.items()},
            {"beta": PeerState.UP, "gamma": PeerState.UP},
        )
        self.assertEqual(
            sorted(peers["beta"].procedures), ["hold", "hold_idempotent", "multicall", "where"]
        )
        self.assertTrue(peers["beta"].procedures["hold_idempotent"]["idempotent"])
        cluster.stop()
        self.assertEqual(cluster.clock.getDelayedCalls(), [])

    def test_stats_show_peers(self) -> None:
        """STATS includes each peer's state and procedures."""
        cluster, _ = three_nodes()
        d = cluster["alpha"].client().command("STATS")
        cluster.flush()
        peers = self.successResultOf(d)["peers"]
        self.assertEqual(peers["gamma"]["state"], "up")
        self.assertIn("where", peers["gamma"]["procedures"])
        cluster.stop()


@procedure(run="reactor")
def stock(item: str) -> int:
    """How many of an item are in stock.

    Counts the shelves and the back room.
    """
    return len(item)


class ClusterHelpTests(SynchronousTestCase):
    """HELP and LIST on a node show what its peers serve, and where."""

    def cluster(self) -> MemoryCluster:
        cluster = MemoryCluster({"alpha": [], "beta": [stock], "gamma": [stock]})
        cluster.start()
        self.addCleanup(cluster.stop)
        return cluster

    def ask(self, cluster: MemoryCluster, line: str) -> bytes:
        conn = cluster["alpha"].connect_raw()
        conn.send(line + "\n")
        cluster.flush()
        return conn.transport.value()

    def test_list_includes_peers_procedures(self) -> None:
        """LIST names what alpha's peers serve beside its own."""
        self.assertEqual(
            json.loads(self.ask(self.cluster(), "#1 LIST").split(b" ", 2)[2]),
            ["multicall", "stock"],
        )

    def test_help_table_marks_where(self) -> None:
        """HELP's table shows a peer's procedure with its signature, summary and nodes."""
        text = self.ask(self.cluster(), "HELP").decode()
        [row] = [line for line in text.splitlines() if line.startswith("| stock(")]
        self.assertRegex(row, r"^\| stock\(item: str\) -> int +\[on beta, gamma\] How many of an")

    def test_help_name_describes_a_peers_procedure(self) -> None:
        """HELP stock on alpha shows the doc beta gave, and where it runs."""
        text = self.ask(self.cluster(), "HELP stock").decode()
        self.assertIn("| stock(item: str) -> int", text)
        self.assertIn("|     Counts the shelves and the back room.", text)
        self.assertIn("| runs on: beta, gamma", text)
        reply = self.ask(self.cluster(), "#2 HELP stock")
        described = json.loads(reply.split(b" ", 2)[2])
        self.assertEqual(
            (described["signature"], described["nodes"]), ("(item: str) -> int", ["beta", "gamma"])
        )

    def test_local_procedure_says_where_else(self) -> None:
        """A procedure alpha serves itself is described from its own registry, with its twins."""
        text = self.ask(self.cluster(), "HELP multicall").decode()
        self.assertIn("| also on: beta, gamma", text)

    def test_down_peer_leaves_the_catalog(self) -> None:
        """A procedure only a dead peer served is no longer listed, and HELP of it is NOT_FOUND."""
        cluster = self.cluster()
        cluster.kill("beta")
        cluster.kill("gamma")
        cluster.advance(10)
        self.assertNotIn(b"stock", self.ask(cluster, "#1 LIST"))
        self.assertTrue(self.ask(cluster, "HELP stock").startswith(b"ERR NOT_FOUND not-run"))


class RoutingTests(SynchronousTestCase):
    """Calls for procedures a node does not serve."""

    def test_forwarded_as_if_local(self) -> None:
        """A call to a node that does not serve the procedure is answered by one that does."""
        cluster, work = three_nodes()
        d = cluster["alpha"].client().call("where")
        cluster.flush()
        self.assertIn(self.successResultOf(d), ("beta", "gamma"))
        self.assertEqual(work["beta"].runs + work["gamma"].runs, 1)
        cluster.stop()

    def test_spread_over_replicas(self) -> None:
        """Calls go to the replica with the fewest calls in flight, in turn when equal."""
        cluster, work = three_nodes()
        client = cluster["alpha"].client()
        held = [client.call("hold") for _ in range(4)]
        cluster.flush()
        self.assertEqual((len(work["beta"].held), len(work["gamma"].held)), (2, 2))
        for _ in range(6):
            d = client.call("where")
            cluster.flush()
            self.successResultOf(d)
        self.assertEqual((work["beta"].runs, work["gamma"].runs), (5, 5))
        for d in work["beta"].held + work["gamma"].held:
            d.callback(None)
        cluster.flush()
        for d in held:
            self.successResultOf(d)
        cluster.stop()

    def test_named_node(self) -> None:
        """C{name@node} runs the procedure on that node only."""
        cluster, _ = three_nodes()
        client = cluster["alpha"].client()
        answers = [client.call("where@gamma") for _ in range(3)]
        missing = client.call("where@zeta")
        local = client.call("where@alpha")
        cluster.flush()
        self.assertEqual([self.successResultOf(d) for d in answers], ["gamma"] * 3)
        self.assertEqual(
            self.failureResultOf(missing, NotFoundError).value.outcome, Outcome.NOT_RUN
        )
        self.failureResultOf(local, NotFoundError)
        cluster.stop()

    def test_unknown_everywhere(self) -> None:
        """A procedure no node serves is NOT_FOUND, did not run."""
        cluster, _ = three_nodes()
        d = cluster["alpha"].client().call("nosuch")
        cluster.flush()
        error = self.failureResultOf(d, NotFoundError).value
        self.assertEqual((error.outcome, error.node), (Outcome.NOT_RUN, "alpha"))
        cluster.stop()

    def test_remote_error_names_its_node(self) -> None:
        """An error raised where the call ran names that node, not the one that forwarded it."""
        cluster, _ = three_nodes()
        d = cluster["alpha"].client().call("where@beta", 1)
        cluster.flush()
        error = self.failureResultOf(d).value
        self.assertEqual((error.code, error.node), ("INVALID_ARGUMENT", "beta"))
        cluster.stop()

    def test_deadline_travels(self) -> None:
        """The forwarded call carries the caller's remaining budget, and both ends enforce it."""
        cluster, work = three_nodes()
        d = cluster["alpha"].client().call("hold@beta", timeout=5)
        cluster.advance(2)
        self.assertNoResult(d)
        cluster.advance(3.1)
        self.failureResultOf(d, DeadlineExceededError)
        self.assertEqual(work["beta"].cancelled, 1, "the work downstream was cancelled")
        cluster.stop()

    def test_cancel_travels(self) -> None:
        """Cancelling a forwarded call cancels the work on the node that runs it."""
        cluster, work = three_nodes()
        d = cluster["alpha"].client().call("hold@gamma")
        cluster.flush()
        d.cancel()
        cluster.flush()
        self.failureResultOf(d, CallCancelledError)
        self.assertEqual(work["gamma"].cancelled, 1)
        cluster.stop()

    def test_hop_limit(self) -> None:
        """A call forwarded as many times as the limit is refused, not forwarded again."""
        cluster, _work = three_nodes(max_hops=2)
        dispatcher = cluster["alpha"].dispatcher
        refused = dispatcher.dispatch(Call("where", hops=2))
        self.failureResultOf(refused, FailedPreconditionError)
        allowed = dispatcher.dispatch(Call("where", hops=1))
        cluster.flush()
        self.successResultOf(allowed)
        cluster.stop()


class FailoverTests(SynchronousTestCase):
    """What happens to calls when the node serving them fails."""

    def test_down_peer_skipped(self) -> None:
        """A call is not sent to a peer known to be down."""
        cluster, _work = three_nodes()
        cluster.kill("beta")
        client = cluster["alpha"].client()
        calls = [client.call("where") for _ in range(4)]
        cluster.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], ["gamma"] * 4)
        cluster.stop()

    def test_lost_mid_call_not_retried(self) -> None:
        """A call lost after it was sent is not run again elsewhere: the caller hears it may have run."""
        cluster, work = three_nodes()
        d = cluster["alpha"].client().call("hold")
        cluster.flush()
        runner = "beta" if work["beta"].held else "gamma"
        cluster.kill(runner)
        error = self.failureResultOf(d, UnavailableError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual(work["beta"].runs + work["gamma"].runs, 1)
        cluster.stop()

    def test_lost_mid_call_idempotent_retried(self) -> None:
        """An idempotent call lost after it was sent runs again on another replica."""
        cluster, work = three_nodes()
        d = cluster["alpha"].client().call("hold_idempotent")
        cluster.flush()
        runner, other = ("beta", "gamma") if work["beta"].held else ("gamma", "beta")
        cluster.kill(runner)
        self.assertNoResult(d)
        work[other].held[0].callback("second try")
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "second try")
        cluster.stop()

    def test_lost_mid_call_keyed_retried(self) -> None:
        """A keyed call lost after it was sent runs again on another replica."""
        cluster, work = three_nodes()
        d = cluster["alpha"].client().call("hold", key="order-7")
        cluster.flush()
        runner, other = ("beta", "gamma") if work["beta"].held else ("gamma", "beta")
        cluster.kill(runner)
        work[other].held[0].callback("done once")
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "done once")
        cluster.stop()

    def test_calls_unread_at_a_peers_bye_go_elsewhere(self) -> None:
        """
        Calls alpha sent to beta that beta had not read when it shut down
        and said BYE did not run there: they run on gamma, once each, and
        beta's link goes down without a warning.
        """
        cluster, work = three_nodes()
        client = cluster["alpha"].client()
        peers = {peer.name: peer for peer in cluster.clusters["alpha"].peers}
        cluster.freeze("beta")
        calls = [client.call("where") for _ in range(6)]
        cluster.flush()
        self.assertGreater(peers["beta"].in_flight, 0, "some calls wait, unread, on beta's link")
        drained = cluster["beta"].factory.drain(5.0)  # says BYE, though nothing moves yet
        cluster.thaw("beta")
        self.assertEqual([self.successResultOf(d) for d in calls], ["gamma"] * 6)
        self.assertEqual(work["beta"].runs, 0)
        self.assertEqual(work["gamma"].runs, 6)
        self.assertIs(peers["beta"].state, PeerState.DOWN)
        cluster.advance(0.1)
        self.successResultOf(drained)
        cluster.stop()

    def test_all_replicas_down(self) -> None:
        """With every replica down, a call fails UNAVAILABLE at once and did not run."""
        cluster, _ = three_nodes()
        cluster.kill("beta")
        cluster.kill("gamma")
        d = cluster["alpha"].client().call("where")
        cluster.flush()
        self.assertEqual(self.failureResultOf(d, UnavailableError).value.outcome, Outcome.NOT_RUN)
        cluster.stop()


class FailureDetectionTests(SynchronousTestCase):
    """Heartbeats notice a silent peer, and calls waiting on it end at once."""

    def test_frozen_peer_marked_down(self) -> None:
        """A peer that stops answering is marked down within down_after plus one heartbeat."""
        cluster, _work = three_nodes(heartbeat_interval=1.0, down_after=3.0)
        events: list[tuple[str, PeerState]] = []
        cluster.clusters["alpha"].subscribe(lambda name, state: events.append((name, state)))
        d = cluster["alpha"].client().call("hold@beta", timeout=60)
        cluster.flush()
        cluster.freeze("beta")
        cluster.advance(2.5)
        self.assertNoResult(d)
        cluster.advance(1.6)
        self.assertIn(("beta", PeerState.DOWN), events)
        error = self.failureResultOf(d, UnavailableError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        # Routing now avoids it.
        client = cluster["alpha"].client()
        calls = [client.call("where") for _ in range(3)]
        cluster.flush()
        self.assertEqual([self.successResultOf(c) for c in calls], ["gamma"] * 3)
        cluster.stop()

    def _busy_turn(self, silent: bool) -> tuple[MemoryCluster, list[tuple[str, PeerState]]]:
        """
        alpha sends beta a heartbeat, then spends 4 s in one turn of its
        reactor without reading; beta falls silent too if C{silent}.
        """
        cluster, _work = three_nodes(heartbeat_interval=1.0, down_after=3.0)
        events: list[tuple[str, PeerState]] = []
        cluster.clusters["alpha"].subscribe(lambda name, state: events.append((name, state)))
        cluster.advance(2.5)
        reactor_turn(cluster.clock, 1.0)  # a heartbeat: alpha asks, nothing is read yet
        if silent:
            cluster.freeze("beta")
        reactor_turn(cluster.clock, 4.0)  # busy: the next heartbeat finds 4 s of silence
        self.assertEqual(events, [], "judged before reading")
        cluster.flush()  # the reactor reads its sockets
        reactor_turn(cluster.clock, 0.0)  # the next turn: the second look
        return cluster, events

    def test_busy_node_reads_before_it_judges(self) -> None:
        """A peer whose answer waited unread while this node was busy is not marked down."""
        cluster, events = self._busy_turn(silent=False)
        self.assertEqual(events, [])
        peers = {peer.name: peer.state for peer in cluster.clusters["alpha"].peers}
        self.assertEqual(peers, {"beta": PeerState.UP, "gamma": PeerState.UP})
        cluster.stop()

    def test_silent_after_reading_is_marked_down(self) -> None:
        """A peer still silent once this node has read its sockets is marked down then."""
        cluster, events = self._busy_turn(silent=True)
        self.assertEqual(events, [("beta", PeerState.DOWN)])
        cluster.stop()

    def test_thawed_peer_comes_back_and_late_replies_go_nowhere(self) -> None:
        """After it answers again the peer is up; its late reply to an abandoned call reaches no one."""
        cluster, work = three_nodes(heartbeat_interval=1.0, down_after=3.0)
        client = cluster["alpha"].client()
        first = client.call("hold@beta", timeout=60)
        cluster.flush()
        cluster.freeze("beta")
        cluster.advance(4.5)
        self.failureResultOf(first, UnavailableError)
        work["beta"].held[0].callback("late")  # beta answers into a dead link
        cluster.thaw("beta")
        cluster.advance(10)
        peers = {peer.name: peer for peer in cluster.clusters["alpha"].peers}
        self.assertEqual(peers["beta"].state, PeerState.UP)
        second = client.call("where@beta")
        cluster.flush()
        self.assertEqual(self.successResultOf(second), "beta")
        cluster.stop()

    def test_revived_peer_used_again(self) -> None:
        """A killed node that starts again is reconnected to and used."""
        cluster, _work = three_nodes(reconnect_max_delay=2.0)
        cluster.kill("beta")
        cluster.advance(5)
        cluster.revive("beta")
        cluster.advance(5)
        d = cluster["alpha"].client().call("where@beta")
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "beta")
        cluster.stop()


class LivenessMachine(RuleBasedStateMachine):
    """
    alpha's view of beta and gamma under any mix of quiet time, long busy
    turns of the shared reactor, and beta frozen and thawed: a peer is marked
    down only while it is silent (frozen), however busy the nodes were.
    """

    DOWN_AFTER = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.cluster, _work = three_nodes(heartbeat_interval=1.0, down_after=self.DOWN_AFTER)
        self.frozen_at: float | None = None
        self.unjust: list[str] = []
        self.cluster.clusters["alpha"].subscribe(self._changed)

    def _changed(self, name: str, state: PeerState) -> None:
        if state is PeerState.DOWN and (name != "beta" or self.frozen_at is None):
            now = self.cluster.clock.seconds()
            self.unjust.append(f"{name} marked down at {now:.2f} while it answered")

    @rule(seconds=st.floats(0.05, 2.0))
    def quiet(self, seconds: float) -> None:
        """Time passes with the nodes reading as bytes come."""
        self.cluster.advance(seconds)

    @rule(seconds=st.floats(0.0, 10.0))
    def busy_turn(self, seconds: float) -> None:
        """One turn of local work holds the reactor; it reads after."""
        reactor_turn(self.cluster.clock, seconds)
        self.cluster.flush()

    @rule()
    def freeze_beta(self) -> None:
        if self.frozen_at is None:
            self.frozen_at = self.cluster.clock.seconds()
            self.cluster.freeze("beta")

    @rule()
    def thaw_beta(self) -> None:
        if self.frozen_at is not None:
            self.frozen_at = None
            self.cluster.thaw("beta")

    @invariant()
    def only_the_silent_are_marked_down(self) -> None:
        assert not self.unjust, self.unjust

    def teardown(self) -> None:
        self.cluster.stop()


LivenessMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None
)
TestLiveness = LivenessMachine.TestCase


class NestedCallTests(SynchronousTestCase):
    """Procedures that call other procedures through their context."""

    def test_nested_call_inherits_deadline_and_is_cancelled_with_parent(self) -> None:
        """A nested call gets the time left of its parent's deadline and ends with it."""
        from callnet.context import CallContext

        cluster, work = three_nodes()

        @procedure(run="reactor")
        async def outer(context: CallContext) -> Any:
            return await context.call("hold@beta")

        cluster["alpha"].registry.add(outer)
        d = cluster["alpha"].client().call("outer", timeout=4)
        cluster.advance(1)
        self.assertEqual(len(work["beta"].held), 1)
        cluster.advance(3.1)
        self.failureResultOf(d, DeadlineExceededError)
        self.assertEqual(work["beta"].cancelled, 1, "the nested call was cancelled too")
        cluster.stop()

    def test_nested_call_cancelled_by_caller(self) -> None:
        """Cancelling the parent cancels its nested calls on other nodes."""
        from callnet.context import CallContext

        cluster, work = three_nodes()

        @procedure(run="reactor")
        async def outer(context: CallContext) -> Any:
            return await context.call("hold@gamma")

        cluster["alpha"].registry.add(outer)
        d = cluster["alpha"].client().call("outer")
        cluster.flush()
        d.cancel()
        cluster.flush()
        self.failureResultOf(d, CallCancelledError)
        self.assertEqual(work["gamma"].cancelled, 1)
        cluster.stop()

    def test_context_is_not_an_argument(self) -> None:
        """The context parameter is hidden from callers: it is not in the signature they see."""
        from callnet.context import CallContext

        cluster, _ = three_nodes()

        @procedure(run="reactor")
        def named(greeting: str, context: CallContext) -> str:
            return f"{greeting} from {context.node}, {context.remaining():.0f}s left"

        entry = cluster["alpha"].registry.add(named)
        self.assertEqual(entry.usage, "named(greeting: str) -> str")
        d = cluster["alpha"].client().call("named", "hi", timeout=7)
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "hi from alpha, 7s left")
        cluster.stop()


class MulticallTests(SynchronousTestCase):
    """One call on every node that serves a procedure."""

    def test_every_serving_node_answers(self) -> None:
        """Multicall returns each serving node's result, and a typed error for a dead one."""
        cluster, _ = three_nodes()
        client = cluster["alpha"].client()
        d = client.multicall("where")
        cluster.flush()
        self.assertEqual(self.successResultOf(d), {"beta": "beta", "gamma": "gamma"})
        cluster.kill("gamma")
        d = client.multicall("where")
        cluster.flush()
        answer = self.successResultOf(d)
        self.assertEqual(answer["beta"], "beta")
        self.assertIsInstance(answer["gamma"], UnavailableError)
        self.assertEqual(answer["gamma"].outcome, Outcome.NOT_RUN)
        cluster.stop()

    def test_one_deadline(self) -> None:
        """All the calls of a multicall end by its one deadline."""
        cluster, work = three_nodes()
        d = cluster["alpha"].client().multicall("hold", timeout=2)
        cluster.advance(1.7)
        self.assertNoResult(d)
        cluster.advance(0.2)
        answer = self.successResultOf(d)
        self.assertEqual(sorted(answer), ["beta", "gamma"])
        for error in answer.values():
            self.assertIsInstance(error, DeadlineExceededError)
        self.assertEqual(work["beta"].cancelled + work["gamma"].cancelled, 2)
        cluster.stop()

    def test_named_nodes(self) -> None:
        """Multicall on named nodes calls exactly those, and reports an unknown one."""
        cluster, _ = three_nodes()
        d = cluster["alpha"].client().multicall("where", nodes=["gamma", "zeta"])
        cluster.flush()
        answer = self.successResultOf(d)
        self.assertEqual(answer["gamma"], "gamma")
        self.assertIsInstance(answer["zeta"], NotFoundError)
        cluster.stop()


#: What a multicall naming many made-up nodes may take of the reactor and
#: of memory: generous for a loaded machine, far below what it cost
#: unbounded (seconds, and over 300 MiB).
REFUSAL_SECONDS = 0.05
REFUSAL_BYTES = 32 * 1024 * 1024
#: The same through a node's protocol, where reading the 1.3 MB line (as any
#: line that long) takes most of the time.
LINE_SECONDS = 0.25


class MulticallLimitTests(SynchronousTestCase):
    """What one multicall line may cost the node that receives it."""

    def _names(self) -> list[str]:
        return [f"made-up-{i}" for i in range(100_000)]

    def test_many_names_refused_fast(self) -> None:
        """A multicall naming 100,000 nodes is refused, not-run, within 50 ms and 32 MiB."""
        node = MemoryNode(name="alpha")
        call = Call("multicall", ("add", [1, 2]), {"nodes": self._names()}, "1")
        started = time.perf_counter()
        d = node.dispatcher.dispatch(call)
        elapsed = time.perf_counter() - started
        error = self.failureResultOf(d, ResourceExhaustedError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)
        self.assertIn("at most 64 nodes", error.message)
        self.assertLess(elapsed, REFUSAL_SECONDS)
        tracemalloc.start()
        try:
            self.failureResultOf(node.dispatcher.dispatch(call), ResourceExhaustedError)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, REFUSAL_BYTES)

    def test_many_names_on_the_wire(self) -> None:
        """The same line read by a node's protocol is answered at once with one short error."""
        node = MemoryNode(name="alpha")
        connection = node.connect_raw()
        names = json.dumps(self._names(), separators=(",", ":"))
        line = f"multicall add [1,2] nodes={names}\n".encode()
        started = time.perf_counter()
        connection.send(line)
        elapsed = time.perf_counter() - started
        [reply] = connection.lines()
        self.assertTrue(reply.startswith(b"ERR RESOURCE_EXHAUSTED not-run @alpha "), reply)
        self.assertLess(len(reply), 200)
        self.assertLess(elapsed, LINE_SECONDS)

    def test_limit_is_configurable(self) -> None:
        """max_multicall_nodes names can be called; one more is refused."""

        @procedure(run="reactor")
        def add(a: int, b: int) -> int:
            return a + b

        node = MemoryNode([add], name="alpha", limits=Limits(max_multicall_nodes=3))
        client = node.client()
        d = client.multicall("add", 1, 2, nodes=["alpha", "x", "y"])
        node.flush()
        answer = self.successResultOf(d)
        self.assertEqual(answer["alpha"], 3)
        d = client.multicall("add", 1, 2, nodes=["alpha", "x", "y", "z"])
        node.flush()
        error = self.failureResultOf(d, ResourceExhaustedError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)

    def test_unknown_names_make_no_call(self) -> None:
        """Names that are no node get NOT_FOUND from the node asked, and no call goes anywhere."""
        cluster, work = three_nodes()
        client = cluster["alpha"].client()
        d = client.multicall("where", nodes=["beta", "nobody", "nothing"])
        cluster.flush()
        answer = self.successResultOf(d)
        self.assertEqual(answer["beta"], "beta")
        for name in ("nobody", "nothing"):
            self.assertIsInstance(answer[name], NotFoundError)
            self.assertEqual(answer[name].outcome, Outcome.NOT_RUN)
            self.assertEqual(answer[name].node, "alpha")
        self.assertEqual((work["beta"].runs, work["gamma"].runs), (1, 0))
        cluster.stop()

    def test_answer_too_big(self) -> None:
        """An answer longer than max_line_bytes is a RESOURCE_EXHAUSTED error, not a huge line."""

        @procedure(run="reactor")
        def big() -> str:
            return "x" * 5000

        node = MemoryNode([big], name="alpha", limits=Limits(max_line_bytes=4096))
        connection = node.connect_raw()
        connection.send("#1 multicall big\n")
        [reply] = connection.lines()
        self.assertTrue(reply.startswith(b"#1 ERR RESOURCE_EXHAUSTED may-have-run @alpha "), reply)
        self.assertIn(b"max_line_bytes", reply)
        connection.send("#2 multicall big [] {} []\n")  # no node: a small answer
        self.assertEqual(connection.lines()[-1], b"#2 OK {}")

    def test_answer_too_big_cancels_the_calls_still_running(self) -> None:
        """Once the answer passes the limit, the calls still running are cancelled."""
        held: list[Deferred[Any]] = []
        cancelled: list[str] = []

        def big(node: str) -> Any:
            @procedure(run="reactor", name="big")
            def answer() -> str:
                return node * (1024 * 1024)  # 1 MiB: two pass the 2 MiB limit

            return answer

        @procedure(run="reactor", name="big")
        def slow() -> Deferred[Any]:
            d: Deferred[Any] = Deferred(lambda _: cancelled.append("gamma"))
            held.append(d)
            return d

        cluster = MemoryCluster({"alpha": [big("a")], "beta": [big("b")], "gamma": [slow]})
        cluster.start()
        d = cluster["alpha"].client().multicall("big", timeout=10)
        cluster.flush()
        error = self.failureResultOf(d, ResourceExhaustedError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        self.assertEqual((len(held), cancelled), (1, ["gamma"]))
        cluster.stop()


class TraceTests(SynchronousTestCase):
    """One trace id follows a request across the nodes it touches."""

    def test_given_trace_travels_and_shows_in_errors(self) -> None:
        """A caller's trace reaches the node that runs the call, and comes back in its error."""
        from callnet.context import CallContext

        cluster, _ = three_nodes()
        seen: list[str | None] = []

        @procedure(run="reactor")
        def traced(context: CallContext) -> str:
            seen.append(context.trace)
            return "ok"

        cluster["beta"].registry.add(traced)
        client = cluster["alpha"].client()
        d = client.call(
            "traced@beta", trace="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
        failed = client.call("where@beta", 1, trace="req-7")
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "ok")
        # The same trace and flags, sent on by alpha: a new parent id.
        [trace] = seen
        self.assertRegex(trace or "", r"^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$")
        self.assertNotIn("00f067aa0ba902b7", trace or "")
        error = self.failureResultOf(failed).value
        self.assertEqual(
            (error.code, error.node, error.trace), ("INVALID_ARGUMENT", "beta", "req-7")
        )
        self.assertNotIn("req-7", error.message)
        cluster.stop()

    def test_forwarded_call_gets_one(self) -> None:
        """A call forwarded without a trace id is given one, which its error carries back."""
        cluster, _ = three_nodes()
        d = cluster["alpha"].client().call("where@beta", 1)
        cluster.flush()
        error = self.failureResultOf(d).value
        self.assertRegex(error.trace or "", r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
        cluster.stop()


class PeerUpdateTests(SynchronousTestCase):
    """A node's peers changed while it runs (a reload)."""

    def _drop_gamma_with_a_call_on_it(
        self,
    ) -> tuple[MemoryCluster, dict[str, Work], Deferred[Any]]:
        """alpha has a call running on gamma when a reload drops gamma from its peers."""
        cluster, work = three_nodes()
        alpha = cluster.clusters["alpha"]
        held = cluster["alpha"].client().call("hold@gamma", timeout=60)
        cluster.flush()
        self.assertEqual(len(work["gamma"].held), 1)
        only_beta = dataclasses.replace(alpha._config, peers=(("beta", "memory:beta"),))
        self.assertEqual(alpha.update(only_beta), ([], ["gamma"]))
        cluster.flush()
        return cluster, work, held

    def test_removed_peer_drains_its_calls(self) -> None:
        """A peer dropped by a reload gets no new calls, but a call already running on it
        finishes there and gets its answer, before the link ends."""
        cluster, work, held = self._drop_gamma_with_a_call_on_it()
        client = cluster["alpha"].client()
        calls = [client.call("where") for _ in range(3)]
        cluster.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], ["beta"] * 3)
        self.assertNoResult(held)
        work["gamma"].held[0].callback("done")
        cluster.flush()
        self.assertEqual(self.successResultOf(held), "done")
        self.assertEqual(work["gamma"].cancelled, 0)
        cluster.advance(0.1)
        gamma_links = [p for p in cluster["gamma"]._pumps if not p.serverIO.disconnected]
        self.assertEqual(len(gamma_links), 1, "only beta's link to gamma is left")
        cluster.stop()

    def test_removed_peer_drain_ends_after_grace(self) -> None:
        """A call on a peer dropped by a reload that outlasts the shutdown grace fails
        may-have-run, as a call on a node that stops does."""
        cluster, _work, held = self._drop_gamma_with_a_call_on_it()
        cluster.advance(9.5)
        self.assertNoResult(held)
        cluster.advance(0.6)
        error = self.failureResultOf(held, UnavailableError).value
        self.assertEqual(error.outcome, Outcome.MAY_HAVE_RUN)
        cluster.stop()

    def test_remove_and_add_a_peer(self) -> None:
        """A peer dropped from the config is closed and no longer routed to; one put back links again."""
        import dataclasses

        cluster, _ = three_nodes()
        alpha = cluster.clusters["alpha"]
        config = alpha._config
        only_beta = dataclasses.replace(config, peers=(("beta", "memory:beta"),))
        self.assertEqual(alpha.update(only_beta), ([], ["gamma"]))
        client = cluster["alpha"].client()
        calls = [client.call("where") for _ in range(4)]
        cluster.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], ["beta"] * 4)
        self.assertEqual(sorted(alpha.describe()), ["beta"])
        self.assertEqual(alpha.update(config), (["gamma"], []))
        cluster.flush()
        d = client.call("where@gamma")
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "gamma")
        cluster.stop()
