"""
TLS: the development CA, C{tls:} listeners, clients that check the node's
certificate, and mutual TLS between the nodes of a cluster, where an
impostor gets no call through.

The handshakes of the first tests run in memory (real OpenSSL, no sockets,
no reactor); the others on real C{twistd} nodes, with Twisted clients in
subprocesses and plain C{ssl} sockets, so this process's reactor is never
started.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from callnet import tls
from callnet.client import ClientProtocol
from callnet.cluster import Cluster, PeerState, Router
from callnet.config import ClusterSettings, Limits, NodeConfig, Security, TLSSettings
from callnet.errors import ConfigError, Outcome, UnavailableError
from callnet.node import NodeService
from callnet.testing import MemoryNode

from .daemon import (
    TWISTD,
    LineClient,
    Node,
    free_port,
    free_port_on,
    require_loopback,
    require_twistd,
    running_node,
    start_node,
    stats_of,
    wait_until,
    wait_until_listening,
)
from .test_cluster_faults import HOSTS, toml_text
from .test_daemon import _self_signed

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "etc" / "cluster-tls"
DOC = ROOT / "docs" / "security.md"
#: The port of the example's configs, which the tests replace with a free one.
EXAMPLE_PORT = 7601
#: Short cluster timings, so that a refused link shows within a second.
FAST = {"heartbeat_interval": 0.25, "down_after": 1.0, "reconnect_max_delay": 0.5}
REPLY_TIMEOUT = 10.0
#: The strict node's [limits] tls_handshake_timeout: long enough for any real
#: client on a loaded machine, short enough to wait for.
HANDSHAKE_TIMEOUT = 2.0


# --- Certificates -------------------------------------------------------------------


@dataclass
class PKI:
    """The cluster's CA and certificates, and a rogue CA's."""

    certs: Path
    rogue: Path
    #: A directory holding only the cluster's CA, for Twisted's trustRoots=.
    trust: Path

    def settings(self, name: str, ca: bool = True, require: bool = False) -> TLSSettings:
        return TLSSettings(
            cert=str(self.certs / f"{name}.pem"),
            key=str(self.certs / f"{name}.key"),
            ca=str(self.certs / "ca.pem") if ca else None,
            require_client_certificate=require,
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    base = tmp_path_factory.mktemp("pki")
    certs, rogue, trust = base / "certs", base / "rogue", base / "trust"
    tls.make_ca(certs)
    for name, address in HOSTS.items():
        tls.make_node_certificate(certs, name, ips=[address])
    tls.make_node_certificate(certs, "ops")
    tls.make_ca(rogue)
    # Impostors: a CA of their own, with the names of real nodes and others.
    for name in ("alpha", "beta", "mallory"):
        tls.make_node_certificate(rogue, name, ips=["127.0.0.1"])
    trust.mkdir()
    shutil.copy(certs / "ca.pem", trust)
    return PKI(certs, rogue, trust)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_from_the_development_ca(pki: PKI) -> None:
    """The CA signs node certificates that name the node (DNS) and its addresses (IP)."""
    ca = _load(pki.certs / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    beta = _load(pki.certs / "beta.pem")
    beta.verify_directly_issued_by(ca)
    assert isinstance(beta.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(beta.public_key().curve, ec.SECP256R1)
    san = beta.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["beta"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.2")]
    assert tls.certificate_names(beta) == ["beta"]
    usages = beta.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not beta.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lasts = beta.not_valid_after_utc - beta.not_valid_before_utc
    assert datetime.timedelta(days=364) < lasts < datetime.timedelta(days=366)
    for key in ("ca.key", "beta.key", "ops.key"):
        assert stat.S_IMODE((pki.certs / key).stat().st_mode) == 0o600, key
    # Another CA's certificate for the same name does not verify against this CA.
    with pytest.raises((ValueError, TypeError)):
        _load(pki.rogue / "beta.pem").verify_directly_issued_by(ca)
    assert _load(pki.rogue / "ca.pem").subject != ca.subject


def callnet_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callnet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_certs_command(tmp_path: Path) -> None:
    """callnet certs init / node write the files, refuse to overwrite them, and say why."""
    made = callnet_command("certs", "init", "ca-dir", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.split() == ["wrote", "ca-dir/ca.pem", "wrote", "ca-dir/ca.key"]
    again = callnet_command("certs", "init", "ca-dir", cwd=tmp_path)
    assert again.returncode == 2
    assert "exists already" in again.stderr and "--force" in again.stderr
    node = callnet_command(
        "certs", "node", "ca-dir", "gamma", "--ip", "127.0.0.3", "--dns", "gamma.example",
        cwd=tmp_path,
    )  # fmt: skip
    assert node.returncode == 0, node.stderr
    gamma = _load(tmp_path / "ca-dir" / "gamma.pem")
    san = gamma.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gamma", "gamma.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.3")]
    bad = callnet_command("certs", "node", "ca-dir", "delta", "--ip", "not-an-ip", cwd=tmp_path)
    assert bad.returncode == 2 and "not an IP address" in bad.stderr
    orphan = callnet_command("certs", "node", "elsewhere", "delta", cwd=tmp_path)
    assert orphan.returncode == 2 and "cannot read elsewhere/ca.pem" in orphan.stderr


# --- Listen strings and files -----------------------------------------------------


def test_listen_strings() -> None:
    """tls:PORT[:interface=ADDR][:backlog=N], with IPv6 colons escaped; anything else refused."""
    assert tls.is_tls_listen("tls:7601") and not tls.is_tls_listen("tcp:7601")
    assert tls.parse_listen("tls:7601") == tls.ListenSpec(7601, "", 50)
    assert tls.parse_listen("tls:7601:interface=10.0.0.5") == tls.ListenSpec(7601, "10.0.0.5")
    assert tls.parse_listen(r"tls:0:interface=\:\:1:backlog=5") == tls.ListenSpec(0, "::1", 5)
    for bad in ("tls:", "tls:http", "tls:70000", "tls:7601:certKey=x.pem", "tls:7601:backlog=0"):
        with pytest.raises(ConfigError, match="tls:"):
            tls.parse_listen(bad)


def test_listener_needs_usable_files(pki: PKI, tmp_path: Path) -> None:
    """A tls: listener is refused, with the key named, when [tls] cannot serve it."""
    with pytest.raises(ConfigError, match=r"needs \[tls\] cert and key"):
        tls.check_listen("tls:7601", TLSSettings())
    with pytest.raises(ConfigError, match=r"require_client_certificate needs \[tls\] ca"):
        tls.check_listen("tls:7601", pki.settings("alpha", ca=False, require=True))
    mismatched = TLSSettings(cert=str(pki.certs / "alpha.pem"), key=str(pki.certs / "beta.key"))
    with pytest.raises(ConfigError, match=r"\[tls\] key: .*beta.key is not the key of"):
        tls.check_listen("tls:7601", mismatched)
    missing = TLSSettings(cert=str(tmp_path / "nope.pem"), key=str(pki.certs / "beta.key"))
    with pytest.raises(ConfigError, match=r"\[tls\] cert: cannot read .*nope.pem"):
        tls.check_listen("tls:7601", missing)
    (tmp_path / "junk.pem").write_text("not a certificate")
    junk = TLSSettings(cert=str(tmp_path / "junk.pem"), key=str(pki.certs / "beta.key"))
    with pytest.raises(ConfigError, match="is not a PEM certificate"):
        tls.check_listen("tls:7601", junk)
    tls.check_listen("tls:7601:interface=127.0.0.1", pki.settings("alpha", require=True))


# --- Handshakes in memory ---------------------------------------------------------


@implementer(IHandshakeListener)
class _Server(Protocol):
    """Records the connection's identity as the node would: before and after the handshake."""

    made: str | None = "unset"
    identity: str | None = "unset"
    lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made = tls.peer_identity(self.transport)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = reason

    def handshakeCompleted(self) -> None:
        self.identity = tls.peer_identity(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"echo " + data)  # type: ignore[union-attr]


