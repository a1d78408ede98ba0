"""
The C{callnet} command: call a node from a shell.

    callnet shell 127.0.0.1:7600
    callnet call tcp:127.0.0.1:7600 add 1 2
    callnet ping 127.0.0.1:7600 --wait 30
    callnet describe 127.0.0.1:7600 add
    callnet status 127.0.0.1:7600
    callnet certs init certs
    callnet certs node certs alpha --ip 127.0.0.1

Each argument is one value: JSON where it parses as JSON, a string otherwise;
C{name=value} passes a keyword argument.  The result is printed as JSON; a
procedure that streams has each item printed as it comes (one JSON value a
line), then its result.  A call's progress reports are drawn as a bar on
stderr when it is a terminal.
C{status} prints a node's counters and its peers as a table instead.
C{shell} is an interactive session (see L{callnet.shell}).
C{certs} makes a development CA and node certificates for TLS (see
C{docs/security.md}).

A node that requires a token gets it from C{$CALLNET_TOKEN}; C{--ca}
(with C{--cert}/C{--key} for a client certificate) connects over TLS and
checks the node's certificate names it.

Exit status: 0 success, 1 the call failed on the node, 2 a usage error,
3 the node could not be reached or the deadline passed, 130 interrupted
(Ctrl-C; a call in flight is cancelled on the node first).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from callnet.cli_format import ProgressLine, format_status
from callnet.errors import (
    CallError,
    DeadlineExceededError,
    UnavailableError,
)
from callnet.terminal import (
    EXIT_CALL_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    TOKEN_VARIABLE,
    endpoint_for,
    explain,
    explain_error,
    format_description,
)
from callnet.wire import DEFAULT_CALL_TIMEOUT, parse_words

if TYPE_CHECKING:
    from callnet.client import Client
    from callnet.reactors import DispatchReactor

#: The deadline of a call that names none, in seconds (C{--timeout}).
CALL_TIMEOUT = DEFAULT_CALL_TIMEOUT
#: The deadline of a command (ping, list, stats, status, describe), in seconds.
COMMAND_TIMEOUT = 10.0
#: C{ping --wait}: the first pause between attempts, doubled after each
#: failed one up to L{PING_RETRY_MAX}, so a node that starts at once is seen
#: at once and one that takes long is not asked too often.
PING_RETRY_FIRST = 0.05
PING_RETRY_MAX = 1.0
#: How long a finished or interrupted command waits for what it wrote (a
#: CANCEL, a cast) to leave before it exits: stopping the reactor drops
#: whatever is still unsent.
FLUSH_TIMEOUT = 1.0
#: How often it looks.
FLUSH_POLL = 0.01

#: Endpoint string prefixes that Twisted's clientFromString understands.
_ENDPOINT_KINDS = ("tcp:", "unix:", "ssl:", "tls:", "tcp6:")


def endpoint_string(text: str) -> str:
    """
    Accept C{host:port} or C{port} as shorthand for a C{tcp:} endpoint, and
    C{tcp6:HOST:PORT} or C{[HOST]:PORT} for one to an IPv6 address (Twisted's
    clients have no C{tcp6:}: C{tcp:} takes an IPv6 address with its colons
    escaped); refuse, as a usage error, a string no endpoint can be made of.
    """
    from callnet.client import check_endpoint_string

    if text.startswith("tcp6:") or (text.startswith("[") and "]:" in text):
        host, _, port = text.removeprefix("tcp6:").rpartition(":")
        host = host.removeprefix("[").removesuffix("]").replace("\\:", ":")
        if host and port.isdigit():
            text = "tcp:" + host.replace(":", "\\:") + ":" + port
    elif not text.startswith(_ENDPOINT_KINDS):
        host, _, port = text.rpartition(":")
        if not port.isdigit():
            raise argparse.ArgumentTypeError(f"not an endpoint: {text!r} ({ENDPOINT_TRY})")
        text = f"tcp:{host or '127.0.0.1'}:{port}"
    try:
        check_endpoint_string(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; {ENDPOINT_TRY}") from None
    return text


def seconds(text: str) -> float:
    """A deadline given on the command line: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


