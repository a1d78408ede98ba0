"""Tests for callnet.logs: JSON lines for shippers, messages for people, levels that fit."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from callnet import procedure
from callnet.logs import drop_retry_notices, failure_level, json_line, json_lines, readable
from callnet.testing import MemoryCluster, MemoryNode

#: A trace of the longest length the wire takes.
LONG_TRACE = "t" * 256


def parsed(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the JSON observer writes it, read back: one line, one object."""
    out = io.StringIO()
    json_lines(out)(event)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1, text
    line = json.loads(text)
    assert isinstance(line, dict)
    return line


class Captured:
    """Every event published while it listens."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[dict[str, Any]]:
        return [parsed(event) for event in self.events]


class JSONLineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.captured = Captured(self)
        self.log = Logger(namespace="callnet.test")

    def test_level_is_a_word(self) -> None:
        """log_level is the level's name, a string, not an object."""
        self.log.warn("careful")
        [line] = self.captured.lines()
        self.assertEqual(line["log_level"], "warn")
        self.assertEqual(line["log_namespace"], "callnet.test")
        self.assertIsInstance(line["log_time"], float)
        self.assertEqual(line["log_text"], "careful")

    def test_each_field_once(self) -> None:
        """Fields are written once: no log_flattened, no objects; a long trace twice at most."""
        self.log.info("call failed (trace {trace})", trace=LONG_TRACE, procedure="add")
        [event] = self.captured.events
        line = parsed(event)
        self.assertEqual(
            sorted(line),
            sorted(
                [
                    "log_time",
                    "log_level",
                    "log_namespace",
                    "log_format",
                    "log_text",
                    "trace",
                    "procedure",
                ]
            ),
        )
        self.assertEqual(line["trace"], LONG_TRACE)
        # In its field and in the message for people, and nowhere else.
        self.assertEqual(json_line(event).count(LONG_TRACE), 2)

    def test_addresses_as_host_port(self) -> None:
        """Addresses read host:port in fields and in the message."""
        self.log.info(
            "dropping {peer} and {other} and {local}",
            peer=IPv4Address("TCP", "127.0.0.1", 5000),
            other=IPv6Address("TCP", "::1", 5001),
            local=UNIXAddress(b"/run/callnet.sock"),
        )
        [line] = self.captured.lines()
        self.assertEqual(line["peer"], "127.0.0.1:5000")
        self.assertEqual(line["other"], "[::1]:5001")
        self.assertEqual(line["local"], "/run/callnet.sock")
        self.assertEqual(
            line["log_text"], "dropping 127.0.0.1:5000 and [::1]:5001 and /run/callnet.sock"
        )
        self.assertNotIn("IPv4Address", json_line(self.captured.events[0]))

    def test_formats_still_apply(self) -> None:
        """Format specs in a message still apply to the values they format."""
        self.log.info("took {duration_ms:.2f} ms", duration_ms=1.23456)
        [line] = self.captured.lines()
        self.assertEqual(line["log_text"], "took 1.23 ms")
        self.assertEqual(line["duration_ms"], 1.23456)

    def test_failure_has_its_traceback(self) -> None:
        """A logged failure is one line with its traceback as a string."""
        try:
            raise ZeroDivisionError("by zero")
        except ZeroDivisionError:
            self.log.failure("it broke", Failure(), level=LogLevel.error)
        self.flushLoggedErrors(ZeroDivisionError)
        [line] = self.captured.lines()
        self.assertEqual(line["log_level"], "error")
        self.assertIn("ZeroDivisionError", line["traceback"])

    def test_odd_values(self) -> None:
        """Values that are not JSON are written as text, and the line is still JSON."""
        self.assertEqual(readable(float("nan")), "nan")
        self.assertEqual(readable(b"bytes\xff"), "bytes\\xff")
        self.assertEqual(readable({"a": (1, object)}), {"a": [1, str(object)]})
        self.log.info("odd {value}", value={1, 2})
        [line] = self.captured.lines()
        self.assertEqual(line["value"], "{1, 2}")


class FailureLevelTests(SynchronousTestCase):
    def test_rule(self) -> None:
        """The node's faults are errors, time and load info, the caller's mistakes debug."""
        self.assertEqual(failure_level("INTERNAL"), LogLevel.error)
        self.assertEqual(failure_level("DATA_LOSS"), LogLevel.error)
        for code in ("DEADLINE_EXCEEDED", "CANCELLED", "UNAVAILABLE", "RESOURCE_EXHAUSTED"):
            self.assertEqual(failure_level(code), LogLevel.info, code)
        for code in ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED"):
            self.assertEqual(failure_level(code), LogLevel.debug, code)
        self.assertEqual(failure_level("SOMETHING_NEW"), LogLevel.warn)

    def test_every_code_has_a_level(self) -> None:
        """Every error code callnet defines has a level of its own in the rule."""
        from callnet import errors

        codes = {
            cls.code
            for cls in vars(errors).values()
            if isinstance(cls, type) and issubclass(cls, errors.CallError) and cls.code
        }
        self.assertTrue(codes)
        for code in codes:
            self.assertNotEqual(failure_level(code), LogLevel.warn, code)


