"""
Real nodes finding each other through a real DNS server: a C{twisted.names}
authoritative server on a loopback port (TCP and UDP), run by the test on a
reactor of its own in a thread, serves SRV and A records that the test changes; the
nodes (C{twistd -n callnet} subprocesses, asking that server) follow them
within one TTL.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.threads import blockingCallFromThread
from twisted.names import authority, dns, server

from tests.daemon import (
    TWISTD,
    LineClient,
    Node,
    free_port,
    free_port_on,
    peer_states,
    require_loopback,
    require_twistd,
    start_node,
    wait_until,
    wait_until_listening,
)

ZONE = "callnet.test"
SERVICE = f"_callnet._tcp.{ZONE}"
#: The records' TTL: how long the nodes may take to see a change.
TTL = 2
#: What may come on top of the TTL: a lookup, a connection and a handshake on
#: loopback, on a busy two-core machine.
SLACK = 1.5
#: Timings that let a cluster of real nodes react in seconds.
FAST = {
    "heartbeat_interval": 0.2,
    "down_after": 1.0,
    "reconnect_max_delay": 0.5,
    "discover_min_interval": 0.5,
    "discover_max_interval": 5.0,
}
TOKEN = "a-cluster-token-for-discovery-tests"


class _Zone(authority.FileAuthority):
    """An authority for L{ZONE} whose records the test sets; or, failing, SERVFAIL."""

    failing = False

    def __init__(self) -> None:
        super().__init__(None)

    def loadFile(self, filename: object) -> None:
        self.soa = (
            ZONE.encode(),
            dns.Record_SOA(
                mname=f"ns.{ZONE}", rname=f"root.{ZONE}", serial=1, minimum=TTL, ttl=TTL
            ),
        )
        self.records = {}

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Deferred[Any]:
        if self.failing:
            # Not a DomainError, which the server would answer NXDOMAIN: SERVFAIL.
            return fail(RuntimeError("the test's server is failing"))
        result: Deferred[Any] = super()._lookup(name, cls, type, timeout)
        return result


class DnsServer:
    """The test's authoritative DNS server, on 127.0.0.1, on its own reactor thread."""

    def __init__(self) -> None:
        self.reactor = SelectReactor()
        self.zone = _Zone()
        factory = server.DNSServerFactory(authorities=[self.zone])
        protocol = dns.DNSDatagramProtocol(factory, reactor=self.reactor)
        # TCP (which the nodes ask over) and UDP, on one port.
        for _ in range(50):
            tcp = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.port = tcp.getHost().port
            try:
                self.reactor.listenUDP(self.port, protocol, interface="127.0.0.1")
            except CannotListenError:
                tcp.stopListening()
                continue
            break
        self._thread = threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )
        self._thread.start()

    def _in_reactor(self, change: Callable[[], None]) -> None:
        blockingCallFromThread(self.reactor, change)  # type: ignore[arg-type]

    def serve(self, records: Mapping[str, Sequence[Any]]) -> None:
        """Answer with these records from now on: name -> its records."""
        table = {name.encode().lower(): list(found) for name, found in records.items()}

        def change() -> None:
            self.zone.records = table
            self.zone.failing = False

        self._in_reactor(change)

    def fail(self) -> None:
        """Answer every question with SERVFAIL from now on."""

        def change() -> None:
            self.zone.failing = True

        self._in_reactor(change)

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(timeout=10)


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    served = DnsServer()
    try:
        yield served
    finally:
        served.stop()


def srv_records(nodes: Mapping[str, tuple[str, int]]) -> dict[str, list[Any]]:
    """SRV records naming each node's host (one A record each) and port."""
    records: dict[str, list[Any]] = {
        SERVICE: [
            dns.Record_SRV(0, 0, port, f"{name}.{ZONE}", ttl=TTL)
            for name, (_, port) in nodes.items()
        ]
    }
    for name, (host, _) in nodes.items():
        records[f"{name}.{ZONE}"] = [dns.Record_A(host, ttl=TTL)]
    return records


