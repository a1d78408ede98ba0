"""
The connection session on its own, with no Twisted: a stateful property test
of its invariants, and unit tests of the edges clients were seen to break.
"""

from __future__ import annotations

import unittest
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from callnet.config import Limits
from callnet.errors import (
    CallCancelledError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    UnavailableError,
)
from callnet.session import (
    AUTH_DEADLINE_TIMER,
    AUTH_DELAY,
    AUTH_DELAY_MAX,
    AUTH_TIMER,
    CHECK_TIMER,
    CLOSED,
    ENDING,
    LEAVING,
    LINE_TIMER,
    OPEN,
    QUITTING,
    SAID_QUIT,
    SHUTTING_DOWN,
    STALL_TIMER,
    Session,
    Slot,
)
from callnet.wire import (
    MAX_WINDOW,
    Call,
    Command,
    encode_failure,
    encode_item,
    encode_progress,
    encode_success,
)


class Work:
    """A call running in the fake node."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __repr__(self) -> str:
        return f"Work({self.number})"


class StreamWork(Work):
    """A stream running in the fake node: it makes items only as far as granted."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.granted = 0
        self.made = 0
        self.held = False

    @property
    def credit(self) -> int:
        return self.granted - self.made

    def grant(self, count: int) -> None:
        assert count > 0
        self.granted += count

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False


class FakeNode:
    """The session's L{Actions}, recording what the session asks for."""

    def __init__(self) -> None:
        self.session: Session
        self.written: list[bytes] = []
        self.written_after_close = 0
        self.closed: tuple[str, bool] | None = None
        self.reading = True
        self.timers: dict[str, float] = {}
        self.running: dict[int, tuple[Work, Call, Slot | None]] = {}
        self.cancelled: list[int] = []
        self.detached: list[int] = []
        self.calls: list[Call] = []
        self.checks = 0
        #: Wrong tokens from the client's address, over all its connections.
        self.address_failures = 0

    def write(self, line: bytes) -> None:
        if self.closed is not None:
            self.written_after_close += 1
        self.written.append(line)

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed twice"
        self.reading = True

    def check_closed(self) -> None:
        assert not self.reading, "checked while reading"
        self.checks += 1

    def start_call(self, call: Call) -> Any:
        self.calls.append(call)
        if call.procedure not in ("now", "slow", "stream") or not call.args:
            return encode_failure(NotFoundError(f"no {call.procedure}"), call.tag)
        number = int(call.args[0])
        if call.procedure == "now":
            return encode_success(number, call.tag)
        if call.procedure == "stream":
            # As the dispatcher refuses them (callnet.dispatch._check_stream).
            if call.cast or call.key is not None or (call.tag is not None and not call.window):
                return encode_failure(InvalidArgumentError("a stream"), call.tag)
            return StreamWork(number)
        return Work(number)

    def follow(self, work: Work, call: Call, slot: Slot | None) -> StreamWork | None:
        self.running[work.number] = (work, call, slot)
        return work if isinstance(work, StreamWork) else None

    def produce(self, number: int) -> None:
        """A running stream makes its next item."""
        work = self.running[number][0]
        assert isinstance(work, StreamWork)
        work.made += 1
        tag = self.running[number][1].tag
        self.session.stream_item(work, encode_item(number, tag))

    def report(self, number: int) -> None:
        """A running call reports its progress."""
        work, call, slot = self.running[number]
        self.session.progress(work, call.tag, slot, encode_progress(number, None, None, call.tag))

    def finish(self, number: int, line: bytes | None = None) -> None:
        work, call, slot = self.running.pop(number)
        if line is None:
            line = encode_success(number, call.tag)
        if call.cast:
            self.session.cast_finished(work)
        elif slot is not None:
            self.session.untagged_finished(slot, line)
        else:
            assert call.tag is not None
            self.session.tagged_finished(call.tag, work, line)

    def cancel_call(self, work: Work) -> None:
        self.cancelled.append(work.number)
        if work.number in self.running:
            call = self.running[work.number][1]
            self.finish(work.number, encode_failure(CallCancelledError("cancelled"), call.tag))

    def detach_cast(self, work: Work) -> None:
        self.detached.append(work.number)

    def run_command(self, command: Command) -> bytes:
        return encode_success("pong", command.tag)

    def authenticate(self, args: tuple[Any, ...]) -> Any:
        if args == ("none",):
            return FailedPreconditionError("this node takes no tokens")
        return "alice" if args == ("good",) else None

    def auth_failed(self) -> int:
        self.address_failures += 1
        return self.address_failures

    def start_timer(self, timer: str, delay: float) -> None:
        assert timer not in self.timers, f"{timer} started twice"
        self.timers[timer] = delay

    def stop_timer(self, timer: str) -> None:
        del self.timers[timer]

    def close(self, reason: str, abort: bool) -> None:
        assert self.closed is None, "closed twice"
        assert reason
        self.closed = (reason, abort)