#: What a refused endpoint's message suggests.
ENDPOINT_TRY = "try 127.0.0.1:7600 or tcp:host:port or unix:/path"


#: What every command that talks to a node says under its options.
ENDPOINT_HELP = """\
endpoints:
  HOST:PORT, PORT      TCP (PORT alone: on 127.0.0.1), as tcp:HOST:PORT
  tcp:HOST:PORT        also tcp6:HOST:PORT or [HOST]:PORT for IPv6, and
                       unix:/PATH for a Unix socket
  tls:..., ssl:...     Twisted's TLS endpoint strings (trustRoots=, certificate=)
  --ca CA.pem          reach HOST:PORT over TLS, checking the node's certificate

environment:
  CALLNET_TOKEN        the token for a node that requires one (an argument
                       would show in ps and in shell histories)

exit status:
  0 success, 1 the call failed on the node, 2 a usage error, 3 the node could
  not be reached or the deadline passed, 130 interrupted by Ctrl-C (a call in
  flight is cancelled on the node first)
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Epilogs as written; each option's default, where it has one, after its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.help is None:
            return action.help
        if "default" in action.help:
            return action.help
        return super()._get_help_string(action)


def package_version() -> str:
    """The installed callnet's version, from its package metadata."""
    try:
        return version("callnet")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callnet",
        description="Call procedures on a callnet node.",
        epilog=ENDPOINT_HELP + "\nRun callnet COMMAND --help for a command's options.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"callnet {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str | None = None) -> Any:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=description or help_text[0].upper() + help_text[1:] + ".",
            epilog=ENDPOINT_HELP,
            formatter_class=_HelpFormatter,
        )
        sub.add_argument("endpoint", type=endpoint_string, metavar="ENDPOINT")
        return sub

    shell = command(
        "shell",
        "type calls and commands interactively, with history and completion",
        "An interactive session with a node: type calls (add 1 2) and commands"
        " (HELP, LIST, PING, STATS) as on the wire; answers are printed as indented"
        " JSON. Tab completes procedure names; a line with an open bracket or quote"
        " goes on at the next. Ctrl-C clears the line, or cancels the call in flight;"
        " Ctrl-D leaves. History is kept in $XDG_STATE_HOME/callnet/history (or"
        " ~/.callnet_history). Colours are off with NO_COLOR set or when output is"
        " not a terminal.",
    )
    shell.add_argument(
        "--timeout", type=seconds, default=CALL_TIMEOUT, help="a call's deadline in seconds"
    )
    from callnet.shell import HISTORY_LENGTH

    shell.add_argument(
        "--history-size",
        type=int,
        default=HISTORY_LENGTH,
        metavar="LINES",
        help="how many requests the history file keeps (0: keep none)",
    )
    _connection_options(shell)
    for name, help_text in (
        ("call", "call a procedure and print its result (a stream's items first) as JSON"),
        ("cast", "send a call that wants no reply"),
    ):
        sub = command(name, help_text)
        sub.add_argument("procedure", metavar="PROCEDURE")
        sub.add_argument("arguments", nargs="*", metavar="ARG", help="JSON value or word; k=v")
        sub.add_argument(
            "--timeout", type=seconds, default=CALL_TIMEOUT, help="deadline in seconds"
        )
        _connection_options(sub)
    describe = command(
        "describe",
        "show a procedure's signature and doc",
        "Show a procedure's signature, its doc, where it runs and whether it is"
        " idempotent (the node's HELP PROCEDURE).",
    )
    describe.add_argument("procedure", metavar="PROCEDURE")
    describe.add_argument(
        "--timeout", type=seconds, default=COMMAND_TIMEOUT, help="deadline in seconds"
    )
    _connection_options(describe)
    for name, help_text in (
        ("ping", "check that a node answers"),
        ("list", "list a node's procedures"),
        ("stats", "show a node's counters as JSON"),
        ("status", "show a node's counters and each of its peers as a table"),
    ):
        sub = command(name, help_text)
        if name == "ping":
            sub.add_argument(
                "--wait",
                type=seconds,
                default=None,
                metavar="SECONDS",
                help="wait for the node: try again, backing off, until it answers or"
                " SECONDS have passed (exit 0, or 3 if it never answered)",
            )
        sub.add_argument(
            "--timeout", type=seconds, default=COMMAND_TIMEOUT, help="deadline in seconds"
        )
        _connection_options(sub)
    _certs_parser(commands)
    return parser