def node_config(
    name: str, host: str, port: int, discover: str, dns_port: int, tls_port: int | None = None
) -> str:
    """
    A node listening on C{port} in plain text (what the test reads STATS
    from); with C{tls_port}, also on a TLS listener there, with its
    certificate C{certs/NAME.pem}, its links to peers mutual TLS.
    """
    fast = "\n".join(f"{key} = {value}" for key, value in FAST.items())
    listen = [f"tcp:{port}:interface={host}"]
    tls = ""
    if tls_port is not None:
        listen.insert(0, f"tls:{tls_port}:interface={host}")
        tls = (
            f'\n[tls]\ncert = "certs/{name}.pem"\nkey = "certs/{name}.key"\n'
            'ca = "certs/ca.pem"\nrequire_client_certificate = true\n'
        )
    return (
        f'[node]\nname = "{name}"\nlisten = {json.dumps(listen)}\n\n'
        f'[cluster]\ndiscover = "{discover}"\n'
        f'discover_nameservers = ["127.0.0.1:{dns_port}"]\n{fast}\n\n'
        f'[security]\ncluster_token = "{TOKEN}"\n{tls}'
    )


@contextmanager
def nodes_running(
    tmp_path: Path,
    places: Mapping[str, tuple[str, int]],
    discover: str,
    dns_port: int,
    tls_ports: Mapping[str, int] | None = None,
) -> Iterator[dict[str, Node]]:
    """
    Real nodes at these places (name -> host, port), finding peers through
    C{discover}; with C{tls_ports}, each also on a TLS listener (see L{node_config}).
    """
    require_twistd()
    nodes: dict[str, Node] = {}
    try:
        for name, (host, port) in places.items():
            (tmp_path / f"{name}.toml").write_text(
                node_config(name, host, port, discover, dns_port, (tls_ports or {}).get(name))
            )
            nodes[name] = start_node(
                [str(TWISTD), "-n", "--pidfile=", "callnet", "--config", f"{name}.toml"],
                host,
                port,
                tmp_path / f"{name}.log",
                cwd=tmp_path,
            )
        for node in nodes.values():
            wait_until_listening(node)
        yield nodes
    except BaseException:
        print("\n".join(f"--- {name}:\n{node.output()[-6000:]}" for name, node in nodes.items()))
        raise
    finally:
        for node in nodes.values():
            with suppress(Exception):
                node.kill()


def authed(node: Node) -> LineClient:
    """A connection to C{node}, authenticated with the cluster token (STATS needs it)."""
    client = node.connect()
    assert client.request(f"AUTH {TOKEN}").startswith("OK"), "the cluster token is refused"
    return client


