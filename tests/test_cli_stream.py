"""
Streams and progress at the command line: C{callnet call} prints a stream's
items as they come and draws progress on a terminal only; C{callnet shell}
prints items as they come.  The node's lines are scripted.
"""

from __future__ import annotations

import argparse
import io
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from callnet.cli import _call
from callnet.cli_format import ProgressLine, format_progress
from callnet.errors import InvalidArgumentError, NotFoundError, Outcome
from callnet.shell import Shell
from callnet.wire import Progress
from tests.test_client_stream import Scripted

from .daemon import REPLY_TIMEOUT, running_node, wait_until

REFUSAL = "count streams: ask with +window (stream())"


class Terminal(io.StringIO):
    """A text stream that says it is (or is not) a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class ProgressTextTests(SynchronousTestCase):
    """How a progress report is drawn."""

    def test_formats(self) -> None:
        """A known total draws a bar, a percentage and the counts; an unknown one the count alone."""
        self.assertEqual(
            format_progress(Progress(1, 4, "pages"), width=8), "[##......]  25% 1/4 pages"
        )
        self.assertEqual(format_progress(Progress(4, 4), width=4), "[####] 100% 4/4")
        self.assertEqual(format_progress(Progress(12, None, "rows")), "12 done rows")
        self.assertEqual(format_progress(Progress(9, 4), width=2), "[##] 100% 9/4")

    def test_only_on_a_terminal(self) -> None:
        """The bar is drawn in place on a terminal, wiped before other output, and never drawn elsewhere."""
        tty = Terminal(True)
        line = ProgressLine(tty)
        line.show(Progress(1, 2))
        line.clear()
        self.assertEqual(tty.getvalue(), "\r\x1b[K" + format_progress(Progress(1, 2)) + "\r\x1b[K")
        pipe = Terminal(False)
        line = ProgressLine(pipe)
        line.show(Progress(1, 2))
        line.clear()
        self.assertEqual(pipe.getvalue(), "")


@pytest.fixture
def node() -> Iterator[Scripted]:
    yield Scripted()


def options(procedure: str, *arguments: str) -> argparse.Namespace:
    return argparse.Namespace(procedure=procedure, arguments=list(arguments))


def test_call_prints_items_then_result(node: Scripted, capsys: pytest.CaptureFixture[str]) -> None:
    """A procedure that streams is asked again as a stream, and each item printed as it comes."""
    bar = ProgressLine(Terminal(False))
    d = ensureDeferred(_call(node.client, options("count", "2"), bar))
    assert node.sent() == ["#1 +timeout=10.0 +progress count 2"]
    node.reply(f"#1 ERR INVALID_ARGUMENT not-run {REFUSAL}")
    assert node.sent() == ["#2 +timeout=10.0 +window=64 +progress count 2"]
    node.reply("#2 ITEM 0")
    assert capsys.readouterr().out == "0\n"
    node.reply('#2 ITEM {"a": "é"}', "#2 OK 2")
    assert capsys.readouterr().out == '{"a": "é"}\n'
    assert d.result == 2


def test_call_shows_progress(node: Scripted) -> None:
    """A plain call asks for progress and draws each report on a terminal."""
    tty = Terminal(True)
    d = ensureDeferred(_call(node.client, options("build"), ProgressLine(tty)))
    node.reply('#1 PROGRESS {"done":1,"total":2}', '#1 OK "built"')
    assert d.result == "built"
    assert format_progress(Progress(1, 2)) in tty.getvalue()


def test_other_refusals_are_errors(node: Scripted) -> None:
    """A refusal that is not about streams is the call's error; nothing is asked again."""
    d = ensureDeferred(_call(node.client, options("add", "x"), ProgressLine(Terminal(False))))
    node.reply("#1 ERR INVALID_ARGUMENT not-run b is missing")
    failure = d.result
    d.addErrback(lambda _: None)
    assert failure.check(InvalidArgumentError)
    assert node.sent() == ['#1 +timeout=10.0 +progress add "x"']


