"""
One access decision for every path to a procedure, judged on the original
caller's identity: direct, name@node, multicall in every argument form,
nested calls, and calls forwarded by a peer.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from callnet.access import AccessPolicy, Caller
from callnet.config import NodeConfig, Security
from callnet.config_load import parse_config
from callnet.context import CallContext
from callnet.errors import ConfigError, Outcome
from callnet.registry import procedure
from callnet.testing import MemoryCluster, MemoryNode, StringConnection
from callnet.wire import Call, ErrorReply, Success

ALICE = "alice-token-0123456789"
CAROL = "carol-token-0123456789"
OPS = "ops-token-9876543210ab"
CLUSTER = "cluster-token-abcdef0123"


@procedure(run="reactor")
def greet(name: str) -> str:
    return f"hello {name}"


@procedure(run="reactor")
def secret() -> str:
    return "the secret"


@procedure(run="reactor")
def add(a: int, b: int) -> int:
    return a + b


@procedure(run="reactor")
async def relay(name: str, context: CallContext) -> Any:
    """Call another procedure as part of this call."""
    return await context.call(name)


def guarded(**security: Any) -> MemoryNode:
    """A node where alice may greet, relay and multicall, and ops may do anything."""
    return MemoryNode(
        [greet, secret, add, relay],
        name="guarded",
        security=Security(
            tokens=(("alice", ALICE), ("ops", OPS)),
            acl=(("alice", ("greet", "relay", "multicall")), ("ops", ("*",))),
            **security,
        ),
    )


def authenticated(node: MemoryNode, token: str) -> StringConnection:
    conn = node.connect_raw()
    conn.send(f"#0 AUTH {token}\n")
    [reply] = conn.events()
    assert isinstance(reply, Success), reply
    return conn


def reply(conn: StringConnection, line: str) -> Success | ErrorReply:
    conn.send(line + "\n")
    [event] = conn.events()
    assert isinstance(event, Success | ErrorReply), event
    return event


def assert_denied(
    case: SynchronousTestCase, event: Success | ErrorReply, procedure: str, node: str
) -> None:
    case.assertIsInstance(event, ErrorReply)
    assert isinstance(event, ErrorReply)
    error = event.error
    case.assertEqual((error.code, error.outcome), ("PERMISSION_DENIED", Outcome.NOT_RUN))
    case.assertIn(f"may not call {procedure}", error.message)
    case.assertEqual(error.node, node)


class MulticallTests(SynchronousTestCase):
    """Being allowed multicall gives no procedure a caller is not allowed itself."""

    def test_every_argument_form_is_judged(self) -> None:
        """Positional, keyword and @node forms of multicall are refused for a denied procedure."""
        node = guarded()
        conn = authenticated(node, ALICE)
        for line in (
            "#1 add 1 2",
            "#2 multicall add [1,2]",
            "#3 multicall procedure=add args=[1,2]",
            '#4 multicall args=[1,2] procedure="add"',
            "#5 multicall@guarded procedure=add args=[1,2]",
            "#6 multicall add@guarded [1,2]",
        ):
            assert_denied(self, reply(conn, line), "add", "guarded")

    def test_nested_multicall_is_judged_at_every_level(self) -> None:
        """A multicall of multicall reaches the inner procedure only if the caller may call it."""
        node = guarded()
        conn = authenticated(node, ALICE)
        event = reply(conn, '#1 multicall multicall ["secret"]')
        assert isinstance(event, Success), event
        [(where, outcome)] = event.value.items()
        self.assertEqual(where, "guarded")
        self.assertEqual(outcome["error"]["code"], "PERMISSION_DENIED")
        self.assertNotIn("the secret", orjson.dumps(event.value).decode())

    def test_allowed_procedure_still_works(self) -> None:
        """A multicall of a procedure the caller may call answers as before."""
        node = guarded()
        conn = authenticated(node, ALICE)
        event = reply(conn, '#1 multicall greet ["ada"]')
        self.assertEqual(event, Success({"guarded": {"ok": "hello ada"}}, "1"))

    def test_target_comes_from_procedure_metadata(self) -> None:
        """Any procedure can declare the parameter naming what it calls, and is judged by it."""

        @procedure(run="reactor", calls="target", name="proxy")
        async def proxy(target: str, context: CallContext) -> Any:
            return await context.call(target)

        node = guarded()
        node.registry.add(proxy)
        node.factory.access = AccessPolicy(
            Security(tokens=(("alice", ALICE),), acl=(("alice", ("proxy", "greet")),))
        )
        conn = authenticated(node, ALICE)
        assert_denied(self, reply(conn, "#1 proxy target=secret"), "secret", "guarded")
        assert_denied(self, reply(conn, "#2 proxy secret"), "secret", "guarded")


class NestedCallTests(SynchronousTestCase):
    """A procedure calls others for its caller, never with more rights."""

    def test_nested_call_is_judged_for_the_caller(self) -> None:
        """A nested call to a procedure the caller may not call is refused, naming it."""
        node = guarded()
        alice = authenticated(node, ALICE)
        event = reply(alice, "#1 relay secret")
        assert isinstance(event, ErrorReply)
        self.assertEqual(event.error.code, "PERMISSION_DENIED")
        self.assertIn("may not call secret", event.error.message)
        ops = authenticated(node, OPS)
        self.assertEqual(reply(ops, "#3 relay secret"), Success("the secret", "3"))


class ForwardedIdentityTests(SynchronousTestCase):
    """A forwarded call is judged on the node that runs it, for its original caller."""

    def cluster(self) -> MemoryCluster:
        tokens = (("carol", CAROL),)
        cluster = MemoryCluster(
            {"alpha": [greet], "beta": [greet, secret]},
            security={
                "alpha": Security(tokens=tokens, cluster_token=CLUSTER, acl=(("carol", ("*",)),)),
                "beta": Security(
                    tokens=tokens, cluster_token=CLUSTER, acl=(("carol", ("greet",)),)
                ),
            },
        )
        cluster.start()
        self.addCleanup(cluster.stop)
        return cluster

    def call(self, cluster: MemoryCluster, conn: StringConnection, line: str) -> Any:
        conn.send(line + "\n")
        cluster.flush()
        [event] = conn.events()
        return event

    def test_no_confused_deputy(self) -> None:
        """carol, denied secret on beta, cannot get it by calling secret@beta through alpha."""
        cluster = self.cluster()
        conn = authenticated(cluster["alpha"], CAROL)
        event = self.call(cluster, conn, "#1 secret@beta")
        assert_denied(self, event, "secret", "beta")
        self.assertIn("carol (via alpha)", event.error.message)
        self.assertEqual(self.call(cluster, conn, "#2 greet@beta ada"), Success("hello ada", "2"))

    def test_routed_call_is_judged_too(self) -> None:
        """A call alpha routes to beta by name alone is judged by beta for carol."""
        cluster = self.cluster()
        conn = authenticated(cluster["alpha"], CAROL)
        assert_denied(self, self.call(cluster, conn, "#1 secret"), "secret", "beta")

    def test_multicall_across_the_cluster_is_judged_per_node(self) -> None:
        """A multicall through alpha gets secret from no node that denies it."""
        cluster = self.cluster()
        conn = authenticated(cluster["alpha"], CAROL)
        event = self.call(cluster, conn, '#1 multicall secret nodes=["beta"]')
        assert isinstance(event, Success), event
        self.assertEqual(event.value["beta"]["error"]["code"], "PERMISSION_DENIED")

    def test_caller_claim_from_a_client_is_ignored(self) -> None:
        """+caller from a connection that is not a peer's gains nothing: it is judged as itself."""
        node = guarded()
        alice = authenticated(node, ALICE)
        assert_denied(self, reply(alice, "#1 +caller=ops secret"), "secret", "guarded")

    def test_caller_claim_from_a_peer_is_believed(self) -> None:
        """A peer (cluster token) calling for alice gets alice's rights, not its own."""
        node = guarded(cluster_token=CLUSTER)
        peer = authenticated(node, CLUSTER)
        self.assertEqual(reply(peer, "#1 secret"), Success("the secret", "1"))
        assert_denied(self, reply(peer, "#2 +caller=alice secret"), "secret", "guarded")
        self.assertEqual(reply(peer, "#3 +caller=alice greet x"), Success("hello x", "3"))