class _Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = reason


class _Servers(Factory):
    """Builds L{_Server}s and keeps them, for tests to look at."""

    def __init__(self) -> None:
        self.built: list[_Server] = []

    def buildProtocol(self, addr: Any) -> _Server:
        server = _Server()
        self.built.append(server)
        return server


class MemoryTLS:
    """
    A server behind TLS, as a tls: listener serves it (handshake deadline
    included), and a client endpoint that reaches it in memory.
    """

    def __init__(self, settings: TLSSettings, clock: Clock, handshake_timeout: float = 5) -> None:
        self._servers = _Servers()
        self.pumps: list[iosim.IOPump] = []
        self.clock = clock
        creator = tls._server_creator(settings, "tls:0")
        deadline = tls._DeadlineFactory(self._servers, clock, handshake_timeout)
        self.factory = TLSMemoryBIOFactory(creator, False, deadline, clock=clock)

    @property
    def servers(self) -> list[_Server]:
        return self._servers.built

    def endpoint(self) -> IStreamClientEndpoint:
        memory = self

        @implementer(IStreamClientEndpoint)
        class Endpoint:
            def connect(self, factory: Any) -> Deferred[Any]:
                client = factory.buildProtocol(None)
                server = memory.factory.buildProtocol(None)
                pump = iosim.connect(
                    server,
                    iosim.makeFakeServer(server),
                    client,
                    iosim.makeFakeClient(client),
                    greet=False,
                    clock=memory.clock,
                )
                memory.pumps.append(pump)
                return succeed(client)

        return Endpoint()

    def client_endpoint(
        self, name: str, ca: Path, credentials: tls.Credentials | None = None, timeout: float = 5
    ) -> tls.HandshakeEndpoint:
        creator = tls._client_creator(name, _load(ca), credentials)
        return tls.HandshakeEndpoint(
            wrapClientTLS(creator, self.endpoint(), self.clock),
            self.clock,
            timeout,
            f"memory:{name}",
        )

    def flush(self) -> None:
        for _ in range(20):
            # advanceClock runs what TLS defers to the next turn (its writes).
            if not any([pump.flush(advanceClock=True) for pump in self.pumps]):
                return

    def connect(self, endpoint: IStreamClientEndpoint) -> tuple[list[Any], _Client]:
        client = _Client()
        results: list[Any] = []
        endpoint.connect(Factory.forProtocol(lambda: client)).addBoth(results.append)
        self.flush()
        return results, client


def _refusal(results: list[Any]) -> str:
    [result] = results
    assert isinstance(result, Failure), result
    assert isinstance(result.value, tls.TLSError), result
    return str(result.value)


def test_peer_identity(pki: PKI) -> None:
    """
    A client's verified certificate names the connection once the handshake
    is done; before it, or without a certificate, or on a listener that does
    not verify them, there is no identity.
    """
    memory = MemoryTLS(pki.settings("alpha"), Clock())
    beta = tls.load_credentials(pki.settings("beta"))
    results, client = memory.connect(memory.client_endpoint("alpha", pki.certs / "ca.pem", beta))
    assert results == [client]
    assert client.received == b"echo hello"
    [server] = memory.servers
    assert (server.made, server.identity) == (None, "beta")

    results, client = memory.connect(memory.client_endpoint("127.0.0.1", pki.certs / "ca.pem"))
    assert results == [client]
    assert memory.servers[-1].identity is None

    unverified = MemoryTLS(pki.settings("alpha", ca=False), Clock())
    results, client = unverified.connect(
        unverified.client_endpoint("alpha", pki.certs / "ca.pem", beta)
    )
    assert results == [client]
    assert unverified.servers[-1].identity is None
    assert tls.peer_identity(StringTransport()) is None
    assert tls.peer_identity(object()) is None


