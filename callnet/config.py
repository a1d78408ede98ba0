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

import socket
from dataclasses import dataclass, field

import callnet.config_checks as checks
from callnet.config_schema import OptionKind, Setting, declared, setting, show_value
from callnet.wire import DEFAULT_CALL_TIMEOUT, DEFAULT_MAX_LINE

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PORT",
    "NAMED_TABLES",
    "SETTINGS_BY_KEY",
    "ClusterSettings",
    "Limits",
    "NodeConfig",
    "OptionKind",
    "Security",
    "Setting",
    "TLSSettings",
    "key_label",
    "setting",
    "settings",
    "settings_table",
    "show_value",
]

#: Where a node listens when told nothing: loopback only, so that a node
#: started with no configuration is never reachable from another machine.
DEFAULT_PORT = 7600
DEFAULT_LISTEN = f"tcp:{DEFAULT_PORT}:interface=127.0.0.1"


# The schema.
#
# Every setting is declared once, as a field of the frozen dataclasses below
# made by L{setting} (L{callnet.config_schema}): its check (type and bounds,
# with the words that say what it must be), its reason (the documentation),
# its TOML section and its command-line option.  TOML loading, L{merge}, the
# twistd options and their --help, the example file's test and the
# documentation's table of settings all read it from there (L{settings}).


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one caller from harming the node or other callers."""

    max_line_bytes: int = setting(
        DEFAULT_MAX_LINE,
        checks.whole(1),
        """Longest request line in bytes (2 MiB): room for a 1 MiB argument after
        JSON escaping, while one connection cannot make the node buffer much more.""",
        option="--max-line-bytes",
    )
    max_calls_in_flight: int = setting(
        1000,
        checks.whole(1),
        """Calls one connection may have running at once.  Past it the node stops
        reading from that connection until some finish (backpressure), so a
        client pipelining 10,000 calls is slowed, not refused.""",
        option="--max-calls-in-flight",
    )
    max_connections: int = setting(
        1024,
        checks.whole(1),
        "Connections the node accepts at once; more are answered with an error and closed.",
        option="--max-connections",
    )
    write_stall_timeout: float = setting(
        30.0,
        checks.seconds,
        """Seconds a connection may leave its replies unread (the node's output to
        it full) before the node drops it, so a stalled reader cannot make the
        node buffer replies without end.""",
        option="--write-stall-timeout",
    )
    default_timeout: float = setting(
        DEFAULT_CALL_TIMEOUT,
        checks.seconds,
        """Deadline in seconds for a call that names none, the same as a client's
        default.  Every call has one, so no call can hold a caller or a thread
        forever.""",
        option="--default-timeout",
    )
    max_timeout: float = setting(
        3600.0,
        checks.seconds,
        "The longest deadline a caller may ask for, in seconds (one hour).",
        option="--max-timeout",
    )
    line_timeout: float = setting(
        30.0,
        checks.seconds,
        """Seconds a connection may hold an unfinished line: a client that sends
        part of a line and stalls (slowloris) is closed after this.""",
    )
    progress_interval: float = setting(
        0.2,
        checks.seconds,
        """Seconds between two PROGRESS reports of one call, at least (the newest
        report waiting wins): five a second is as often as a person can read
        them, while a procedure may report as often as it likes.""",
    )
    max_connections_per_address: int = setting(
        64,
        checks.whole(1),
        """Connections the node accepts at once from one address, so that one
        client cannot take every connection.""",
    )
    max_unsent_bytes: int = setting(
        16 * 1024 * 1024,
        checks.whole(1),
        """Bytes of replies a connection may leave unread (beyond what the
        transport buffers) before the node drops it at once (16 MiB).""",
    )
    tls_handshake_timeout: float = setting(
        5.0,
        checks.seconds,
        """Seconds a client of a TLS listener (tls: or ssl:) has to finish its
        handshake, from the moment TCP connects; one that has not is closed.  A
        real client needs one or two round trips (milliseconds); one that sends
        part of a ClientHello and stalls would otherwise hold a connection slot,
        and a file descriptor, for ever.""",
    )
    key_window: float = setting(
        300.0,
        checks.seconds,
        """Seconds a keyed call's outcome is kept after it ends: long enough to
        cover a caller's retries across a failover, short enough not to grow.""",
    )
    max_keys: int = setting(
        100_000,
        checks.whole(1),
        """Idempotency keys kept at once, in progress or ended.  Ended outcomes are
        evicted to make room (the oldest of the caller keeping the most); keys in
        progress never are.  About 0.5 KiB each besides its result, so at most
        some 50 MiB, and 330 keyed calls a second for the whole window.""",
    )
    max_key_bytes: int = setting(
        64 * 1024 * 1024,
        checks.whole(1),
        """Bytes of ended keyed calls' outcomes kept at once (results as JSON,
        error messages): what a node spends on answering retries (64 MiB).""",
    )
    max_key_result_bytes: int = setting(
        1024 * 1024,
        checks.whole(1),
        """The largest outcome kept for a key (1 MiB, the largest argument a line
        carries).  A bigger result is not kept; the key remembers that its call
        ran, and a retry is told so rather than run again.""",
    )
    max_running_keys: int = setting(
        10_000,
        checks.whole(1),
        """Keyed calls in progress at once on the node: running (also those whose
        caller has gone, which run on to their deadline so that a retry finds
        their outcome) or waiting on a running key.  Each holds its work and some
        KiB; past the bound a new keyed call is refused, not run.""",
    )
    max_running_keys_per_caller: int = setting(
        1000,
        checks.whole(1),
        """One caller's share of max_running_keys, so that one identity cannot take
        every slot: as many calls as one connection may have in flight.""",
    )
    max_multicall_nodes: int = setting(
        64,
        checks.whole(1),
        """Nodes one multicall may name.  Each node keeps a link to every other, a
        full mesh meant for tens of nodes: 64 names any such cluster, while one
        line naming 100,000 made-up nodes is refused before any work.""",
    )
    max_held_input_bytes: int = setting(
        4 * 1024 * 1024,
        checks.whole(1),
        """Bytes a connection may have sent that the node holds unread while it is
        not reading from it (calls in flight at the limit, replies backed up, an
        AUTH delay).  A transport that honours the pause delivers at most one
        more read (64 KiB for TCP) after it, on top of an unfinished line
        (max_line_bytes); past this bound the transport is not pausing and the
        connection is closed with an error.""",
    )
    max_detached_casts: int = setting(
        10_000,
        checks.whole(0),
        """Casts the node lets run on, node-wide, after the connection that sent
        them has closed (a cast is fire-and-forget, so its client may go at
        once).  Past it such casts are cancelled, so clients that cast and leave
        cannot pile up work without end.""",
    )
    auth_timeout: float = setting(
        60.0,
        checks.seconds,
        """Seconds a connection to a node with tokens has, from when it connects,
        to authenticate (AUTH, or a client certificate); one that has not is
        answered UNAUTHENTICATED and closed, so that connections that never
        authenticate cannot hold the node's connection slots for ever.  A
        person typing HELP first at nc has a minute.""",
    )
    auth_failure_window: float = setting(
        60.0,
        checks.seconds,
        """Seconds a node remembers the wrong tokens given from one address.
        AUTH's delay doubles with each of them, counted across all of that
        address's connections, so that guessing over many connections at once
        is no faster than over one.""",
    )
    max_auth_failure_addresses: int = setting(
        10_000,
        checks.whole(1),
        """Addresses whose recent wrong tokens the node remembers at once (about
        200 bytes each); past it the address heard from least recently is
        forgotten.""",
    )
    paused_check_interval: float = setting(
        1.0,
        checks.seconds,
        """Seconds between checks, while the node is not reading a connection
        because its calls in flight reached max_calls_in_flight, that its client
        is still there.  A transport not being read does not see its client
        close, so without the check a client that pipelines to the limit and
        leaves would keep its calls running to their deadline and its
        connection slot taken until then.""",
    )