LIMITS = Limits(
    max_calls_in_flight=4,
    max_line_bytes=40,
    max_held_input_bytes=120,
    max_unsent_bytes=60,
    line_timeout=5,
    write_stall_timeout=5,
)


def make_session(limits: Limits = LIMITS, authenticated: bool = True) -> tuple[Session, FakeNode]:
    node = FakeNode()
    session = node.session = Session(limits, "test", node, authenticated)
    return session, node


def lines_written(node: FakeNode) -> list[bytes]:
    """Every line written so far (text lines excluded)."""
    return [line for chunk in node.written for line in chunk.splitlines() if line[:1] != b"|"]


def _word(line: bytes) -> bytes:
    """The reply word of a line: OK, ERR, ITEM or PROGRESS."""
    words = line.split(b" ", 2)
    return words[1] if line.startswith(b"#") and len(words) > 1 else words[0]


def replies(node: FakeNode) -> list[bytes]:
    """Every final reply written so far (no text, ITEM or PROGRESS lines)."""
    return [line for line in lines_written(node) if _word(line) not in (b"ITEM", b"PROGRESS")]


class SessionMachine(RuleBasedStateMachine):
    """Arbitrary interleavings of lines, completions, cancels, pauses, timers and ends."""

    @initialize(authenticated=st.booleans())
    def start(self, authenticated: bool) -> None:
        self.session, self.node = make_session(authenticated=authenticated)
        self.number = 0
        #: Tags sent, each used once.
        self.tags_sent: set[str] = set()
        self.tags_maybe: set[str] = set()
        self.untagged_sent = 0
        self.quit_sent = False
        self.lost = False
        #: An unfinished line is held: the next line sent is glued to it.
        self.partial = False
        #: Each tagged stream's window, and what MORE granted it since.
        self.windows: dict[int, int] = {}
        self.more: dict[int, int] = {}
        #: How many calls the node had started when the session said BYE.
        self.started_at_bye: int | None = None

    def _next(self) -> int:
        self.number += 1
        return self.number

    def _send(self, line: str) -> None:
        self.session.receive_data(line.encode())

    @property
    def open(self) -> bool:
        return not self.lost and self.node.closed is None

    # --- Lines ---------------------------------------------------------------------

    @precondition(lambda self: self.open and not self.session.input_ended)
    @rule(
        tagged=st.booleans(),
        slow=st.sampled_from(["now", "slow", "stream"]),
        cast=st.booleans(),
        keyed=st.booleans(),
        window=st.sampled_from([None, 1, 2, 5]),
        progress=st.booleans(),
    )
    def call(
        self,
        tagged: bool,
        slow: str,
        cast: bool,
        keyed: bool,
        window: int | None,
        progress: bool,
    ) -> None:
        number = self._next()
        words = []
        if tagged:
            words.append(f"#t{number}")
            if not self.partial:
                # A cast is answered only if it is refused.
                (self.tags_maybe if cast else self.tags_sent).add(f"t{number}")
        if self.partial or not tagged:
            self.untagged_sent += 1
        self.partial = False
        if cast:
            words.append("+cast")
        if keyed:
            words.append(f"+key=k{number}")
        if window is not None:
            words.append(f"+window={window}")
            self.windows[number] = window
        if progress:
            words.append("+progress")
        words += [slow, str(number)]
        self._send(" ".join(words) + "\n")

    @precondition(lambda self: self.open and not self.session.input_ended)
    @rule(verb=st.sampled_from(["PING", "QUIT", "CANCEL", "AUTH good", "AUTH bad", "AUTH none"]))
    def command(self, verb: str) -> None:
        if verb == "CANCEL":
            running = sorted(c.tag for _, c, _ in self.node.running.values() if c.tag is not None)
            verb = f"CANCEL {running[0] if running else 'nothing'}"
        tagged = self.number % 2 == 0
        number = self._next()
        if tagged:
            if not self.partial:
                self.tags_sent.add(f"c{number}")
            verb = f"#c{number} {verb}"
        if self.partial or not tagged:
            self.untagged_sent += 1
        if "QUIT" in verb and not self.partial:
            self.quit_sent = True
        self.partial = False
        self._send(verb + "\n")

    @precondition(lambda self: self.open and not self.session.input_ended)
    @rule(data=st.sampled_from([b"ad", b"d 1", b"\n", b"x" * 50, b"\xff\n", b"OK 3\n"]))
    def bytes_(self, data: bytes) -> None:
        """Partial, overlong, invalid and reply lines (they get untagged errors, or none)."""
        self.untagged_sent += 1
        self.partial = not data.endswith(b"\n")
        self.session.receive_data(data)

    # --- The node and the transport -------------------------------------------------

    @precondition(lambda self: self.node.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        number = data.draw(st.sampled_from(sorted(self.node.running)))
        self.node.finish(number)

    def _streams(self, producing: bool = False) -> list[int]:
        return sorted(
            number
            for number, (work, _, _) in self.node.running.items()
            if isinstance(work, StreamWork)
            and (not producing or (work.credit > 0 and not work.held))
        )

    @precondition(lambda self: self._streams(producing=True))
    @rule(data=st.data())
    def produce(self, data: st.DataObject) -> None:
        """A stream with credit, not held, makes an item."""
        self.node.produce(data.draw(st.sampled_from(self._streams(producing=True))))

    @precondition(lambda self: self.open and not self.session.input_ended)
    @rule(data=st.data(), count=st.sampled_from([1, 3, 0]))
    def more(self, data: st.DataObject, count: int) -> None:
        """MORE for a stream in flight, for a tag with none, or malformed (count 0)."""
        numbers = self._streams()
        number = data.draw(st.sampled_from(numbers)) if numbers else 0
        tag = self.node.running[number][1].tag if number else None
        if count and tag is not None:
            self.more[number] = self.more.get(number, 0) + count
        # Never answered, unless malformed or before AUTH: then once, with an error.
        self.untagged_sent += 1
        self.partial = False
        self._send(f"MORE #{tag or 'none'} {count}\n")

    def _asked_progress(self) -> list[int]:
        return sorted(n for n, (_, call, _) in self.node.running.items() if call.progress)

    @precondition(lambda self: self._asked_progress())
    @rule(data=st.data())
    def report(self, data: st.DataObject) -> None:
        """A running call that asked +progress reports it (sent in its turn, if not backed up)."""
        self.node.report(data.draw(st.sampled_from(self._asked_progress())))

    @precondition(lambda self: self.open)
    @rule()
    def output_paused(self) -> None:
        self.session.output_paused()

    @rule()
    def output_resumed(self) -> None:
        self.session.output_resumed()

    @precondition(lambda self: self.node.timers)
    @rule(data=st.data())
    def timer(self, data: st.DataObject) -> None:
        timer = data.draw(st.sampled_from(sorted(self.node.timers)))
        del self.node.timers[timer]
        self.session.timer_fired(timer)

    @precondition(lambda self: self.open and not self.session.input_ended)
    @rule()
    def half_close(self) -> None:
        self.session.end_input()

    @precondition(lambda self: self.open and self.started_at_bye is None)
    @rule()
    def shut_down(self) -> None:
        """The node stops: every call it started here is answered, then BYE, last."""
        # Tagged calls cancelled at the end of input were left unanswered then.
        unanswered = set(self.node.cancelled) if self.session.input_ended else set()
        self.session.shut_down(UnavailableError("stopping", Outcome.MAY_HAVE_RUN))
        self.started_at_bye = len(self.node.calls)
        lines = lines_written(self.node)
        answered = {line.split(b" ", 1)[0][1:].decode() for line in replies(self.node)}
        started = {
            c.tag
            for c in self.node.calls
            if c.tag is not None and not c.cast and int(c.args[0]) not in unanswered
        }
        self.check(started <= answered, "every call started was answered")
        if self.session.close_reason in (SAID_QUIT, "its unread replies passed the limit"):
            # Answering them finished a QUIT, which closed with its own "bye",
            # or passed the bound on replies a client leaves unread.
            return
        self.check(lines[-1] == b'BYE "test is shutting down"', "BYE is written last")
        if self.session.input_ended:
            self.check(self.node.closed == (SHUTTING_DOWN, False), "nothing more to read")
        else:
            self.check(self.session.state is LEAVING and self.node.reading, "input read after BYE")

    @precondition(lambda self: not self.lost)
    @rule()
    def connection_lost(self) -> None:
        running = dict(self.node.running)
        self.lost = True
        self.session.connection_lost()
        for number, (_, call, _) in running.items():
            if call.cast:
                self.check(number in self.node.detached, "a cast is detached, not cancelled")
            elif call.key is not None and call.tag is not None:
                self.check(number not in self.node.cancelled, "a keyed call runs on")
            else:
                self.check(number in self.node.cancelled, "an unkeyed call is cancelled")

    def check(self, condition: bool, message: str) -> None:
        assert condition, message

    # --- Invariants -----------------------------------------------------------------

    @invariant()
    def nothing_written_after_close(self) -> None:
        assert self.node.written_after_close == 0

    @invariant()
    def nothing_after_bye(self) -> None:
        """BYE is said once, as the last line, and nothing read after it starts."""
        lines = lines_written(self.node)
        byes = [i for i, line in enumerate(lines) if line.startswith(b"BYE ")]
        assert byes in ([], [len(lines) - 1]), lines
        if self.started_at_bye is not None:
            assert len(self.node.calls) == self.started_at_bye, "a call read after BYE started"

    @invariant()
    def closed_with_a_reason(self) -> None:
        if self.node.closed is not None:
            assert self.session.state is CLOSED
            assert self.session.close_reason == self.node.closed[0]

    @invariant()
    def each_tag_answered_at_most_once(self) -> None:
        seen: set[bytes] = set()
        for line in replies(self.node):
            if line.startswith(b"#"):
                tag = line.split(b" ", 1)[0]
                assert tag not in seen, f"{tag!r} answered twice"
                seen.add(tag)

    @invariant()
    def untagged_answered_at_most_once(self) -> None:
        untagged = [line for line in replies(self.node) if not line.startswith(b"#")]
        # Each untagged line sent is answered at most once (a closing error may add one).
        assert len(untagged) <= self.untagged_sent + 1

    @invariant()
    def buffers_bounded(self) -> None:
        if self.session.state is CLOSED:
            return
        assert self.session.load <= LIMITS.max_calls_in_flight
        assert self.session.held_input <= LIMITS.max_held_input_bytes
        assert self.session.unsent <= LIMITS.max_unsent_bytes
        if self.session.state is QUITTING:
            assert self.session.held_input == 0, "input after QUIT is not held"

    @invariant()
    def streams_bounded(self) -> None:
        """No stream holds more than one item in the session, and a tagged one none."""
        if self.session.state is CLOSED:
            return
        for tag, held in self.session.held_items().items():
            assert held <= (0 if tag is not None else self.session.streams), (tag, held)
        for work, _, slot in self.node.running.values():
            if isinstance(work, StreamWork) and slot is not None:
                assert len(slot.items or ()) <= 1, slot.items

    @invariant()
    def streams_granted(self) -> None:
        """A tagged stream is granted its window and each MORE; an untagged one one at a time."""
        for number, (work, call, slot) in self.node.running.items():
            if not isinstance(work, StreamWork) or self.session.state is CLOSED:
                continue
            if call.tag is not None and self.session.state is QUITTING:
                # QUIT ends what the node reads, so no MORE can come: a tagged
                # stream is granted the rest, paced by the connection alone.
                window = self.windows[number]
                assert work.granted >= window + MAX_WINDOW, (work.granted, window)
            elif call.tag is not None:
                # MORE lines not read yet (reading paused) have granted nothing yet.
                window = self.windows[number]
                assert window <= work.granted <= window + self.more.get(number, 0)
            else:
                held = len(slot.items or ()) if slot is not None else 0
                assert work.credit + held == 1, (work.credit, held)

    @invariant()
    def held_while_output_paused(self) -> None:
        """While output is backed up every stream is held; once it drains none is."""
        if self.session.state is CLOSED:
            return
        for work, _, _ in self.node.running.values():
            if isinstance(work, StreamWork):
                assert work.held == self.session._output_paused

    @invariant()
    def items_in_place(self) -> None:
        """Items and progress come before their call's reply; untagged ones in its turn."""
        ended: set[bytes] = set()
        current: bytes | None = None
        for line in lines_written(self.node):
            word = _word(line)
            if line.startswith(b"#"):
                tag = line.split(b" ", 1)[0]
                assert tag not in ended, f"{line!r} after its reply"
                if word not in (b"ITEM", b"PROGRESS"):
                    ended.add(tag)
                continue
            number = line.split(b" ")[-1] if word in (b"ITEM", b"OK") else None
            if word in (b"ITEM", b"PROGRESS"):
                if word == b"ITEM":
                    assert current in (None, number), f"{line!r} out of its turn"
                    current = number
            else:
                assert current in (None, number) or word == b"ERR", f"{line!r} inside a stream"
                current = None

    @invariant()
    def progress_only_when_asked(self) -> None:
        """PROGRESS lines go only to calls that asked +progress."""
        asked = {c.tag for c in self.node.calls if c.progress}
        for line in lines_written(self.node):
            if _word(line) == b"PROGRESS" and line.startswith(b"#"):
                assert line.split(b" ", 1)[0][1:].decode() in asked, line

    @invariant()
    def reading_agrees(self) -> None:
        if self.session.state is not CLOSED:
            assert self.node.reading == self.session.reading

    @invariant()
    def timers_agree(self) -> None:
        if not self.lost:
            assert set(self.node.timers) == self.session.timers
        if self.session.state is CLOSED:
            assert not self.session.timers

    @invariant()
    def ended_input_closes(self) -> None:
        session = self.session
        if session.input_ended and session.held_input == 0:
            assert session.state in (ENDING, QUITTING, CLOSED), session.state
        owed = [c for _, c, _ in self.node.running.values() if not c.cast]
        if session.state is ENDING:
            assert any(c.tag is None for c in owed) or AUTH_TIMER in session.timers
        if session.state is QUITTING:
            assert owed or AUTH_TIMER in session.timers

    def teardown(self) -> None:
        """Once everything runs out, every request read before QUIT was answered once."""
        if not hasattr(self, "session") or not self.open or self.session.input_ended:
            return
        for _ in range(100):
            if self.node.running:
                streams = self._streams(producing=True)
                if streams:
                    self.node.produce(streams[0])
                self.node.finish(min(self.node.running))
            elif self.node.timers:
                timer = min(self.node.timers)
                del self.node.timers[timer]
                self.session.timer_fired(timer)
            elif not self.node.reading and self.session.state is OPEN:
                self.session.output_resumed()
                if not self.node.reading:
                    break
            else:
                break
        if not self.open or self.quit_sent or self.started_at_bye is not None:
            return
        lines = replies(self.node)
        tags = {line.split(b" ", 1)[0][1:].decode() for line in lines if line.startswith(b"#")}
        assert self.tags_sent <= tags <= self.tags_sent | self.tags_maybe, (tags, lines)


SessionMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None
)
TestSessionMachine = SessionMachine.TestCase