def test_refused_server_certificates(pki: PKI, tmp_path: Path) -> None:
    """
    A server certificate from another CA, naming another node, or
    self-signed fails the connection attempt with the reason in words; a
    client certificate the node refuses fails the connection in words too.
    """
    ca = pki.certs / "ca.pem"
    memory = MemoryTLS(pki.settings("alpha"), Clock())
    assert _refusal(memory.connect(memory.client_endpoint("beta", ca))[0]) == (
        "TLS handshake failed: certificate verify failed: the certificate names alpha, not beta"
    )
    assert re.fullmatch(
        "TLS handshake failed: certificate verify failed: it is signed by"
        " 'callnet development CA [0-9a-f]{6}', not by the trusted CA",
        _refusal(memory.connect(memory.client_endpoint("alpha", pki.rogue / "ca.pem"))[0]),
    )
    key, cert = _self_signed(tmp_path)
    self_signed = MemoryTLS(TLSSettings(cert=str(cert), key=str(key)), Clock())
    assert _refusal(self_signed.connect(self_signed.client_endpoint("127.0.0.1", ca))[0]) == (
        "TLS handshake failed: certificate verify failed: the certificate of '127.0.0.1':"
        " it is self-signed, not signed by the trusted CA"
    )
    # The client's side is done before the node judges its certificate
    # (TLS 1.3): the refusal ends the connection, and says why.
    strict = MemoryTLS(pki.settings("alpha", require=True), Clock())
    _, client = strict.connect(strict.client_endpoint("alpha", ca))
    assert client.lost is not None and client.received == b""
    assert "requires a client certificate signed by its CA" in str(client.lost.value)
    rogue = tls.load_credentials(
        TLSSettings(cert=str(pki.rogue / "beta.pem"), key=str(pki.rogue / "beta.key"))
    )
    _, client = strict.connect(strict.client_endpoint("alpha", ca, rogue))
    assert client.lost is not None and client.received == b""
    assert "does not trust the CA of this client's certificate" in str(client.lost.value)
    assert [server.identity for server in strict.servers] == ["unset", "unset"]


def test_refusal_after_the_handshake_fails_calls_not_run(pki: PKI) -> None:
    """
    A call sent before the node refuses the client's certificate (TLS 1.3,
    after the client's side of the handshake) fails not-run, saying why.
    """
    clock = Clock()
    strict = MemoryTLS(pki.settings("alpha", require=True), clock)
    protocol = ClientProtocol(clock)
    calls: list[Deferred[Any]] = []
    protocol.on_made = lambda made: calls.append(made.call("add", (1, 2), {}, 5.0))
    endpoint = strict.client_endpoint("alpha", pki.certs / "ca.pem")
    endpoint.connect(Factory.forProtocol(lambda: protocol))
    strict.flush()
    [call] = calls
    failures: list[Failure] = []
    call.addErrback(failures.append)
    [failure] = failures
    assert isinstance(failure.value, UnavailableError), failure
    assert failure.value.outcome is Outcome.NOT_RUN
    assert "requires a client certificate signed by its CA" in str(failure.value)


def test_handshake_timeout_and_cancel(pki: PKI) -> None:
    """A handshake that does not finish in time fails the attempt; a cancelled one never connects."""
    clock = Clock()
    memory = MemoryTLS(pki.settings("alpha"), clock)
    client = _Client()
    results: list[Any] = []
    endpoint = memory.client_endpoint("alpha", pki.certs / "ca.pem", timeout=2)
    endpoint.connect(Factory.forProtocol(lambda: client)).addBoth(results.append)
    clock.advance(2)  # no byte has moved: the server never answered
    memory.flush()
    assert _refusal(results) == "TLS handshake failed: no handshake within 2s"
    assert clock.getDelayedCalls() == []

    results = []
    d = endpoint.connect(Factory.forProtocol(lambda: client))
    d.addBoth(results.append)
    d.cancel()
    memory.flush()
    [result] = results
    assert isinstance(result, Failure) and result.check(CancelledError)
    assert client.received == b"" and clock.getDelayedCalls() == []


def client_hello(name: str = "alpha") -> bytes:
    """The first flight of a real TLS client (Python's ssl module): its ClientHello."""
    context = ssl.create_default_context()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100  # a handshake record
    return hello


