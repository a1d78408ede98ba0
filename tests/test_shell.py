"""
C{callnet shell}: the pieces that need no terminal, a session against a node
in memory, and whole sessions through a pseudo-terminal against a real node.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from callnet import builtin
from callnet.shell import (
    CONTINUATION_PROMPT,
    Shell,
    completions,
    continue_with,
    format_help,
    format_value,
    history_path,
    is_unfinished,
    use_colour,
)
from callnet.terminal import format_description
from callnet.testing import MemoryNode

from .daemon import REPLY_TIMEOUT, Node, free_port, running_node, wait_until

# --- Pieces ------------------------------------------------------------------------


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class PieceTests(SynchronousTestCase):
    """What the shell decides without a terminal or a node."""

    def test_history_path(self) -> None:
        """History goes under an absolute $XDG_STATE_HOME, else to ~/.callnet_history."""
        home = Path("/home/ada")
        self.assertEqual(
            history_path({"XDG_STATE_HOME": "/var/state"}, home),
            Path("/var/state/callnet/history"),
        )
        self.assertEqual(history_path({}, home), home / ".callnet_history")
        # The XDG rule: a relative path is invalid and ignored.
        self.assertEqual(
            history_path({"XDG_STATE_HOME": "state"}, home), home / ".callnet_history"
        )

    def test_colour_only_on_a_terminal_without_no_color(self) -> None:
        """Colour on a terminal; none with NO_COLOR set, on a dumb terminal, or into a pipe."""
        self.assertTrue(use_colour(_Stream(tty=True), {"TERM": "xterm"}))
        self.assertFalse(use_colour(_Stream(tty=True), {"TERM": "xterm", "NO_COLOR": "1"}))
        self.assertFalse(use_colour(_Stream(tty=True), {"TERM": "dumb"}))
        self.assertFalse(use_colour(_Stream(tty=False), {"TERM": "xterm"}))
        # no-color.org: an empty NO_COLOR does not count.
        self.assertTrue(use_colour(_Stream(tty=True), {"NO_COLOR": ""}))

    def test_unfinished_requests(self) -> None:
        """An open bracket or JSON string makes a request go on; closed or over-closed ones end."""
        for text, unfinished in [
            ("add 1 2", False),
            ('echo {"a": [1,', True),
            ('echo {"a": [1, 2]}', False),
            ('echo "hello', True),
            ('echo "a ] \\" {"', False),
            ('echo "a \\\\"', False),
            ('echo ["]"', True),
            ("echo ]]", False),
            ("echo ]] [", True),
        ]:
            self.assertEqual(is_unfinished(text), unfinished, text)

    def test_continued_lines(self) -> None:
        """A line break inside a string stays one (\\n); elsewhere it is a space."""
        self.assertEqual(continue_with('echo {"a": [1,', "2]}"), 'echo {"a": [1, 2]}')
        self.assertEqual(continue_with('echo "one', 'two"'), 'echo "one\\ntwo"')

    def test_completions(self) -> None:
        """Procedures and commands as the first word, procedures after HELP, nothing later."""
        names = ["add", "echo", "billing.charge"]
        self.assertEqual(completions("", "e", names), ["echo"])
        self.assertEqual(completions("", "", names), [*sorted(names), *self.commands()])
        self.assertEqual(completions("", "he", names), ["help"])
        self.assertEqual(completions("", "HE", names), ["HELP"])
        self.assertEqual(completions("#7 +timeout=2 ", "bi", names), ["billing.charge"])
        self.assertEqual(completions("help ", "a", names), ["add"])
        self.assertEqual(completions("help ", "he", names), [])
        self.assertEqual(completions("add ", "e", names), [])

    def commands(self) -> list[str]:
        return ["HELP", "LIST", "PING", "STATS", "QUIT"]

    def test_answers_are_indented_json(self) -> None:
        """An answer prints as JSON indented by two, with non-ASCII text as it is."""
        self.assertEqual(format_value({"a": [1, "é"]}), '{\n  "a": [\n    1,\n    "é"\n  ]\n}')
        self.assertEqual(format_value(3), "3")

    def test_help_and_describe_text(self) -> None:
        """HELP's descriptions make a table; one description reads as HELP name does."""
        descriptions = [
            {"name": "add", "signature": "(a: float, b: float) -> float", "doc": "Return a + b."},
            {"name": "time", "signature": "() -> float", "doc": "The clock.\n\nMore."},
        ]
        self.assertEqual(
            format_help(descriptions).splitlines()[:2],
            [
                "add(a: float, b: float) -> float  Return a + b.",
                "time() -> float                   The clock.",
            ],
        )
        marked = [
            {
                "name": "count",
                "signature": "(n: int)",
                "doc": "Count.",
                "stream": True,
                "run": "reactor",
            },
            {
                "name": "stock",
                "signature": "(item: str)",
                "doc": "Stock.",
                "nodes": ["beta", "gamma"],
            },
        ]
        self.assertEqual(
            format_help(marked).splitlines()[:2],
            ["count(n: int) [stream]  Count.", "stock(item: str)        [on beta, gamma] Stock."],
            "marked as the node's own HELP marks them",
        )
        self.assertEqual(
            format_description({**descriptions[1], "run": "reactor", "idempotent": True}),
            "time() -> float\n\n    The clock.\n\n    More.\n\nruns in: reactor; idempotent",
        )
        self.assertEqual(
            format_description(marked[0]).splitlines()[-1],
            "a stream: answers with ITEM lines, then OK; runs in: reactor",
            "a stream is said as the node's own HELP name says it",
        )