class FakeStream:
    """A blocking stream's surface: items, a result, a with block."""

    def __init__(self, items: list[Any], result: Any, error: Exception | None = None) -> None:
        self._items = items
        self.result = result
        self._error = error
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        yield from self._items
        if self._error is not None:
            raise self._error

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closed = True


class StreamingRequester:
    """A client whose C{count} streams: a plain call to it is refused, as the node refuses it."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.streams: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.error = error
        self.opened: list[FakeStream] = []

    def call(self, procedure: str, /, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(procedure)
        if procedure == "count":
            raise InvalidArgumentError(REFUSAL, Outcome.NOT_RUN)
        return "plain"

    def stream(self, procedure: str, /, *args: Any, **kwargs: Any) -> FakeStream:
        self.streams.append((procedure, args, kwargs))
        stream = FakeStream(list(range(args[0])), args[0], self.error)
        self.opened.append(stream)
        return stream

    def cast(self, procedure: str, /, *args: Any, **kwargs: Any) -> None:
        pass

    def command(self, verb: str, *args: Any, timeout: float | None = None) -> Any:
        return None


class ShellStreamTests(SynchronousTestCase):
    """The shell prints a stream's items as they come."""

    def test_items_then_result(self) -> None:
        """A streaming procedure's items print one by one, then its result; it is asked as a stream from then on."""
        requester = StreamingRequester()
        out = io.StringIO()
        shell = Shell(requester, out)
        shell.answer("count 2")
        shell.answer("+timeout=5 count 3")
        self.assertEqual(out.getvalue().splitlines(), ["0", "1", "2", "0", "1", "2", "3"])
        self.assertEqual(requester.calls, ["count"])
        self.assertEqual(requester.streams[1], ("count", (3,), {"timeout": 5}))
        self.assertTrue(all(stream.closed for stream in requester.opened))

    def test_error_mid_stream(self) -> None:
        """An error after some items prints after them, as the wire shows it."""
        requester = StreamingRequester(NotFoundError("row gone", Outcome.RAN))
        out = io.StringIO()
        Shell(requester, out).answer("count 1")
        self.assertEqual(out.getvalue().splitlines(), ["0", "ERR NOT_FOUND ran row gone"])

    def test_stream_takes_no_key(self) -> None:
        """A stream asked with +key is refused by the shell, as the node would refuse it."""
        requester = StreamingRequester()
        out = io.StringIO()
        shell = Shell(requester, out)
        shell.streams.add("count")
        shell.answer("+key=k1 count 2")
        self.assertIn("takes no +key", out.getvalue())
        self.assertEqual(requester.streams, [])


# --- Against a real node -------------------------------------------------------


def test_docs_call_a_stream(tmp_path: Path) -> None:
    """The README's and clients.md's callnet call of a stream print exactly what the command prints."""
    from .test_doc_examples import blocks

    shown = [
        blocks("README.md", "calls")["readme-count"],
        blocks("docs/clients.md", "calls")["call-count"],
    ]
    with running_node(tmp_path) as node:
        for block in shown:
            command, *expected = block.splitlines()
            words = shlex.split(command.removeprefix("$ "))
            assert words[:2] == ["callnet", "call"]
            words[2] = words[2].replace("7600", str(node.port))
            ran = subprocess.run(
                [sys.executable, "-m", "callnet", *words[1:]],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert (ran.returncode, ran.stdout.splitlines(), ran.stderr) == (0, expected, "")


def test_call_a_stream_interrupted(tmp_path: Path) -> None:
    """Ctrl-C while callnet call prints a stream cancels it on the node and exits 130."""
    with running_node(tmp_path) as node:
        process = subprocess.Popen(
            [sys.executable, "-m", "callnet", "call", node.endpoint, "count", "1000", "0.05"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "0\n"  # the stream is running
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=REPLY_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130
        assert err == "callnet: interrupted; count was cancelled on the node\n"
        wait_until(
            lambda: node.stats()["procedures"]["count"].get("in_flight", 0) == 0,
            REPLY_TIMEOUT,
            "the node ends count",
        )
