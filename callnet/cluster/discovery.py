"""
Where a node's peers come from: sources of peers, the static list and DNS.

A L{PeerSource} tells the cluster, whenever it changes, the whole set of
peers it knows as L{PeerEntry}s: where each is (a client endpoint string),
and its name if the source knows it in advance.  L{StaticPeers} is the
C{[peers]} table, named by the config.  L{DnsPeers} follows DNS records (the
C{[cluster] discover} setting): SRV records (C{dns-srv:NAME}), or the A and
AAAA records of a headless service whose nodes share a port
(C{dns-a:NAME:PORT}).  Its peers have no name until their handshake gives
one, which is how the cluster knows the node's own record when it meets it.

DNS is asked again when the records' TTL runs out, within
C{discover_min_interval} and C{discover_max_interval}.  A failed lookup, or
an answer with no records at all, keeps the peers already known: a DNS
outage or a bad moment of the orchestrator never takes a cluster apart.  A
failed lookup is retried after the shortest interval, doubling up to the
longest.  An answer naming more than C{discover_max_peers} peers gives only
that many, the same ones on every node.

An SRV record's target is the host name a peer's certificate must give when
the node's links to its peers are TLS (L{PeerEntry.target}).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.client import Resolver
from twisted.names.error import (
    DNSFormatError,
    DNSNameError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSQueryTimeoutError,
    DNSServerError,
    DNSUnknownError,
)
from twisted.python.failure import Failure

from callnet.config import ClusterSettings
from callnet.config_checks import discover_target, nameserver_address
from callnet.reactors import Clock, DelayedCall

__all__ = [
    "DnsPeers",
    "PeerEntry",
    "PeerSource",
    "StaticPeers",
    "address_endpoint",
    "dns_source",
    "system_resolver",
]

log = Logger()

#: Seconds one DNS query may take; past it the lookup has failed, and is
#: tried again after discover_min_interval.  A resolver on the same network
#: answers in milliseconds; this holds a refresh for much less than the stub
#: resolver's usual minute.
QUERY_TIMEOUT = 5.0


@dataclass(frozen=True, order=True)
class PeerEntry:
    """One peer a source knows of."""

    #: Where to dial it: a client endpoint string (C{tcp:host=...:port=...}).
    endpoint: str
    #: Its name, when the source knows it in advance (C{[peers]}); a
    #: discovered peer's name is the one its handshake gives.
    name: str | None = None
    #: How to show it until its name is known: C{HOST:PORT}.
    address: str = ""
    #: The DNS name an SRV record gives as its target, which a TLS link
    #: checks the peer's certificate against; C{None} from A records.
    target: str | None = None


class PeerSource(Protocol):
    """Something that knows where peers are, and says when that changes."""

    def start(self, found: Callable[[frozenset[PeerEntry]], None]) -> None:
        """Begin: call C{found} with the whole set of peers now, and on every change."""

    def stop(self) -> None:
        """Stop looking; C{found} is not called again."""


class StaticPeers:
    """The C{[peers]} table: peers named in advance, at fixed endpoints."""

    def __init__(self, peers: Iterable[tuple[str, str]]) -> None:
        #: The peers, in the order the config lists them.
        self.entries = tuple(PeerEntry(endpoint, name) for name, endpoint in peers)

    def start(self, found: Callable[[frozenset[PeerEntry]], None]) -> None:
        found(frozenset(self.entries))

    def stop(self) -> None:
        pass


def address_endpoint(host: str, port: int, target: str | None = None) -> PeerEntry:
    """
    The entry of an unnamed peer at an IP address and port; C{target} is
    the SRV record's host name that gave it, if one did.
    """
    if ipaddress.ip_address(host).version == 6:
        escaped = host.replace(":", "\\:")
        return PeerEntry(f"tcp:host={escaped}:port={port}", None, f"[{host}]:{port}", target)
    return PeerEntry(f"tcp:host={host}:port={port}", None, f"{host}:{port}", target)


class _Resolver(Protocol):
    """What L{DnsPeers} asks of an L{twisted.internet.interfaces.IResolver}."""

    def lookupService(self, name: str) -> Deferred[Any]: ...

    def lookupAddress(self, name: str) -> Deferred[Any]: ...

    def lookupIPV6Address(self, name: str) -> Deferred[Any]: ...


class DnsPeers:
    """
    Peers found in DNS, looked up again as the records' TTL runs out.

    @param target: the C{discover} string (C{dns-srv:NAME}, C{dns-a:NAME:PORT}).
    @param resolver: the resolver to ask (L{system_resolver} in a node).
    """

    def __init__(
        self,
        target: str,
        resolver: _Resolver,
        clock: Clock,
        min_interval: float,
        max_interval: float,
        max_peers: int = 64,
    ) -> None:
        self.target = target
        self._max_peers = max_peers
        self._scheme, self._name, self._port = discover_target(target)
        self._resolver = resolver
        self._clock = clock
        self._min = min_interval
        self._max = max_interval
        self._found: Callable[[frozenset[PeerEntry]], None] | None = None
        self._timer: DelayedCall | None = None
        self._lookup: Deferred[Any] | None = None
        #: The peers of the last answer that had any.
        self.known: frozenset[PeerEntry] = frozenset()
        #: Lookups failed in a row; each doubles the wait before the next.
        self.failures = 0
        #: Seconds until the next lookup, as last decided.
        self.next_in: float | None = None
        #: How many peers the last answer named beyond C{max_peers}.
        self.left_out = 0

    def start(self, found: Callable[[frozenset[PeerEntry]], None]) -> None:
        self._found = found
        self._look()

    def stop(self) -> None:
        self._found = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lookup is not None:
            lookup, self._lookup = self._lookup, None
            lookup.cancel()

    def _look(self) -> None:
        self._timer = None
        lookup = ensureDeferred(self._resolve())
        # A resolver that never answers must not stop the refreshes.
        lookup.addTimeout(self._max, self._clock)  # type: ignore[arg-type]
        self._lookup = lookup
        lookup.addCallbacks(self._answered, self._failed)

    async def _resolve(self) -> tuple[frozenset[PeerEntry], float, int]:
        """
        The peers the records name, at most C{max_peers} of them (the first in
        a fixed order, SRV targets by name and then addresses, so that every
        node keeps the same ones), the shortest TTL among those records, and
        how many were left out.
        """
        unasked = 0
        if self._scheme == "dns-srv":
            entries, ttl, unasked = await self._resolve_srv()
        else:
            assert self._port is not None
            addresses, ttl = await self._addresses(self._name)
            entries = frozenset(address_endpoint(host, self._port) for host in addresses)
        kept = sorted(entries)[: self._max_peers]
        return frozenset(kept), ttl, len(entries) - len(kept) + unasked

    async def _resolve_srv(self) -> tuple[frozenset[PeerEntry], float, int]:
        """The peers, the TTL, and how many SRV targets were left unasked."""
        try:
            answers, _, additional = await self._resolver.lookupService(self._name)
        except DNSNameError:
            return frozenset(), self._max, 0
        # A target of "." says the service is not offered there (RFC 2782).
        services = sorted(
            (
                record
                for record in answers
                if record.type == dns.SRV
                and record.payload.port > 0
                and record.payload.target.name.strip(b".")
            ),
            key=lambda record: (record.payload.target.name, record.payload.port),
        )
        # Each target left gives at least one peer: those past max_peers
        # would be left out anyway, so their addresses are not asked for.
        unasked = max(len(services) - self._max_peers, 0)
        services = services[: self._max_peers]
        ttl = min((record.ttl for record in services), default=self._max)
        # Servers usually send the targets' addresses along (Kubernetes and
        # Consul do); those they leave out are asked for.
        given: dict[str, set[str]] = {}
        for record in additional:
            if record.type in (dns.A, dns.AAAA):
                given.setdefault(record.name.name.decode("ascii").lower(), set()).add(
                    record.payload.dottedQuad()
                    if record.type == dns.A
                    else _ipv6_text(record.payload.address)
                )
                ttl = min(ttl, record.ttl)
        entries: set[PeerEntry] = set()
        for record in services:
            target = record.payload.target.name.decode("ascii").lower()
            hosts = given.get(target)
            if hosts is None:
                hosts, host_ttl = await self._addresses(target)
                ttl = min(ttl, host_ttl)
            entries.update(
                address_endpoint(host, record.payload.port, target.rstrip(".")) for host in hosts
            )
        return frozenset(entries), ttl, unasked

    async def _addresses(self, name: str) -> tuple[set[str], float]:
        """The A and AAAA records of C{name}; none if the name does not exist."""
        hosts: set[str] = set()
        ttl = self._max
        for lookup in (self._resolver.lookupAddress, self._resolver.lookupIPV6Address):
            try:
                answers, _, _ = await lookup(name)
            except DNSNameError:
                continue
            for record in answers:
                if record.type == dns.A:
                    hosts.add(record.payload.dottedQuad())
                elif record.type == dns.AAAA:
                    hosts.add(_ipv6_text(record.payload.address))
                else:
                    continue
                ttl = min(ttl, record.ttl)
        return hosts, ttl

    def _answered(self, result: tuple[frozenset[PeerEntry], float, int]) -> None:
        self._lookup = None
        entries, ttl, left_out = result
        if left_out != self.left_out:
            self.left_out = left_out
            if left_out:
                log.warn(
                    "DNS names {total} peers for {target}: following {kept}, leaving out"
                    " {left_out} ([cluster] discover_max_peers)",
                    total=len(entries) + left_out,
                    target=self.target,
                    kept=len(entries),
                    left_out=left_out,
                )
        if not entries and self.known:
            # No records where there were some: a service being recreated, a
            # DNS server that lost its zone.  The peers known stay (those
            # truly gone are marked down by their heartbeats), and DNS is
            # asked again as after a failure.
            delay = self._back_off()
            log.warn(
                "DNS has no records for {target}: keeping the {count} addresses known,"
                " asking again in {delay:g}s",
                target=self.target,
                count=len(self.known),
                delay=delay,
            )
            self._schedule(delay)
            return
        self.failures = 0
        if entries != self.known:
            added = sorted(entry.address for entry in entries - self.known)
            removed = sorted(entry.address for entry in self.known - entries)
            log.info(
                "DNS {target}: {added} appeared, {removed} gone",
                target=self.target,
                added=", ".join(added) or "none",
                removed=", ".join(removed) or "none",
            )
            self.known = entries
            if self._found is not None:
                self._found(entries)
        self._schedule(min(max(float(ttl), self._min), self._max))

    def _failed(self, reason: Failure) -> None:
        self._lookup = None
        if self._found is None:
            return  # stopped while looking
        delay = self._back_off()
        log.warn(
            "DNS lookup of {target} failed ({why}): keeping the {count} addresses known,"
            " asking again in {delay:g}s",
            target=self.target,
            why=_why(reason.value),
            count=len(self.known),
            delay=delay,
        )
        self._schedule(delay)

    def _back_off(self) -> float:
        """Count a lookup that found nothing usable; return the wait before the next."""
        self.failures += 1
        return float(min(self._min * 2 ** (self.failures - 1), self._max))

    def _schedule(self, delay: float) -> None:
        self.next_in = delay
        if self._found is not None:
            self._timer = self._clock.callLater(delay, self._look)


#: What a DNS server's error answer means, in its usual words.
_ANSWERS = {
    DNSFormatError: "FORMERR",
    DNSServerError: "SERVFAIL",
    DNSNotImplementedError: "NOTIMP",
    DNSQueryRefusedError: "REFUSED",
    DNSUnknownError: "an unknown error code",
}


def _why(error: BaseException | None) -> str:
    """Why a lookup failed, in a few words (an error answer's message is a whole DNS message)."""
    for kind, words in _ANSWERS.items():
        if isinstance(error, kind):
            return f"the server answered {words}"
    if isinstance(error, TimeoutError | DNSQueryTimeoutError | DeferredTimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__ if error is not None else "unknown"


def _ipv6_text(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))


class TcpLookups:
    """
    Lookups through a L{Resolver}, over TCP.  An SRV answer for tens of nodes
    outgrows a UDP datagram anyway; over TCP nothing is truncated, a forged
    datagram cannot answer, and one connection serves every lookup while the
    server keeps it open (where UDP would open, and log, a port per query).
    """

    def __init__(self, resolver: Resolver, timeout: float = QUERY_TIMEOUT) -> None:
        self._resolver = resolver
        self._timeout = timeout

    def _ask(self, name: str, kind: int) -> Deferred[Any]:
        d: Deferred[Any] = self._resolver.queryTCP([dns.Query(name, kind, dns.IN)], self._timeout)
        # An answer's error code (NXDOMAIN, SERVFAIL, ...) becomes its error.
        return d.addCallback(self._resolver.filterAnswers)

    def lookupService(self, name: str) -> Deferred[Any]:
        return self._ask(name, dns.SRV)

    def lookupAddress(self, name: str) -> Deferred[Any]:
        return self._ask(name, dns.A)

    def lookupIPV6Address(self, name: str) -> Deferred[Any]:
        return self._ask(name, dns.AAAA)


def system_resolver(settings: ClusterSettings, reactor: Any) -> TcpLookups:
    """
    Lookups asking C{discover_nameservers}, or the servers of
    C{/etc/resolv.conf} if none are set, over TCP.  Nothing is cached: each
    refresh asks the servers, whose answers' TTL says when to ask again.
    """
    servers = [nameserver_address(server) for server in settings.discover_nameservers]
    if servers:
        return TcpLookups(Resolver(servers=servers, reactor=reactor))
    return TcpLookups(Resolver(resolv="/etc/resolv.conf", reactor=reactor))


def dns_source(
    settings: ClusterSettings, reactor: Any, resolver: _Resolver | None = None
) -> DnsPeers | None:
    """The DNS source C{settings} asks for, or C{None} if they set no C{discover}."""
    if settings.discover is None:
        return None
    return DnsPeers(
        settings.discover,
        resolver if resolver is not None else system_resolver(settings, reactor),
        reactor,
        settings.discover_min_interval,
        settings.discover_max_interval,
        settings.discover_max_peers,
    )