# --- A session against a node in memory -------------------------------------------


class _MemoryRequester:
    """The blocking calls the shell makes, answered by a L{MemoryNode} at once."""

    def __init__(self, node: MemoryNode) -> None:
        self.node = node
        self.client = node.client()
        self.timeouts: list[float | None] = []

    def _wait(self, d: Any) -> Any:
        self.node.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        [result] = results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def call(self, procedure: str, /, *args: Any, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs.get("timeout"))
        return self._wait(self.client.call(procedure, *args, **kwargs))

    def cast(self, procedure: str, /, *args: Any, **kwargs: Any) -> None:
        self._wait(self.client.cast(procedure, *args, **kwargs))

    def command(self, verb: str, *args: Any, timeout: float | None = None) -> Any:
        return self._wait(self.client.command(verb, *args, timeout=timeout))


def _script(*lines: str | type[BaseException]) -> Any:
    """A read function that returns each line in turn, or raises the exceptions given."""
    queue = list(lines)
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        item = queue.pop(0)
        if isinstance(item, str):
            return item
        raise item()

    read.prompts = prompts  # type: ignore[attr-defined]
    return read


class SessionTests(SynchronousTestCase):
    """A shell session, its requests answered by a node in memory."""

    def setUp(self) -> None:
        self.node = MemoryNode(
            [builtin.add, builtin.echo, builtin.fail], name="demo", threads="inline"
        )
        self.requester = _MemoryRequester(self.node)
        self.out = io.StringIO()
        self.shell = Shell(self.requester, self.out)

    def run_session(self, *lines: str | type[BaseException]) -> tuple[int, list[str]]:
        status = self.shell.run(_script(*lines), "demo> ")
        return status, self.out.getvalue().splitlines()

    def test_calls_commands_and_errors(self) -> None:
        """Calls print their answers, errors print as the wire shows them; EOF ends with 0."""
        status, lines = self.run_session(
            "add 1 2", "#7 +timeout=5 add a=1 b=2", "ad 1", "add [1]x", "echo key=1", EOFError
        )
        self.assertEqual(status, 0)
        self.assertEqual(
            lines[:3],
            [
                "3",
                "3",
                "ERR NOT_FOUND not-run @demo no procedure named"
                " 'ad'; try HELP [trace " + lines[2].split("[trace ")[1],
            ],
        )
        self.assertEqual(self.requester.timeouts, [None, 5.0, None])
        # An unreadable line is refused here, without a request.
        self.assertTrue(lines[3].startswith("ERR INVALID_ARGUMENT not-run "), lines[3])
        # A keyword the client would take for its own option is refused, not misread.
        self.assertEqual(
            lines[4], "the shell cannot pass key= to a procedure: give it by position"
        )

    def test_multi_line_json(self) -> None:
        """An open bracket asks for more under the continuation prompt, then sends it all."""
        read = _script('echo {"a": [1,', "2],", '"b": "x', 'y"}', EOFError)
        self.shell.run(read, "demo> ")
        self.assertEqual(read.prompts[:4], ["demo> ", *[CONTINUATION_PROMPT] * 3])
        value = json.loads("\n".join(self.out.getvalue().splitlines()[:-1]))
        self.assertEqual(value, {"a": [1, 2], "b": "x\ny"})

    def test_interrupt_at_the_prompt_drops_the_request(self) -> None:
        """Ctrl-C while a request is being typed drops it, unfinished lines too; the next is fresh."""
        requests: list[str] = []
        self.shell.on_request = requests.append
        status, lines = self.run_session("echo [1,", KeyboardInterrupt, "echo 5", EOFError)
        self.assertEqual((status, requests), (0, ["echo 5"]))
        self.assertEqual([line for line in lines if line], ["5"])

    def test_commands(self) -> None:
        """HELP is a table, HELP name a description, LIST learns names; QUIT ends with 0."""
        status, lines = self.run_session("help", "HELP add", "list", "cancel 1", "quit", "add 1 2")
        self.assertEqual(status, 0)
        text = "\n".join(lines)
        self.assertRegex(lines[0], r"^add\(a: float, b: float\) -> float +Return a \+ b\.$")
        self.assertIn("add(a: float, b: float) -> float\n\n    Return a + b.\n\nruns in:", text)
        self.assertIn('[\n  "add",\n  "echo",\n  "fail",\n  "multicall"\n]', text)
        self.assertIn("CANCEL: the shell makes one call at a time: Ctrl-C cancels it", text)
        self.assertEqual(self.shell.names, ["add", "echo", "fail", "multicall"])
        self.assertNotIn("3", lines)  # nothing is sent after QUIT

    def test_errors_coloured_when_asked(self) -> None:
        """With colour on, an error line is red and reset; answers are never coloured."""
        self.shell.colour = True
        _, lines = self.run_session("ad", "add 1 2", EOFError)
        self.assertTrue(lines[0].startswith("\x1b[31mERR NOT_FOUND"), lines[0])
        self.assertTrue(lines[0].endswith("\x1b[0m"), lines[0])
        self.assertEqual(lines[1], "3")

    def test_unauthenticated_says_set_the_token(self) -> None:
        """On a node that requires a token, the shell says to set CALLNET_TOKEN, not AUTH."""
        from callnet.config import Security

        node = MemoryNode([builtin.add], security=Security(tokens=(("ops", "t" * 24),)))
        shell = Shell(_MemoryRequester(node), self.out)
        shell.run(_script("add 1 2", "auth secret", EOFError), "> ")
        lines = self.out.getvalue().splitlines()
        self.assertTrue(lines[0].startswith("ERR UNAUTHENTICATED not-run"), lines[0])
        self.assertEqual(
            lines[1], "the node requires a token: set CALLNET_TOKEN and start the shell again"
        )
        self.assertEqual(
            lines[2], "AUTH: set CALLNET_TOKEN to the token and start the shell again"
        )


