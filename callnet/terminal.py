"""
What the C{callnet} command and its shell share: exit statuses, the token's
variable, the endpoint a command line names, and failures said in words.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from callnet.errors import CallError, UnauthenticatedError, UnavailableError
from callnet.reactors import DispatchReactor

EXIT_OK = 0
EXIT_CALL_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
#: Interrupted by Ctrl-C (SIGINT): 128 + the signal's number, as shells report it.
EXIT_INTERRUPTED = 128 + signal.SIGINT

TOKEN_VARIABLE = "CALLNET_TOKEN"  # noqa: S105 (a variable's name, not a secret)

#: How long the check that an endpoint speaks TLS (after a plain connection
#: closed unanswered) may take: it only decides how an error is worded.
TLS_PROBE_TIMEOUT = 2.0


def endpoint_for(options: argparse.Namespace, reactor: DispatchReactor) -> Any:
    """The endpoint string, or with --ca a TLS endpoint checking the node's name."""
    if options.ca is None:
        return options.endpoint
    from callnet.tls import client_endpoint

    kind, _, rest = options.endpoint.partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("tcp", "tcp6") or not port.isdigit():
        raise ValueError(f"--ca needs a tcp: endpoint (host:port), not {options.endpoint!r}")
    host = host.replace("\\:", ":")  # an IPv6 address, as endpoint_string escapes it
    return client_endpoint(
        reactor, host, int(port), options.ca, options.cert, options.key, name=options.name
    )


def format_description(description: Mapping[str, Any]) -> str:
    """
    A procedure's description (the node's tagged C{HELP name}) as a person
    reads it: its usage, its doc indented, then where it runs.
    """
    name = str(description.get("name", "?"))
    lines = [name + str(description.get("signature", "(...)"))]
    doc = str(description.get("doc") or "")
    if doc:
        lines += ["", *("    " + line if line else "" for line in doc.splitlines())]
    nodes = description.get("nodes")
    nodes = [str(node) for node in nodes] if isinstance(nodes, list) else []
    if "run" in description:
        # Served by the node asked (first of its nodes), maybe by peers too.
        notes = [f"runs in: {description['run']}"]
        if len(nodes) > 1:
            notes.append(f"also on: {', '.join(nodes[1:])}")
    else:
        notes = [f"runs on: {', '.join(nodes) or '?'}"]
    if description.get("stream"):
        notes.insert(0, "a stream: answers with ITEM lines, then OK")  # as the node words it
    if description.get("idempotent"):
        notes.append("idempotent")
    known = {"name", "signature", "doc", "run", "idempotent", "nodes", "stream"}
    notes += [f"{key}: {_plain(value)}" for key, value in description.items() if key not in known]
    lines += ["", "; ".join(notes)]
    return "\n".join(lines)


def _plain(value: Any) -> str:
    """A value in a note: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ", ".join(value)
    return json.dumps(value, ensure_ascii=False)


# --- Errors in words ---------------------------------------------------------------

#: OpenSSL's reasons, as they appear in its error tuples, in words.
_TLS_REASONS = (
    (
        "certificate required",
        "the node requires a client certificate signed by its CA (--cert and --key,"
        " or certificate= and privateKey= in a tls: string)",
    ),
    ("unknown ca", "the node does not trust the CA that signed this client's certificate"),
    ("bad certificate", "the node refused this client's certificate"),
    ("certificate unknown", "the node refused this client's certificate"),
    ("certificate expired", "a certificate has expired"),
    (
        "certificate verify failed",
        "the node's certificate is not signed by a CA this client trusts (trustRoots= or --ca)",
    ),
    ("wrong version number", "the other end does not speak TLS (is the port a tcp: listener?)"),
    ("packet length too long", "the other end does not speak TLS (is the port a tcp: listener?)"),
)
#: OpenSSL's reasons when a plain port is asked for TLS.
_NOT_TLS = ("wrong version number", "packet length too long")
#: OpenSSL's error tuples in a message: [('SSL routines', '', 'reason'), ...].
_OPENSSL_TUPLES = re.compile(r"\[\((?:'[^']*'(?:, )?)+\)(?:, \((?:'[^']*'(?:, )?)+\))*\]")


def explain(message: str, options: argparse.Namespace) -> str:
    """
    A failure's message for a person: OpenSSL's error tuples replaced by
    what they mean, and a plain connection that a TLS port closed unanswered
    said to be that.
    """
    raw = _OPENSSL_TUPLES.search(message)
    if raw is not None:
        reasons = re.findall(r"'([^']*)'\)", raw.group(0))
        for needle, meaning in _TLS_REASONS:
            if any(needle in reason for reason in reasons):
                return f"TLS failed: {meaning}."
        return f"TLS failed: {', '.join(r for r in reasons if r) or 'no reason given'}."
    if getattr(options, "ca", None) is not None and any(needle in message for needle in _NOT_TLS):
        return (
            f"{options.endpoint[4:]} does not speak TLS: drop --ca, or give the"
            " port of the node's tls: listener."
        )
    if "connection lost" in message and _speaks_tls(options):
        return (
            f"{options.endpoint[4:]} is a TLS port and closed this plain connection:"
            " connect with --ca CA.pem (and --cert/--key if it asks for a client certificate)."
        )
    return message


def explain_error(error: CallError, options: argparse.Namespace) -> str:
    """A call's error as C{callnet} prints it, with what to do where that is known."""
    if isinstance(error, UnauthenticatedError):
        if os.environ.get(TOKEN_VARIABLE):
            return (
                f"{error.code} ({error.outcome.value}): the node refused the token in"
                f" ${TOKEN_VARIABLE}; set it to a token the node knows."
            )
        return (
            f"{error.code} ({error.outcome.value}): the node requires a token;"
            f" set {TOKEN_VARIABLE} to it."
        )
    if isinstance(error, UnavailableError):
        explained = explain(error.message, options)
        if explained != error.message:
            return f"{error.code} ({error.outcome.value}): {explained}"
    return str(error)


def _speaks_tls(options: argparse.Namespace) -> bool:
    """
    Whether the node's plain C{tcp:} endpoint answers a TLS handshake: asked
    only after a plain connection closed unanswered, to say why.
    """
    if getattr(options, "ca", None) is not None:
        return False
    kind, _, rest = str(getattr(options, "endpoint", "")).partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("tcp", "tcp6") or not port.isdigit():
        return False
    context = ssl.create_default_context()
    # Only whether TLS is spoken matters here, not whom: nothing is sent.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(
                (host.replace("\\:", ":"), int(port)), TLS_PROBE_TIMEOUT
            ) as raw,
            context.wrap_socket(raw),
        ):
            return True
    except ssl.SSLError as e:
        # A TLS alert (a client certificate required, say) is TLS too;
        # anything else is a port that does not speak it.
        return "ALERT" in str(e).upper()
    except OSError:
        return False
