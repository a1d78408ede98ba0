"""
A node's configuration: frozen objects, and the schema that declares every
setting once.

L{NodeConfig} is what L{callnet.wiring.build_node} builds a node from.  It
comes from command-line options, a TOML file (see C{etc/callnet.toml}), or
both: options given on the command line win over the file.  Each setting is
a field declared with L{setting}: its check, default, reason, TOML section
and option; L{settings} lists them for the twistd options and the docs.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from callnet.errors import ConfigError
from callnet.wire import DEFAULT_CALL_TIMEOUT, DEFAULT_MAX_LINE

#: Where a node listens when told nothing: loopback only, so that a node
#: started with no configuration is never reachable from another machine.
DEFAULT_PORT = 7600
DEFAULT_LISTEN = f"tcp:{DEFAULT_PORT}:interface=127.0.0.1"


# The schema.
#
# Every setting is declared once, as a field of the frozen dataclasses below
# made by L{setting}: its check (type and bounds, with the words that say
# what it must be), its reason (the documentation), its TOML section and its
# command-line option.  TOML loading, L{merge}, the twistd options and their
# --help, the example file's test and the documentation's table of settings
# all read it from there (L{settings}).

_Check = Callable[[object], object]


class _ExpectationError(ValueError):
    """A value failed its check; the message says what it must be instead."""


#: How a setting is given on the command line: C{value} (C{--key VALUE}),
#: C{flag} (C{--key} sets true), C{no-flag} (C{--no-key} sets false), or
#: C{many} (C{--key VALUE}, repeated, each adding one).
OptionKind = Literal["value", "flag", "no-flag", "many"]


@dataclass(frozen=True)
class Setting:
    """One setting of a node, as the schema declares it."""

    #: Its key: the field's name, and its name in the TOML file.
    key: str
    #: The TOML table it is set in (C{node}, C{limits}, ...).
    section: str
    #: Its default, as a L{NodeConfig} built with no arguments has it.
    default: object
    #: Checks a value (from TOML or the command line), returning it as the
    #: config holds it; raises with what it must be instead.
    check: _Check
    #: Why it exists and why its default: the documentation's text.
    reason: str
    #: The command-line option that sets it, if any (C{--threads}).
    option: str | None
    #: How the option takes its value (see L{OptionKind}).
    option_kind: OptionKind
    #: How the documentation and --help show the default, where it is not
    #: simply the value (the host name, say).
    shown: str | None

    @property
    def option_name(self) -> str:
        """The option's name as twistd's Options knows it (C{threads}); C{""} if none."""
        return (self.option or "").removeprefix("--")

    @property
    def summary(self) -> str:
        """The reason's first sentence, for --help and the table of settings."""
        first = re.split(r"(?<=[.;])\s", self.reason, maxsplit=1)[0]
        return first.rstrip(";.") + "."

    def show_default(self) -> str:
        """The default as the TOML file would write it."""
        if self.shown is not None:
            return self.shown
        return _show(self.default)


