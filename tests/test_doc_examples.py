"""
The examples of README.md and docs/, run as written so that what the docs
show is what callnet does: the Python examples against a real node, and
every transcript (a session at nc, a command and its output) replayed
against a node started with the command the doc itself gives.

A fenced block is tied to its test by a marker on the line before it,
C{<!-- kind: name -->}: C{start} (an C{sh} block whose C{twistd} command
starts the node for the transcripts that follow it, up to the next one),
C{file} (a file written next to it first), C{transcript}
(requests and the node's replies), C{run} (commands and what they print),
C{example}/C{output} (a Python program and what it prints).  Every C{text}
block carries such a marker unless it is listed in L{NOT_TRANSCRIPTS}.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .daemon import TWISTD, documented_command, documented_node, is_reply, running_node
from .test_daemon import replay, shown_as

ROOT = Path(__file__).parent.parent
DOCUMENTS = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]

#: Blocks that show no exchange and no output, so there is nothing to
#: replay: each is named by its document and how its first line starts,
#: with why.
NOT_TRANSCRIPTS = {
    # The data flow through the modules: a diagram.
    ("docs/architecture.md", "bytes ──► protocol.NodeProtocol"),
    # The states of a connection's session: a diagram.
    ("docs/architecture.md", "OPEN ──QUIT──► QUITTING"),
    # The layers and what imports what: a diagram.
    ("docs/architecture.md", " entry points     tap.py (twistd)"),
    # The states of a peer: a diagram.
    ("docs/cluster.md", "connecting --handshake--> up"),
    # The shapes of a success, an error and a text line, and the grammar:
    # notation with placeholders, not lines a node sends.
    ("docs/protocol.md", "OK [json]"),
    ("docs/protocol.md", "ERR CODE OUTCOME [@node] message"),
    ("docs/protocol.md", "| text"),
    ("docs/protocol.md", 'BYE "reason"'),
    ("docs/protocol.md", "line      = ( request / command"),
}

#: Marked blocks whose test lives in another file, with that test.
_CLUSTER = "tests/test_cluster_faults.py::test_readme_cluster"
_PROGRESS = "tests/test_doc_examples.py::test_progress_examples"
CHECKED_ELSEWHERE = {
    ("README.md", "transcript", "cluster"): _CLUSTER,
    ("README.md", "status", "cluster"): _CLUSTER,
    ("docs/cluster.md", "transcript", "cluster-stats"): _CLUSTER,
    ("docs/cluster.md", "status", "cluster"): _CLUSTER,
    ("docs/security.md", "calls", "cluster-tls"): "tests/test_tls.py::test_tls_cluster_example",
    ("README.md", "shell", "session"): "tests/test_shell.py::test_readme_session",
    ("README.md", "calls", "readme-count"): "tests/test_cli_stream.py::test_docs_call_a_stream",
    (
        "docs/clients.md",
        "calls",
        "call-count",
    ): "tests/test_cli_stream.py::test_docs_call_a_stream",
    ("docs/clients.md", "output", "progress-async"): _PROGRESS,
    ("docs/clients.md", "output", "progress-blocking"): _PROGRESS,
}

#: The markers that tie a text block to the test that produces it.
TEXT_KINDS = {"transcript", "run", "output", "status", "calls", "messages", "shell"}
#: Those that this file's tests replay, wherever they appear.
CHECKED_HERE = {"transcript", "run", "output", "messages"}


@dataclass(frozen=True)
class Block:
    """One fenced block of a document, with the marker before it (if any)."""

    document: str
    line: int
    language: str
    kind: str | None
    name: str | None
    body: str


_FENCE = re.compile(r"^```(\S*)\n(.*?)^```\n", re.S | re.M)
_MARKER = re.compile(r"<!-- (\w+): (\S+) -->\n$")


def fenced(document: str) -> list[Block]:
    """Every fenced block of a document, in order."""
    text = (ROOT / document).read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        marker = _MARKER.search(before)
        kind, name = marker.groups() if marker else (None, None)
        line = before.count("\n") + 1
        found.append(Block(document, line, match.group(1), kind, name, match.group(2)))
    return found


def blocks(document: str, kind: str) -> dict[str, str]:
    """The fenced blocks of a document that follow a C{<!-- kind: name -->} marker."""
    return {b.name: b.body for b in fenced(document) if b.kind == kind and b.name is not None}


def marked(kind: str) -> list[tuple[str, str]]:
    """(document, name) of every block marked C{kind} that is checked in this file."""
    return [
        (document, name)
        for document in DOCUMENTS
        for name in blocks(document, kind)
        if (document, kind, name) not in CHECKED_ELSEWHERE
    ]


def test_every_text_block_is_checked() -> None:
    """Each text block of README.md and docs/ is marked for a test that reproduces it, or allowed."""
    unchecked = []
    allowed_seen = set()
    for document in DOCUMENTS:
        for block in fenced(document):
            where = f"{document}:{block.line}"
            first = block.body.splitlines()[0] if block.body else ""
            if not block.language:
                # A bare fence could hide a transcript from this check.
                unchecked.append(f"{where}: no language (text, sh, ...): {first}")
                continue
            if block.language != "text":
                continue
            allowed = {
                entry
                for entry in NOT_TRANSCRIPTS
                if entry[0] == document and first.startswith(entry[1])
            }
            if allowed:
                allowed_seen |= allowed
            elif block.kind not in TEXT_KINDS:
                unchecked.append(f"{where}: {first}")
            elif (document, block.kind, block.name) not in CHECKED_ELSEWHERE and (
                block.kind not in CHECKED_HERE or (document, block.name) not in marked(block.kind)
            ):
                unchecked.append(f"{where}: no test replays {block.kind} {block.name}")
    # Mark each with the test that shows it, or list it in NOT_TRANSCRIPTS.
    assert unchecked == [], "text blocks with no marker:\n" + "\n".join(unchecked)
    assert allowed_seen == NOT_TRANSCRIPTS, "every allowed block is still in the docs"
    for document, kind, name in CHECKED_ELSEWHERE:
        assert name in blocks(document, kind), (document, kind, name)


def start_command(document: str, name: str) -> str:
    """The C{start} block last before a document's transcript C{name}: its node's command."""
    start = None
    for block in fenced(document):
        if block.kind == "start":
            start = block.body
        elif block.kind == "transcript" and block.name == name:
            assert start is not None, f"{document}: no <!-- start: ... --> before {name}"
            return start
    raise AssertionError(f"{document}: no transcript {name}")


def test_every_transcript_has_its_start_command() -> None:
    """A transcript checked here follows, in its doc, the command that starts its node."""
    for document, name in marked("transcript"):
        assert documented_command(start_command(document, name))


def closes(transcript: str) -> bool:
    """Whether a transcript ends with a request after which the node closes: QUIT, or HTTP."""
    requests = [line for line in transcript.splitlines()[1:] if not is_reply(line)]
    return bool(requests) and (requests[-1].upper() == "QUIT" or requests[-1].startswith("GET "))


@pytest.mark.parametrize(("document", "name"), marked("transcript"))
def test_doc_transcript(tmp_path: Path, document: str, name: str) -> None:
    """A doc's transcript is exactly what a node started with the doc's own command answers."""
    for file_name, body in blocks(document, "file").items():
        (tmp_path / file_name).write_text(body)
    start = start_command(document, name)
    # "cd etc/cluster && twistd ...": the node runs among that directory's modules.
    directory = re.match(r"cd (\S+) &&", start)
    if directory is not None:
        for module in (ROOT / directory.group(1)).glob("*.py"):
            shutil.copy(module, tmp_path)
    words = documented_command(start)
    transcript = blocks(document, "transcript")[name]
    with documented_node(tmp_path, words) as node:
        client = node.connect()
        replay(client, transcript)
        if closes(transcript):
            assert client.closed_by_peer(), "QUIT (or an HTTP request) closes the connection"
        client.close()
        assert "Traceback" not in node.output()


def bash(command: str, cwd: Path, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one of a doc's shell commands as written, in C{cwd}; its output is text."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("document", "name"), marked("run"))
def test_doc_command_output(tmp_path: Path, document: str, name: str) -> None:
    """Each C{$ command} of a doc's run block prints exactly the lines shown under it."""
    steps: list[tuple[str, list[str]]] = []
    for line in blocks(document, "run")[name].splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The doc's twistd and callnet are those installed next to this Python.
    environment["PATH"] = f"{TWISTD.parent}{os.pathsep}{environment.get('PATH', '')}"
    for command, expected in steps:
        ran = bash(command, tmp_path, environment)
        actual = (ran.stdout + ran.stderr).splitlines()
        assert shown_as(actual, expected), (command, actual)


