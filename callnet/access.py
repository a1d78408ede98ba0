"""
Who may call what: authentication by token, and per-procedure access rules.

A node with tokens configured answers nothing but C{AUTH}, C{PING}, C{HELP}
and C{QUIT} until the caller authenticates.  Tokens are compared in constant
time, every one of them each time, so a wrong guess says nothing about how
close it came.  Access rules map identities (and C{*}, anyone) to procedure
name patterns; a call no rule allows fails C{PERMISSION_DENIED} and does not
run.  Peer nodes, authenticated by the cluster token or a certificate, are
trusted to forward calls their own callers were allowed to make.
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Iterable

from callnet.config import Security

#: The identity of a caller on a node that requires no authentication.
ANONYMOUS = "anonymous"
#: The identity of another node of the cluster.
PEER = "peer"


class AccessPolicy:
    """A node's tokens and access rules."""

    def __init__(self, security: Security, peer_names: Iterable[str] = ()) -> None:
        self._tokens = [(identity, token.encode()) for identity, token in security.tokens]
        self._cluster_token = (
            security.cluster_token.encode() if security.cluster_token is not None else None
        )
        self._rules = [(identity, tuple(patterns)) for identity, patterns in security.acl]
        self._peer_names = frozenset(peer_names)

    @property
    def requires_authentication(self) -> bool:
        """Whether callers must authenticate before they may call."""
        return bool(self._tokens) or self._cluster_token is not None

    def authenticate(self, token: str) -> str | None:
        """
        The identity a token belongs to, or C{None}.

        Every configured token is compared, in constant time, whatever
        matches: the time taken says nothing of the guess.
        """
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for identity, expected in self._tokens:
            if hmac.compare_digest(given, expected):
                found = identity
        if self._cluster_token is not None and hmac.compare_digest(given, self._cluster_token):
            found = PEER
        return found

    def is_peer(self, identity: str | None) -> bool:
        """Whether an identity is another node of the cluster."""
        return identity == PEER or (identity is not None and identity in self._peer_names)

    def allows(self, identity: str | None, procedure: str) -> bool:
        """Whether C{identity} may call C{procedure} (C{name} or C{name@node})."""
        if not self._rules or self.is_peer(identity):
            return True
        name = procedure.partition("@")[0]
        return any(
            (who == "*" or who == identity)
            and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
            for who, patterns in self._rules
        )
