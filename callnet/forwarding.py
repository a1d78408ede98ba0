"""
What the dispatcher needs of a cluster: somewhere to send the calls this node
does not serve.  The core depends on this small interface; the cluster
(L{callnet.cluster.routing.Router}) provides it, so the core never imports
the cluster.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from callnet.access import Caller
from callnet.errors import CallError
from callnet.wire import Call


class Forwarder(Protocol):
    """Forwards calls to the other nodes of a cluster."""

    #: Calls forwarded this many times already are refused.
    max_hops: int

    def can_route(self, procedure: str, target: str | None = None) -> bool:
        """Whether a call for C{procedure} (on node C{target}) could be forwarded now."""

    def nowhere(self, procedure: str, target: str | None) -> CallError:
        """The error for a call no node can take now; it did not run."""

    def has_peer(self, name: str) -> bool:
        """Whether C{name} is one of this node's peers."""

    def serving(self, procedure: str) -> list[str]:
        """The peers that have said they serve C{procedure}, up or not."""

    def catalog(self) -> dict[str, dict[str, Any]]:
        """What the peers that are up serve: name -> signature, doc, nodes."""

    def key_order(self, procedure: str, scope: str, key: str, here: bool) -> list[str]:
        """The nodes serving a procedure, up, in the preference order of a key."""

    def forward(
        self,
        call: Call,
        procedure: str,
        timeout: float,
        target: str | None,
        caller: Caller,
        owner_scope: str | None,
        here: bool,
    ) -> Deferred[Any]:
        """Forward a call; cancelling the Deferred cancels it downstream."""
