"""
What a session keeps of the streams on its connection, without I/O.

A call whose work yields items (a L{Producer}) makes them only as far as the
session grants.  A tagged stream is granted its C{+window}, then what each
C{MORE} grants, and its items are written as they come.  An untagged stream
is granted one item at a time, and its items wait in its L{Slot} until its
turn comes, one at most.  While the connection's output is backed up every
stream is held, so a reader that does not read stops the producers.

L{callnet.session} drives these pieces and re-exports L{Producer} and
L{Slot}, which its adapter sees.
"""

from __future__ import annotations

from typing import Any, Protocol


class Producer(Protocol):
    """A stream's work as the session drives it: items only as far as granted."""

    def grant(self, count: int) -> None:
        """It may make C{count} more items."""

    def hold(self) -> None:
        """Make none for now: the connection's output is backed up."""

    def release(self) -> None:
        """Make items again, as far as the grants go."""


class Slot:
    """A place in the queue of untagged replies, filled when its call ends."""

    __slots__ = ("items", "line", "work")

    def __init__(self, work: Any = None, line: bytes | None = None) -> None:
        self.work = work
        self.line = line
        #: A stream's items waiting for its turn (one at most); None for a call.
        self.items: list[bytes] | None = None


class Flow:
    """A stream in flight: how to grant it items, and where they go."""

    __slots__ = ("producer", "slot", "tag")

    def __init__(self, producer: Producer, tag: str | None, slot: Slot | None) -> None:
        self.producer = producer
        #: Its call's tag; C{None} for an untagged stream, which has a L{slot}.
        self.tag = tag
        self.slot = slot


class Streams(dict[Any, Flow]):
    """
    The streams in flight on one connection, by their work.

    A dict, so that the session's per-call checks (is there any stream?
    forget this one) cost what a dict's do.
    """

    __slots__ = ()

    def open(
        self,
        work: Any,
        producer: Producer,
        tag: str | None,
        slot: Slot | None,
        credit: int,
        held: bool,
    ) -> None:
        """A stream started: give it its first C{credit}, held if output is backed up."""
        self[work] = Flow(producer, tag, slot)
        if held:
            producer.hold()
        producer.grant(credit)

    def grant(self, work: Any, count: int) -> None:
        """Grant C{count} more items to the stream of C{work}, if it is still in flight."""
        flow = self.get(work)
        if flow is not None:
            flow.producer.grant(count)

    def grant_tagged(self, count: int) -> None:
        """Grant every tagged stream C{count} more items."""
        for flow in list(self.values()):
            if flow.tag is not None:
                flow.producer.grant(count)

    def hold(self) -> None:
        """The connection's output is backed up: every stream makes no more for now."""
        for flow in list(self.values()):
            flow.producer.hold()

    def release(self) -> None:
        """The connection's output drained: streams make items again, as granted."""
        for flow in list(self.values()):
            flow.producer.release()

    def held_items(self) -> dict[str | None, int]:
        """Items of each stream waiting for their turn, by tag (None: untagged)."""
        held: dict[str | None, int] = {}
        for flow in self.values():
            count = len(flow.slot.items or ()) if flow.slot is not None else 0
            held[flow.tag] = held.get(flow.tag, 0) + count
        return held
