"""
Links to the other nodes of a cluster: connection, handshake, heartbeats.

Each configured peer gets a L{Peer}: a L{ClientService} that keeps one
connection to it (reconnecting with jittered exponential back-off), a
handshake that learns its name and the procedures it serves, and a heartbeat
that marks it down when it falls silent: when nothing at all has come from it
for C{down_after} (not counting time this node was too busy to ask it), and
still nothing once this node's reactor has read its sockets.  A peer is in one of three states:

    connecting --handshake--> up --silence / lost--> down --handshake--> up

Marking a peer down aborts its connection, which fails every call waiting on
it at once (L{UnavailableError}, may-have-run), rather than leaving them to
TCP's own timeouts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from callnet.client import ClientProtocol
from callnet.config import ClusterSettings
from callnet.config_checks import is_node_name
from callnet.errors import CallError, Outcome, UnavailableError
from callnet.logs import drop_retry_notices
from callnet.reactors import Clock, DelayedCall, DispatchReactor, twisted_clock
from callnet.tls import HandshakeEndpoint
from callnet.wire import PROTOCOL_VERSION, Call, Item, Progress

log = Logger()

#: Clock times are floats, and heartbeats come one interval after another:
#: three of 1 s may add up to 2.9999999999999996 s.  Silence this close to
#: C{down_after} counts as reaching it.
_TICK = 1e-6


#: How often a draining peer's calls in flight are counted, in seconds: a
#: peer leaves within this of its last answer.
DRAIN_POLL = 0.05


class PeerState(enum.Enum):
    """Where a peer stands, as routing and C{status} see it."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


class _PeerService(ClientService):
    """
    The service that keeps a peer's link: a ClientService that does not log
    each retry.  A peer logs when it goes down and when it comes back.
    """

    _log = Logger(observer=drop_retry_notices)


class HandshakeError(Exception):
    """A peer answered the handshake with something unusable."""


class _PeerFactory(Factory):
    noisy = False

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def buildProtocol(self, addr: IAddress | None) -> ClientProtocol:
        protocol = ClientProtocol(self._peer._clock)
        protocol.node_name = self._peer.name
        protocol.factory = self
        protocol.on_made = self._peer._handshake
        return protocol


