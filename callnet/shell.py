"""
C{callnet shell ENDPOINT}: a session with a node for a person at a terminal.

    $ callnet shell 127.0.0.1:7600
    connected to tcp:127.0.0.1:7600: HELP lists procedures, Tab completes, Ctrl-D leaves
    127.0.0.1:7600> add 1 2
    3
    127.0.0.1:7600> echo {"a": [1,
    ...   2]}
    {
      "a": [
        1,
        2
      ]
    }

Lines are typed as on the wire (see C{docs/protocol.md}) and sent as tagged
requests through a L{BlockingClient}, so answers come back as JSON and are
printed indented; errors are printed as the wire shows them, in red where
the terminal takes colour.  Line editing, history and completion come from
Python's C{readline}.  A line with an open bracket or an open string goes on
at the next (the continuation prompt is C{...}).

A procedure that streams prints each item as it comes, then its result;
the shell learns that it streams from the node's refusal of a plain call,
and asks for it as a stream from then on.

Ctrl-C at the prompt clears the line; during a call (or a stream) it
cancels the call on the node and comes back to the prompt.  Ctrl-D (or C{QUIT}) leaves, with
status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO, cast

from callnet.client_stream import asks_for_a_stream
from callnet.errors import (
    CallError,
    DeadlineExceededError,
    UnauthenticatedError,
    UnavailableError,
)
from callnet.reactors import DispatchReactor
from callnet.wire import BadLine, Call, Command, encode_failure, parse_line

#: How many requests the history file keeps: enough for weeks of use, small
#: enough to read at every start (C{--history-size}).
HISTORY_LENGTH = 1000
#: The prompt of a line that goes on an unfinished one.
CONTINUATION_PROMPT = "... "
#: The commands offered for completion, with the procedures.
COMMANDS = ("HELP", "LIST", "PING", "STATS", "QUIT")
#: Commands that mean nothing in the shell, and what to do instead.
_NOT_HERE = {
    "CANCEL": "the shell makes one call at a time: Ctrl-C cancels it",
    "AUTH": "set CALLNET_TOKEN to the token and start the shell again",
}

#: Keyword arguments the client's call takes as its own options.
_CLIENT_OPTIONS = frozenset({"timeout", "key", "trace"})

_RED = "\x1b[31m"
_RESET = "\x1b[0m"


class Requester(Protocol):
    """What the shell needs of a client (a L{callnet.BlockingClient})."""

    def call(self, procedure: str, /, *args: Any, **kwargs: Any) -> Any: ...
    def stream(self, procedure: str, /, *args: Any, **kwargs: Any) -> Any: ...
    def cast(self, procedure: str, /, *args: Any, **kwargs: Any) -> None: ...
    def command(self, verb: str, *args: Any, timeout: float | None = None) -> Any: ...


# --- Pieces that need no terminal --------------------------------------------------


def history_path(environ: Mapping[str, str], home: Path) -> Path:
    """
    Where the history is kept: under C{$XDG_STATE_HOME} when that is set (the
    XDG base directory rule for state), else C{~/.callnet_history}.
    """
    state = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(state):
        return Path(state) / "callnet" / "history"
    return home / ".callnet_history"


def use_colour(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """
    Whether to colour what goes to C{stream}: only a terminal that is not
    C{dumb}, and never with C{NO_COLOR} set to anything (no-color.org).
    """
    if environ.get("NO_COLOR"):
        return False
    if environ.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


def is_terminal(stream: object) -> bool:
    """Whether C{stream} is a terminal (not a pipe or a file)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _read_unprompted(prompt: str) -> str:
    """C{input()} without its prompt: for lines that come from a pipe."""
    return input()


