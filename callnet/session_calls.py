"""
The calls in flight on one connection, and their ends, without I/O.

L{CallsInFlight} is the part of L{callnet.session.Session} that keeps what
runs for the connection: tagged calls by tag (keyed ones noted, as they run
on when the connection goes), the queue of untagged replies in request order
(calls running, and answers waiting behind an earlier one), casts, and
streams.  Its events are a call's end, a stream's item and a progress
report; its replies go out through the session's C{_write}, in order for
untagged ones.  The session supplies the members declared here without a
value: its state, whether output is backed up, its adapter, and the writes
and checks that follow each end.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from callnet.errors import CallError
from callnet.session_actions import Actions
from callnet.session_states import CLOSED
from callnet.session_streams import Slot, Streams
from callnet.wire import encode_failure


class CallsInFlight:
    """What runs for one connection, and who is owed an answer."""

    # Supplied by the session.
    state: str
    _output_paused: bool
    _actions: Actions
    _node_name: str

    def __init__(self) -> None:
        #: Tagged calls in flight, by tag.
        self._tagged: dict[str, Any] = {}
        self._keyed: set[str] = set()
        #: Untagged replies in request order: calls running, and answers
        #: waiting for an earlier one.
        self._untagged: deque[Slot] = deque()
        self._casts: set[Any] = set()
        #: Streams in flight (tagged or untagged), by their work.
        self._streams = Streams()

    def _write(self, line: bytes) -> None:
        raise NotImplementedError  # the session's: bounded while output is backed up

    def _after_call(self) -> None:
        raise NotImplementedError  # the session's: read again, or finish

    def _check_load(self) -> None:
        raise NotImplementedError  # the session's: stop reading at the limit

    # --- What a test or an adapter may look at ----------------------------------

    @property
    def load(self) -> int:
        """Calls in flight plus untagged answers waiting: what C{max_calls_in_flight} bounds."""
        return len(self._tagged) + len(self._casts) + len(self._untagged)

    @property
    def queued(self) -> int:
        """Entries in the queue of untagged replies."""
        return len(self._untagged)

    @property
    def streams(self) -> int:
        """Streams in flight."""
        return len(self._streams)

    def held_items(self) -> dict[str | None, int]:
        """Items of each stream waiting in the session, by tag (None: untagged)."""
        return self._streams.held_items()

    # --- Events -----------------------------------------------------------------------

    def tagged_finished(self, tag: str | None, work: Any, line: bytes) -> None:
        """A tagged call ended; C{line} is its reply."""
        if tag is None or self._tagged.get(tag) is not work:
            return  # cancelled without a reply, or the connection is gone
        del self._tagged[tag]
        if self._streams:
            self._streams.pop(work, None)
        self._keyed.discard(tag)
        self._write(line)
        self._after_call()

    def untagged_finished(self, slot: Slot, line: bytes) -> None:
        """An untagged call ended; C{line} is its reply."""
        if self.state is CLOSED or slot.line is not None:
            return
        slot.line = line
        if slot.items is not None:
            self._streams.pop(slot.work, None)
        self._flush_untagged()
        self._after_call()

    def cast_finished(self, work: Any) -> None:
        """A cast ended."""
        if work in self._casts:
            self._casts.discard(work)
            self._after_call()

    def stream_item(self, work: Any, line: bytes) -> None:
        """A stream made an item; C{line} is its C{ITEM} line."""
        flow = self._streams.get(work)
        if flow is None or self.state is CLOSED:
            return  # ended, or cancelled without a reply
        slot = flow.slot
        if slot is None:
            self._write(line)
        elif self._untagged[0] is slot:
            self._write(line)
            flow.producer.grant(1)
        else:
            # Not its turn: it waits in its slot, and its producer, granted
            # one item at a time, makes no more until it is written.
            assert slot.items is not None
            slot.items.append(line)

    def progress(self, work: Any, tag: str | None, slot: Slot | None, line: bytes) -> None:
        """
        A call that asked C{+progress} reported how far it got (C{line}).
        Advisory: dropped while output is backed up, and, for an untagged
        call, unless it is its turn to be answered.
        """
        if self.state is CLOSED or self._output_paused:
            return
        if slot is None:
            if tag is not None and self._tagged.get(tag) is work:
                self._write(line)
        elif self._untagged and self._untagged[0] is slot and slot.line is None:
            self._write(line)

    def interrupt(self) -> None:
        """
        The person at the other end pressed Ctrl-C (telnet's C{IAC IP}):
        cancel the untagged calls running now, which then answer
        C{CANCELLED} in their turn.  Tagged calls are a program's, and run on.
        """
        for slot in list(self._untagged):
            if slot.line is None and slot.work is not None:
                self._actions.cancel_call(slot.work)

    def _cancel_tagged(self) -> None:
        """Cancel tagged calls without a reply; keyed ones run on, detached."""
        tagged, self._tagged = self._tagged, {}
        keyed, self._keyed = self._keyed, set()
        for tag, work in tagged.items():
            if self._streams:
                self._streams.pop(work, None)
            if tag not in keyed:
                self._actions.cancel_call(work)

    def _let_go(self) -> None:
        """The connection is gone: cancel what runs for it; keyed calls and casts run on."""
        tagged, self._tagged = self._tagged, {}
        keyed, self._keyed = self._keyed, set()
        for tag, work in tagged.items():
            if tag not in keyed:
                self._actions.cancel_call(work)
            # A keyed call runs on to its deadline, so that the caller's
            # retry with the same key finds its outcome instead of a cancel.
        slots, self._untagged = self._untagged, deque()
        for slot in slots:
            if slot.work is not None and slot.line is None:
                self._actions.cancel_call(slot.work)
        casts, self._casts = self._casts, set()
        for work in casts:
            self._actions.detach_cast(work)
        self._streams.clear()

    def _answer_all(self, error: CallError) -> None:
        """The node is stopping: answer every call in flight with C{error}, and cancel it."""
        tagged, self._tagged = self._tagged, {}
        self._keyed.clear()
        for tag, work in tagged.items():
            self._streams.pop(work, None)
            self._actions.cancel_call(work)
            self._write(self._encode_error(error, tag))
        for slot in self._untagged:
            if slot.line is None:
                slot.line = self._encode_error(error, None)
                if slot.work is not None:
                    self._streams.pop(slot.work, None)
                    self._actions.cancel_call(slot.work)
        self._flush_untagged()

    # --- Replies ----------------------------------------------------------------------

    def _reply_line(self, line: bytes, tag: str | None) -> None:
        """Reply to a request handled without waiting: in order if untagged."""
        if tag is None and self._untagged:
            self._untagged.append(Slot(None, line))
            self._flush_untagged()
            self._check_load()
        else:
            self._write(line)

    def _reply_error(self, error: CallError, tag: str | None) -> None:
        self._reply_line(self._encode_error(error, tag), tag)

    def _encode_error(self, error: CallError, tag: str | None) -> bytes:
        if error.node is None:
            error.node = self._node_name
        return encode_failure(error, tag)

    def _flush_untagged(self) -> None:
        queue = self._untagged
        while queue:
            head = queue[0]
            items = head.items
            if items:
                # A stream's turn came: what it made is written, and it may
                # make the next item.
                head.items = []
                for item in items:
                    self._write(item)
                if head.line is None:
                    self._streams.grant(head.work, len(items))
                continue  # the grant may have ended it: look at the head again
            line = head.line
            if line is None:
                break
            queue.popleft()
            self._write(line)
