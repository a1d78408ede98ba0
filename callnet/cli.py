"""
The C{callnet} command: call a node from a shell.

    callnet call tcp:127.0.0.1:7600 add 1 2
    callnet ping 127.0.0.1:7600
    callnet status 127.0.0.1:7600
    callnet certs init certs
    callnet certs node certs alpha --ip 127.0.0.1

Each argument is one value: JSON where it parses as JSON, a string otherwise;
C{name=value} passes a keyword argument.  The result is printed as JSON.
C{status} prints a node's counters and its peers as a table instead.
C{certs} makes a development CA and node certificates for TLS (see
C{docs/security.md}).

A node that requires a token gets it from C{$CALLNET_TOKEN}; C{--ca}
(with C{--cert}/C{--key} for a client certificate) connects over TLS and
checks the node's certificate names it.

Exit status: 0 success, 1 the call failed on the node, 2 a usage error,
3 the node could not be reached or the deadline passed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from callnet.errors import CallError, DeadlineExceededError, UnavailableError
from callnet.wire import parse_words

EXIT_OK = 0
EXIT_CALL_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

#: Endpoint string prefixes that Twisted's clientFromString understands.
_ENDPOINT_KINDS = ("tcp:", "unix:", "ssl:", "tls:", "tcp6:")


def endpoint_string(text: str) -> str:
    """Accept C{host:port} or C{port} as shorthand for a C{tcp:} endpoint."""
    if text.startswith(_ENDPOINT_KINDS):
        return text
    host, _, port = text.rpartition(":")
    if port.isdigit():
        return f"tcp:{host or '127.0.0.1'}:{port}"
    raise argparse.ArgumentTypeError(
        f"not an endpoint: {text!r} (try 127.0.0.1:7600 or tcp:host:port or unix:/path)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callnet", description="Call procedures on a callnet node."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("call", "call a procedure and print its result as JSON"),
        ("cast", "send a call that wants no reply"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("endpoint", type=endpoint_string, metavar="ENDPOINT")
        sub.add_argument("procedure", metavar="PROCEDURE")
        sub.add_argument("arguments", nargs="*", metavar="ARG", help="JSON value or word; k=v")
        sub.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
        _connection_options(sub)
    for name, help_text in (
        ("ping", "check that a node answers"),
        ("list", "list a node's procedures"),
        ("stats", "show a node's counters as JSON"),
        ("status", "show a node's counters and each of its peers as a table"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("endpoint", type=endpoint_string, metavar="ENDPOINT")
        sub.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
        _connection_options(sub)
    _certs_parser(commands)
    return parser


#: The environment variable a token is read from: a token given as an
#: argument would show in C{ps} and in shell histories.
TOKEN_VARIABLE = "CALLNET_TOKEN"  # noqa: S105 (a variable's name, not a secret)


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


def _endpoint(options: argparse.Namespace, reactor: Any) -> Any:
    """The endpoint string, or with --ca a TLS endpoint checking the node's name."""
    if options.ca is None:
        return options.endpoint
    from callnet.tls import client_endpoint

    kind, _, rest = options.endpoint.partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("tcp", "tcp6") or not port.isdigit():
        raise ValueError(f"--ca needs a tcp: endpoint (host:port), not {options.endpoint!r}")
    return client_endpoint(
        reactor, host, int(port), options.ca, options.cert, options.key, name=options.name
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


#: Widest the procedures column of C{status} grows before it is cut short.
PROCEDURES_WIDTH = 60


def format_status(stats: Mapping[str, Any], local: Collection[str] = ()) -> str:
    """
    A node's C{STATS} as C{callnet status} prints it: a line for the node,
    then, if it has peers, a table with a row for each.

    @param local: the procedures the node serves itself.  A peer's row names
        the procedures it serves that the node does not (what is forwarded
        to it), and counts the others.
    """
    lines = [
        f"node {stats.get('node', '?')}: {stats.get('connections', 0)} connections,"
        f" {stats.get('calls', 0)} calls, {stats.get('errors', 0)} errors,"
        f" {stats.get('in_flight', 0)} in flight"
    ]
    peers: Mapping[str, Mapping[str, Any]] = stats.get("peers") or {}
    if not peers:
        lines.append("no peers")
        return "\n".join(lines)
    rows = [("peer", "state", "endpoint", "in flight", "procedures")]
    for name, peer in peers.items():
        rows.append(
            (
                name,
                str(peer.get("state", "?")),
                str(peer.get("endpoint", "?")),
                str(peer.get("in_flight", 0)),
                _procedures(peer.get("procedures") or [], set(local)),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        name, state, endpoint, in_flight, procedures = row
        lines.append(
            f"{name:<{widths[0]}}  {state:<{widths[1]}}  {endpoint:<{widths[2]}}"
            f"  {in_flight:>{widths[3]}}  {procedures}"
        )
    return "\n".join(lines)


def _procedures(names: Sequence[str], local: set[str]) -> str:
    """A peer's procedures: those not served here by name, then how many are."""
    own = sorted(name for name in names if name not in local)
    shared = len(names) - len(own)
    if not names:
        return "-"
    if not own:
        return f"({shared} also served here)"
    text = _procedure_list(own)
    return f"{text} (+{shared} also served here)" if shared else text


def _procedure_list(names: Sequence[str], width: int = PROCEDURES_WIDTH) -> str:
    """Names joined by commas, cut short to about C{width} with a count of the rest."""
    text = ", ".join(names)
    if len(text) <= width:
        return text
    if len(names) == 1:
        return text[: max(width - 3, 1)] + "..."
    for count in range(len(names) - 1, 1, -1):
        text = ", ".join(names[:count]) + f", ... (+{len(names) - count} more)"
        if len(text) <= width:
            return text
    return f"{names[0]}, ... (+{len(names) - 1} more)"


async def _run(options: argparse.Namespace, reactor: Any) -> Any:
    from callnet.client import Client

    client = Client(
        _endpoint(options, reactor),
        reactor,
        timeout=options.timeout,
        token=os.environ.get(TOKEN_VARIABLE) or None,
    )
    try:
        if options.command == "call":
            args, kwargs = parse_words(options.arguments)
            return await client.call(options.procedure, *args, **kwargs)
        if options.command == "cast":
            args, kwargs = parse_words(options.arguments)
            await client.cast(options.procedure, *args, **kwargs)
            return None
        if options.command == "status":
            stats = await client.command("STATS")
            # LIST names what peers serve too; HELP says where each one runs.
            described = await client.command("HELP")
            here = stats.get("node")
            local = [entry["name"] for entry in described if here in entry.get("nodes", [here])]
            return stats, local
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

    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def finish(result: Any) -> None:
        outcome.append(result)
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(_run(options, reactor)).addBoth(finish))
    reactor.run()

    [result] = outcome
    if not isinstance(result, Failure):
        if options.command == "status":
            stats, local = result
            print(format_status(stats, local))
        elif options.command != "cast":
            print(json.dumps(result, ensure_ascii=False))
        return EXIT_OK
    failure = result
    error = failure.value
    if not isinstance(error, CallError):
        print(f"callnet: {failure.getErrorMessage()}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"callnet: {error}", file=sys.stderr)
    if isinstance(error, DeadlineExceededError | UnavailableError):
        return EXIT_UNREACHABLE
    return EXIT_CALL_FAILED


if __name__ == "__main__":
    sys.exit(main())