#: The refusals a TLS client reports, as tests/test_tls.py::test_clients_over_tls
#: checks them on real handshakes: the CA's suffix and the ports vary.
TLS_REFUSALS = [
    r"cannot connect to tls:127\.0\.0\.1:\d+ \(as beta\): TLS handshake failed: certificate"
    r" verify failed: the certificate names alpha, not beta",
    r"cannot connect to tls:127\.0\.0\.1:\d+: TLS handshake failed: certificate verify failed:"
    r" it is signed by 'callnet development CA [0-9a-f]{6}', not by the trusted CA",
    r"cannot connect to tls:127\.0\.0\.1:\d+: TLS handshake failed: certificate verify failed:"
    r" the certificate of '127\.0\.0\.1': it is self-signed, not signed by the trusted CA",
]


@pytest.mark.parametrize(("document", "name"), marked("messages"))
def test_doc_tls_refusals(document: str, name: str) -> None:
    """security.md's example TLS refusals are, one each, the messages the TLS tests get."""
    assert (document, name) == ("docs/security.md", "tls-refusals")
    lines = blocks(document, "messages")[name].splitlines()
    assert len(lines) == len(TLS_REFUSALS)
    for line, pattern in zip(lines, TLS_REFUSALS, strict=True):
        assert re.fullmatch(pattern, line), line


