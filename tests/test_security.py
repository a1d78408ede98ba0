"""
Authentication, access rules and hostile clients, deterministically.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from callnet.access import AccessPolicy
from callnet.config import Limits, Security
from callnet.errors import (
    Outcome,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from callnet.protocol import AUTH_DELAY, MAX_AUTH_FAILURES
from callnet.registry import procedure
from callnet.testing import MemoryNode
from callnet.wire import ErrorReply, Success

ALICE = "alice-token-0123456789"
OPS = "ops-token-9876543210ab"


@procedure(run="reactor")
def greet(name: str) -> str:
    return f"hello {name}"


@procedure(run="reactor")
def shutdown() -> str:
    return "down"


def secured_node(**limits: float) -> MemoryNode:
    return MemoryNode(
        [greet, shutdown],
        name="guarded",
        limits=Limits(**limits),  # type: ignore[arg-type]
        security=Security(
            tokens=(("alice", ALICE), ("ops", OPS)),
            acl=(("alice", ("greet",)), ("ops", ("*",)), ("*", ("greet",))),
        ),
    )


class AuthenticationTests(SynchronousTestCase):
    """Callers prove who they are before calling."""

    def test_only_some_commands_before_auth(self) -> None:
        """Before AUTH only AUTH, PING, HELP and QUIT are answered; calls fail UNAUTHENTICATED, not run."""
        node = secured_node()
        conn = node.connect_raw()
        conn.send("#1 greet bob\n#2 LIST\n#3 PING\n#4 HELP greet\n")
        events = conn.events()
        first, second = events[0], events[1]
        for event in (first, second):
            assert isinstance(event, ErrorReply)
            self.assertIsInstance(event.error, UnauthenticatedError)
            self.assertEqual(event.error.outcome, Outcome.NOT_RUN)
        self.assertEqual(events[2], Success("pong", "3"))
        self.assertEqual(events[3].tag, "4")

    def test_auth_then_call(self) -> None:
        """A good token names the caller, who may then call."""
        node = secured_node()
        conn = node.connect_raw()
        conn.send(f"#1 AUTH {ALICE}\n#2 greet bob\n")
        self.assertEqual(conn.events(), [Success("alice", "1"), Success("hello bob", "2")])

    def test_wrong_token_slowed_then_dropped(self) -> None:
        """A wrong token is answered only after a growing delay, and repeated ones close the connection."""
        node = secured_node()
        conn = node.connect_raw()
        conn.send("#1 AUTH wrong-token-000000000\n#2 PING\n")
        self.assertEqual(conn.lines(), [])
        self.assertEqual(conn.transport.producerState, "paused")
        node.clock.advance(AUTH_DELAY)
        [refused, pong] = conn.events()
        assert isinstance(refused, ErrorReply)
        self.assertIsInstance(refused.error, UnauthenticatedError)
        self.assertNotIn("wrong-token", refused.error.message)
        self.assertEqual(pong, Success("pong", "2"))
        delays = [AUTH_DELAY]
        for attempt in range(2, MAX_AUTH_FAILURES + 1):
            conn.send(f"#a{attempt} AUTH wrong-token-000000000\n")
            delay = AUTH_DELAY * 2 ** (attempt - 1)
            node.clock.advance(delay - 0.01)
            self.assertEqual(conn.lines(), [], f"attempt {attempt} answered too soon")
            node.clock.advance(0.01)
            delays.append(delay)
            conn.events()
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(delays, sorted(delays))

    def test_guessing_over_many_connections_is_slowed_too(self) -> None:
        """Wrong tokens from one address slow the next on any of its connections, until auth_failure_window has passed."""
        node = secured_node(auth_failure_window=60)
        first, second = node.connect_raw(), node.connect_raw()
        first.send("AUTH wrong-token-000000000\n")
        second.send("AUTH wrong-token-000000000\n")
        node.clock.advance(AUTH_DELAY)
        self.assertEqual(len(first.events()), 1)
        self.assertEqual(second.lines(), [], "the address's second wrong token waits longer")
        node.clock.advance(AUTH_DELAY)
        self.assertEqual(len(second.events()), 1)
        node.clock.advance(60)
        third = node.connect_raw()
        third.send("AUTH wrong-token-000000000\n")
        node.clock.advance(AUTH_DELAY)
        self.assertEqual(len(third.events()), 1, "forgotten after the window")
        third.send(f"AUTH {ALICE}\n")
        self.assertEqual(third.events(), [Success("alice")], "a good token is never delayed")

    def test_addresses_remembered_are_bounded(self) -> None:
        """Past max_auth_failure_addresses, the address heard from least recently is forgotten."""
        node = secured_node(max_auth_failure_addresses=2)
        factory = node.factory
        self.assertEqual([factory.auth_failed(host) for host in ("a", "b", "a")], [1, 1, 2])
        factory.auth_failed("c")
        self.assertEqual(sorted(factory.auth_failures), ["a", "c"])
        self.assertEqual(factory.auth_failed("b"), 1)

    def test_connections_that_never_authenticate_are_closed(self) -> None:
        """Connections that never authenticate give their slots back after auth_timeout, while authenticated ones stay."""
        node = secured_node(auth_timeout=60, max_connections=2)
        idle, caller = node.connect_raw(), node.connect_raw()
        caller.send(f"AUTH {ALICE}\n")
        node.clock.advance(59)
        self.assertFalse(idle.transport.disconnecting)
        node.clock.advance(1)
        [refused] = idle.events()
        assert isinstance(refused, ErrorReply)
        self.assertIsInstance(refused.error, UnauthenticatedError)
        self.assertTrue(idle.transport.disconnecting)
        idle.protocol.connectionLost()
        self.assertFalse(caller.transport.disconnecting)
        late = node.connect_raw()
        late.send(f"AUTH {OPS}\n")
        self.assertEqual(late.events(), [Success("ops")], "the slot is free again")

    def test_constant_time_comparison(self) -> None:
        """Every token is compared with hmac.compare_digest, whichever matches."""
        import hmac
        from unittest import mock

        node = secured_node()
        with mock.patch(
            "callnet.access.hmac.compare_digest", wraps=hmac.compare_digest
        ) as compare:
            self.assertEqual(node.factory.access.authenticate(ALICE).name, "alice")
        self.assertEqual(compare.call_count, 2)


class AccessRuleTests(SynchronousTestCase):
    """Which identities may call which procedures."""

    def test_denied_call_did_not_run(self) -> None:
        """A call no rule allows fails PERMISSION_DENIED, did not run."""
        node = secured_node()
        conn = node.connect_raw()
        conn.send(f"#1 AUTH {ALICE}\n#2 shutdown\n#3 greet ann\n")
        [_, denied, allowed] = conn.events()
        assert isinstance(denied, ErrorReply)
        self.assertIsInstance(denied.error, PermissionDeniedError)
        self.assertEqual(denied.error.outcome, Outcome.NOT_RUN)
        self.assertEqual(allowed, Success("hello ann", "3"))
        # Counted under its name as refused, and never started: no duration.
        shutdown = node.dispatcher.stats.by_procedure["shutdown"]
        self.assertEqual(shutdown.outcomes(), {"PERMISSION_DENIED": 1})
        self.assertEqual(sum(shutdown.durations), 0)

    def test_patterns(self) -> None:
        """A pattern rule (ops = ['*']) allows every procedure to that identity."""
        node = secured_node()
        conn = node.connect_raw()
        conn.send(f"#1 AUTH {OPS}\n#2 shutdown\n")
        self.assertEqual(conn.events()[1], Success("down", "2"))

    def test_multicall_checks_the_inner_procedure(self) -> None:
        """Multicall does not get round the rules: the procedure it calls must be allowed too."""
        node = secured_node()
        node.factory.access._rules.append(("alice", ("multicall",)))
        conn = node.connect_raw()
        conn.send(f'#1 AUTH {ALICE}\n#2 multicall shutdown\n#3 multicall greet ["x"]\n')
        events = conn.events()
        assert isinstance(events[1], ErrorReply)
        self.assertIsInstance(events[1].error, PermissionDeniedError)
        self.assertEqual(events[2], Success({"guarded": {"ok": "hello x"}}, "3"))

    def test_hello_needs_a_peer(self) -> None:
        """Only a node of the cluster may send the peer handshake."""
        node = secured_node()
        conn = node.connect_raw()
        conn.send(f'#1 AUTH {ALICE}\n#2 HELLO {{"node": "evil"}}\n')
        hello = conn.events()[1]
        assert isinstance(hello, ErrorReply)
        self.assertIsInstance(hello.error, PermissionDeniedError)


CLUSTER_TOKEN = "a-cluster-token-of-some-length"


def certified_connection(certificate_name: str, *lines: str) -> list[object]:
    """
    What a node with the cluster token and one configured peer, beta,
    answers a connection whose verified client certificate names
    C{certificate_name}, after C{lines}.
    """
    node = MemoryNode([greet], name="alpha", security=Security(cluster_token=CLUSTER_TOKEN))
    node.dispatcher.access = AccessPolicy(Security(cluster_token=CLUSTER_TOKEN), ["beta"])
    node.factory.identify = lambda transport: certificate_name
    conn = node.connect_raw()
    conn.protocol.handshakeCompleted()
    conn.send("".join(f"#{i} {line}\n" for i, line in enumerate(lines, 1)))
    return conn.events()


class CertifiedHelloTests(SynchronousTestCase):
    """
    A certificate that names a configured peer binds that peer's name; a
    peer by the cluster token whose certificate names no configured peer (a
    node found in DNS, whose certificate names its host) gives its own.
    """

    def test_certificate_of_a_peer_says_its_own_name(self) -> None:
        """A certificate naming beta makes the connection beta's: HELLO as beta only."""
        hello = '{"node": "beta"}'
        [answer] = certified_connection("beta", f"HELLO {hello}")
        self.assertIsInstance(answer, Success)
        [answer] = certified_connection("beta", 'HELLO {"node": "gamma"}')
        assert isinstance(answer, ErrorReply)
        self.assertIsInstance(answer.error, PermissionDeniedError)
        self.assertIn("certificate names beta, not gamma", answer.error.message)

    def test_token_peer_named_by_its_host(self) -> None:
        """A peer by the token whose certificate names its host may say HELLO with its node name."""
        _, answer = certified_connection(
            "n1.callnet.test", f"AUTH {CLUSTER_TOKEN}", 'HELLO {"node": "n1"}'
        )
        self.assertIsInstance(answer, Success)

    def test_token_peer_cannot_take_a_configured_peers_name(self) -> None:
        """The token does not let a certificate for another host say HELLO as a configured peer."""
        _, answer = certified_connection(
            "n1.callnet.test", f"AUTH {CLUSTER_TOKEN}", 'HELLO {"node": "beta"}'
        )
        assert isinstance(answer, ErrorReply)
        self.assertIsInstance(answer.error, PermissionDeniedError)

    def test_certificate_alone_naming_no_peer(self) -> None:
        """A certificate that names no peer, without the token, is no peer: no HELLO at all."""
        [answer] = certified_connection("n1.callnet.test", 'HELLO {"node": "n1"}')
        assert isinstance(answer, ErrorReply)
        self.assertIsInstance(answer.error, PermissionDeniedError)
        self.assertIn("only a node of this cluster", answer.error.message)