# --- Through a pseudo-terminal -------------------------------------------------------

pexpect = pytest.importorskip("pexpect")


def spawn(node: Node, home: Path, *options: str, **env: str) -> Any:
    """C{callnet shell} on a pseudo-terminal, its history under C{home}."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NO_COLOR")}
    environment.update({"TERM": "xterm", "XDG_STATE_HOME": str(home), "INPUTRC": "/dev/null"})
    environment.update(env)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "callnet", "shell", f"127.0.0.1:{node.port}", *options],
        env=environment,
        encoding="utf-8",
        timeout=REPLY_TIMEOUT,
        dimensions=(24, 200),
    )
    child.expect_exact("Ctrl-D leaves")
    prompt(child, node)
    return child


def prompt(child: Any, node: Node) -> None:
    child.expect_exact(f"127.0.0.1:{node.port}> ")


def leave(child: Any) -> int:
    """Ctrl-D; the exit status, waited for within a bound."""
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    return int(child.exitstatus)


def sleep_stats(node: Node) -> dict[str, Any]:
    entry: dict[str, Any] = node.stats()["procedures"].get("sleep", {})
    return entry


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with running_node(tmp_path) as node:
        yield node


def test_session_on_a_terminal(node: Node, tmp_path: Path) -> None:
    """
    On a terminal: Tab completes a procedure, an open bracket continues on a
    second line, the answer is indented JSON, errors are red, Ctrl-C clears
    the line being typed, and Ctrl-D leaves with status 0.
    """
    child = spawn(node, tmp_path / "state")
    child.send("ec\t")
    child.expect_exact("echo ")
    child.sendline('{"a": [1,')
    child.expect_exact(CONTINUATION_PROMPT)
    child.sendline("2]}")
    child.expect_exact('{\r\n  "a": [\r\n    1,\r\n    2\r\n  ]\r\n}\r\n')
    prompt(child, node)
    child.sendline("ad 1 2")
    child.expect_exact("\x1b[31mERR NOT_FOUND not-run @demo no procedure named 'ad'")
    prompt(child, node)
    child.send("add 1")
    child.expect_exact("add 1")  # readline has it: Ctrl-C now clears it
    child.sendintr()
    prompt(child, node)
    child.sendline("echo 5")
    child.expect_exact("\r\n5\r\n")
    prompt(child, node)
    assert leave(child) == 0


def test_no_colour_with_no_color(node: Node, tmp_path: Path) -> None:
    """NO_COLOR set: the same error comes without escape codes."""
    child = spawn(node, tmp_path / "state", NO_COLOR="1")
    child.sendline("ad 1 2")
    child.expect_exact("ERR NOT_FOUND not-run @demo")
    assert "\x1b[31m" not in child.before
    prompt(child, node)
    assert leave(child) == 0


def test_interrupt_cancels_the_call_on_the_node(node: Node, tmp_path: Path) -> None:
    """Ctrl-C during a call cancels it on the node and comes back to the prompt."""
    child = spawn(node, tmp_path / "state")
    child.sendline("sleep 20")
    wait_until(lambda: sleep_stats(node).get("in_flight") == 1, REPLY_TIMEOUT, "sleep runs")
    child.sendintr()
    child.expect_exact("cancelled: the node was told to stop the call")
    prompt(child, node)
    wait_until(
        lambda: sleep_stats(node).get("outcomes") == {"CANCELLED": 1},
        REPLY_TIMEOUT,
        "the node cancels sleep",
    )
    assert sleep_stats(node)["in_flight"] == 0
    child.sendline("ping")
    child.expect_exact('"pong"')
    assert leave(child) == 0


def test_history_is_kept_between_sessions(node: Node, tmp_path: Path) -> None:
    """Requests are saved (privately) and come back with Up in the next session, within the bound."""
    state = tmp_path / "state"
    child = spawn(node, state, "--history-size", "2")
    for request in ("add 1 1", "add 2 2", 'echo {"x":', "7}"):
        child.sendline(request)
    child.expect_exact('"x": 7')
    prompt(child, node)
    assert leave(child) == 0
    history = state / "callnet" / "history"
    assert history.read_text().splitlines() == ["add 2 2", 'echo {"x": 7}']
    assert history.stat().st_mode & 0o777 == 0o600

    child = spawn(node, state)
    child.send("\x1b[A\x1b[A")  # Up twice: the request before last
    child.sendline("")
    child.expect_exact("\r\n4\r\n")
    prompt(child, node)
    assert leave(child) == 0


def test_piped_input_has_no_colour(node: Node, tmp_path: Path) -> None:
    """Not on a terminal, the shell reads lines from a pipe and prints no escape codes."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NO_COLOR")}
    environment.update({"TERM": "xterm", "XDG_STATE_HOME": str(tmp_path / "state")})
    result = subprocess.run(
        [sys.executable, "-m", "callnet", "shell", node.endpoint],
        input="add 1 2\nad\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert "3\n" in result.stdout
    assert "ERR NOT_FOUND not-run @demo" in result.stdout
    assert "\x1b" not in result.stdout


def test_piped_input_prints_answers_alone(node: Node, tmp_path: Path) -> None:
    """From a pipe the shell prints each answer on its own, with no banner and no prompts among them."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["XDG_STATE_HOME"] = str(tmp_path / "state")
    result = subprocess.run(
        [sys.executable, "-m", "callnet", "shell", node.endpoint],
        input='add 1 2\necho {"a":\n1}\n',
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["3", "{", '  "a": 1', "}"], result.stdout


def test_unreachable_node() -> None:
    """A node that is not there: one line on stderr and status 3, before any prompt."""
    result = subprocess.run(
        [sys.executable, "-m", "callnet", "shell", f"127.0.0.1:{free_port()}"],
        input="add 1 2\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr.count("\n") == 1 and "cannot connect" in result.stderr, result.stderr


def test_shell_with_a_token(tmp_path: Path) -> None:
    """Without CALLNET_TOKEN the shell says to set it; with it, calls are answered."""
    token = "shell-token-0123456789abcdef"
    config = tmp_path / "node.toml"
    config.write_text(f'[security]\ntokens = {{ ops = "{token}" }}\n')
    with running_node(tmp_path, "--config", str(config)) as node:
        child = spawn(node, tmp_path / "state")
        child.sendline("add 1 2")
        child.expect_exact("set CALLNET_TOKEN")
        prompt(child, node)
        assert leave(child) == 0
        child = spawn(node, tmp_path / "state", CALLNET_TOKEN=token)
        child.sendline("add 1 2")
        child.expect_exact("\r\n3\r\n")
        assert leave(child) == 0


def test_readme_session(node: Node, tmp_path: Path) -> None:
    """The README's shell session, typed line by line on a terminal, prints what it shows."""
    import re

    from .test_doc_examples import blocks

    transcript = blocks("README.md", "shell")["session"].replace("7600", str(node.port))
    command, *lines = transcript.splitlines()
    assert command.endswith(f"callnet shell 127.0.0.1:{node.port}"), command
    first = f"127.0.0.1:{node.port}> "
    shown = io.StringIO()
    child = spawn(node, tmp_path / "state", NO_COLOR="1")  # read the greeting and prompt
    child.logfile_read = shown
    typed = [line for line in lines if line.startswith((first, CONTINUATION_PROMPT))]
    for number, line in enumerate(typed):
        if number:
            child.expect_exact(line[: line.index(" ") + 1])  # the prompt, then type
        child.sendline(line.split(" ", 1)[1] if line.startswith(first) else line[4:])
    prompt(child, node)
    assert leave(child) == 0
    # The terminal's text, without readline's bracketed-paste switches.
    screen = re.sub(r"\x1b\[\?2004[hl]", "", shown.getvalue()).replace("\r\n", "\n")
    seen = f"{lines[0]}\n{first}{screen}".split("\n")[: len(lines)]

    def same_trace(text: str) -> str:
        return re.sub(r"\[trace [^\]]+\]", "[trace ...]", text)

    assert same_trace("\n".join(seen)) == same_trace("\n".join(lines))