class ClusterTokenOnlyTests(SynchronousTestCase):
    """A node whose only token is the cluster's, as discovery and the Kubernetes example have."""

    def test_cluster_token_alone_requires_authentication(self) -> None:
        """With a cluster token and no caller tokens, an anonymous call is refused
        UNAUTHENTICATED (PING still answers), and the cluster token makes its holder a peer."""
        node = MemoryNode([greet], name="alpha", security=Security(cluster_token=CLUSTER))
        conn = node.connect_raw()
        refused = reply(conn, "#1 greet x")
        assert isinstance(refused, ErrorReply), refused
        self.assertEqual(
            (refused.error.code, refused.error.outcome), ("UNAUTHENTICATED", Outcome.NOT_RUN)
        )
        self.assertEqual(reply(conn, "#2 PING"), Success("pong", "2"))
        conn.send(f"#3 AUTH {CLUSTER}\n")
        self.assertEqual(conn.events(), [Success("peer", "3")])


class PeerRightsTests(SynchronousTestCase):
    """Peer rights come from how a connection authenticated, never from a name."""

    def test_certificate_named_peer_is_no_peer(self) -> None:
        """A certificate naming 'peer' or an unknown node gets no peer rights; one naming a peer does."""
        policy = AccessPolicy(Security(acl=(("*", ("greet",)),)), peer_names=["beta"])
        self.assertFalse(policy.certified("peer").peer)
        self.assertFalse(policy.certified("gamma").peer)
        self.assertTrue(policy.certified("beta").peer)
        self.assertIsNotNone(policy.check(policy.certified("peer"), "secret"))
        self.assertIsNone(policy.check(policy.certified("beta"), "secret"))

    def test_token_names_that_would_collide_are_refused(self) -> None:
        """Tokens named peer, anonymous, node, or after a configured peer are refused at load."""
        for name in ("peer", "anonymous", "node"):
            with self.assertRaises(ConfigError) as raised:
                parse_config({"security": {"tokens": {name: ALICE}}})
            self.assertIn(repr(name), str(raised.exception))
        with self.assertRaises(ConfigError) as raised:
            parse_config(
                {"peers": {"beta": "tcp:127.0.0.2:7600"}, "security": {"tokens": {"beta": ALICE}}}
            )
        self.assertIn("peer's name", str(raised.exception))

    def test_forwarded_caller_is_never_a_peer(self) -> None:
        """A peer forwarding for a caller named like a node gives it no peer rights."""
        policy = AccessPolicy(Security(cluster_token=CLUSTER, acl=(("*", ("greet",)),)))
        peer = policy.authenticate(CLUSTER)
        assert peer is not None and peer.peer
        forwarded = policy.on_behalf(peer, "peer", "alpha")
        self.assertEqual(forwarded, Caller("peer", via="alpha"))
        self.assertIsNotNone(policy.check(forwarded, "secret"))