class HostileClientTests(SynchronousTestCase):
    """Clients that try to hold the node's resources."""

    def test_slowloris(self) -> None:
        """A line begun and not finished is closed after line_timeout; whole lines are not timed."""
        node = MemoryNode([greet], limits=Limits(line_timeout=5))
        patient = node.connect_raw()
        patient.send("greet a\n")
        slow = node.connect_raw()
        slow.send("greet b")
        node.clock.advance(4.9)
        self.assertFalse(slow.transport.disconnecting)
        slow.send("b")  # more bytes of the same line do not reset the clock
        node.clock.advance(0.1)
        self.assertTrue(slow.transport.disconnecting)
        self.assertIn(b"not finished within 5s", slow.lines()[-1])
        node.clock.advance(60)
        self.assertFalse(patient.transport.disconnecting)

    def test_per_address_limit(self) -> None:
        """Connections past the limit from one address are refused; other addresses are not."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        node = MemoryNode([greet], limits=Limits(max_connections_per_address=2))
        first, second, third = node.connect_raw(), node.connect_raw(), node.connect_raw()
        self.assertTrue(third.transport.disconnecting)
        self.assertFalse(second.transport.disconnecting)
        [refused] = third.events()
        assert isinstance(refused, ErrorReply)
        self.assertIsInstance(refused.error, ResourceExhaustedError)
        protocol = node.factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 1))
        other = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 1))
        protocol.makeConnection(other)
        self.assertFalse(other.disconnecting)
        first.protocol.connectionLost()
        fourth = node.connect_raw()
        self.assertFalse(fourth.transport.disconnecting)

    def test_unread_output_bound(self) -> None:
        """A client that reads nothing is aborted once its unread replies pass the byte bound."""
        from twisted.internet.defer import Deferred

        node = MemoryNode(limits=Limits(max_unsent_bytes=10_000))
        held: list[Deferred[str]] = []
        node.registry.add(lambda: held.append(Deferred()) or held[-1], name="blob", run="reactor")
        conn = node.connect_raw()
        conn.send("".join(f"#{i} blob\n" for i in range(4)))
        conn.protocol.pauseProducing()  # the transport's buffer is full: it reads nothing more
        for d in held[:3]:
            d.callback("x" * 3000)
        self.assertFalse(conn.transport.disconnecting)
        held[3].callback("x" * 3000)
        self.assertTrue(conn.transport.disconnecting)

    @settings(max_examples=300, deadline=None)
    @given(st.text(min_size=1, max_size=60))
    def test_fuzzed_names_reach_only_the_lookup(self, name: str) -> None:
        """Any procedure name is looked up and nothing else: no import, no attribute, no code runs."""
        node = MemoryNode([greet])
        ran: list[str] = []
        node.registry.add(lambda: ran.append("x"), name="trap", run="reactor")
        conn = node.connect_raw()
        conn.send(b"#1 " + name.encode("utf-8", "surrogatepass") + b"\n")
        for event in conn.events():
            if isinstance(event, ErrorReply) and event.error.code == "NOT_FOUND":
                self.assertEqual(event.error.outcome, Outcome.NOT_RUN)
        if name.strip() != "trap":
            self.assertEqual(ran, [])


class LiveProtocolFuzzTests(SynchronousTestCase):
    """Random bytes fed to a live protocol: nothing escapes, memory stays bounded."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.binary(max_size=300)
            | st.sampled_from(
                [b"\n", b"#1 ", b"add 1 2\n", b"+timeout=", b"HELLO {}\n", b"AUTH x\n", b'"', b"["]
            ),
            max_size=40,
        )
    )
    def test_random_bytes(self, chunks: list[bytes]) -> None:
        """Any bytes, in any chunks, are answered or refused line by line; no exception escapes."""
        node = MemoryNode([greet], limits=Limits(max_line_bytes=256))
        conn = node.connect_raw()
        for chunk in chunks:
            if conn.transport.disconnecting:
                break
            conn.send(chunk)
            self.assertLessEqual(conn.protocol.session.held_input, 256 + len(chunk))
        conn.events()
        conn.protocol.connectionLost()
        self.assertEqual(node.factory.connections, 0)
        self.assertEqual(node.dispatcher.stats.in_flight, 0)
        self.assertEqual(self.flushLoggedErrors(), [])


