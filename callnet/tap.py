"""
The C{twistd callnet} command: options, and the service they build.

Everything that can be wrong with a configuration (the TOML file, an option,
an endpoint string, a service module that does not import) is found in
L{Options.postOptions} and reported as a L{usage.UsageError}, so C{twistd}
prints one message and exits non-zero, with no traceback, before it
daemonizes.  What only the node can judge (a service module that serves no
procedure) stops L{makeService} the same way.

This module must not import the global reactor when it is imported: C{twistd}
imports it while choosing a reactor (C{--reactor}).  Only L{makeService} does.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from callnet.config import (
    DEFAULT_LISTEN,
    ClusterSettings,
    Limits,
    NodeConfig,
    load_config,
    merge,
)
from callnet.errors import ConfigError
from callnet.exposure import plaintext_exposure

if TYPE_CHECKING:
    from callnet.node import NodeService

#: Config key -> the option that overrides it, as error messages call it.
_OPTION_NAMES = {
    "name": "--name",
    "listen": "--listen",
    "services": "--service",
    "builtins": "--no-builtins",
    "threads": "--threads",
    "processes": "--processes",
    "send_tracebacks": "--send-tracebacks",
    "max_line_bytes": "--max-line-bytes",
    "max_calls_in_flight": "--max-calls-in-flight",
    "max_connections": "--max-connections",
    "write_stall_timeout": "--write-stall-timeout",
    "default_timeout": "--default-timeout",
    "max_timeout": "--max-timeout",
    "peers": "--peer",
    "allow_insecure": "--allow-insecure",
    "shutdown_grace": "--shutdown-grace",
    "access_log": "--access-log",
    "metrics_listen": "--metrics-listen",
    "heartbeat_interval": "--heartbeat-interval",
    "down_after": "--down-after",
    "max_hops": "--max-hops",
}

#: The options that take a number, by config key.
_NUMBERS = (
    "threads",
    "processes",
    "max_line_bytes",
    "max_calls_in_flight",
    "max_connections",
    "write_stall_timeout",
    "default_timeout",
    "max_timeout",
    "heartbeat_interval",
    "down_after",
    "max_hops",
    "shutdown_grace",
)


def _number(text: str | None) -> int | float | str | None:
    """
    Read a number from the command line, or give the text back unchanged.

    Range and type are checked by L{callnet.config.merge}, so an option and
    the same key in the file are held to one rule and one message.
    """
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class Options(usage.Options):
    """
    Options of C{twistd callnet}.

    After L{parseOptions}, C{self["node_config"]} is the L{NodeConfig} to run:
    the defaults, then the C{--config} file over them, then the other
    options over both.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a callnet node: serve procedures to callers over a line protocol."
        " With no options it serves the built-in procedures on"
        f" {DEFAULT_LISTEN}. Options given here win over the --config file."
    )

    optParameters = [
        ["config", "c", None, "TOML file to read the configuration from (see etc/callnet.toml)."],
        ["name", None, None, "The node's name, as peers see it. [default: the host name]"],
        [
            "threads",
            None,
            None,
            f"Threads for plain (blocking) procedures. [default: {NodeConfig.threads}]",
        ],
        [
            "processes",
            None,
            None,
            "Worker processes for procedures declared run='process'; 0 means one per CPU."
            f" [default: {NodeConfig.processes}]",
        ],
        [
            "max-line-bytes",
            None,
            None,
            f"Longest request line, in bytes. [default: {Limits.max_line_bytes}]",
        ],
        [
            "max-calls-in-flight",
            None,
            None,
            "Calls one connection may have running at once."
            f" [default: {Limits.max_calls_in_flight}]",
        ],
        [
            "max-connections",
            None,
            None,
            f"Connections accepted at once. [default: {Limits.max_connections}]",
        ],
        [
            "write-stall-timeout",
            None,
            None,
            "Seconds a connection may leave its replies unread before it is dropped."
            f" [default: {Limits.write_stall_timeout:g}]",
        ],
        [
            "default-timeout",
            None,
            None,
            "Deadline in seconds for a call that names none."
            f" [default: {Limits.default_timeout:g}]",
        ],
        [
            "max-timeout",
            None,
            None,
            "Longest deadline a caller may ask for, in seconds."
            f" [default: {Limits.max_timeout:g}]",
        ],
        [
            "heartbeat-interval",
            None,
            None,
            "Seconds between heartbeats to each peer."
            f" [default: {ClusterSettings.heartbeat_interval:g}]",
        ],
        [
            "down-after",
            None,
            None,
            "Seconds of silence before a peer is marked down."
            f" [default: {ClusterSettings.down_after:g}]",
        ],
        [
            "shutdown-grace",
            None,
            None,
            "Seconds a stopping node gives its calls in flight to end."
            f" [default: {NodeConfig.shutdown_grace:g}]",
        ],
        [
            "metrics-listen",
            None,
            None,
            "Serve Prometheus metrics (GET /metrics) on this endpoint string, such as"
            " tcp:9600:interface=127.0.0.1; needs callnet[metrics].",
        ],
        [
            "max-hops",
            None,
            None,
            f"How many times a call may be forwarded. [default: {ClusterSettings.max_hops}]",
        ],
    ]

    optFlags = [
        ["access-log", None, "Log every call: procedure, caller, duration, outcome, trace id."],
        [
            "allow-insecure",
            None,
            "Allow plain-text listeners with no authentication on addresses other"
            " machines can reach.",
        ],
        ["no-builtins", None, "Do not serve the built-in procedures (echo, add, ...)."],
        [
            "send-tracebacks",
            None,
            "Send tracebacks of undeclared errors to callers (exposes server internals).",
        ],
    ]

    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.toml")})

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["listen"] = []
        self["services"] = []
        self["peers"] = []

    def opt_peer(self, peer: str) -> None:
        """Another node of the cluster, as NAME=ENDPOINT; repeat for many."""
        name, sep, endpoint = peer.partition("=")
        if not sep:
            raise usage.UsageError(
                f'--peer takes NAME=ENDPOINT, such as beta=tcp:127.0.0.2:7600, not "{peer}"'
            )
        self["peers"].append((name, endpoint))

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this endpoint string, not the file's; repeat for many."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_service(self, module: str) -> None:
        """Serve this module's procedures, not the file's; repeat for many. It must import."""
        self["services"].append(module)

    opt_s = opt_service

    def postOptions(self) -> None:
        """
        Build the final L{NodeConfig} into C{self["node_config"]}.

        @raise usage.UsageError: for anything wrong with it, naming the key,
            option, endpoint or module at fault.
        """
        overrides: dict[str, object] = {
            "name": self["name"],
            "listen": self["listen"] or None,
            "services": self["services"] or None,
            "peers": self["peers"] or None,
            "builtins": False if self["no-builtins"] else None,
            "send_tracebacks": True if self["send-tracebacks"] else None,
            "allow_insecure": True if self["allow-insecure"] else None,
            "access_log": True if self["access-log"] else None,
            "metrics_listen": self["metrics-listen"],
        }
        for key in _NUMBERS:
            overrides[key] = _number(self[key.replace("_", "-")])
        self._overrides = overrides
        try:
            config = self.read_config()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

        in_file = f"{self['config']}: [node] "
        _check_endpoints(config.listen, "--listen" if self["listen"] else in_file + "listen")
        if config.metrics_listen is not None:
            metrics_where = (
                "--metrics-listen" if self["metrics-listen"] else in_file + "metrics_listen"
            )
            _check_endpoints((config.metrics_listen,), metrics_where)
            _check_metrics(config, metrics_where)
        _check_exposure(config)
        _check_modules(config.services, "--service" if self["services"] else in_file + "services")
        self["node_config"] = config

    def read_config(self) -> NodeConfig:
        """
        The configuration: the file read afresh, with the command line's
        options over it (what a reload on SIGHUP reads too).

        @raise ConfigError: for anything wrong with it, naming the key.
        """
        config = load_config(self["config"]) if self["config"] else NodeConfig()
        return merge(config, self._overrides, source="", names=_OPTION_NAMES)

    def reload_config(self) -> NodeConfig:
        """
        L{read_config} for a reload: with every check of a start, as
        L{ConfigError}s.
        """
        config = self.read_config()
        try:
            _check_endpoints(config.listen, "listen")
            _check_exposure(config)
        except usage.UsageError as e:
            raise ConfigError(str(e)) from None
        return config