def test_listener_closes_a_stalled_handshake(pki: PKI) -> None:
    """
    A client that sends half a ClientHello and stalls is aborted once the
    handshake deadline passes, not before; the node's protocol hears of it
    and no timer is left behind.
    """
    clock = Clock()
    memory = MemoryTLS(pki.settings("alpha", require=True), clock, handshake_timeout=3)
    server = memory.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    with capturedLogs() as events:
        server.makeConnection(transport)
        hello = client_hello()
        server.dataReceived(hello[: len(hello) // 2])
        [node] = memory.servers
        assert node.made is None  # the node's protocol is connected at once, as before
        clock.advance(2.9)
        assert not transport.disconnecting
        clock.advance(0.1)
    assert transport.disconnected  # aborted, not closed politely
    assert [event["log_format"] for event in events] == [
        "closing a TLS client at {peer}: no handshake within {timeout:g}s"
    ]
    assert (events[0]["peer"], events[0]["timeout"]) == ("192.0.2.7:40000", 3)
    server.connectionLost(Failure(ConnectionAborted()))
    assert node.lost is not None  # the node's protocol lets go of the connection
    assert node.identity == "unset"  # no handshake was ever completed
    assert clock.getDelayedCalls() == []


def test_completed_handshake_has_no_deadline(pki: PKI) -> None:
    """Once the handshake is done the deadline is gone: a quiet connection stays open past it."""
    clock = Clock()
    memory = MemoryTLS(pki.settings("alpha"), clock, handshake_timeout=3)
    beta = tls.load_credentials(pki.settings("beta"))
    results, client = memory.connect(memory.client_endpoint("alpha", pki.certs / "ca.pem", beta))
    assert results == [client]
    clock.advance(60)
    memory.flush()
    assert client.lost is None and client.received == b"echo hello"
    [server] = memory.servers
    assert server.identity == "beta" and server.lost is None
    assert clock.getDelayedCalls() == []


def test_node_listeners_have_a_handshake_deadline(pki: PKI, tmp_path: Path) -> None:
    """
    A node's tls: and ssl: listeners put [limits] tls_handshake_timeout on
    each connection, on the node's reactor; a tcp: listener has none.
    """
    key, cert = _self_signed(tmp_path)
    config = NodeConfig(
        name="alpha",
        listen=(
            "tls:7601:interface=127.0.0.1",
            f"ssl:7602:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            "tcp:7600:interface=127.0.0.1",
        ),
        limits=Limits(tls_handshake_timeout=2),
        tls=pki.settings("alpha"),
    )
    reactor = MemoryReactorClock()
    service = NodeService(config, reactor)
    for listener in service:
        if isinstance(listener, StreamServerEndpointService):
            listener.endpoint.listen(service.factory)
    assert [port for port, *_ in reactor.tcpServers] == [7600]
    assert [port for port, *_ in reactor.sslServers] == [7601, 7602]
    for _, factory, *_ in reactor.sslServers:
        transport = StringTransport()
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)  # TCP is up; TLS has not begun
        reactor.advance(1.9)
        assert not transport.disconnecting
        reactor.advance(0.1)
        assert transport.disconnected
        protocol.connectionLost(Failure(ConnectionAborted()))
    assert reactor.getDelayedCalls() == []
    [(_, plain, *_)] = reactor.tcpServers
    assert plain is service.factory


def _join(alpha: MemoryNode, beta: MemoryNode, token: str | None) -> Cluster:
    config = NodeConfig(
        name="alpha",
        peers=(("beta", "memory:beta"),),
        cluster=ClusterSettings(**FAST),
        security=Security(cluster_token=token),
    )
    cluster = Cluster(
        config,
        Router([], alpha.clock, "alpha", config.cluster.max_hops),
        alpha.clock,
        alpha.factory.hello,
        endpoints={"beta": beta.endpoint("alpha")},
    )
    cluster.startService()
    for _ in range(4):
        beta.clock.advance(0.5)
        beta.flush()
    return cluster


def test_cluster_token_is_sent_before_hello() -> None:
    """A node with a cluster token sends it on each link before HELLO; a wrong one keeps the link down."""
    token = "the-cluster-token-0123456789"
    right = MemoryNode(name="beta", security=Security(cluster_token=token))
    alpha = MemoryNode(name="alpha", clock=right.clock)
    cluster = _join(alpha, right, token)
    assert [peer.state for peer in cluster.peers] == [PeerState.UP]
    cluster.stopService()

    for other in ("not-the-token-0123456789", None):
        beta = MemoryNode(name="beta", security=Security(cluster_token=token))
        cluster = _join(MemoryNode(name="alpha", clock=beta.clock), beta, other)
        assert [peer.state for peer in cluster.peers] != [PeerState.UP], other
        cluster.stopService()


# --- Real nodes ---------------------------------------------------------------------


def tls_client(
    host: str,
    port: int,
    ca: Path,
    name: str,
    cert: Path | None = None,
    key: Path | None = None,
    configure: Callable[[ssl.SSLContext], object] = lambda context: None,
) -> LineClient:
    """
    A line client on a plain C{ssl} socket, checking the node's certificate
    names C{name}; C{configure} may change the context first (ALPN, suites).
    """
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    configure(context)
    raw = socket.create_connection((host, port), timeout=REPLY_TIMEOUT)
    return LineClient(context.wrap_socket(raw, server_hostname=name))


def refused(client: LineClient) -> str:
    """What a node that refused a client's certificate said: the error on the first read."""
    client.send("#1 add 1 2")
    try:
        line = client.read_line()
    except (ssl.SSLError, ConnectionError) as e:
        return str(e)
    raise AssertionError(f"the node answered: {line}")


@dataclass
class TLSNode:
    node: Node
    tls_port: int
    self_signed_port: int


@pytest.fixture(scope="module")
def strict_node(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSNode]:
    """alpha on 127.0.0.1: tcp:, a tls: listener that requires a client certificate, and ssl: self-signed."""
    require_twistd()
    here = tmp_path_factory.mktemp("strict")
    settings = pki.settings("alpha", require=True)
    limits = {"tls_handshake_timeout": HANDSHAKE_TIMEOUT}
    (here / "alpha.toml").write_text(toml_text({"tls": settings.__dict__, "limits": limits}))
    key, cert = _self_signed(here)
    tls_port, self_signed_port = free_port(), free_port()
    with running_node(
        here,
        "--config",
        "alpha.toml",
        "--listen",
        f"tls:{tls_port}:interface=127.0.0.1",
        "--listen",
        f"ssl:{self_signed_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        name="alpha",
    ) as node:
        yield TLSNode(node, tls_port, self_signed_port)
        assert "Traceback" not in node.output()


def test_listener_requires_client_certificates(pki: PKI, strict_node: TLSNode) -> None:
    """With a certificate from the CA a plain ssl client calls; without one, or another CA's, it is refused."""
    port, ca = strict_node.tls_port, pki.certs / "ca.pem"
    ops = tls_client("127.0.0.1", port, ca, "alpha", pki.certs / "ops.pem", pki.certs / "ops.key")
    assert ops.request("#1 add 1 2") == "#1 OK 3"
    ops.close()
    assert "CERTIFICATE_REQUIRED" in refused(tls_client("127.0.0.1", port, ca, "alpha")).upper()
    rogue = tls_client(
        "127.0.0.1", port, ca, "alpha", pki.rogue / "alpha.pem", pki.rogue / "alpha.key"
    )
    assert "UNKNOWN_CA" in refused(rogue).upper()
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        tls_client("127.0.0.1", port, ca, "beta", pki.certs / "ops.pem", pki.certs / "ops.key")
    assert "refusing a TLS client at" in strict_node.node.output()


def closed_after(sock: socket.socket, started: float) -> float:
    """Wait (bounded) for the node to close C{sock}; return seconds since C{started}."""
    sock.settimeout(HANDSHAKE_TIMEOUT + REPLY_TIMEOUT)
    try:
        while sock.recv(4096):
            pass  # a TLS alert, say: anything but the end is not the close
    except ConnectionResetError:
        pass  # aborted: the kernel answers with a reset
    except TimeoutError:
        raise AssertionError("the node did not close the connection") from None
    return time.monotonic() - started


def test_stalled_handshakes_are_closed(pki: PKI, strict_node: TLSNode) -> None:
    """
    Connections to a tls: listener that send half a ClientHello, or nothing,
    are closed by the node once the handshake deadline passes.
    """
    hello = client_hello()
    started = time.monotonic()
    stalled = []
    for index in range(8):
        sock = socket.create_connection(("127.0.0.1", strict_node.tls_port), timeout=5)
        if index % 2 == 0:
            sock.sendall(hello[: len(hello) // 2])
        stalled.append(sock)
    try:
        waited = [closed_after(sock, started) for sock in stalled]
    finally:
        for sock in stalled:
            sock.close()
    # Closed by the deadline: not at once, and well before the wait's bound.
    assert min(waited) >= HANDSHAKE_TIMEOUT * 0.9, waited
    assert max(waited) < HANDSHAKE_TIMEOUT + REPLY_TIMEOUT, waited
    wait_until(
        lambda: strict_node.node.output().count("no handshake within 2s") >= len(stalled),
        REPLY_TIMEOUT,
        "the node logs each connection it closes",
    )


def test_plain_client_on_the_tls_port(strict_node: TLSNode) -> None:
    """A plain-TCP client that sends a line to the TLS port is closed at once, with no reply."""
    sock = socket.create_connection(("127.0.0.1", strict_node.tls_port), timeout=5)
    try:
        started = time.monotonic()
        sock.sendall(b"add 1 2\n")
        received = b""
        sock.settimeout(REPLY_TIMEOUT)
        with suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += chunk
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT * 0.9
        assert b"OK" not in received and b"ERR" not in received
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["h2", "http/1.1"], None), (["callnet"], "callnet"), (["h2", "callnet"], "callnet")],
)
def test_clients_that_offer_alpn_connect(
    pki: PKI, strict_node: TLSNode, offered: list[str], chosen: str | None
) -> None:
    """A client that offers ALPN completes the handshake and calls; callnet is chosen if offered."""
    client = tls_client(
        "127.0.0.1",
        strict_node.tls_port,
        pki.certs / "ca.pem",
        "alpha",
        pki.certs / "ops.pem",
        pki.certs / "ops.key",
        configure=lambda context: context.set_alpn_protocols(offered),
    )
    try:
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.selected_alpn_protocol() == chosen
        assert client.request("add 1 2") == "OK 3"
    finally:
        client.close()


