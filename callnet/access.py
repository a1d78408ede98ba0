"""
Who may call what: callers, authentication by token, and per-procedure
access rules, decided in one place for every way a procedure is reached.

A node with tokens configured answers nothing but C{AUTH}, C{PING}, C{HELP}
and C{QUIT} until the caller authenticates.  Tokens are compared in constant
time, every one of them each time, so a wrong guess says nothing about how
close it came.  Access rules map identities (and C{*}, anyone) to procedure
name patterns; a call no rule allows fails C{PERMISSION_DENIED} and does not
run.

A L{Caller} says who is calling and how that is known.  Peer rights (no
access rules; the right to act for another caller) come from how a
connection authenticated (the cluster token, or a certificate naming a
configured peer), never from a name.  A call a peer forwards carries its
original caller, and the node that runs the procedure judges that caller by
its own rules.  The decision is made on every call against the policy in
force, so a reload that removes a token or narrows a rule applies to
connections already open.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from callnet.config import Security
from callnet.errors import CallError, PermissionDeniedError, UnauthenticatedError

#: The identity of a caller on a node that requires no authentication.
ANONYMOUS = "anonymous"
#: The identity of a connection authenticated by the cluster token (no token
#: may be named so: see callnet.config_checks.RESERVED_IDENTITIES).
PEER = "peer"


@dataclass(frozen=True, slots=True)
class Caller:
    """
    Who is calling, and how that is known.

    @ivar name: the identity access rules are written for: a token's name,
        a certificate's name, C{anonymous}, or C{peer}.
    @ivar peer: authenticated as a node of this cluster (cluster token, or a
        certificate naming a configured peer): bound by no access rule, and
        trusted to say for whom it forwards a call.
    @ivar credential: a digest of the token this caller authenticated with,
        so that a reload that removes the token revokes it.
    @ivar via: the peer that forwarded this caller's call, if any.
    """

    name: str
    peer: bool = False
    credential: bytes | None = None
    via: str | None = None

    def __str__(self) -> str:
        return self.name if self.via is None else f"{self.name} (via {self.via})"


#: A caller on a node that requires no authentication.
ANONYMOUS_CALLER = Caller(ANONYMOUS)
#: The node itself, for calls it makes of its own accord.
NODE_CALLER = Caller("node", peer=True)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class AccessPolicy:
    """A node's tokens and access rules: the one place that decides who may call what."""

    def __init__(self, security: Security, peer_names: Iterable[str] = ()) -> None:
        self._tokens = [(identity, token.encode()) for identity, token in security.tokens]
        self._cluster_token = (
            security.cluster_token.encode() if security.cluster_token is not None else None
        )
        #: Digests of the tokens in force, to tell a revoked one.
        self._credentials = frozenset(
            [_digest(token) for _, token in security.tokens]
            + ([_digest(security.cluster_token)] if security.cluster_token is not None else [])
        )
        self._rules = [(identity, tuple(patterns)) for identity, patterns in security.acl]
        self._peer_names = frozenset(peer_names)
        #: No tokens and no rules: every caller may call everything.
        self.open = not self._rules and not self._credentials

    @property
    def requires_authentication(self) -> bool:
        """Whether callers must authenticate before they may call."""
        return bool(self._tokens) or self._cluster_token is not None

    def connected(self) -> Caller | None:
        """The caller a new connection is before it says anything, or C{None}."""
        return None if self.requires_authentication else ANONYMOUS_CALLER

    def authenticate(self, token: str) -> Caller | None:
        """
        The caller a token authenticates, or C{None}.

        Every configured token is compared, in constant time, whatever
        matches: the time taken says nothing of the guess.
        """
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for identity, expected in self._tokens:
            if hmac.compare_digest(given, expected):
                found = Caller(identity, credential=_digest(token))
        if self._cluster_token is not None and hmac.compare_digest(given, self._cluster_token):
            found = Caller(PEER, peer=True, credential=_digest(token))
        return found

    def certified(self, name: str) -> Caller:
        """The caller a verified client certificate names: a peer if it names one."""
        return Caller(name, peer=self.names_peer(name))

    def names_peer(self, name: str | None) -> bool:
        """Whether C{name} is one of the peers the config names (C{[peers]})."""
        return name in self._peer_names

    def revoked(self, caller: Caller) -> bool:
        """Whether the token C{caller} authenticated with is no longer in force."""
        return caller.credential is not None and caller.credential not in self._credentials

    def restricts(self, caller: Caller) -> bool:
        """Whether access rules bind this caller at all."""
        return bool(self._rules) and not caller.peer

    def check(self, caller: Caller, procedure: str) -> CallError | None:
        """
        Why C{caller} may not call C{procedure} (a name, without C{@node}),
        or C{None} if it may.
        """
        if caller.credential is not None and caller.credential not in self._credentials:
            return UnauthenticatedError(
                "the token this connection authenticated with is no longer valid; AUTH again"
            )
        if caller.peer or not self._rules:
            return None
        name = caller.name
        for who, patterns in self._rules:
            if (who == "*" or who == name) and any(
                fnmatch.fnmatchcase(procedure, pattern) for pattern in patterns
            ):
                return None
        return PermissionDeniedError(f"{caller} may not call {procedure[:80]}")

    def on_behalf(self, forwarder: Caller, name: str, via: str | None) -> Caller:
        """
        The caller a forwarded call is made for, as the forwarding connection
        says.  Only a peer is believed; from any other connection the claim
        is ignored and the call is judged as that connection's own, which
        gains it nothing.
        """
        if not forwarder.peer:
            return forwarder
        return Caller(name, via=via)