def setting(
    default: Any,
    check: _Check,
    reason: str,
    *,
    option: str | None = None,
    option_kind: OptionKind = "value",
    section: str | None = None,
    factory: Callable[[], Any] | None = None,
    shown: str | None = None,
) -> Any:
    """
    Declare a setting: a dataclass field whose metadata says all the rest.

    @param section: its TOML table, if not that of its dataclass (C{[peers]}
        and C{[acl]} are tables of their own).
    @param factory: makes the default, where it is computed (the host name).
    """
    metadata = {
        "setting": (check, " ".join(reason.split()), option, option_kind, section, shown),
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _whole(minimum: int) -> _Check:
    expectation = f"a whole number >= {minimum}"

    def check(value: object) -> object:
        # bool is an int to Python, but "threads = true" is a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _ExpectationError(expectation)
        return value

    return check


def _seconds(value: object) -> object:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _ExpectationError("a number of seconds > 0")
    return float(value)


def _flag(value: object) -> object:
    if not isinstance(value, bool):
        raise _ExpectationError("true or false")
    return value


def _text(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise _ExpectationError("a non-empty string")
    return value


def _strings(expectation: str, minimum: int) -> _Check:
    def check(value: object) -> object:
        if (
            not isinstance(value, list | tuple)
            or len(value) < minimum
            or not all(isinstance(item, str) and item.strip() for item in value)
        ):
            raise _ExpectationError(expectation)
        return tuple(value)

    return check


_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")

#: Identities no token may be named: each already means something to access
#: rules (anyone, no authentication, a node of the cluster, the node itself),
#: and a token named so would read as that.
RESERVED_IDENTITIES = frozenset({"*", "anonymous", "peer", "node"})


def _node_name(value: object) -> object:
    """A node's name: it is one word on the wire (C{@name}), so no spaces."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise _ExpectationError("a node name of letters, digits and _.- (at most 128)")
    return value


def _peers(value: object) -> object:
    """A mapping or pairs of peer name -> client endpoint string."""
    pairs = value.items() if isinstance(value, dict) else value
    expectation = "pairs of a node name (letters, digits, _.-) and an endpoint string"
    if not isinstance(pairs, Iterable) or isinstance(pairs, str):
        raise _ExpectationError(expectation)
    checked = []
    for pair in pairs:
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(item, str) for item in pair)
            or not _NAME.match(pair[0])
            or not pair[1].strip()
        ):
            raise _ExpectationError(expectation)
        checked.append((pair[0], pair[1]))
    names = [name for name, _ in checked]
    if len(set(names)) != len(names):
        raise _ExpectationError("pairs with each peer name once")
    return tuple(checked)


#: A token must be long enough that guessing it is hopeless.
MIN_TOKEN_LENGTH = 16


def _secret(value: object) -> object:
    if not isinstance(value, str) or len(value) < MIN_TOKEN_LENGTH or value != value.strip():
        raise _ExpectationError(
            f"a token of at least {MIN_TOKEN_LENGTH} characters, without spaces around it"
        )
    return value


def _tokens(value: object) -> object:
    """A table of identity -> token."""
    if not isinstance(value, dict):
        raise _ExpectationError("a table of identity = token")
    checked = []
    for identity, token in value.items():
        if not _NAME.match(identity):
            raise _ExpectationError("identities made of letters, digits and _.-")
        if identity in RESERVED_IDENTITIES:
            raise _ExpectationError(
                f"identities other than {', '.join(sorted(RESERVED_IDENTITIES))}"
                f" ({identity!r} already means something to access rules)"
            )
        checked.append((identity, _secret(token)))
    tokens = [token for _, token in checked]
    if len(set(tokens)) != len(tokens):
        raise _ExpectationError("a different token for each identity")
    return tuple(checked)


def _acl(value: object) -> object:
    """A table of identity (or *) -> list of procedure patterns."""
    if not isinstance(value, dict):
        raise _ExpectationError("a table of identity = [procedure patterns]")
    checked = []
    for identity, patterns in value.items():
        if identity != "*" and not _NAME.match(identity):
            raise _ExpectationError("identities made of letters, digits and _.-, or *")
        if not isinstance(patterns, list) or not all(
            isinstance(pattern, str) and pattern for pattern in patterns
        ):
            raise _ExpectationError("lists of procedure name patterns")
        checked.append((identity, tuple(patterns)))
    return tuple(checked)


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one caller from harming the node or other callers."""

    max_line_bytes: int = setting(
        DEFAULT_MAX_LINE,
        _whole(1),
        """Longest request line in bytes (2 MiB): room for a 1 MiB argument after
        JSON escaping, while one connection cannot make the node buffer much more.""",
        option="--max-line-bytes",
    )
    max_calls_in_flight: int = setting(
        1000,
        _whole(1),
        """Calls one connection may have running at once.  Past it the node stops
        reading from that connection until some finish (backpressure), so a
        client pipelining 10,000 calls is slowed, not refused.""",
        option="--max-calls-in-flight",
    )
    max_connections: int = setting(
        1024,
        _whole(1),
        "Connections the node accepts at once; more are answered with an error and closed.",
        option="--max-connections",
    )
    write_stall_timeout: float = setting(
        30.0,
        _seconds,
        """Seconds a connection may leave its replies unread (the node's output to
        it full) before the node drops it, so a stalled reader cannot make the
        node buffer replies without end.""",
        option="--write-stall-timeout",
    )
    default_timeout: float = setting(
        DEFAULT_CALL_TIMEOUT,
        _seconds,
        """Deadline in seconds for a call that names none, the same as a client's
        default.  Every call has one, so no call can hold a caller or a thread
        forever.""",
        option="--default-timeout",
    )
    max_timeout: float = setting(
        3600.0,
        _seconds,
        "The longest deadline a caller may ask for, in seconds (one hour).",
        option="--max-timeout",
    )
    line_timeout: float = setting(
        30.0,
        _seconds,
        """Seconds a connection may hold an unfinished line: a client that sends
        part of a line and stalls (slowloris) is closed after this.""",
    )
    progress_interval: float = setting(
        0.2,
        _seconds,
        """Seconds between two PROGRESS reports of one call, at least (the newest
        report waiting wins): five a second is as often as a person can read
        them, while a procedure may report as often as it likes.""",
    )
    max_connections_per_address: int = setting(
        64,
        _whole(1),
        """Connections the node accepts at once from one address, so that one
        client cannot take every connection.""",
    )
    max_unsent_bytes: int = setting(
        16 * 1024 * 1024,
        _whole(1),
        """Bytes of replies a connection may leave unread (beyond what the
        transport buffers) before the node drops it at once (16 MiB).""",
    )
    tls_handshake_timeout: float = setting(
        5.0,
        _seconds,
        """Seconds a client of a TLS listener (tls: or ssl:) has to finish its
        handshake, from the moment TCP connects; one that has not is closed.  A
        real client needs one or two round trips (milliseconds); one that sends
        part of a ClientHello and stalls would otherwise hold a connection slot,
        and a file descriptor, for ever.""",
    )
    key_window: float = setting(
        300.0,
        _seconds,
        """Seconds a keyed call's outcome is kept after it ends: long enough to
        cover a caller's retries across a failover, short enough not to grow.""",
    )
    max_keys: int = setting(
        100_000,
        _whole(1),
        """Idempotency keys kept at once, in progress or ended.  Ended outcomes are
        evicted to make room (the oldest of the caller keeping the most); keys in
        progress never are.  About 0.5 KiB each besides its result, so at most
        some 50 MiB, and 330 keyed calls a second for the whole window.""",
    )
    max_key_bytes: int = setting(
        64 * 1024 * 1024,
        _whole(1),
        """Bytes of ended keyed calls' outcomes kept at once (results as JSON,
        error messages): what a node spends on answering retries (64 MiB).""",
    )
    max_key_result_bytes: int = setting(
        1024 * 1024,
        _whole(1),
        """The largest outcome kept for a key (1 MiB, the largest argument a line
        carries).  A bigger result is not kept; the key remembers that its call
        ran, and a retry is told so rather than run again.""",
    )
    max_running_keys: int = setting(
        10_000,
        _whole(1),
        """Keyed calls in progress at once on the node: running (also those whose
        caller has gone, which run on to their deadline so that a retry finds
        their outcome) or waiting on a running key.  Each holds its work and some
        KiB; past the bound a new keyed call is refused, not run.""",
    )
    max_running_keys_per_caller: int = setting(
        1000,
        _whole(1),
        """One caller's share of max_running_keys, so that one identity cannot take
        every slot: as many calls as one connection may have in flight.""",
    )
    max_multicall_nodes: int = setting(
        64,
        _whole(1),
        """Nodes one multicall may name.  Each node keeps a link to every other, a
        full mesh meant for tens of nodes: 64 names any such cluster, while one
        line naming 100,000 made-up nodes is refused before any work.""",
    )
    max_held_input_bytes: int = setting(
        4 * 1024 * 1024,
        _whole(1),
        """Bytes a connection may have sent that the node holds unread while it is
        not reading from it (calls in flight at the limit, replies backed up, an
        AUTH delay).  A transport that honours the pause delivers at most one
        more read (64 KiB for TCP) after it, on top of an unfinished line
        (max_line_bytes); past this bound the transport is not pausing and the
        connection is closed with an error.""",
    )
    max_detached_casts: int = setting(
        10_000,
        _whole(0),
        """Casts the node lets run on, node-wide, after the connection that sent
        them has closed (a cast is fire-and-forget, so its client may go at
        once).  Past it such casts are cancelled, so clients that cast and leave
        cannot pile up work without end.""",
    )


@dataclass(frozen=True)
class ClusterSettings:
    """How a node keeps in touch with its peers."""

    heartbeat_interval: float = setting(
        1.0,
        _seconds,
        "Seconds between heartbeats on each peer link.",
        option="--heartbeat-interval",
    )
    down_after: float = setting(
        3.0,
        _seconds,
        """Seconds without any word from a peer before it is marked down and every
        call waiting on it fails: three missed heartbeats, so one lost packet or
        a busy moment does not take a healthy node out.""",
        option="--down-after",
    )
    reconnect_max_delay: float = setting(
        5.0,
        _seconds,
        """Longest pause between attempts to reconnect to a peer; attempts start
        fast and back off, with jitter, up to this.""",
    )
    max_hops: int = setting(
        4,
        _whole(1),
        """How many times a call may be forwarded: past this it is refused, which
        ends a routing loop however the catalogs disagree.""",
        option="--max-hops",
    )


@dataclass(frozen=True)
class Security:
    """Who may call, and how they prove it."""

    tokens: tuple[tuple[str, str], ...] = setting(
        (),
        _tokens,
        """Tokens callers authenticate with (AUTH token), as a table of identity =
        token.  With any set, a caller must authenticate before calling.""",
        shown="none",
    )
    cluster_token: str | None = setting(
        None,
        _secret,
        """The token nodes of one cluster present to each other; a connection
        authenticated with it is a peer node, trusted to forward calls.""",
        shown="none",
    )
    allow_insecure: bool = setting(
        False,
        _flag,
        """Allow listening in plain text, with no authentication, on an address
        other machines can reach.  Off: a node is a door into its machine.""",
        option="--allow-insecure",
        option_kind="flag",
    )
    acl: tuple[tuple[str, tuple[str, ...]], ...] = setting(
        (),
        _acl,
        """Which identities may call which procedures, as a table of identity =
        [patterns]; patterns are shell-style (greet*); identity * is anyone.
        With no rules, every caller that may connect may call anything.""",
        section="acl",
        shown="none",
    )


@dataclass(frozen=True)
class TLSSettings:
    """The node's certificate, for C{tls:} listeners and links to peers."""

    cert: str | None = setting(
        None, _text, "The node's certificate (PEM), naming the node.", shown="none"
    )
    key: str | None = setting(None, _text, "Its private key (PEM).", shown="none")
    ca: str | None = setting(
        None,
        _text,
        """The cluster's CA certificate (PEM): peers' and clients' certificates
        must be signed by it.""",
        shown="none",
    )
    require_client_certificate: bool = setting(
        False, _flag, "Refuse TLS clients that present no certificate signed by the CA."
    )


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node is built from."""

    name: str = setting(
        None,
        _node_name,
        """The node's name, as peers and error messages show it: one word of
        letters, digits and _.- (errors say @name).""",
        option="--name",
        factory=socket.gethostname,
        shown="the host name",
    )
    listen: tuple[str, ...] = setting(
        (DEFAULT_LISTEN,),
        _strings("a list of at least one endpoint string", 1),
        """Twisted server endpoint strings (tcp:, unix:, ssl:, tls:), one listener
        each.  Loopback only by default, so that a node started with no
        configuration is unreachable from other machines.""",
        option="--listen",
        option_kind="many",
    )
    services: tuple[str, ...] = setting(
        (),
        _strings("a list of module names", 0),
        "Python modules whose @procedure functions the node serves; each must import.",
        option="--service",
        option_kind="many",
    )
    builtins: bool = setting(
        True,
        _flag,
        "Serve the built-in procedures (echo, add, sleep, time, ...).",
        option="--no-builtins",
        option_kind="no-flag",
    )
    threads: int = setting(
        10,
        _whole(1),
        """Threads for plain (blocking) procedures: they may each block a thread, so
        this bounds how many run at once; the rest wait their turn.""",
        option="--threads",
    )
    processes: int = setting(
        0,
        _whole(0),
        """Worker processes for CPU-bound procedures declared run="process"; 0
        means one per CPU.  Started on first use only.""",
        option="--processes",
    )
    send_tracebacks: bool = setting(
        False,
        _flag,
        """Send Python tracebacks of undeclared errors to callers.  Off: a traceback
        tells an attacker about the server, and belongs in its log.""",
        option="--send-tracebacks",
        option_kind="flag",
    )
    shutdown_grace: float = setting(
        10.0,
        _seconds,
        """Seconds a stopping node gives its calls in flight to end (new calls are
        refused, so callers and peers go elsewhere); the rest are then cancelled.
        Less than systemd's default stop timeout of 90 s.""",
        option="--shutdown-grace",
    )
    access_log: bool = setting(
        False,
        _flag,
        """Log every call (procedure, caller, duration, outcome, trace id) in the
        callnet.access namespace.  Off: one event per call costs time.""",
        option="--access-log",
        option_kind="flag",
    )
    metrics_listen: str | None = setting(
        None,
        _text,
        """A Twisted server endpoint string to serve Prometheus metrics on (GET
        /metrics), which needs callnet[metrics]; unset: no metrics.""",
        option="--metrics-listen",
        shown="none",
    )
    peers: tuple[tuple[str, str], ...] = setting(
        (),
        _peers,
        """Other nodes of the cluster, as a table of name = client endpoint
        string.""",
        option="--peer",
        option_kind="many",
        section="peers",
        shown="none",
    )
    limits: Limits = field(default_factory=Limits)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    security: Security = field(default_factory=Security)
    tls: TLSSettings = field(default_factory=TLSSettings)


#: Each section's dataclass: where its settings are declared.
_GROUPS: dict[str, type] = {
    "node": NodeConfig,
    "limits": Limits,
    "cluster": ClusterSettings,
    "security": Security,
    "tls": TLSSettings,
}


def _declared() -> dict[str, Setting]:
    table: dict[str, Setting] = {}
    defaults = NodeConfig()
    for group, cls in _GROUPS.items():
        holder = defaults if group == "node" else getattr(defaults, group)
        for f in fields(cls):
            if "setting" not in f.metadata:
                continue
            check, reason, option, kind, section, shown = f.metadata["setting"]
            if f.name in table:
                raise TypeError(f"setting {f.name} declared twice")
            table[f.name] = Setting(
                f.name,
                section or group,
                getattr(holder, f.name),
                check,
                reason,
                option,
                kind,
                shown,
            )
    return table


#: Key -> its L{Setting}, for every key a config may set.
_KEYS: dict[str, Setting] = _declared()


def settings() -> tuple[Setting, ...]:
    """Every setting a node has, in the order the schema declares them."""
    return tuple(_KEYS.values())


def settings_table() -> str:
    """The table of every setting, as docs/operations.md shows it (Markdown)."""
    rows = [
        "| Key | Default | Option | Meaning |",
        "|---|---|---|---|",
    ]
    for entry in _KEYS.values():
        key = key_label(entry.key)
        option = f"`{entry.option}`" if entry.option else ""
        rows.append(f"| `{key}` | `{entry.show_default()}` | {option} | {entry.summary} |")
    return "\n".join(rows) + "\n"


#: The tables of a config file, in the order the schema declares them;
#: [peers] and [acl] are keyed by names.
_SECTIONS = tuple(dict.fromkeys(entry.section for entry in _KEYS.values()))
_NAMED_TABLES = ("peers", "acl")


def _show(value: object) -> str:
    """Render a value as it would be written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def _prefix(source: str) -> str:
    """Start an error message with where the value came from, if that is known."""
    return f"{source}: " if source else ""


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _checked(key: str, value: object, source: str, label: Callable[[str], str]) -> object:
    """Run C{key}'s check on C{value}; raise L{ConfigError} naming the key if it fails."""
    try:
        return _KEYS[key].check(value)
    except _ExpectationError as invalid:
        raise ConfigError(
            f"{_prefix(source)}{label(key)} must be {invalid}, not {_show(value)}"
        ) from None


def key_label(key: str) -> str:
    """How messages and documents name a key: C{[limits] max_connections}, C{[peers]}."""
    if key in _NAMED_TABLES:
        return f"[{key}]"
    return f"[{_KEYS[key].section}] {key}"


def _build(
    base: NodeConfig,
    values: Mapping[str, object],
    source: str,
    label: Callable[[str], str] = key_label,
) -> NodeConfig:
    """Return C{base} with checked C{values} put in, then check the result as a whole."""
    node: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    cluster: dict[str, Any] = {}
    security: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    sections = {
        "limits": limits,
        "cluster": cluster,
        "security": security,
        "acl": security,
        "tls": tls,
    }
    for key, value in values.items():
        into = sections.get(_KEYS[key].section, node)
        into[key] = _checked(key, value, source, label)
    config = replace(
        base,
        **node,
        limits=replace(base.limits, **limits),
        cluster=replace(base.cluster, **cluster),
        security=replace(base.security, **security),
        tls=replace(base.tls, **tls),
    )
    peer_names = {name for name, _ in config.peers}
    for identity, _ in config.security.tokens:
        if identity in peer_names:
            raise ConfigError(
                f"{_prefix(source)}[security] tokens: {identity!r} is also a peer's name; a"
                " token names a caller, never a node of the cluster (peers authenticate with"
                " the cluster token or a certificate)"
            )
    given = [name for name in ("cert", "key") if getattr(config.tls, name)]
    if len(given) == 1:
        raise ConfigError(f"{_prefix(source)}[tls] cert and key go together: set both or neither")
    default, longest = config.limits.default_timeout, config.limits.max_timeout
    if default > longest:
        raise ConfigError(
            f"{_prefix(source)}{label('default_timeout')} ({default:g}) must not be greater"
            f" than {label('max_timeout')} ({longest:g})"
        )
    _check_endpoints(config, _prefix(source), label)
    return config


def _endpoint_problem(description: str, server: bool) -> str | None:
    """
    Parse an endpoint string as the node would, without listening or dialling.

    @return: what is wrong with it, or C{None}.
    """
    # Imported here: the codec and the session read this module's limits,
    # and know no Twisted.
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.testing import MemoryReactor

    parse = serverFromString if server else clientFromString
    try:
        parse(MemoryReactor(), description)
    except Exception as e:  # any parser's error means the string is bad
        return f'bad endpoint "{description}": {type(e).__name__}: {e}'
    return None


def _check_endpoints(config: NodeConfig, prefix: str, label: Callable[[str], str]) -> None:
    """
    Check the endpoints a config names: listeners and the metrics endpoint as
    server endpoints, peers as client endpoints, and no peer named as the
    node itself.

    @raise ConfigError: naming the key (and peer) at fault.
    """
    listening = [("listen", description) for description in config.listen]
    if config.metrics_listen is not None:
        listening.append(("metrics_listen", config.metrics_listen))
    for key, description in listening:
        problem = _endpoint_problem(description, server=True)
        if problem is not None:
            raise ConfigError(f"{prefix}{label(key)}: {problem}")
    for name, description in config.peers:
        if name == config.name:
            raise ConfigError(
                f"{prefix}{label('peers')} {name}: a node cannot be its own peer (this node"
                f' is named "{config.name}"); list only the other nodes'
            )
        problem = _endpoint_problem(description, server=False)
        if problem is not None:
            raise ConfigError(f"{prefix}{label('peers')} {name}: {problem}")


def parse_config(document: Mapping[str, object], source: str = "<config>") -> NodeConfig:
    """
    Build a L{NodeConfig} from a parsed TOML document.

    Keys the document leaves out keep their defaults.

    @param document: the TOML document, as L{tomllib.loads} returns it.
    @param source: what to call the document in error messages (its path).
    @raise ConfigError: for an unknown section or key, or a value of the
        wrong type or out of range; the message names the key.
    """
    values: dict[str, object] = {}
    for section, table in document.items():
        if section not in _SECTIONS:
            if section in _KEYS:
                raise ConfigError(
                    f"{source}: {section} must be set inside [{_KEYS[section].section}],"
                    " not at the top of the file"
                )
            known = ", ".join(f"[{name}]" for name in _SECTIONS)
            raise ConfigError(
                f"{source}: unknown section [{section}]{_did_you_mean(section, _SECTIONS)};"
                f" the sections are {known}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, not {_show(table)}")
        if section in _NAMED_TABLES:
            values[section] = table
            continue
        keys = [key for key, entry in _KEYS.items() if entry.section == section]
        for key, value in table.items():
            if key not in keys:
                raise ConfigError(
                    f"{source}: [{section}] unknown key {key}{_did_you_mean(key, keys)};"
                    f" the keys are {', '.join(keys)}"
                )
            values[key] = value
    return _build(NodeConfig(), values, source)


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """
    Read a node's configuration from a TOML file (see C{etc/callnet.toml}).

    @param path: the file to read.
    @raise ConfigError: if the file cannot be read, is not valid TOML (the
        message gives the line), or sets an unknown key or a bad value (the
        message names the key).
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: not UTF-8 ({e.reason})") from None
    return parse_config(document, source)


def merge(
    config: NodeConfig,
    overrides: Mapping[str, object | None],
    source: str = "override",
    names: Mapping[str, str] | None = None,
) -> NodeConfig:
    """
    Return C{config} with C{overrides} put over it, such as command-line options.

    @param overrides: new values by key, the key names being those of
        L{NodeConfig} and L{Limits} (which share none); C{None} means the
        value was not given and C{config}'s stays.
    @param source: where the overrides came from, to start error messages
        with; C{""} when C{names} say it already.
    @param names: how error messages should call a key (say
        C{"--max-connections"}) instead of C{"[limits] max_connections"}.
    @raise ConfigError: for an unknown key, or a value of the wrong type or
        out of range; the message names the key.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    for key in given:
        if key not in _KEYS:
            raise ConfigError(f"{_prefix(source)}unknown setting {key}{_did_you_mean(key, _KEYS)}")
    naming = dict(names or {})

    def label(key: str) -> str:
        return naming.get(key) or key_label(key)

    return _build(config, given, source, label)