def _tls12_only(suites: str) -> Callable[[ssl.SSLContext], None]:
    def configure(context: ssl.SSLContext) -> None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(suites)

    return configure


def test_tls12_offers_only_aead_suites(pki: PKI, strict_node: TLSNode) -> None:
    """Under TLS 1.2 a client offering only CBC suites is refused; one offering an AEAD suite calls."""
    ops = (pki.certs / "ops.pem", pki.certs / "ops.key")
    place = ("127.0.0.1", strict_node.tls_port, pki.certs / "ca.pem", "alpha", *ops)
    for cbc in ("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"):
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
            tls_client(*place, configure=_tls12_only(cbc))
    for aead in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        client = tls_client(*place, configure=_tls12_only(aead))
        try:
            assert isinstance(client.sock, ssl.SSLSocket)
            assert client.sock.version() == "TLSv1.2"
            assert client.sock.cipher()[0] == aead  # type: ignore[index]
            assert client.request("#1 add 1 2") == "#1 OK 3"
        finally:
            client.close()


ASYNC_CLIENTS = """
import json
import sys

from twisted.internet import defer, task

from callnet import CallError, Client
from callnet.tls import client_endpoint

paths = json.loads(sys.argv[1])
port, self_signed = paths["port"], paths["self_signed_port"]
ops = {"cert": paths["certs"] + "/ops.pem", "key": paths["certs"] + "/ops.key"}
rogue_client = {"cert": paths["rogue"] + "/alpha.pem", "key": paths["rogue"] + "/alpha.key"}
ca, rogue_ca = paths["certs"] + "/ca.pem", paths["rogue"] + "/ca.pem"


def string(trust):
    return f"tls:127.0.0.1:{port}:trustRoots={trust}:certificate={ops['cert']}:privateKey={ops['key']}"


async def attempt(reactor, label, endpoint):
    client = Client(endpoint, reactor, timeout=10)
    try:
        out = {"ok": await client.call("add", 1, 2)}
    except CallError as e:
        out = {"code": e.code, "outcome": e.outcome.value, "message": e.message}
    finally:
        client.close()
    print(json.dumps({"label": label, **out}), flush=True)


async def main(reactor):
    cases = {
        "right": client_endpoint(reactor, "127.0.0.1", port, ca, **ops),
        "by name": client_endpoint(reactor, "127.0.0.1", port, ca, **ops, name="alpha"),
        "wrong ca": client_endpoint(reactor, "127.0.0.1", port, rogue_ca, **ops),
        "wrong name": client_endpoint(reactor, "127.0.0.1", port, ca, **ops, name="beta"),
        "self-signed": client_endpoint(reactor, "127.0.0.1", self_signed, ca, **ops),
        "no client certificate": client_endpoint(reactor, "127.0.0.1", port, ca),
        "rogue client certificate": client_endpoint(reactor, "127.0.0.1", port, ca, **rogue_client),
        "string": string(paths["trust"]),
        "string, wrong ca": string(paths["rogue"]),
    }
    for label, endpoint in cases.items():
        await attempt(reactor, label, endpoint)


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""

BLOCKING_CLIENTS = """
import json
import sys