class SessionEdgeTests(unittest.TestCase):
    """The edges clients were seen to break, each pinned at the session."""

    def test_quit_then_end_of_input_answers_and_closes(self) -> None:
        """C{#1 sleep 2}, C{QUIT}, then end of input: #1 is answered, then bye, then close."""
        session, node = make_session()
        session.receive_data(b"#1 slow 1\nQUIT\n")
        session.end_input()
        self.assertIsNone(node.closed)
        node.finish(1)
        self.assertEqual(replies(node), [b"#1 OK 1", b'OK "bye"'])
        self.assertEqual(node.closed, ("it said QUIT", False))

    def test_end_of_input_cancels_tagged_and_closes(self) -> None:
        """End of input cancels a tagged call without a reply and closes at once."""
        session, node = make_session()
        session.receive_data(b"#1 slow 1\n")
        session.end_input()
        self.assertEqual(node.cancelled, [1])
        self.assertEqual(replies(node), [])
        self.assertEqual(node.closed, ("its input ended", False))

    def test_untagged_answers_count_against_the_limit(self) -> None:
        """Answers queued behind a slow untagged call stop reading at max_calls_in_flight."""
        session, node = make_session()
        session.receive_data(b"slow 1\n" + b"PING\n" * 100)
        self.assertFalse(node.reading)
        self.assertEqual(session.load, LIMITS.max_calls_in_flight)
        node.finish(1)
        self.assertTrue(node.reading)
        self.assertEqual(len(replies(node)), 101)

    def test_client_not_read_at_the_limit_is_looked_at(self) -> None:
        """While calls at the limit keep a connection unread, the adapter is asked every paused_check_interval whether its client left."""
        limits = Limits(max_calls_in_flight=4, paused_check_interval=2)
        session, node = make_session(limits)
        session.receive_data(b"#1 slow 1\n#2 slow 2\n#3 slow 3\n#4 slow 4\n")
        self.assertFalse(node.reading)
        self.assertEqual(node.timers, {CHECK_TIMER: 2})
        del node.timers[CHECK_TIMER]
        session.timer_fired(CHECK_TIMER)
        self.assertEqual(node.checks, 1)
        self.assertEqual(node.timers, {CHECK_TIMER: 2}, "and again, while still not read")
        node.finish(1)
        node.finish(2)
        self.assertTrue(node.reading)
        self.assertEqual(node.timers, {}, "read again: the transport sees the client go")
        session.output_paused()
        self.assertNotIn(CHECK_TIMER, node.timers, "unread replies have their own deadline")

    def test_wrong_tokens_from_the_address_lengthen_the_delay(self) -> None:
        """A first wrong token on a connection waits as long as the address's recent failures say, not the connection's alone."""
        session, node = make_session(authenticated=False)
        node.address_failures = 3  # given on other connections
        session.receive_data(b"AUTH bad\n")
        self.assertEqual(node.timers[AUTH_TIMER], AUTH_DELAY * 8)
        node.address_failures = 100
        del node.timers[AUTH_TIMER]
        session.timer_fired(AUTH_TIMER)
        session.receive_data(b"AUTH bad\n")
        self.assertEqual(node.timers[AUTH_TIMER], AUTH_DELAY_MAX)

    def test_connection_that_does_not_authenticate_is_closed(self) -> None:
        """On a node with tokens, a connection not authenticated within auth_timeout is told so and closed; one that authenticated is not timed."""
        session, node = make_session(Limits(auth_timeout=7), authenticated=False)
        self.assertEqual(node.timers, {AUTH_DEADLINE_TIMER: 7})
        session.receive_data(b"PING\n")
        del node.timers[AUTH_DEADLINE_TIMER]
        session.timer_fired(AUTH_DEADLINE_TIMER)
        self.assertEqual(
            replies(node)[-1], b"ERR UNAUTHENTICATED not-run @test not authenticated within 7s"
        )
        self.assertEqual(node.closed, ("it did not authenticate in time", False))
        session, node = make_session(Limits(auth_timeout=7), authenticated=False)
        session.receive_data(b"AUTH good\n")
        self.assertEqual(node.timers, {})
        session, node = make_session(Limits(auth_timeout=7))
        self.assertEqual(node.timers, {}, "a node without tokens")

    def test_input_after_quit_is_discarded(self) -> None:
        """Bytes after QUIT are dropped, not held, and start no line timer."""
        session, node = make_session()
        session.receive_data(b"#1 slow 1\nQUIT\nPING")
        session.receive_data(b"x" * 10_000)
        self.assertEqual(session.held_input, 0)
        self.assertNotIn(LINE_TIMER, node.timers)
        node.finish(1)
        self.assertEqual(replies(node), [b"#1 OK 1", b'OK "bye"'])

    def test_cast_does_not_hold_the_connection(self) -> None:
        """A cast still running when input ends does not keep the connection open."""
        session, node = make_session()
        session.receive_data(b"+cast slow 1\n")
        session.end_input()
        self.assertEqual(node.closed, ("its input ended", False))
        session.connection_lost()
        self.assertEqual(node.detached, [1])
        self.assertEqual(node.cancelled, [])

    def test_keyed_call_survives_the_end(self) -> None:
        """A keyed tagged call is neither cancelled at end of input nor at loss."""
        session, node = make_session()
        session.receive_data(b"#1 +key=k slow 1\n")
        session.end_input()
        session.connection_lost()
        self.assertEqual(node.cancelled, [])

    def test_held_input_past_the_bound_closes(self) -> None:
        """Input sent while reading is paused, past its bound, is refused and the connection closed."""
        session, node = make_session()
        session.receive_data(b"slow 1\nslow 2\nslow 3\nslow 4\n")
        self.assertFalse(node.reading)
        session.receive_data(b"PING\n" * 20)
        self.assertIsNone(node.closed)
        session.receive_data(b"PING\n" * 10)
        self.assertIsNotNone(node.closed)
        self.assertIn(b"RESOURCE_EXHAUSTED", replies(node)[-1])

    def test_unread_replies_past_the_bound_abort(self) -> None:
        """Replies written while output is backed up, past max_unsent_bytes, abort the connection."""
        session, node = make_session()
        session.output_paused()
        session.receive_data(b"now 1234567890123456789\n")
        self.assertIsNone(node.closed)
        session.output_resumed()
        session.receive_data(b"#t1 slow 1\n#t2 slow 2\n#t3 slow 3\n")
        session.output_paused()
        for number in (1, 2, 3):
            node.finish(number, b"#x OK " + b"1" * 25 + b"\n")
        self.assertEqual(node.closed, ("its unread replies passed the limit", True))

    def test_wrong_tokens_back_off_then_close(self) -> None:
        """Each wrong token stops reading for a doubling delay; the fifth closes."""
        session, node = make_session(authenticated=False)
        delays = []
        for _ in range(5):
            session.receive_data(b"AUTH bad\n")
            self.assertFalse(node.reading)
            delays.append(node.timers.pop(AUTH_TIMER))
            session.timer_fired(AUTH_TIMER)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0])
        self.assertEqual(node.closed, ("5 failed AUTH attempts", False))

    def test_commands_before_auth(self) -> None:
        """Before AUTH only the table's before-auth verbs are answered; calls are refused."""
        session, node = make_session(authenticated=False)
        session.receive_data(b"PING\nLIST\nnow 1\nAUTH good\nnow 2\n")
        lines = replies(node)
        self.assertEqual(lines[0], b'OK "pong"')
        self.assertIn(b"UNAUTHENTICATED", lines[1])
        self.assertIn(b"UNAUTHENTICATED", lines[2])
        self.assertEqual(lines[3:], [b'OK "alice"', b"OK 2"])

    def test_stall_timer_aborts(self) -> None:
        """Output backed up past write_stall_timeout aborts the connection."""
        session, node = make_session()
        session.output_paused()
        self.assertEqual(node.timers, {STALL_TIMER: 5})
        session.timer_fired(STALL_TIMER)
        self.assertTrue(node.closed is not None and node.closed[1])

    def test_states(self) -> None:
        """The session moves OPEN -> QUITTING -> CLOSED, and OPEN -> ENDING -> CLOSED."""
        session, node = make_session()
        self.assertIs(session.state, OPEN)
        session.receive_data(b"slow 1\nQUIT\n")
        self.assertIs(session.state, QUITTING)
        node.finish(1)
        self.assertIs(session.state, CLOSED)
        session, node = make_session()
        session.receive_data(b"slow 1\n")
        session.end_input()
        self.assertIs(session.state, ENDING)
        node.finish(1)
        self.assertIs(session.state, CLOSED)

    def test_shut_down_says_bye_and_waits_for_the_client(self) -> None:
        """
        Shutting down answers the calls in flight, says BYE last, reads and
        drops what comes after (never starting it), even with reading paused
        before, and closes when the client closes.
        """
        session, node = make_session()
        session.receive_data(b"#1 slow 1\nslow 2\n#3 slow 3\n#4 slow 4\n#5 now 5\n")
        self.assertFalse(node.reading, "four calls in flight: the limit")
        session.shut_down(UnavailableError("stopping", Outcome.MAY_HAVE_RUN))
        error = b"ERR UNAVAILABLE may-have-run @test stopping"
        self.assertEqual(
            lines_written(node),
            [
                b"#1 " + error,
                b"#3 " + error,
                b"#4 " + error,
                error,
                b'BYE "test is shutting down"',
            ],
        )
        self.assertEqual(sorted(node.cancelled), [1, 2, 3, 4])
        self.assertIs(session.state, LEAVING)
        self.assertTrue(node.reading, "input is read to its end, so the close is not a reset")
        self.assertEqual(node.timers, {})
        session.receive_data(b"#6 now 6\nnow 7\n")
        session.output_paused()
        session.output_resumed()
        self.assertEqual(
            len(node.calls), 4, "#5, held unread, and what came after BYE never start"
        )
        self.assertEqual(len(lines_written(node)), 5, "nothing is written after BYE")
        self.assertIsNone(node.closed)
        session.end_input()
        self.assertEqual(node.closed, (SHUTTING_DOWN, False))

    def test_shut_down_after_quit(self) -> None:
        """A session that was quitting still says BYE after answering what it owed."""
        session, node = make_session()
        session.receive_data(b"#1 slow 1\nQUIT\n")
        session.shut_down(UnavailableError("stopping", Outcome.MAY_HAVE_RUN))
        lines = lines_written(node)
        self.assertEqual(lines[0], b"#1 ERR UNAVAILABLE may-have-run @test stopping")
        self.assertEqual(lines[-1], b'BYE "test is shutting down"')
        session.connection_lost()
        self.assertIs(session.state, CLOSED)

    def test_refusal_errors_name_the_node(self) -> None:
        """Errors the session writes itself name its node."""
        session, node = make_session(authenticated=False)
        session.receive_data(b"now 1\n")
        self.assertIn(b"@test", replies(node)[0])


def test_input_ending_during_an_auth_delay_is_seen() -> None:
    """Input that ends while reading waits on a wrong token's delay moves the session on at once."""
    machine = SessionMachine()
    machine.start(authenticated=False)
    machine.output_paused()
    machine.command(verb="AUTH bad")
    machine.half_close()
    machine.output_resumed()
    machine.ended_input_closes()
    machine.teardown()