@dataclass(frozen=True)
class ClusterSettings:
    """How a node keeps in touch with its peers."""

    heartbeat_interval: float = setting(
        1.0,
        checks.seconds,
        "Seconds between heartbeats on each peer link.",
        option="--heartbeat-interval",
    )
    down_after: float = setting(
        3.0,
        checks.seconds,
        """Seconds without any word from a peer before it is marked down and every
        call waiting on it fails: three missed heartbeats, so one lost packet or
        a busy moment does not take a healthy node out.""",
        option="--down-after",
    )
    reconnect_max_delay: float = setting(
        5.0,
        checks.seconds,
        """Longest pause between attempts to reconnect to a peer; attempts start
        fast and back off, with jitter, up to this.""",
    )
    max_hops: int = setting(
        4,
        checks.whole(1),
        """How many times a call may be forwarded: past this it is refused, which
        ends a routing loop however the catalogs disagree.""",
        option="--max-hops",
    )
    discover: str | None = setting(
        None,
        checks.discover,
        """Find more peers in DNS: SRV records, or the A and AAAA records of a name
        whose nodes all listen on one port.  Written "dns-srv:NAME" (a Kubernetes
        headless Service's _port._tcp name, Consul's NAME.service.consul) or
        "dns-a:NAME:PORT".  Peers that appear are dialled, peers that go are
        drained and dropped; a discovered peer's name is the one its handshake
        gives.""",
        option="--discover",
        shown="none",
    )
    discover_min_interval: float = setting(
        5.0,
        checks.seconds,
        """Shortest time in seconds between two DNS lookups of discover, whatever the
        records' TTL (Consul answers with TTL 0): the load on DNS stays bounded,
        and a failed lookup is retried after it, doubling up to
        discover_max_interval.""",
    )
    discover_max_interval: float = setting(
        60.0,
        checks.seconds,
        """Longest time in seconds between two DNS lookups of discover, whatever the
        records' TTL: a record cached for a day still leaves a new node found
        within a minute.""",
    )
    discover_max_peers: int = setting(
        64,
        checks.whole(1),
        """Peers DNS may give a node: past it the rest of the records are left out
        (and said so in the log).  A full mesh stops being reasonable at a few
        tens of nodes, and a wrong or hostile answer of thousands of records
        must not make a node dial thousands of addresses.""",
    )
    discover_nameservers: tuple[str, ...] = setting(
        (),
        checks.nameservers,
        """DNS servers to ask for discover, as "HOST" or "HOST:PORT" (Consul's DNS
        interface listens on 127.0.0.1:8600); empty, the servers of
        /etc/resolv.conf.""",
        shown="[]",
    )