from twisted.internet import reactor

from callnet import BlockingClient, CallError
from callnet.tls import client_endpoint

paths = json.loads(sys.argv[1])
ca, ops = paths["certs"] + "/ca.pem", paths["certs"] + "/ops"
for name in ("alpha", "beta"):
    endpoint = client_endpoint(
        reactor, "127.0.0.1", paths["port"], ca, ops + ".pem", ops + ".key", name=name
    )
    with BlockingClient(endpoint, timeout=10) as client:
        try:
            print(json.dumps({"label": name, "ok": client.call("add", 1, 2)}))
        except CallError as e:
            print(json.dumps({"label": name, "code": e.code, "outcome": e.outcome.value, "message": e.message}))
"""


def run_clients(program: str, pki: PKI, node: TLSNode) -> dict[str, dict[str, Any]]:
    paths = {
        "port": node.tls_port,
        "self_signed_port": node.self_signed_port,
        "certs": str(pki.certs),
        "rogue": str(pki.rogue),
        "trust": str(pki.trust),
    }
    result = subprocess.run(
        [sys.executable, "-c", program, json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return {entry.pop("label"): entry for entry in map(json.loads, result.stdout.splitlines())}


def test_clients_over_tls(pki: PKI, strict_node: TLSNode) -> None:
    """
    Client and BlockingClient reach a node with client_endpoint: with the
    right CA and name they call; a wrong CA, a wrong name or a self-signed
    certificate fails the call not-run, saying why; so does a client
    certificate the node refuses.  Twisted's tls: strings work too.
    """
    port, ssl_port = strict_node.tls_port, strict_node.self_signed_port
    seen = run_clients(ASYNC_CLIENTS, pki, strict_node)
    assert seen["right"] == {"ok": 3}
    assert seen["by name"] == {"ok": 3}
    assert seen["string"] == {"ok": 3}
    refusals = {
        "wrong ca": f"cannot connect to tls:127.0.0.1:{port}: TLS handshake failed: certificate"
        " verify failed: it is signed by 'callnet development CA [0-9a-f]{6}', not by the"
        " trusted CA",
        "wrong name": f"cannot connect to tls:127.0.0.1:{port} \\(as beta\\): TLS handshake"
        " failed: certificate verify failed: the certificate names alpha, not beta",
        "self-signed": f"cannot connect to tls:127.0.0.1:{ssl_port}: TLS handshake failed:"
        " certificate verify failed: the certificate of '127.0.0.1': it is self-signed, not"
        " signed by the trusted CA",
    }
    for label, message in refusals.items():
        assert seen[label]["code"] == "UNAVAILABLE", (label, seen[label])
        assert seen[label]["outcome"] == "not-run", (label, seen[label])
        assert re.fullmatch(message, seen[label]["message"]), (label, seen[label])
    # Refused by the node after the client's side of the handshake (TLS 1.3).
    for label, why in (
        ("no client certificate", "it requires a client certificate signed by its CA"),
        ("rogue client certificate", "it does not trust the CA of this client's certificate"),
    ):
        assert seen[label]["code"] == "UNAVAILABLE", (label, seen[label])
        assert f"the node refused TLS: {why}" in seen[label]["message"], (label, seen[label])
    # Twisted's own tls: endpoint: refused when the first call is sent.
    assert seen["string, wrong ca"]["code"] == "UNAVAILABLE"
    assert "certificate verify failed" in seen["string, wrong ca"]["message"]

    blocking = run_clients(BLOCKING_CLIENTS, pki, strict_node)
    assert blocking["alpha"] == {"ok": 3}
    assert blocking["beta"]["code"] == "UNAVAILABLE"
    assert blocking["beta"]["outcome"] == "not-run"
    assert "the certificate names alpha, not beta" in blocking["beta"]["message"]


# --- Clusters over TLS --------------------------------------------------------------


def blocks(kind: str) -> dict[str, str]:
    pattern = re.compile(rf"<!-- {kind}: (\S+) -->\n```\w*\n(.*?)```", re.S)
    return dict(pattern.findall(DOC.read_text()))


def _hidden(line: str, port: int) -> str:
    """
    An output line with the example's port moved, counters as N, spaces as
    one, and an up peer's calls in flight as N: a heartbeat may be on its way.
    """
    line = line.replace(f":{EXAMPLE_PORT}", f":{port}")
    line = re.sub(r"\b\d+ (connections|calls|errors|in flight)", r"N \1", line)
    line = re.sub(r"^(\S+ +up +\S+ +)\d+ ", r"\1N ", line)
    return " ".join(line.split())


def test_tls_cluster_example(tmp_path: Path) -> None:
    """
    The documented commands make the certificates and start the TLS example
    of etc/cluster-tls; alpha sees its peers up over mutual TLS and forwards
    calls; the documented calls give the documented output; the stop
    command stops the three.
    """
    require_twistd()
    require_loopback(*HOSTS.values())
    port = free_port_on(list(HOSTS.values()))
    checkout = tmp_path / "checkout"
    here = checkout / "etc" / "cluster-tls"
    here.mkdir(parents=True)
    for path in EXAMPLE.glob("*.toml"):
        (here / path.name).write_text(path.read_text().replace(f":{EXAMPLE_PORT}", f":{port}"))
    bin_dir = checkout / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("twistd", "callnet"):
        (bin_dir / tool).symlink_to(TWISTD.parent / tool)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pidfiles = [here / f"{name}.pid" for name in HOSTS]
    certs = here / "certs"
    try:
        started = subprocess.run(
            ["bash", "-e", "-c", blocks("commands")["cluster-tls"]],
            cwd=checkout,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        assert all(pidfile.exists() for pidfile in pidfiles)

        def watcher() -> LineClient:
            return tls_client(
                "127.0.0.1", port, certs / "ca.pem", "alpha", certs / "ops.pem", certs / "ops.key"
            )

        def peers_up() -> bool:
            with suppress(OSError, ssl.SSLError):
                client = watcher()
                try:
                    peers = stats_of(client).get("peers", {})
                finally:
                    client.close()
                return all(peers.get(name, {}).get("state") == "up" for name in ("beta", "gamma"))
            return False

        wait_until(peers_up, 20, "alpha sees beta and gamma up over TLS")
        client = watcher()
        peers = stats_of(client)["peers"]
        assert peers["beta"]["tls"] and peers["gamma"]["tls"]
        assert client.request("#1 echo@beta hi") == '#1 OK "hi"'
        assert client.request("#2 multicall add [1,2]") == (
            '#2 OK {"alpha":{"ok":3},"beta":{"ok":3},"gamma":{"ok":3}}'
        )
        client.close()

        lines = blocks("calls")["cluster-tls"].splitlines()
        shown: list[tuple[str, list[str]]] = []
        for line in lines:
            if line.startswith("$ "):
                shown.append((line[2:], []))
            else:
                shown[-1][1].append(line)
        for command, expected in shown:
            ran = subprocess.run(
                ["bash", "-c", command.replace(f":{EXAMPLE_PORT}", f":{port}")],
                cwd=here,
                env=environment,
                capture_output=True,
                text=True,
                timeout=60,
            )
            actual = (ran.stdout + ran.stderr).splitlines()
            assert [_hidden(line, port) for line in actual] == [
                _hidden(line, port) for line in expected
            ], command

        stop = re.search(r"Stop them with `([^`]+)`", DOC.read_text())
        assert stop is not None, "the doc says how to stop the cluster"
        stopped = subprocess.run(
            ["bash", "-e", "-c", stop.group(1)], cwd=here, capture_output=True, timeout=30
        )
        assert stopped.returncode == 0, stopped.stderr
        wait_until(
            lambda: not any(pidfile.exists() for pidfile in pidfiles),
            10,
            "each node stops and removes its pid file",
        )
        for name in HOSTS:
            assert "Traceback" not in (here / f"{name}.log").read_text(), name
    except BaseException:
        for name in HOSTS:
            with suppress(OSError):
                print(f"--- {name}:\n{(here / f'{name}.log').read_text()[-4000:]}")
        raise
    finally:
        for pidfile in pidfiles:
            with suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text()), 9)


@dataclass
class Impostors:
    nodes: dict[str, Node]
    #: Node -> how to reach it: its CA, the name to check, a client certificate and key.
    access: dict[str, tuple[Path, str, Path, Path]]

    def client(self, name: str) -> LineClient:
        node = self.nodes[name]
        return tls_client(node.host, node.port, *self.access[name])


@pytest.fixture(scope="module")
def impostors(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Impostors]:
    with impostor_cluster(pki, tmp_path_factory.mktemp("impostors")) as cluster:
        yield cluster


@contextmanager
def impostor_cluster(pki: PKI, tmp_path: Path) -> Iterator[Impostors]:
    """
    alpha and beta of the cluster, and two impostors alpha lists as peers,
    each of which lists alpha: mallory, whose certificate comes from another
    CA, and eve, whose certificate is from the cluster's CA but names beta.
    """
    require_twistd()
    here = tmp_path / "impostors"
    here.mkdir()
    ports = {name: free_port() for name in ("alpha", "beta", "mallory", "eve")}
    certs, rogue = pki.certs, pki.rogue

    def config(name: str, cert: Path, ca: Path, peers: dict[str, str]) -> dict[str, Any]:
        return {
            "node": {"name": name, "listen": [f"tls:{ports[name]}:interface=127.0.0.1"]},
            "peers": peers,
            "tls": {
                "cert": str(cert) + ".pem",
                "key": str(cert) + ".key",
                "ca": str(ca / "ca.pem"),
                "require_client_certificate": True,
            },
            "cluster": FAST,
        }

    def at(name: str) -> str:
        return f"tcp:127.0.0.1:{ports[name]}"

    configs = {
        "alpha": config(
            "alpha",
            certs / "alpha",
            certs,
            {"beta": at("beta"), "mallory": at("mallory"), "eve": at("eve")},
        ),
        "beta": config("beta", certs / "beta", certs, {"alpha": at("alpha")}),
        # Another CA's certificate; it trusts the cluster's CA, so that it
        # gets as far as presenting its certificate to alpha.
        "mallory": config("mallory", rogue / "mallory", certs, {"alpha": at("alpha")}),
        # The cluster's CA, the certificate of another node.
        "eve": config("eve", certs / "beta", certs, {"alpha": at("alpha")}),
    }
    nodes: dict[str, Node] = {}
    try:
        for name, document in configs.items():
            (here / f"{name}.toml").write_text(toml_text(document))
            nodes[name] = start_node(
                [str(TWISTD), "-n", "--pidfile=", "callnet", "--config", f"{name}.toml"],
                "127.0.0.1",
                ports[name],
                here / f"{name}.log",
                cwd=here,
            )
        for node in nodes.values():
            wait_until_listening(node)
        ops = (certs / "ops.pem", certs / "ops.key")
        yield Impostors(
            nodes,
            {
                "alpha": (certs / "ca.pem", "alpha", *ops),
                "eve": (certs / "ca.pem", "beta", *ops),
                "mallory": (rogue / "ca.pem", "mallory", *ops),
            },
        )
    except BaseException:
        print("\n".join(f"--- {name}:\n{node.output()[-4000:]}" for name, node in nodes.items()))
        raise
    finally:
        for node in nodes.values():
            with suppress(Exception):
                node.kill()


def test_impostors_get_no_call(impostors: Impostors) -> None:
    """
    alpha's links to impostors are refused in the TLS handshake, whatever
    they answer: they are never up, calls naming them fail UNAVAILABLE
    not-run, and they run nothing; the real peer is up and serves.  An
    impostor's own link to alpha, with another CA's certificate, is refused.
    """
    cluster = impostors
    alpha = cluster.nodes["alpha"]
    refusals = [
        r"refusing peer mallory at tcp:127\.0\.0\.1:\d+: TLS handshake failed: certificate"
        r" verify failed: the certificate of 'mallory' is signed by 'callnet development CA"
        r" [0-9a-f]{6}', not by the trusted CA",
        r"refusing peer eve at tcp:127\.0\.0\.1:\d+: TLS handshake failed: certificate"
        r" verify failed: the certificate names beta, not eve",
        # mallory's own link to alpha, refused by alpha's listener.
        r"refusing a TLS client at 127\.0\.0\.1:\d+: certificate verify failed: the"
        r" certificate of 'mallory' is signed by 'callnet development CA [0-9a-f]{6}', not by"
        r" the trusted CA",
    ]
    wait_until(
        lambda: all(re.search(pattern, alpha.output()) for pattern in refusals),
        20,
        "alpha refuses mallory and eve in the TLS handshake",
    )
    watcher = cluster.client("alpha")
    states: dict[str, set[str]] = {name: set() for name in ("beta", "mallory", "eve")}

    def seen() -> bool:
        for name, peer in stats_of(watcher)["peers"].items():
            states[name].add(peer["state"])
        return "up" in states["beta"]

    wait_until(seen, 20, "alpha sees beta up")
    # Several redials later (every 0.5 s at most), the impostors are still not up.
    redials = time.monotonic() + 2.0
    while time.monotonic() < redials:
        seen()
    assert states["mallory"] == states["eve"] == {"down"}, states

    assert watcher.request("#1 echo@beta hi") == '#1 OK "hi"'
    for impostor in ("mallory", "eve"):
        reply = watcher.request(f"#2 echo@{impostor} secret")
        assert reply.startswith("#2 ERR UNAVAILABLE not-run @alpha "), reply
    watcher.close()

    for impostor in ("mallory", "eve"):
        stats = stats_of(cluster.client(impostor))
        assert stats["calls"] == 0, (impostor, stats)
    # mallory's own link to alpha: alpha's listener refuses its certificate.
    mallory_sees = stats_of(cluster.client("mallory"))["peers"]["alpha"]
    assert mallory_sees["state"] != "up", mallory_sees
    log = alpha.output()
    assert "Traceback" not in log


def test_certificate_must_name_the_node_that_says_hello(impostors: Impostors) -> None:
    """
    eve holds a certificate from the cluster's CA, but it names beta: alpha
    must not take eve's handshake (HELLO, node eve) as a peer's.
    """
    eve = impostors.client("eve")
    try:
        states: set[str] = set()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            states.add(stats_of(eve)["peers"]["alpha"]["state"])
        assert "up" not in states, states
    finally:
        eve.close()


def test_certificate_names_the_caller(pki: PKI, tmp_path: Path) -> None:
    """A client certificate gives the caller its identity, for [acl]: ops may add, beta may not."""
    port = free_port()
    document = {"tls": pki.settings("alpha", require=True).__dict__, "acl": {"ops": ["add"]}}
    (tmp_path / "alpha.toml").write_text(toml_text(document))
    listen = f"tls:{port}:interface=127.0.0.1"
    with running_node(tmp_path, "--config", "alpha.toml", "--listen", listen, name="alpha"):
        ca = pki.certs / "ca.pem"
        beta = tls_client(
            "127.0.0.1", port, ca, "alpha", pki.certs / "beta.pem", pki.certs / "beta.key"
        )
        assert beta.request("#1 add 1 2").startswith("#1 ERR PERMISSION_DENIED not-run")
        ops = tls_client(
            "127.0.0.1", port, ca, "alpha", pki.certs / "ops.pem", pki.certs / "ops.key"
        )
        assert ops.request("#1 add 1 2") == "#1 OK 3"