class ReloadTests(SynchronousTestCase):
    """A reload applies to connections already open."""

    def setUp(self) -> None:
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_removed_token_is_revoked(self) -> None:
        """A connection whose token a reload removed is refused until it authenticates again."""
        node = guarded()
        alice = authenticated(node, ALICE)
        self.assertEqual(reply(alice, "#1 greet ada"), Success("hello ada", "1"))
        node.factory.access = AccessPolicy(
            Security(tokens=(("ops", OPS),), acl=(("ops", ("*",)),))
        )
        event = reply(alice, "#2 greet ada")
        assert isinstance(event, ErrorReply)
        self.assertEqual(
            (event.error.code, event.error.outcome), ("UNAUTHENTICATED", Outcome.NOT_RUN)
        )
        event = reply(alice, "#3 LIST")
        assert isinstance(event, ErrorReply)
        self.assertEqual(event.error.code, "UNAUTHENTICATED")
        messages = [formatEvent(e) for e in self.logged]
        self.assertTrue(any("removed by a reload" in m and "alice" in m for m in messages))
        ops = authenticated(node, OPS)
        self.assertEqual(reply(ops, "#4 greet ada"), Success("hello ada", "4"))

    def test_list_names_what_the_caller_may_call(self) -> None:
        """LIST names only the procedures the caller's rules allow, and follows a reload."""
        node = guarded()
        alice, ops = authenticated(node, ALICE), authenticated(node, OPS)
        alice_names = reply(alice, "#1 LIST")
        assert isinstance(alice_names, Success)
        self.assertIn("greet", alice_names.value)
        self.assertNotIn("secret", alice_names.value)
        self.assertEqual(
            [name for name in alice_names.value if name not in ("greet", "relay", "multicall")],
            [],
        )
        ops_names = reply(ops, "#2 LIST")
        assert isinstance(ops_names, Success)
        self.assertIn("secret", ops_names.value)
        node.factory.access = AccessPolicy(
            Security(tokens=(("alice", ALICE), ("ops", OPS)), acl=(("alice", ("secret",)),))
        )
        self.assertEqual(reply(alice, "#3 LIST"), Success(["secret"], "3"))

    def test_stats_only_for_rules_that_name_it(self) -> None:
        """STATS (every procedure's counters, the peers' addresses) is refused to a caller whose rules do not match it, as "*" does."""
        node = guarded()
        alice, ops = authenticated(node, ALICE), authenticated(node, OPS)
        assert_denied(self, reply(alice, "#1 STATS"), "STATS", "guarded")
        self.assertIsInstance(reply(ops, "#2 STATS"), Success)
        node.factory.access = AccessPolicy(
            Security(tokens=(("alice", ALICE),), acl=(("alice", ("greet", "STATS")),))
        )
        self.assertIsInstance(reply(alice, "#3 STATS"), Success)

    def test_narrowed_rule_applies_at_once(self) -> None:
        """A rule narrowed by a reload refuses the next call on an open connection."""
        node = guarded()
        ops = authenticated(node, OPS)
        self.assertEqual(reply(ops, "#1 secret"), Success("the secret", "1"))
        node.factory.access = AccessPolicy(
            Security(tokens=(("alice", ALICE), ("ops", OPS)), acl=(("ops", ("greet",)),))
        )
        assert_denied(self, reply(ops, "#2 secret"), "secret", "guarded")

    def test_node_reload_swaps_the_policy(self) -> None:
        """NodeService.reload puts the new tokens in force for the dispatcher and the listener."""
        from twisted.internet.testing import MemoryReactorClock

        from callnet.node import NodeService

        first = NodeConfig(name="n", security=Security(tokens=(("alice", ALICE),)))
        second = NodeConfig(name="n", security=Security(tokens=(("ops", OPS),)))
        service = NodeService(first, MemoryReactorClock())
        service.reload_from = lambda: second
        self.assertIsNotNone(service.factory.access.authenticate(ALICE))
        self.assertTrue(service.reload())
        self.assertIsNone(service.factory.access.authenticate(ALICE))
        self.assertIs(service.dispatcher.access, service.factory.access)
        caller = Caller("alice", credential=b"x")
        self.assertTrue(service.dispatcher.access.revoked(caller))
        call = Call("echo", ("x",), tag="1")
        self.assertIsNotNone(service.dispatcher.access.check(caller, call.procedure))