def _scan(text: str) -> tuple[int, bool]:
    """How many brackets C{text} leaves open, and whether it ends inside a string."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}" and depth > 0:
            depth -= 1
    return depth, in_string


def is_unfinished(text: str) -> bool:
    """Whether C{text} leaves a bracket or a JSON string open: the request goes on."""
    depth, in_string = _scan(text)
    return depth > 0 or in_string


def continue_with(text: str, more: str) -> str:
    """
    Join the next line to an unfinished request: inside a string the line
    break stays a line break (C{\\n}); elsewhere it is a space, as JSON allows.
    """
    _, in_string = _scan(text)
    return f"{text}\\n{more}" if in_string else f"{text} {more}"


def completions(before: str, prefix: str, names: Iterable[str]) -> list[str]:
    """
    What C{prefix} may complete to, given the line C{before} it: a procedure
    or a command as the first word (after any C{#tag} and C{+options}), a
    procedure after C{HELP}; nothing elsewhere.  Commands keep the case the
    word was begun in.
    """
    words = [word for word in before.split() if not word.startswith(("#", "+"))]
    if not words:
        commands = [c.lower() if prefix[:1].islower() else c for c in COMMANDS]
        candidates = [*sorted(set(names)), *commands]
    elif len(words) == 1 and words[0].upper() == "HELP":
        candidates = sorted(set(names))
    else:
        return []
    return [c for c in candidates if c.startswith(prefix) or c.startswith(prefix.upper())]


def format_value(value: Any) -> str:
    """An answer as the shell prints it: JSON, indented."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def format_help(descriptions: Sequence[Mapping[str, Any]]) -> str:
    """
    The node's tagged C{HELP} as a table: each procedure's usage and summary,
    marked as the node's own untagged C{HELP} marks them: a stream
    C{[stream]}, one only peers serve C{[on beta, gamma]}.
    """
    rows = []
    for entry in descriptions:
        usage = str(entry.get("name", "?")) + str(entry.get("signature", "(...)"))
        summary = str(entry.get("doc") or "").strip().split("\n", 1)[0]
        if entry.get("stream"):
            usage += " [stream]"
        nodes = entry.get("nodes")
        if "run" not in entry and isinstance(nodes, list) and nodes:
            summary = f"[on {', '.join(str(node) for node in nodes)}] {summary}"
        rows.append((usage, summary))
    width = min(max((len(usage) for usage, _ in rows), default=0), 48)
    lines = [f"{usage:<{width}}  {summary}".rstrip() for usage, summary in rows]
    lines += [
        "",
        "Commands: HELP [name], LIST, PING, STATS, QUIT",
        "Call with: name arg1 arg2 key=value   (arguments are JSON or bare words)",
    ]
    return "\n".join(lines)


def error_line(error: CallError) -> str:
    """An error as the wire shows it: C{ERR CODE outcome @node message}."""
    return encode_failure(error).decode("utf-8", "replace").rstrip("\n")


# --- The session -----------------------------------------------------------------


class Shell:
    """
    Reads requests, sends them, prints the answers.

    @param client: sends the requests.
    @param out: where answers and errors go.
    @param colour: whether to colour errors.
    @param token_set: whether C{CALLNET_TOKEN} was given, to say what to do
        about an C{UNAUTHENTICATED} error.
    """

    def __init__(
        self, client: Requester, out: TextIO, colour: bool = False, token_set: bool = False
    ) -> None:
        self.client = client
        self.out = out
        self.colour = colour
        self.token_set = token_set
        #: The node's procedures, for completion.
        self.names: list[str] = []
        #: Procedures found to stream: asked for as streams at once.
        self.streams: set[str] = set()
        #: Complete requests as typed, for the history.
        self.on_request: Callable[[str], object] = lambda text: None

    def show(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def show_error(self, text: str) -> None:
        self.show(f"{_RED}{text}{_RESET}" if self.colour else text)

    def read_request(self, read: Callable[[str], str], prompt: str) -> str:
        """Read one request, going on to more lines while it is unfinished."""
        text = read(prompt)
        while is_unfinished(text):
            text = continue_with(text, read(CONTINUATION_PROMPT))
        return text

    def run(self, read: Callable[[str], str], prompt: str) -> int:
        """Read and answer requests until the end of input or C{QUIT}; the exit status."""
        from callnet.terminal import EXIT_OK

        while True:
            try:
                text = self.read_request(read, prompt)
            except KeyboardInterrupt:
                # The line (and any unfinished request) is dropped.
                self.show("")
                continue
            except EOFError:
                if prompt:
                    self.show("")  # off the prompt's line
                return EXIT_OK
            if not text.strip():
                continue
            self.on_request(text)
            try:
                if not self.answer(text):
                    return EXIT_OK
            except KeyboardInterrupt:
                self.show("")
                self.show_error("cancelled: the node was told to stop the call")

    def answer(self, text: str) -> bool:
        """Send one request and print its answer; C{False} when the session should end."""
        event = parse_line(text.encode("utf-8", "surrogateescape"))
        try:
            if type(event) is Call:
                self._call(event)
            elif type(event) is Command:
                return self._command(event)
            elif type(event) is BadLine:
                self.show_error(error_line(event.error))
            elif event is not None:
                self.show_error("that is a reply, not a request: type a procedure and arguments")
        except CallError as e:
            self._failed(e)
        return True

    def _call(self, call: Call) -> None:
        clash = sorted(_CLIENT_OPTIONS & call.kwargs.keys())
        if clash:
            # The client would take them as the call's own options.
            names = ", ".join(f"{name}=" for name in clash)
            self.show_error(f"the shell cannot pass {names} to a procedure: give it by position")
            return
        options: dict[str, Any] = {}
        if call.cast:
            self.client.cast(call.procedure, *call.args, **call.kwargs)
            self.show("sent")
            return
        if call.timeout is not None:
            options["timeout"] = call.timeout
        if call.key is not None:
            options["key"] = call.key
        if call.trace is not None:
            options["trace"] = call.trace
        if call.procedure not in self.streams:
            try:
                result = self.client.call(call.procedure, *call.args, **options, **call.kwargs)
            except CallError as e:
                if not asks_for_a_stream(e):
                    raise
                self.streams.add(call.procedure)  # ask it as a stream from now on
            else:
                self.show(format_value(result))
                return
        if options.pop("key", None) is not None:
            self.show_error(f"{call.procedure} streams, and a stream takes no +key")
            return
        with self.client.stream(call.procedure, *call.args, **options, **call.kwargs) as items:
            for item in items:
                self.show(format_value(item))
            self.show(format_value(items.result))

    def _command(self, command: Command) -> bool:
        verb = command.verb.upper()
        if verb == "QUIT":
            return False
        if verb in _NOT_HERE:
            self.show_error(f"{verb}: {_NOT_HERE[verb]}")
            return True
        answer = self.client.command(verb, *command.args)
        if verb == "HELP" and not command.args and isinstance(answer, list):
            self.show(format_help(answer))
            self.names = [str(entry.get("name")) for entry in answer if isinstance(entry, dict)]
        elif verb == "HELP" and isinstance(answer, dict):
            from callnet.terminal import format_description

            self.show(format_description(answer))
        else:
            if verb == "LIST" and isinstance(answer, list):
                self.names = [name for name in answer if isinstance(name, str)]
            self.show(format_value(answer))
        return True

    def _failed(self, error: CallError) -> None:
        self.show_error(error_line(error))
        if isinstance(error, UnauthenticatedError):
            if self.token_set:
                self.show_error("the node refused the token in CALLNET_TOKEN")
            else:
                self.show_error(
                    "the node requires a token: set CALLNET_TOKEN and start the shell again"
                )


# --- The terminal ----------------------------------------------------------------


def _complete_with(shell: Shell) -> Callable[[str, int], str | None]:
    """A readline completer over the shell's names and the commands."""
    import readline

    found: list[str] = []

    def complete(prefix: str, state: int) -> str | None:
        if state == 0:
            before = readline.get_line_buffer()[: readline.get_begidx()]
            found[:] = completions(before, prefix, shell.names)
        return found[state] + " " if state < len(found) else None

    return complete


def _start_readline(shell: Shell, path: Path, length: int) -> Callable[[], None]:
    """Set up editing, completion and history; return what saves the history at the end."""
    try:
        import readline
    except ImportError:  # a Python built without it: plain input() still works
        return lambda: None

    readline.set_auto_history(False)
    readline.set_completer_delims(" \t\n")
    readline.set_completer(_complete_with(shell))
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    readline.set_history_length(length)
    if length > 0:
        # None yet, or unreadable: start afresh.
        with contextlib.suppress(OSError):
            readline.read_history_file(path)

    def remember(text: str) -> None:
        # A token typed by mistake is not kept on disk.
        if length > 0 and text.split(maxsplit=1)[0].upper() != "AUTH":
            readline.add_history(text)

    shell.on_request = remember

    def save() -> None:
        if length <= 0:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            readline.write_history_file(path)
            # The history holds arguments: for this user's eyes only.
            path.chmod(0o600)
        except OSError as e:
            print(f"callnet: cannot keep the history in {path}: {e}", file=sys.stderr)

    return save


def _start_reactor_thread() -> None:
    """
    Start the blocking client's reactor thread with SIGINT blocked in it, so
    that Ctrl-C always reaches the main thread: one taken by the reactor
    thread would leave the main thread asleep in readline, deaf to it.
    """
    from callnet.blocking import default_reactor_thread

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        default_reactor_thread().ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def run_shell(options: argparse.Namespace) -> int:
    """Run C{callnet shell}: connect, then read and answer until the end; the exit status."""
    from callnet.blocking import BlockingClient
    from callnet.errors import ConfigError
    from callnet.terminal import (
        EXIT_INTERRUPTED,
        EXIT_UNREACHABLE,
        EXIT_USAGE,
        TOKEN_VARIABLE,
        endpoint_for,
        explain_error,
    )

    token = os.environ.get(TOKEN_VARIABLE) or None
    endpoint: Any = options.endpoint
    if options.ca is not None:
        from twisted.internet import reactor

        try:
            endpoint = endpoint_for(options, cast(DispatchReactor, reactor))
        except (ConfigError, ValueError) as e:
            print(f"callnet: {e}", file=sys.stderr)
            return EXIT_USAGE
    _start_reactor_thread()
    client = BlockingClient(endpoint, timeout=options.timeout, token=token)
    shell = Shell(client, sys.stdout, use_colour(sys.stdout, os.environ), token is not None)
    try:
        try:
            names = client.command("LIST")
            shell.names = [name for name in names if isinstance(name, str)]
        except (UnavailableError, DeadlineExceededError) as e:
            print(f"callnet: {explain_error(e, options)}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except CallError as e:
            shell._failed(e)  # refused, say for want of a token: HELP may still work
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        # Read from a pipe, the answers are printed alone: no banner, no prompts.
        interactive = is_terminal(sys.stdin)
        if interactive:
            shell.show(
                f"connected to {client.address}: HELP lists procedures, Tab completes,"
                " Ctrl-D leaves"
            )
        save = _start_readline(
            shell,
            history_path(os.environ, Path.home()),
            options.history_size,
        )
        prompt = options.endpoint.removeprefix("tcp:") + "> "
        try:
            return shell.run(input, prompt) if interactive else shell.run(_read_unprompted, "")
        finally:
            save()
    finally:
        client.close()
