"""
What the dispatcher needs of a cluster: somewhere to send the calls this node
does not serve.  The core depends on this small interface; the cluster
(L{callnet.cluster.routing.Router}) provides it, so the core never imports
the cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred

from callnet.access import Caller
from callnet.errors import CallError
from callnet.wire import Call

if TYPE_CHECKING:
    from callnet.context import ProgressSink
    from callnet.streaming import Source


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
        progress: ProgressSink | None = None,
    ) -> Deferred[Any]:
        """
        Forward a call; cancelling the Deferred cancels it downstream.

        @param progress: takes the call's progress reports, if its caller
            asked for them.
        """

    def streams(self, procedure: str, target: str | None = None) -> bool:
        """Whether the peers serving C{procedure} (node C{target}) say it is a stream."""

    def forward_stream(
        self,
        call: Call,
        procedure: str,
        timeout: float,
        target: str | None,
        caller: Caller,
        emit: Callable[[bytes], None],
        progress: ProgressSink | None = None,
    ) -> Source:
        """
        Forward a stream: its items are relayed to C{emit} as lines for
        C{call}'s tag, as far as the credit granted to the source goes.
        """