@dataclass(frozen=True)
class Security:
    """Who may call, and how they prove it."""

    tokens: tuple[tuple[str, str], ...] = setting(
        (),
        checks.tokens,
        """Tokens callers authenticate with (AUTH token), as a table of identity =
        token.  With any set, a caller must authenticate before calling.""",
        shown="none",
    )
    cluster_token: str | None = setting(
        None,
        checks.secret,
        """The token nodes of one cluster present to each other; a connection
        authenticated with it is a peer node, trusted to forward calls.""",
        shown="none",
    )
    allow_insecure: bool = setting(
        False,
        checks.flag,
        """Allow listening in plain text, with no authentication, on an address
        other machines can reach.  Off: a node is a door into its machine.""",
        option="--allow-insecure",
        option_kind="flag",
    )
    acl: tuple[tuple[str, tuple[str, ...]], ...] = setting(
        (),
        checks.acl,
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
        None, checks.text, "The node's certificate (PEM), naming the node.", shown="none"
    )
    key: str | None = setting(None, checks.text, "Its private key (PEM).", shown="none")
    ca: str | None = setting(
        None,
        checks.text,
        """The cluster's CA certificate (PEM): peers' and clients' certificates
        must be signed by it.""",
        shown="none",
    )
    require_client_certificate: bool = setting(
        False, checks.flag, "Refuse TLS clients that present no certificate signed by the CA."
    )

    @property
    def secures_links(self) -> bool:
        """Whether links to peers go over TLS: cert, key and ca are all set."""
        return bool(self.cert and self.key and self.ca)


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node is built from."""

    name: str = setting(
        None,
        checks.node_name,
        """The node's name, as peers and error messages show it: one word of
        letters, digits and _.- (errors say @name).""",
        option="--name",
        factory=socket.gethostname,
        shown="the host name",
    )
    listen: tuple[str, ...] = setting(
        (DEFAULT_LISTEN,),
        checks.strings("a list of at least one endpoint string", 1),
        """Twisted server endpoint strings (tcp:, unix:, ssl:, tls:), one listener
        each.  Loopback only by default, so that a node started with no
        configuration is unreachable from other machines.""",
        option="--listen",
        option_kind="many",
    )
    services: tuple[str, ...] = setting(
        (),
        checks.strings("a list of module names", 0),
        "Python modules whose @procedure functions the node serves; each must import.",
        option="--service",
        option_kind="many",
    )
    builtins: bool = setting(
        True,
        checks.flag,
        "Serve the built-in procedures (echo, add, sleep, time, ...).",
        option="--no-builtins",
        option_kind="no-flag",
    )
    threads: int = setting(
        10,
        checks.whole(1),
        """Threads for plain (blocking) procedures: they may each block a thread, so
        this bounds how many run at once; the rest wait their turn.""",
        option="--threads",
    )
    processes: int = setting(
        0,
        checks.whole(0),
        """Worker processes for CPU-bound procedures declared run="process"; 0
        means one per CPU.  Started on first use only.""",
        option="--processes",
    )
    send_tracebacks: bool = setting(
        False,
        checks.flag,
        """Send Python tracebacks of undeclared errors to callers.  Off: a traceback
        tells an attacker about the server, and belongs in its log.""",
        option="--send-tracebacks",
        option_kind="flag",
    )
    shutdown_grace: float = setting(
        10.0,
        checks.seconds,
        """Seconds a stopping node gives its calls in flight to end (new calls are
        refused, so callers and peers go elsewhere); the rest are then cancelled.
        Less than systemd's default stop timeout of 90 s.""",
        option="--shutdown-grace",
    )
    access_log: bool = setting(
        False,
        checks.flag,
        """Log every call (procedure, caller, duration, outcome, trace id) in the
        callnet.access namespace.  Off: one event per call costs time.""",
        option="--access-log",
        option_kind="flag",
    )
    metrics_listen: str | None = setting(
        None,
        checks.text,
        """A Twisted server endpoint string to serve Prometheus metrics on (GET
        /metrics), which needs callnet[metrics]; unset: no metrics.""",
        option="--metrics-listen",
        shown="none",
    )
    peers: tuple[tuple[str, str], ...] = setting(
        (),
        checks.peers,
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


#: Key -> its L{Setting}, for every key a config may set.
SETTINGS_BY_KEY: dict[str, Setting] = declared(_GROUPS, NodeConfig())


def settings() -> tuple[Setting, ...]:
    """Every setting a node has, in the order the schema declares them."""
    return tuple(SETTINGS_BY_KEY.values())


def settings_table() -> str:
    """The table of every setting, as docs/operations.md shows it (Markdown)."""
    rows = [
        "| Key | Default | Option | Meaning |",
        "|---|---|---|---|",
    ]
    for entry in SETTINGS_BY_KEY.values():
        key = key_label(entry.key)
        option = f"`{entry.option}`" if entry.option else ""
        rows.append(f"| `{key}` | `{entry.show_default()}` | {option} | {entry.summary} |")
    return "\n".join(rows) + "\n"


#: [peers] and [acl] are tables keyed by names.
NAMED_TABLES = ("peers", "acl")


def key_label(key: str) -> str:
    """How messages and documents name a key: C{[limits] max_connections}, C{[peers]}."""
    if key in NAMED_TABLES:
        return f"[{key}]"
    return f"[{SETTINGS_BY_KEY[key].section}] {key}"
