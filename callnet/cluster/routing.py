"""
Calls for procedures this node does not serve: which peer gets them, with
what deadline, and what happens when that peer fails.

Policy: among the peers that are up and serve the procedure, the one with
the fewest calls in flight from this node (ties go round the peers in turn).
C{name@node} names the peer.  A call with an idempotency key goes to the
owner of its key instead (L{key_order}), so that its retries, through
whichever node, reach the node that keeps its outcome.  The call is forwarded
with the time left of its deadline and its hop count raised by one.

Failover: a call that could not be sent (the peer refused it, or was down
before it left) goes to the next peer.  A call that was sent and then lost
goes to the next peer only if the procedure is idempotent or the call has a
key; otherwise the caller hears that it may have run.  A keyed call's next
peer is the next in its key's order, where its retry would go now that the
owner is gone; if this node comes first, the caller hears instead, and its
retry runs here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from callnet.access import NODE_CALLER, Caller
from callnet.cluster.peers import Peer, PeerState, is_link_failure
from callnet.context import ProgressSink
from callnet.errors import (
    CallError,
    DeadlineExceededError,
    NotFoundError,
    Outcome,
    UnavailableError,
)
from callnet.reactors import Clock
from callnet.streaming import Source
from callnet.wire import Call, Item, Progress, encode_item


def rendezvous_order(scope: str, key: str, nodes: Iterable[str]) -> list[str]:
    """
    Nodes in a key's order of preference, its owner first: each node's
    weight is a hash of the caller, the key and the node's name (highest
    random weight, or rendezvous hashing).  Every node computes the same
    order from the same names, and a node joining or leaving moves only the
    keys it wins or held.
    """

    def weight(node: str) -> bytes:
        text = json.dumps([scope, key, node], ensure_ascii=True)
        return hashlib.blake2b(text.encode("ascii"), digest_size=8).digest()

    return sorted(nodes, key=weight, reverse=True)


class Router:
    """Chooses peers for calls and forwards them, failing over when it may."""

    def __init__(self, peers: Iterable[Peer], clock: Clock, node_name: str, max_hops: int) -> None:
        self._peers = {peer.name: peer for peer in peers}
        #: Calls forwarded this many times already are refused.
        self.max_hops = max_hops
        self._clock = clock
        self._node_name = node_name
        self._turn = itertools.count()

    def set_peers(self, peers: Iterable[Peer]) -> None:
        """Route over these peers from now on."""
        self._peers = {peer.name: peer for peer in peers}

    def knows(self, procedure: str) -> bool:
        """Whether any peer, up or not, has said it serves this procedure."""
        return any(procedure in peer.procedures for peer in self._peers.values())

    def has_peer(self, name: str) -> bool:
        return name in self._peers

    def can_route(self, procedure: str, target: str | None = None) -> bool:
        """Whether a call could be forwarded now."""
        if target is not None:
            peer = self._peers.get(target)
            return peer is not None and peer.state is PeerState.UP
        return any(peer.serves(procedure) for peer in self._peers.values())

    def choose(self, procedure: str, exclude: set[str], target: str | None = None) -> Peer | None:
        """The peer to send a call to next, or C{None} if there is none."""
        if target is not None:
            peer = self._peers.get(target)
            if peer is None or target in exclude:
                return None
            return peer
        candidates = [
            peer
            for peer in self._peers.values()
            if peer.name not in exclude and peer.serves(procedure)
        ]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        least = min(peer.in_flight for peer in candidates)
        fewest = [peer for peer in candidates if peer.in_flight == least]
        return fewest[next(self._turn) % len(fewest)]

    def key_order(self, procedure: str, scope: str, key: str, here: bool) -> list[str]:
        """
        The nodes that serve a procedure and are up, in the order of
        preference of C{scope}'s C{key}: its owner first.

        @param here: whether this node serves the procedure too.
        """
        nodes = [peer.name for peer in self._peers.values() if peer.serves(procedure)]
        if here:
            nodes.append(self._node_name)
        return rendezvous_order(scope, key, nodes)

    def _next_owner(
        self, procedure: str, scope: str, key: str, here: bool, exclude: set[str]
    ) -> Peer | None:
        """The peer a keyed call goes to next, or None if this node comes first."""
        for name in self.key_order(procedure, scope, key, here):
            if name == self._node_name:
                return None
            if name not in exclude:
                return self._peers[name]
        return None

    def forward(
        self,
        call: Call,
        procedure: str,
        timeout: float,
        target: str | None = None,
        caller: Caller = NODE_CALLER,
        owner_scope: str | None = None,
        here: bool = False,
        progress: ProgressSink | None = None,
    ) -> Deferred[Any]:
        """
        Forward a call; the Deferred fires with its result or fails with the
        L{CallError} the caller should see.  Cancelling it cancels the call
        downstream.  The peer is told whom the call is for, unless that is a
        node (which acts with its own rights), and judges that caller by its
        own rules.

        @param owner_scope: send this keyed call to the owner of its key for
            this caller (see L{key_order}), not to the least busy peer.
        @param here: with C{owner_scope}: whether this node serves the
            procedure, and so has its place in the key's order.
        """
        deadline = self._clock.seconds() + timeout
        for_caller = None if caller.peer else caller.name
        return ensureDeferred(
            self._forward(
                call, procedure, deadline, target, for_caller, owner_scope, here, progress
            )
        )

    async def _forward(
        self,
        call: Call,
        procedure: str,
        deadline: float,
        target: str | None,
        caller: str | None,
        owner_scope: str | None,
        here: bool,
        progress: ProgressSink | None = None,
    ) -> Any:
        tried: set[str] = set()
        last_error: CallError | None = None
        sent = False
        while True:
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                raise DeadlineExceededError(
                    f"the deadline passed while routing {procedure}",
                    Outcome.MAY_HAVE_RUN if sent else Outcome.NOT_RUN,
                    self._node_name,
                )
            if owner_scope is not None and call.key is not None:
                peer = self._next_owner(procedure, owner_scope, call.key, here, tried)
            else:
                peer = self.choose(procedure, tried, target)
            if peer is None:
                raise last_error or self.nowhere(procedure, target)
            tried.add(peer.name)
            try:
                if progress is not None:
                    forwarded = Call(
                        procedure,
                        call.args,
                        call.kwargs,
                        key=call.key,
                        trace=call.trace,
                        hops=call.hops + 1,
                        caller=caller,
                        progress=True,
                    )
                    _, reply = peer.call_with_events(
                        forwarded, remaining, partial(_relay_progress, progress)
                    )
                    return await reply
                return await peer.call(
                    procedure,
                    call.args,
                    dict(call.kwargs),
                    remaining,
                    call.key,
                    call.trace,
                    call.hops + 1,
                    caller,
                )
            except CallError as error:
                if isinstance(error, DeadlineExceededError) and self._clock.seconds() >= deadline:
                    # The link's own timer and this node's fire at the same
                    # deadline, in either order: the caller hears that this
                    # node gave up, whichever ran first.
                    raise DeadlineExceededError(
                        f"the deadline passed while {procedure} ran on {peer.name}",
                        Outcome.MAY_HAVE_RUN,
                        self._node_name,
                    ) from None
                if not is_link_failure(error) or target is not None:
                    raise
                if error.outcome is Outcome.NOT_RUN:
                    last_error = error
                    continue
                sent = True
                if self._may_retry(peer, procedure, call):
                    last_error = error
                    continue
                raise

    def streams(self, procedure: str, target: str | None = None) -> bool:
        """Whether the peers serving C{procedure} (node C{target}) say it is a stream."""
        if target is not None:
            peer = self._peers.get(target)
            return peer is not None and bool(peer.procedures.get(procedure, {}).get("stream"))
        return any(
            peer.procedures.get(procedure, {}).get("stream") for peer in self._peers.values()
        )

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
        Forward a stream to a peer that serves it.  Nothing is sent until the
        caller grants the first items; then the peer is asked with that
        C{+window}, and each later grant is passed on to it as C{MORE}, so
        the peer never sends more than this node's caller has asked for.
        Failover as for calls, and only before the first item.
        """
        return _StreamRelay(
            self, call, procedure, self._clock.seconds() + timeout, target, caller, emit, progress
        )

    def _may_retry(self, peer: Peer, procedure: str, call: Call) -> bool:
        """A call lost after it was sent may run again elsewhere only if that is safe."""
        return call.key is not None or bool(peer.procedures.get(procedure, {}).get("idempotent"))

    def nowhere(self, procedure: str, target: str | None) -> CallError:
        """The error for a call no peer can take now; it did not run."""
        if target is not None:
            if target not in self._peers:
                return NotFoundError(
                    f"no node named {target!r} among this node's peers",
                    Outcome.NOT_RUN,
                    self._node_name,
                )
            return UnavailableError(f"node {target} is down", Outcome.NOT_RUN, self._node_name)
        if self.knows(procedure):
            return UnavailableError(
                f"every node serving {procedure} is down", Outcome.NOT_RUN, self._node_name
            )
        return NotFoundError(
            f"no procedure named {procedure[:80]!r} on this node or its peers; try HELP",
            Outcome.NOT_RUN,
            self._node_name,
        )

    def serving(self, procedure: str) -> list[str]:
        """The peers that have said they serve C{procedure}, up or not."""
        return [peer.name for peer in self._peers.values() if procedure in peer.procedures]

    def catalog(self) -> dict[str, dict[str, Any]]:
        """
        What the peers that are up serve, for C{HELP} and C{LIST}: procedure
        name -> its signature, docstring and the nodes that serve it.
        """
        catalog: dict[str, dict[str, Any]] = {}
        for peer in sorted(self._peers.values(), key=lambda peer: peer.name):
            if peer.state is not PeerState.UP:
                continue
            for name, info in peer.procedures.items():
                entry = catalog.setdefault(name, {**info, "nodes": []})
                entry["nodes"].append(peer.name)
        return catalog

    def peers(self) -> list[Peer]:
        return list(self._peers.values())