#: The environment variable a token is read from: a token given as an
#: argument would show in C{ps} and in shell histories.


def _connection_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--ca",
        metavar="PEM",
        help="connect over TLS, trusting this CA certificate (the node listens with tls:)",
    )
    sub.add_argument("--cert", metavar="PEM", help="a client certificate to present (with --ca)")
    sub.add_argument("--key", metavar="PEM", help="the client certificate's key")
    sub.add_argument(
        "--name", metavar="NAME", help="the name the node's certificate must give (default: host)"
    )


def _certs_parser(commands: Any) -> None:
    certs = commands.add_parser(
        "certs",
        help="make a development CA and node certificates for TLS",
        description="Make a development CA and certificates for nodes, for [tls].",
    )
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init", help="make a CA: DIR/ca.pem and DIR/ca.key (EC P-256, mode 0600)"
    )
    init.add_argument("directory", metavar="DIR")
    node = actions.add_parser(
        "node", help="make DIR/NAME.pem and DIR/NAME.key, signed by the CA in DIR"
    )
    node.add_argument("directory", metavar="DIR")
    node.add_argument("name", metavar="NAME", help="the node's name, as in [node] name")
    node.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an IP address clients reach the node at (repeat for more)",
    )
    node.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="HOSTNAME",
        help="another DNS name clients reach the node by (repeat for more)",
    )
    for sub in (init, node):
        sub.add_argument(
            "--days",
            type=int,
            default=365,
            help="how long the certificate lasts, in days [default: 365]",
        )
        sub.add_argument("--force", action="store_true", help="overwrite existing files")


def _certs(options: argparse.Namespace) -> int:
    """Run C{callnet certs ...}; return the exit status."""
    from callnet.errors import ConfigError
    from callnet.tls import make_ca, make_node_certificate

    try:
        if options.certs_command == "init":
            paths = make_ca(options.directory, days=options.days, force=options.force)
        else:
            paths = make_node_certificate(
                options.directory,
                options.name,
                ips=options.ip,
                dns=options.dns,
                days=options.days,
                force=options.force,
            )
    except (ConfigError, OSError) as e:
        print(f"callnet certs: {e}", file=sys.stderr)
        return EXIT_USAGE
    for path in paths:
        print(f"wrote {path}")
    return EXIT_OK


async def _ping_until(
    client: Client, reactor: DispatchReactor, wait: float, timeout: float
) -> Any:
    """
    Ping until the node answers or C{wait} seconds have passed, pausing
    between attempts from L{PING_RETRY_FIRST} doubling to L{PING_RETRY_MAX}.
    An error other than "unreachable" is an answer, and ends the wait.
    """
    from twisted.internet.task import deferLater

    from callnet.reactors import twisted_clock

    give_up = reactor.seconds() + wait
    pause = PING_RETRY_FIRST
    while True:
        left = give_up - reactor.seconds()
        try:
            return await client.ping(timeout=max(min(timeout, left), 0.001))
        except (UnavailableError, DeadlineExceededError) as e:
            left = give_up - reactor.seconds()
            if left <= 0:
                raise UnavailableError(
                    f"no answer from {client.address} within {wait:g}s: {e.message}",
                    e.outcome,
                    e.node,
                ) from None
            await deferLater(twisted_clock(reactor), min(pause, left), lambda: None)
            pause = min(pause * 2, PING_RETRY_MAX)


async def _call(client: Any, options: argparse.Namespace, bar: ProgressLine) -> Any:
    """
    C{callnet call}: the call's result, asking for progress; a procedure
    that streams (the node refuses a plain call to it) is asked again as a
    stream, and its items printed as they come.
    """
    from callnet.client_stream import asks_for_a_stream

    args, kwargs = parse_words(options.arguments)
    calls = client.with_progress(bar.show)
    try:
        return await calls.call(options.procedure, *args, **kwargs)
    except CallError as e:
        if not asks_for_a_stream(e):
            raise
    stream = calls.stream(options.procedure, *args, **kwargs)
    async for item in stream:
        bar.clear()
        print(json.dumps(item, ensure_ascii=False), flush=True)
    return stream.result