class Peer:
    """One other node: its link, its state and the procedures it serves."""

    def __init__(
        self,
        name: str,
        endpoint: str | IStreamClientEndpoint,
        reactor: DispatchReactor,
        settings: ClusterSettings,
        hello: Callable[[], dict[str, Any]],
        on_change: Callable[[Peer], None],
        connector: IStreamClientEndpoint | None = None,
        token: str | None = None,
        on_named: Callable[[Peer, str], bool] | None = None,
    ) -> None:
        """
        @param endpoint: where the peer is: an endpoint string, as
            configured, or an endpoint.
        @param connector: the endpoint to dial it by, when not C{endpoint}
            itself (a TLS link to the address C{endpoint} names).
        @param token: the cluster token, sent (C{AUTH}) before the handshake.
        @param on_named: for a peer whose name is not known in advance (one
            found in DNS): asked, when a handshake gives a name other than
            C{name}, whether the peer may take it (it is not this node, nor
            another peer's); if not, the link is dropped.  Without it, a
            peer must give C{name}.
        """
        self.name = name
        self._on_named = on_named
        #: Whether calls are still sent here; a peer being dropped is not.
        self.draining = False
        self._drain_check: DelayedCall | None = None
        self._stopping = False
        #: The endpoint as configured, to tell whether a new config changed it.
        self.configured = endpoint if isinstance(endpoint, str) else repr(endpoint)
        if isinstance(endpoint, str):
            self.endpoint = endpoint
            if connector is None:
                connector = clientFromString(reactor, endpoint)
        else:
            self.endpoint = repr(endpoint)
            connector = connector or endpoint
        #: Whether the link goes over TLS, checking the peer's certificate.
        self.tls = isinstance(connector, HandshakeEndpoint)
        self.state = PeerState.CONNECTING
        #: Procedure name -> what the peer said of it (C{idempotent}, ...).
        self.procedures: dict[str, dict[str, Any]] = {}
        self._clock: Clock = reactor
        self._settings = settings
        self._hello = hello
        self._on_change = on_change
        self._token = token
        self._protocol: ClientProtocol | None = None
        self._heartbeat: DelayedCall | None = None
        #: A second look at a peer the heartbeat found silent, due once the
        #: reactor has read its sockets.
        self._second_look: DelayedCall | None = None
        #: The heartbeat the peer owes an answer to: its link, when the
        #: peer's silence counts from, and the link's count of reads then.
        self._asked: tuple[ClientProtocol, float, int] | None = None
        self._service = _PeerService(
            connector,
            _PeerFactory(self),
            retryPolicy=backoffPolicy(
                initialDelay=0.05, maxDelay=settings.reconnect_max_delay, factor=2.0
            ),
            clock=twisted_clock(reactor),
        )

    @property
    def in_flight(self) -> int:
        """Calls sent to this peer and not yet answered."""
        return self._protocol.in_flight if self._protocol is not None else 0

    def serves(self, procedure: str) -> bool:
        return self.state is PeerState.UP and procedure in self.procedures

    def describe(self) -> dict[str, Any]:
        """This peer as C{STATS} reports it."""
        return {
            "endpoint": self.endpoint,
            "state": self.state.value,
            "tls": self.tls,
            "in_flight": self.in_flight,
            "procedures": sorted(self.procedures),
        }

    # --- Lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._service.startService()
        self._schedule_heartbeat()
        first = self._service.whenConnected(failAfterFailures=1)
        first.addErrback(self._first_attempt_failed)

    def _first_attempt_failed(self, reason: Failure) -> None:
        if self.state is PeerState.CONNECTING:
            self._set_state(PeerState.DOWN)

    def stop(self) -> Deferred[None]:
        # The link ends because this node let it go (it stops, or dropped
        # the peer): no news about the peer worth a warning.
        self._stopping = True
        self._stop_timers()
        d: Deferred[None] = self._service.stopService()
        return d

    def _stop_timers(self) -> None:
        for name in ("_heartbeat", "_second_look", "_drain_check"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    def drain(self, grace: float) -> Deferred[None]:
        """
        Stop the link once the calls in flight on it have their answers, or
        C{grace} seconds from now, whichever comes first: as a node that
        stops gives its own calls.  The caller stops sending calls here
        first; heartbeats stop now, so that their own questions end too.
        """
        self.draining = True
        self._stop_timers()
        deadline = self._clock.seconds() + grace
        done: Deferred[None] = Deferred()

        def check() -> None:
            self._drain_check = None
            if self.in_flight == 0 or self._clock.seconds() >= deadline:
                self.stop().chainDeferred(done)
            else:
                self._drain_check = self._clock.callLater(
                    min(DRAIN_POLL, max(deadline - self._clock.seconds(), 0.0)), check
                )

        check()
        return done

    # --- Calls ----------------------------------------------------------------

    def call(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
        key: str | None,
        trace: str | None,
        hops: int,
        caller: str | None = None,
    ) -> Deferred[Any]:
        """Forward a call to this peer, for C{caller} if given (see L{callnet.access})."""
        protocol = self._protocol
        if protocol is None or self.state is not PeerState.UP or not protocol.is_connected:
            d: Deferred[Any] = Deferred()
            d.errback(
                Failure(UnavailableError(f"peer {self.name} is down", Outcome.NOT_RUN, self.name))
            )
            return d
        return protocol.call(procedure, args, kwargs, timeout, key, trace, hops, caller)

    def call_with_events(
        self, call: Call, timeout: float, listener: Callable[[Item | Progress], object]
    ) -> tuple[Callable[[int], None], Deferred[Any]]:
        """
        Forward a call whose C{ITEM} and C{PROGRESS} lines go to C{listener}
        (a stream, or a call that asked C{+progress}).

        @return: how to grant the stream more items (C{MORE}), and the
            Deferred of the final reply.
        """
        protocol = self._protocol
        if protocol is None or self.state is not PeerState.UP or not protocol.is_connected:
            d: Deferred[Any] = Deferred()
            d.errback(
                Failure(UnavailableError(f"peer {self.name} is down", Outcome.NOT_RUN, self.name))
            )
            return _no_more, d
        tag, d = protocol.call_with_events(call, timeout, listener)
        return partial(protocol.more, tag), d

    # --- Handshake --------------------------------------------------------------

    def _handshake(self, protocol: ClientProtocol) -> Deferred[None]:
        """
        Say who we are; learn who answers and what it serves.  A connection
        whose handshake fails is dropped, and the link reconnects.
        """
        protocol.on_lost = self._lost
        if self._token is not None:
            # Sent ahead of HELLO, which the peer answers only once AUTH is
            # done: a refused token fails the handshake below.
            auth = protocol.command("AUTH", (self._token,), self._settings.down_after)
            auth.addErrback(self._auth_failed)
        d = protocol.command("HELLO", (self._hello(),), self._settings.down_after)

        def learned(info: Any) -> None:
            try:
                name, procedures = _read_hello(info)
                if name != self.name and self._on_named is None:
                    raise HandshakeError(f"it says it is {name!r}")
            except HandshakeError as e:
                log.warn(
                    "refusing peer {peer} at {endpoint}: {why}",
                    peer=self.name,
                    endpoint=self.endpoint,
                    why=str(e),
                )
                protocol.abort()
                return
            if name != self.name and not (self._on_named and self._on_named(self, name)):
                protocol.abort()  # refused and logged by on_named
                return
            self._protocol = protocol
            self.procedures = procedures
            self._set_state(PeerState.UP)

        def failed(reason: Failure) -> None:
            log.info(
                "no handshake from peer {peer}: {why}",
                peer=self.name,
                why=reason.getErrorMessage(),
            )
            protocol.abort()

        return d.addCallbacks(learned, failed)

    def _auth_failed(self, reason: Failure) -> None:
        error = reason.value
        if isinstance(error, CallError) and error.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            log.warn(
                "peer {peer} at {endpoint} refused this node's cluster token: {why}",
                peer=self.name,
                endpoint=self.endpoint,
                why=error.message,
            )

    def _lost(self, protocol: ClientProtocol) -> None:
        if protocol is self._protocol:
            self._protocol = None
            self._set_state(PeerState.DOWN, expected=protocol.said_bye is not None)

    def _set_state(self, state: PeerState, expected: bool = False) -> None:
        if state is not self.state:
            before, self.state = self.state, state
            # Once per change, not per attempt to reconnect: see _PeerService.
            # A peer drained or let go on purpose, or that said it is
            # shutting down, going down is no news worth a warning.
            quiet = expected or self.draining or self._stopping
            log.emit(
                LogLevel.warn if state is PeerState.DOWN and not quiet else LogLevel.info,
                "peer {peer} is {after} (was {before})",
                peer=self.name,
                before=before.value,
                after=state.value,
            )
            self._on_change(self)

    # --- Failure detection --------------------------------------------------------

    def _schedule_heartbeat(self) -> None:
        self._heartbeat = self._clock.callLater(self._settings.heartbeat_interval, self._beat)

    def _beat(self) -> None:
        """
        Ask the peer to say something; if it has said nothing since it was
        asked C{down_after} ago, look again once the reactor has read.
        """
        self._schedule_heartbeat()
        protocol = self._protocol
        if protocol is None or self.state is not PeerState.UP:
            return
        now = self._clock.seconds()
        asked = self._asked
        if asked is None or asked[0] is not protocol or protocol.reads != asked[2]:
            # Heard from since last asked (or a new link): this beat's PING
            # is the question the peer now owes an answer to.  Its silence
            # counts from its last byte, but from no more than one interval
            # before this question: if this node was too busy to ask for
            # longer, that time is its own, not the peer's.
            since = max(protocol.last_heard, now - self._settings.heartbeat_interval)
            asked = self._asked = (protocol, since, protocol.reads)
        silent_for = now - asked[1]
        if silent_for >= self._settings.down_after - _TICK and self._second_look is None:
            # Timers run before the reactor reads: after a long turn of local
            # work the peer's answer may be waiting unread in the socket.  A
            # call at 0 runs in the next turn, after the reactor has read.
            self._second_look = self._clock.callLater(
                0, self._judge, protocol, protocol.reads, silent_for
            )
        # Sent now, not at the end of this turn, which local work can make long.
        ping = protocol.command("PING", (), self._settings.down_after, at_once=True)
        ping.addErrback(lambda reason: None)  # silence is judged above, not here

    def _judge(self, protocol: ClientProtocol, reads: int, found_silent: float) -> None:
        """Mark the peer down if nothing came from it since it was found silent."""
        self._second_look = None
        if protocol is not self._protocol or self.state is not PeerState.UP:
            return
        if protocol.reads != reads:
            log.info(
                "peer {peer} seemed silent for {seconds:.1f}s, but its bytes were"
                " waiting to be read: this node was busy, the peer is up",
                peer=self.name,
                seconds=found_silent,
            )
            return
        silent_for = self._clock.seconds() - (self._asked[1] if self._asked else 0.0)
        log.warn(
            "peer {peer} silent for {seconds:.1f}s: marking it down",
            peer=self.name,
            seconds=silent_for,
        )
        self._protocol = None
        self._set_state(PeerState.DOWN)
        protocol.abort(f"peer {self.name} stopped answering ({silent_for:.1f}s of silence)")


#: How much of a peer's procedure signature and docstring a node keeps, to
#: show in its own HELP.
MAX_SIGNATURE = 1024
MAX_DOC = 4096


def _no_more(count: int) -> None:
    """A call that was never sent takes no grants."""


def _read_hello(info: Any) -> tuple[str, dict[str, dict[str, Any]]]:
    """Check a peer's handshake reply; return its name and procedures."""
    if not isinstance(info, dict):
        raise HandshakeError("its handshake reply is not an object")
    if info.get("version") != PROTOCOL_VERSION:
        raise HandshakeError(f"it speaks version {info.get('version')!r}, not {PROTOCOL_VERSION}")
    name = info.get("node")
    procedures = info.get("procedures")
    if not isinstance(name, str) or not isinstance(procedures, list):
        raise HandshakeError("its handshake reply lacks node or procedures")
    if not is_node_name(name):
        # A discovered peer's name is taken from here: it must be one that
        # name@node can address, and never look like an address shown for
        # a peer not yet named.
        raise HandshakeError(f"it gives {name[:64]!r}, not a node name (letters, digits, _.-)")
    catalog = {}
    for entry in procedures:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            signature, doc = entry.get("signature"), entry.get("doc")
            catalog[entry["name"]] = {
                "idempotent": bool(entry.get("idempotent")),
                "stream": entry.get("stream") is True,
                # What HELP shows of it on this node; bounded, as the peer's
                # word is only shown, never acted on.
                "signature": signature[:MAX_SIGNATURE] if isinstance(signature, str) else "",
                "doc": doc[:MAX_DOC] if isinstance(doc, str) else "",
            }
    return name, catalog


def is_link_failure(error: BaseException) -> bool:
    """Whether a call failed for want of a usable link, not in the procedure."""
    return isinstance(error, UnavailableError) or (
        isinstance(error, CallError) and error.code == "UNAVAILABLE"
    )