class NodeLogTests(SynchronousTestCase):
    """What a node logs, through the JSON observer."""

    def setUp(self) -> None:
        self.captured = Captured(self)

    def test_access_log_lines_parse(self) -> None:
        """A node's access log events are JSON lines with a string level and its fields."""

        @procedure(run="reactor")
        def add(a: int, b: int) -> int:
            return a + b

        node = MemoryNode([add])
        node.factory.access_log = True
        node.connect_raw().send(f"add 1 2\n+trace={LONG_TRACE} nosuch\n")
        access = [
            line for line in self.captured.lines() if line["log_namespace"] == "callnet.access"
        ]
        self.assertEqual([line["outcome"] for line in access], ["OK", "NOT_FOUND"])
        for line in access:
            self.assertEqual(line["log_level"], "info")
            self.assertNotIn("log_flattened", line)
        self.assertEqual(access[1]["trace"], LONG_TRACE)

    def test_access_log_counts_unsendable_result_internal(self) -> None:
        """A result that cannot be sent is logged INTERNAL, as its caller is answered."""

        @procedure(run="reactor")
        def add(a: float, b: float) -> float:
            return a + b

        node = MemoryNode([add])
        node.factory.access_log = True
        conn = node.connect_raw()
        conn.send("add 1e308 1e308\nadd 1\n")
        self.assertTrue(conn.lines()[0].startswith(b"ERR INTERNAL ran"))
        access = [
            (line["procedure"], line["outcome"])
            for line in self.captured.lines()
            if line["log_namespace"] == "callnet.access"
        ]
        self.assertEqual(access, [("add", "INTERNAL"), ("add", "INVALID_ARGUMENT")])
        [fault] = [
            line
            for line in self.captured.lines()
            if "not JSON" in line["log_text"] and line["log_namespace"] == "callnet.dispatch"
        ]
        self.assertEqual((fault["log_level"], fault["procedure"]), ("error", "add"))

    def test_undeclared_error_logged_at_error(self) -> None:
        """A procedure's undeclared error is logged at error, with its traceback."""

        @procedure(run="reactor")
        def broken() -> None:
            raise RuntimeError("oops")

        node = MemoryNode([broken])
        node.connect_raw().send("broken\n")
        self.flushLoggedErrors(RuntimeError)
        [line] = [line for line in self.captured.lines() if "traceback" in line]
        self.assertEqual(line["log_level"], "error")
        self.assertIn("RuntimeError: oops", line["traceback"])

    def test_drain_cancel_says_shutdown(self) -> None:
        """A call cancelled by a stopping node is logged as the node's doing, not its caller's."""
        pending: list[Deferred[Any]] = []

        @procedure(run="reactor")
        def wait() -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

        node = MemoryNode([wait])
        conn = node.connect_raw()
        conn.send("#1 wait\n")
        node.dispatcher.shut_down()
        node.factory.drain(0)
        node.flush()
        self.assertIn(b"#1 ERR UNAVAILABLE may-have-run", b"\n".join(conn.lines()))
        failed = [
            line
            for line in self.captured.lines()
            if line.get("procedure") == "wait" and "code" in line
        ]
        self.assertEqual([line["code"] for line in failed], ["UNAVAILABLE"])
        self.assertNotIn("cancelled by its caller", json.dumps(failed))


class PeerLogTests(SynchronousTestCase):
    def test_down_peer_logs_once_each_way(self) -> None:
        """A peer that is down logs once going down and once coming back, not per retry."""
        cluster = MemoryCluster({"alpha": [], "beta": []})
        cluster.start()
        self.addCleanup(cluster.stop)
        captured = Captured(self)
        cluster.kill("beta")
        cluster.advance(5 + cluster.settings.reconnect_max_delay * 3)
        cluster.revive("beta")
        cluster.advance(cluster.settings.reconnect_max_delay + 1)
        lines = captured.lines()
        self.assertEqual([line for line in lines if "Scheduling retry" in line["log_text"]], [])
        about_beta = [
            (line["log_level"], line["log_text"])
            for line in lines
            if line.get("peer") == "beta" and "is" in line["log_format"]
        ]
        self.assertEqual(
            about_beta,
            [("warn", "peer beta is down (was up)"), ("info", "peer beta is up (was down)")],
        )

    def test_own_stop_is_no_warning(self) -> None:
        """A node that stops logs its peers' links ending at info, not as peers going down."""
        cluster = MemoryCluster({"alpha": [], "beta": []})
        cluster.start()
        self.addCleanup(cluster.stop)
        captured = Captured(self)
        cluster.clusters["alpha"].stopService()
        cluster.flush()
        about_beta = [
            (line["log_level"], line["log_text"])
            for line in captured.lines()
            if line.get("peer") == "beta" and "is" in line["log_format"]
        ]
        self.assertEqual(about_beta, [("info", "peer beta is down (was up)")])

    def test_other_service_events_pass(self) -> None:
        """The retry filter passes a ClientService's other events to the log."""
        captured = Captured(self)
        for text in ("Scheduling retry 1 to connect x in 0.41 seconds.", "Duplicate startService"):
            drop_retry_notices(
                {
                    "log_format": text,
                    "log_level": LogLevel.info,
                    "log_namespace": "twisted.application.internet.ClientService",
                    "log_time": 0.0,
                }
            )
        self.assertEqual(
            [event["log_format"] for event in captured.events],
            ["Duplicate startService"],
        )