async def _run(options: argparse.Namespace, reactor: DispatchReactor) -> Any:
    from callnet.client import Client

    client = Client(
        endpoint_for(options, reactor),
        reactor,
        timeout=options.timeout,
        token=os.environ.get(TOKEN_VARIABLE) or None,
    )
    try:
        if options.command == "call":
            bar = ProgressLine(sys.stderr)
            try:
                return await _call(client, options, bar)
            finally:
                bar.clear()
        if options.command == "cast":
            args, kwargs = parse_words(options.arguments)
            await client.cast(options.procedure, *args, **kwargs)
            return None
        if options.command == "status":
            stats = await client.command("STATS")
            # What the node serves itself: HELP describes peers' procedures
            # too (LIST names them all), and marks its own with where they run.
            described = await client.command("HELP")
            local = [entry["name"] for entry in described if "run" in entry]
            return stats, local
        if options.command == "describe":
            return await client.command("HELP", options.procedure)
        if options.command == "ping" and options.wait is not None:
            return await _ping_until(client, reactor, options.wait, options.timeout)
        return await client.command(options.command.upper())
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    options = _parser().parse_args(argv)
    if options.command == "certs":
        return _certs(options)
    if getattr(options, "ca", None) is not None and not options.endpoint.startswith(
        ("tcp:", "tcp6:")
    ):
        print("callnet: --ca needs a tcp endpoint (host:port)", file=sys.stderr)
        return EXIT_USAGE
    if options.command in ("call", "cast"):
        try:
            parse_words(options.arguments)
        except ValueError as e:
            print(f"callnet: {e}", file=sys.stderr)
            return EXIT_USAGE
    if options.command == "shell":
        from callnet.shell import run_shell

        return run_shell(options)

    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.python.failure import Failure

    reactor: Any = global_reactor  # the entry point owns the global reactor, all of it

    outcome: list[Any] = []
    running: list[Deferred[Any]] = []
    interrupted: list[bool] = []

    def finish(result: Any) -> None:
        outcome.append(result)
        stop_when_sent(reactor.seconds() + FLUSH_TIMEOUT)

    def stop_when_sent(deadline: float) -> None:
        if not reactor.getWriters() or reactor.seconds() >= deadline:
            reactor.stop()
        else:
            reactor.callLater(FLUSH_POLL, stop_when_sent, deadline)

    def start() -> None:
        if not interrupted:
            running.append(ensureDeferred(_run(options, reactor)))
            running[0].addBoth(finish)

    def interrupt() -> None:
        if interrupted or outcome:
            return
        interrupted.append(True)
        if running:
            # The client sends CANCEL for the call, then closes.
            running[0].cancel()
        else:
            finish(None)

    def on_sigint(number: int, frame: Any) -> None:
        reactor.callFromThread(interrupt)

    # Ctrl-C is handled here rather than by the reactor, which would stop at
    # once and leave the call running on the node.
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        reactor.callWhenRunning(start)
        reactor.run(installSignalHandlers=False)
    finally:
        signal.signal(signal.SIGINT, previous)

    [result] = outcome
    if interrupted:
        cancelled = f"; {options.procedure} was cancelled on the node" if running else ""
        if options.command != "call":
            cancelled = ""
        print(f"callnet: interrupted{cancelled}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not isinstance(result, Failure):
        if options.command == "status":
            stats, local = result
            print(format_status(stats, local))
        elif options.command == "describe":
            print(format_description(result))
        elif options.command != "cast":
            print(json.dumps(result, ensure_ascii=False))
        return EXIT_OK
    failure = result
    error = failure.value
    if not isinstance(error, CallError):
        print(f"callnet: {explain(failure.getErrorMessage(), options)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"callnet: {explain_error(error, options)}", file=sys.stderr)
    if isinstance(error, DeadlineExceededError | UnavailableError):
        return EXIT_UNREACHABLE
    return EXIT_CALL_FAILED


if __name__ == "__main__":
    sys.exit(main())