class ClientTokenTests(SynchronousTestCase):
    """The clients authenticate each connection they make."""

    def test_client_with_token(self) -> None:
        """A client given a token authenticates before its first call, and again after reconnecting."""
        node = secured_node()
        client = node.client(token=ALICE)
        d = client.call("greet", "ann")
        node.flush()
        self.assertEqual(self.successResultOf(d), "hello ann")
        node._pumps[0].serverIO.loseConnection()
        node.flush()
        d = client.call("greet", "bo")
        node.flush()
        self.assertEqual(self.successResultOf(d), "hello bo")

    def test_client_with_wrong_token(self) -> None:
        """A wrong token fails the call UNAUTHENTICATED, and it did not run."""
        node = secured_node()
        client = node.client(token="not-the-right-token-00")
        d = client.call("greet", "ann")
        node.advance(AUTH_DELAY)
        error = self.failureResultOf(d, UnauthenticatedError).value
        self.assertEqual(error.outcome, Outcome.NOT_RUN)


class TenThousandNamesTests(SynchronousTestCase):
    """10,000 hostile procedure names reach the registry's lookup and nothing else."""

    def test_fuzzed_names(self) -> None:
        """Every name is answered NOT_FOUND or refused as malformed; no procedure runs, nothing else is looked up."""
        import random
        from unittest import mock

        rng = random.Random(6)
        hostile = [
            "__import__",
            "os.system",
            "builtins.eval",
            "sys.modules",
            "__class__",
            "__globals__",
            "subprocess.Popen",
            "../../etc/passwd",
            "greet.__code__",
            "callnet.tap.makeService",
            "pickle.loads",
            "eval",
            "exec",
            "open",
        ]
        alphabet = "abcxyz_.-@ABC019/\\:$%{}[]\"'()!\u00e9\u65e5"
        names = [rng.choice(hostile) for _ in range(2000)] + [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(8000)
        ]
        node = MemoryNode([greet])
        ran: list[str] = []
        node.registry.add(lambda: ran.append("x"), name="trap", run="reactor")
        conn = node.connect_raw()
        with (
            mock.patch.object(node.registry, "find", wraps=node.registry.find) as find,
            mock.patch("importlib.import_module") as imported,
        ):
            for i, name in enumerate(names):
                conn.send(f"#{i} ".encode() + name.encode("utf-8", "surrogatepass") + b"\n")
            events = conn.events()
        self.assertEqual(len(events), len(names))
        codes = {event.error.code for event in events if isinstance(event, ErrorReply)}
        self.assertLessEqual(codes, {"NOT_FOUND", "INVALID_ARGUMENT"})
        self.assertFalse([e for e in events if isinstance(e, Success)])
        self.assertEqual(ran, [])
        imported.assert_not_called()
        self.assertGreater(find.call_count, 1000)
        for (looked_up,), _ in find.call_args_list:
            self.assertIsInstance(looked_up, str)
