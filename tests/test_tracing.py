"""Tests for callnet.tracing: W3C traceparents continued, invalid ones replaced."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from callnet import procedure
from callnet.context import CallContext
from callnet.testing import MemoryCluster, MemoryNode
from callnet.tracing import TraceIds, TraceParent, is_traceparent_shaped, parse_traceparent

#: The specification's example of a traceparent (section 3.2, "Examples of
#: HTTP traceparent Headers"), sampled, and the same not sampled.
SPEC_SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SPEC_NOT_SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

#: Values the specification says are not valid traceparents, and why.
INVALID = {
    "all-zero trace id": "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "all-zero parent id": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "version ff": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "uppercase hex": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    "uppercase version": "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "trace id too short": "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    "trace id too long": "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
    "parent id too short": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
    "flags too long": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
    "version too short": "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "extra field in version 00": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
    "future version too short": "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
    "future version, flags too short": (
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-what-the-future-will-be-like"
    ),
}

_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def _valid(value: str) -> bool:
    parsed = parse_traceparent(value)
    return (
        parsed is not None
        and _TRACEPARENT.match(value) is not None
        and parsed.trace_id != "0" * 32
        and parsed.parent_id != "0" * 16
    )


class ParseTests(SynchronousTestCase):
    def test_spec_examples_are_valid(self) -> None:
        """The specification's examples read as their trace id, parent id and flags."""
        self.assertEqual(
            parse_traceparent(SPEC_SAMPLED), TraceParent(TRACE_ID, "00f067aa0ba902b7", "01")
        )
        self.assertEqual(
            parse_traceparent(SPEC_NOT_SAMPLED), TraceParent(TRACE_ID, "00f067aa0ba902b7", "00")
        )
        self.assertEqual(str(parse_traceparent(SPEC_SAMPLED)), SPEC_SAMPLED)

    def test_invalid_values(self) -> None:
        """Each way the specification says a traceparent breaks is read as none."""
        for why, value in INVALID.items():
            self.assertIsNone(parse_traceparent(value), why)
            self.assertTrue(is_traceparent_shaped(value), why)

    def test_future_version(self) -> None:
        """A later version is read by its first four parts and sent on as version 00."""
        future = (
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like"
        )
        parsed = parse_traceparent(future)
        self.assertEqual(parsed, TraceParent(TRACE_ID, "00f067aa0ba902b7", "01"))
        self.assertEqual(str(parsed), SPEC_SAMPLED)

    def test_opaque_ids_are_not_traceparents(self) -> None:
        """Tokens a person would type are not taken for traceparents."""
        for value in ("req-7", "my-test-run-1", "abc", "trace:42", "deadbeef", "a-b-c"):
            self.assertFalse(is_traceparent_shaped(value), value)


class TraceIdsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ids = TraceIds()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_new_ids_are_valid_and_distinct(self) -> None:
        """Trace ids a node makes are valid traceparents, none made twice, by any node."""
        other = TraceIds()
        made = [self.ids.new() for _ in range(1000)] + [other.new() for _ in range(1000)]
        for trace in made:
            self.assertTrue(_valid(trace), trace)
        self.assertEqual(len(set(made)), len(made))
        trace_ids = {str(parse_traceparent(t)).split("-")[1] for t in made}
        self.assertEqual(len(trace_ids), len(made))

    def test_valid_kept_on_arrival(self) -> None:
        """A valid traceparent or an opaque id is the call's trace as it arrived, unlogged."""
        for trace in (SPEC_SAMPLED, SPEC_NOT_SAMPLED, "req-7"):
            self.assertEqual(self.ids.accept(trace), trace)
        self.assertEqual(self.replacements(), [])

    def test_invalid_replaced_and_logged(self) -> None:
        """An invalid traceparent is treated as absent: a new trace, and one info line each."""
        for why, value in INVALID.items():
            replacement = self.ids.accept(value)
            self.assertNotEqual(replacement, value, why)
            self.assertTrue(_valid(replacement), why)
        replaced = self.replacements()
        self.assertEqual(len(replaced), len(INVALID))
        for event, value in zip(replaced, INVALID.values(), strict=True):
            self.assertEqual(event["log_level"], LogLevel.info)
            self.assertEqual(event["given"], value)

    def test_next_hop_keeps_trace_and_flags(self) -> None:
        """Each hop keeps the trace id and flags and sends a fresh random parent id."""
        hops = [self.ids.next_hop(SPEC_NOT_SAMPLED) for _ in range(20)]
        parents = set()
        for hop in hops:
            parsed = parse_traceparent(hop)
            assert parsed is not None
            self.assertTrue(_valid(hop), hop)
            self.assertEqual((parsed.trace_id, parsed.flags), (TRACE_ID, "00"))
            self.assertNotEqual(parsed.parent_id, "00f067aa0ba902b7")
            parents.add(parsed.parent_id)
        self.assertEqual(len(parents), 20)

    def test_next_hop_of_others(self) -> None:
        """An opaque id goes on as it is; no trace or an invalid one gets a new trace."""
        self.assertEqual(self.ids.next_hop("req-7"), "req-7")
        self.assertTrue(_valid(self.ids.next_hop(None)))
        self.assertTrue(_valid(self.ids.next_hop(INVALID["version ff"])))

    @given(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256)
    )
    def test_any_printable_trace(self, trace: str) -> None:
        """Any printable trace is either kept as it is or replaced by a valid traceparent."""
        accepted = TraceIds().accept(trace)
        self.assertTrue(accepted == trace or _valid(accepted), trace)
        if accepted != trace:
            self.assertTrue(is_traceparent_shaped(trace))
            self.assertIsNone(parse_traceparent(trace))

    def replacements(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if str(e.get("log_format", "")).startswith("replaced an invalid traceparent")
        ]


class ClusterTests(SynchronousTestCase):
    """Traces across nodes."""

    def setUp(self) -> None:
        self.seen: list[str | None] = []
        seen = self.seen

        @procedure(run="reactor")
        def traced(context: CallContext) -> str:
            seen.append(context.trace)
            return "ok"

        self.cluster = MemoryCluster({"alpha": [], "beta": [traced]})
        self.cluster.start()
        self.addCleanup(self.cluster.stop)

    def call(self, trace: str) -> None:
        d = self.cluster["alpha"].client().call("traced", trace=trace)
        self.cluster.flush()
        self.assertEqual(self.successResultOf(d), "ok")

    def test_valid_traceparent_continued(self) -> None:
        """A forwarded call keeps the caller's trace id and flags, with alpha's own parent id."""
        self.call(SPEC_SAMPLED)
        [trace] = self.seen
        parsed = parse_traceparent(trace or "")
        assert parsed is not None
        self.assertEqual((parsed.trace_id, parsed.flags), (TRACE_ID, "01"))
        self.assertNotEqual(parsed.parent_id, "00f067aa0ba902b7")

    def test_invalid_traceparent_not_forwarded(self) -> None:
        """A peer never sees an invalid traceparent: it gets a new, valid one."""
        for value in INVALID.values():
            self.call(value)
        self.assertEqual(len(self.seen), len(INVALID))
        for trace in self.seen:
            self.assertTrue(_valid(trace or ""), trace)
            self.assertNotIn(trace, INVALID.values())

    def test_opaque_id_forwarded_as_is(self) -> None:
        """An opaque id reaches the peer as the caller wrote it."""
        self.call("my-test-run-1")
        self.assertEqual(self.seen, ["my-test-run-1"])


class SuffixTests(SynchronousTestCase):
    def test_error_reply_shows_opaque_trace(self) -> None:
        """An error reply ends with the caller's own printable trace, as before."""
        node = MemoryNode()
        conn = node.connect_raw()
        conn.send("+trace=[my]trace!~ nosuch\n")
        [line] = conn.lines()
        self.assertTrue(line.endswith(b" [trace [my]trace!~]"), line)