def run_python(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(("document", "name"), marked("output"))
def test_python_example(tmp_path: Path, document: str, name: str) -> None:
    """Each Python example prints exactly the output its doc shows under it."""
    code = blocks(document, "example")[name]
    expected = blocks(document, "output")[name]
    with running_node(tmp_path) as node:
        # The README talks to the default port; the test's node has its own.
        result = run_python(code.replace("127.0.0.1:7600", f"127.0.0.1:{node.port}"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


@pytest.mark.parametrize("name", ["progress-async", "progress-blocking"])
def test_progress_examples(tmp_path: Path, name: str) -> None:
    """The clients' progress examples print what docs/clients.md shows, against protocol.md's builder."""
    builder = blocks("docs/protocol.md", "file")["builder.py"]
    assert blocks("docs/procedures.md", "file")["builder.py"] == builder, "one builder in the docs"
    (tmp_path / "builder.py").write_text(builder)
    code = blocks("docs/clients.md", "example")[name]
    with running_node(tmp_path, "--service", "builder") as node:
        result = run_python(code.replace("127.0.0.1:7600", f"127.0.0.1:{node.port}"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == blocks("docs/clients.md", "output")[name]


def test_testing_doc_trial_example(tmp_path: Path) -> None:
    """docs/testing.md's trial example passes under trial."""
    (tmp_path / "greeter.py").write_text(blocks("docs/testing.md", "file")["greeter.py"])
    (tmp_path / "test_greeter.py").write_text(blocks("docs/testing.md", "test")["trial"])
    result = subprocess.run(
        [sys.executable, "-m", "twisted.trial", "test_greeter"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED (successes=3)" in result.stdout


def test_testing_doc_pytest_example(tmp_path: Path) -> None:
    """docs/testing.md's pytest example passes under pytest."""
    (tmp_path / "greeter.py").write_text(blocks("docs/testing.md", "file")["greeter.py"])
    (tmp_path / "test_greeter.py").write_text(blocks("docs/testing.md", "test")["pytest"])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_greeter.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


#: protocol.md's prose examples of input piped into nc, with what they get:
#: (`printf '...' | nc` gets `reply`, `reply`, then the close).
_PIPED = re.compile(
    r"\(`printf '([^']*)' \| nc[^`]*` gets ((?:`[^`]*`, )*`[^`]*`), then the close\)"
)


def test_protocol_piped_examples(tmp_path: Path) -> None:
    """Each piped example of protocol.md's prose gets exactly the replies it says, then the close."""
    import socket

    prose = " ".join((ROOT / "docs/protocol.md").read_text().split())
    examples = _PIPED.findall(prose)
    assert examples, "protocol.md shows what a piped QUIT gets"
    with running_node(tmp_path) as node:
        for sent, replies in examples:
            with socket.create_connection((node.host, node.port), timeout=10) as sock:
                sock.sendall(sent.replace("\\n", "\n").encode())
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := sock.recv(4096):
                    received += chunk
            assert received.decode().splitlines() == re.findall(r"`([^`]*)`", replies), sent


def test_readme_daemon_commands(tmp_path: Path) -> None:
    """README's daemon commands, run as written from a checkout (its config on a free port): the node serves, and the kill stops it and takes its pid file."""
    from .daemon import accepts, connect, free_port, require_twistd, wait_until

    require_twistd()
    [block] = [
        b.body
        for b in fenced("README.md")
        if b.language == "sh" and "--config etc/callnet.toml" in b.body
    ]
    start, stop = block.splitlines()
    assert stop == "kill $(cat twistd.pid)"
    port = free_port()
    config = (ROOT / "etc" / "callnet.toml").read_text()
    assert '"tcp:7600:interface=127.0.0.1"' in config, "the README's node listens on 7600"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "callnet.toml").write_text(config.replace("tcp:7600:", f"tcp:{port}:"))
    # The checkout's .venv, here: the one this test runs in.
    (tmp_path / ".venv").symlink_to(TWISTD.parent.parent)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(command: str) -> None:
        ran = bash(command, tmp_path, environment)
        assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", ""), command

    run(start)
    pidfile = tmp_path / "twistd.pid"
    pid = int(pidfile.read_text())
    try:
        wait_until(lambda: accepts("127.0.0.1", port), 20, "the daemon listens")
        client = connect("127.0.0.1", port)
        client.send("add 1 2")
        assert client.read_line() == "OK 3"
        client.sock.close()
        run(stop)
        wait_until(lambda: not pidfile.exists(), 20, "the stopped node's pid file is gone")
        assert "Server Shut Down." in (tmp_path / "twistd.log").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