def wait_for(client: LineClient, expected: dict[str, str], timeout: float, what: str) -> float:
    """Poll STATS until the node's peers and their states are exactly C{expected}."""
    started = time.monotonic()
    seen: dict[str, str] = {}

    def arrived() -> bool:
        seen.clear()
        seen.update(peer_states(client))
        return seen == expected

    try:
        wait_until(arrived, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen {seen}") from None
    return time.monotonic() - started


def test_nodes_follow_srv_records(tmp_path: Path, dns_server: DnsServer) -> None:
    """Nodes follow SRV records within one TTL: each skips its own record, dials nodes added,
    keeps them across a reload, drops nodes removed, and keeps its peers while DNS fails."""
    places = {name: ("127.0.0.1", free_port()) for name in ("a", "b", "c")}
    dns_server.serve(srv_records({name: places[name] for name in ("a", "b")}))
    with nodes_running(tmp_path, places, f"dns-srv:{SERVICE}", dns_server.port) as nodes:
        a, b = authed(nodes["a"]), authed(nodes["b"])
        try:
            wait_for(a, {"b": "up"}, 15, "a finds b, and skips itself")
            wait_for(b, {"a": "up"}, 15, "b finds a, and skips itself")
            assert "is this node itself" in nodes["a"].output()

            dns_server.serve(srv_records(places))
            took = wait_for(a, {"b": "up", "c": "up"}, 15, "a finds c")
            assert took <= TTL + SLACK, f"c joined after {took:.2f}s"
            wait_for(authed(nodes["c"]), {"a": "up", "b": "up"}, TTL + SLACK, "c finds both")

            # A reload with the same discover settings keeps the peers DNS found.
            nodes["a"].process.send_signal(signal.SIGHUP)
            wait_until(lambda: "reloaded: " in nodes["a"].output(), 15, "a reloads")
            assert "draining" not in nodes["a"].output()
            wait_for(a, {"b": "up", "c": "up"}, 0.1, "a keeps b and c across the reload")

            dns_server.serve(srv_records({name: places[name] for name in ("a", "c")}))
            took = wait_for(a, {"c": "up"}, 15, "a drops b")
            assert took <= TTL + SLACK, f"b was dropped after {took:.2f}s"
            assert "is no longer in DNS: draining it" in nodes["a"].output()

            dns_server.fail()
            wait_until(
                lambda: "DNS lookup of" in nodes["a"].output(), 15, "a logs the failed lookup"
            )
            assert "failed (the server answered SERVFAIL): keeping the 2 addresses known" in (
                nodes["a"].output()
            )
            wait_for(a, {"c": "up"}, 0.1, "a keeps c while DNS fails")
            # Past several refreshes, the cluster is whole still.
            deadline = time.monotonic() + 2 * TTL
            while time.monotonic() < deadline:
                assert peer_states(a) == {"c": "up"}
                threading.Event().wait(0.2)
        finally:
            a.close()
            b.close()


def test_nodes_follow_a_records(tmp_path: Path, dns_server: DnsServer) -> None:
    """Nodes of a headless service, one port on several addresses, find each other by the A
    records of one name, and drop a node whose record goes."""
    hosts = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
    require_loopback(*hosts.values())
    port = free_port_on(list(hosts.values()))
    name = f"nodes.{ZONE}"

    def publish(*which: str) -> None:
        dns_server.serve({name: [dns.Record_A(hosts[node], ttl=TTL) for node in which]})

    publish("a", "b", "c")
    places = {node: (host, port) for node, host in hosts.items()}
    with nodes_running(tmp_path, places, f"dns-a:{name}:{port}", dns_server.port) as nodes:
        a = authed(nodes["a"])
        try:
            wait_for(a, {"b": "up", "c": "up"}, 15, "a finds b and c")
            publish("a", "c")
            took = wait_for(a, {"c": "up"}, 15, "a drops b")
            assert took <= TTL + SLACK, f"b was dropped after {took:.2f}s"
            reply = a.request("add@c 1 2")
            assert reply == "OK 3", reply
        finally:
            a.close()


def test_nodes_over_tls_check_the_srv_target(tmp_path: Path, dns_server: DnsServer) -> None:
    """
    Over TLS links, a discovered peer's certificate must name the host its
    SRV record gives: a and b, whose certificates name only those hosts,
    link up (each taking the other's handshake, its node name, as a peer's
    by the cluster token) and forward;
    m, whose certificate names only "m", is refused by both at the TLS
    handshake (before the cluster token is sent), and they say why.
    """
    from callnet.tls import make_ca, make_node_certificate

    certs = tmp_path / "certs"
    make_ca(certs)
    # As an orchestrator's issuer makes them: a's and b's certificates name
    # their hosts as DNS serves them, not their node names.
    for name in ("a", "b"):
        for made in make_node_certificate(certs, f"{name}.{ZONE}"):
            made.rename(certs / made.name.replace(f".{ZONE}", ""))
    make_node_certificate(certs, "m")
    names = ("a", "b", "m")
    tls_ports = {name: free_port() for name in names}
    places = {name: ("127.0.0.1", free_port()) for name in names}
    dns_server.serve(srv_records({name: ("127.0.0.1", tls_ports[name]) for name in names}))
    with nodes_running(
        tmp_path, places, f"dns-srv:{SERVICE}", dns_server.port, tls_ports
    ) as nodes:
        a = authed(nodes["a"])
        try:
            refused = f"the certificate names m, not m.{ZONE}"
            wait_until(
                lambda: peer_states(a).get("b") == "up" and refused in nodes["a"].output(),
                15,
                "a links to b over TLS and refuses m",
            )
            wait_until(lambda: refused in nodes["b"].output(), 15, "b refuses m")
            assert "m" not in peer_states(a)
            assert f"refusing peer m.{ZONE} at tcp:host=127.0.0.1:port={tls_ports['m']}" in (
                nodes["a"].output()
            )
            reply = a.request("add@b 1 2")
            assert reply == "OK 3", reply
        finally:
            a.close()