def _check_endpoints(endpoints: Sequence[str], where: str) -> None:
    """
    Parse each endpoint string as C{twistd} would, without listening on it.

    @raise usage.UsageError: naming the first endpoint that does not parse.
    """
    for endpoint in endpoints:
        try:
            serverFromString(MemoryReactor(), endpoint)
        except Exception as e:  # any parser's error means the string is bad
            raise usage.UsageError(
                f'{where}: bad endpoint "{endpoint}": {type(e).__name__}: {e}'
            ) from None


def _importable_from_current_directory() -> None:
    """
    Let service modules be found in the current directory, as C{python -m}
    finds them: C{twistd} itself puts only its own directory on the path.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _exposure(description: str, where: str) -> str | None:
    """Where a listen string takes plain text from other machines (see L{plaintext_exposure})."""
    from callnet.tls import is_tls_listen

    try:
        return plaintext_exposure(description, own_tls=is_tls_listen(description))
    except ConfigError as e:
        raise usage.UsageError(f"{where}: {e}") from None


def _check_exposure(config: NodeConfig) -> None:
    """
    Protected mode: refuse to serve anyone who can reach the machine, in
    plain text, with no authentication, unless the operator says so.

    @raise usage.UsageError: saying which listener, and the ways out.
    """
    security = config.security
    if security.tokens or security.cluster_token or security.allow_insecure:
        return
    for description in config.listen:
        exposed = _exposure(description, "listen")
        if exposed is not None:
            raise usage.UsageError(
                f'refusing to listen on "{description}": plain text with no authentication,'
                f" on {exposed}, which other machines can reach.  Listen on 127.0.0.1, use a tls:"
                " listener, set [security] tokens, or, if the network is trusted, pass"
                " --allow-insecure (or set [security] allow_insecure = true)"
            )


def _check_metrics(config: NodeConfig, where: str) -> None:
    """
    Refuse a metrics endpoint that cannot work, or that anyone may read.

    @raise usage.UsageError: prometheus-client is missing, or the endpoint is
        plain TCP on an address other machines can reach (it has no
        authentication) and C{allow_insecure} is off.
    """
    from callnet.metrics import require_prometheus

    try:
        require_prometheus()
    except ConfigError as e:
        raise usage.UsageError(f"{where}: {e}") from None
    if config.metrics_listen is None or config.security.allow_insecure:
        return
    if _exposure(config.metrics_listen, where) is not None:
        raise usage.UsageError(
            f'{where}: refusing to serve metrics on "{config.metrics_listen}", an address'
            " other machines can reach, with no authentication.  Serve them on 127.0.0.1"
            " (behind a proxy) or, if the network is trusted, pass --allow-insecure"
        )


def _check_modules(modules: Sequence[str], where: str) -> None:
    """
    Import each service module now, so a typo fails the command, not the node.

    @raise usage.UsageError: naming the first module that does not import,
        and why.
    """
    _importable_from_current_directory()
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # a module may raise anything while importing
            hint = " (is it installed, or on PYTHONPATH?)" if isinstance(e, ImportError) else ""
            raise usage.UsageError(
                f'{where}: cannot import service module "{module}": {type(e).__name__}: {e}{hint}'
            ) from None


def makeService(options: Options) -> NodeService:
    """
    Build the node that C{twistd callnet} runs, on the global reactor.

    @raise SystemExit: with the message, if the node refuses its
        configuration (say, a service module with no procedures): C{twistd}
        then prints it and exits non-zero, without a traceback, before it
        daemonizes.
    """
    from twisted.internet import reactor

    from callnet.node import NodeService

    threads: Any = reactor

    try:
        node = NodeService(options["node_config"], reactor)
    except ConfigError as e:
        raise SystemExit(f"twistd callnet: {e}") from None
    if options["config"]:
        # SIGHUP: read the file again and apply what can change while running.
        node.reload_from = options.reload_config

        def install() -> None:
            signal.signal(signal.SIGHUP, lambda number, frame: threads.callFromThread(node.reload))

        reactor.callWhenRunning(install)
    return node