def _relay_progress(progress: ProgressSink, event: Item | Progress) -> None:
    if isinstance(event, Progress):
        progress(event.done, event.total, event.message)


class _StreamRelay:
    """
    A stream a peer runs, relayed item by item: a L{Source} whose credit is
    passed on to the peer.
    """

    def __init__(
        self,
        router: Router,
        call: Call,
        procedure: str,
        deadline: float,
        target: str | None,
        caller: Caller,
        emit: Callable[[bytes], None],
        progress: ProgressSink | None,
    ) -> None:
        self._router = router
        self._call = call
        self._procedure = procedure
        self._deadline = deadline
        self._target = target
        self._for = None if caller.peer else caller.name
        self._emit = emit
        self._progress = progress
        self._granted = 0
        self._items = 0
        self._tried: set[str] = set()
        self._sent = False
        self._last_error: CallError | None = None
        self._more: Callable[[int], None] | None = None
        self._reply: Deferred[Any] | None = None
        self.done: Deferred[Any] = Deferred(self._cancel)

    def grant(self, count: int) -> None:
        if self.done.called:
            return
        self._granted += count
        if self._more is not None:
            self._more(count)
        elif self._granted == count:
            self._next_peer()

    def hold(self) -> None:
        """Nothing to do: the peer sends only what this node's caller granted."""

    def release(self) -> None:
        """Nothing to do (see L{hold})."""

    def _next_peer(self) -> None:
        router, procedure = self._router, self._procedure
        remaining = self._deadline - router._clock.seconds()
        if remaining <= 0:
            self._fail(
                DeadlineExceededError(
                    f"the deadline passed while routing {procedure}",
                    Outcome.MAY_HAVE_RUN if self._sent else Outcome.NOT_RUN,
                    router._node_name,
                )
            )
            return
        peer = router.choose(procedure, self._tried, self._target)
        if peer is None:
            self._fail(self._last_error or router.nowhere(procedure, self._target))
            return
        self._tried.add(peer.name)
        call = self._call
        forwarded = Call(
            procedure,
            call.args,
            call.kwargs,
            trace=call.trace,
            hops=call.hops + 1,
            caller=self._for,
            window=self._granted,
            progress=self._progress is not None,
        )
        self._more, reply = peer.call_with_events(forwarded, remaining, self._event)
        self._reply = reply
        reply.addCallbacks(self._ended, self._failed, errbackArgs=(peer,))

    def _event(self, event: Item | Progress) -> None:
        if self.done.called:
            return
        if isinstance(event, Item):
            self._items += 1
            try:
                line = encode_item(event.value, self._call.tag)
            except (TypeError, ValueError):  # pragma: no cover - it was JSON when read
                return
            self._emit(line)
        elif self._progress is not None:
            self._progress(event.done, event.total, event.message)

    def _ended(self, value: Any) -> None:
        self._reply = None
        if not self.done.called:
            self.done.callback(value)

    def _failed(self, failure: Failure, peer: Peer) -> None:
        self._reply = None
        self._more = None
        if self.done.called:
            return
        error = failure.value
        if not isinstance(error, CallError):
            self.done.errback(failure)
            return
        if is_link_failure(error) and self._target is None and not self._items:
            # Failover, only before the first item, and only when safe.
            if error.outcome is Outcome.NOT_RUN:
                self._last_error = error
                self._next_peer()
                return
            self._sent = True
            if self._router._may_retry(peer, self._procedure, self._call):
                self._last_error = error
                self._next_peer()
                return
        self.done.errback(failure)

    def _fail(self, error: CallError) -> None:
        if not self.done.called:
            self.done.errback(Failure(error))

    def _cancel(self, done: Deferred[Any]) -> None:
        reply, self._reply = self._reply, None
        self._more = None
        if reply is not None:
            reply.cancel()  # CANCEL to the peer: it closes the generator
