"""
The C{twistd callnet} command: options, and the service they build.

Everything that can be wrong with a configuration (the TOML file, an option,
an endpoint string, a peer, a service module that does not import) is found
in L{Options.postOptions} and reported as a L{usage.UsageError}.  Parsed by
C{twistd} as its C{callnet} command, that becomes one line on stderr,
C{twistd callnet: <what is wrong>}, and exit status 1, before anything
starts.  What only the node can judge (a service module that serves no
procedure) stops L{makeService} with a line in the same form.

This module must not import the global reactor when it is imported: C{twistd}
imports it while choosing a reactor (C{--reactor}).  Only L{makeService} does.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from twisted.python import usage

from callnet.config import (
    DEFAULT_LISTEN,
    NodeConfig,
    OptionKind,
    Setting,
    key_label,
    settings,
)
from callnet.config_load import load_config, merge
from callnet.errors import ConfigError
from callnet.exposure import plaintext_exposure

if TYPE_CHECKING:
    from callnet.node import NodeService
    from callnet.reactors import DispatchReactor

#: How every error of the command starts, whatever found it.
COMMAND = "twistd callnet"


def _number(text: str | None) -> int | float | str | None:
    """
    Read a number from the command line, or give the text back unchanged.

    Range and type are checked by L{callnet.config_load.merge}, so an option and
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


def _options(kind: OptionKind) -> list[Setting]:
    """The settings whose options take their value so (see L{OptionKind})."""
    return [entry for entry in settings() if entry.option and entry.option_kind == kind]


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

    # Every setting with an option, from the schema: its first sentence of
    # reason and its default are its --help.
    optParameters = [
        ["config", "c", None, "TOML file to read the configuration from (see etc/callnet.toml)."],
        *(
            [entry.option_name, None, None, f"{entry.summary} [default: {entry.show_default()}]"]
            for entry in _options("value")
        ),
    ]
    optFlags = [
        *(
            [entry.option_name, None, f"{entry.summary} [default: off]"]
            for entry in _options("flag")
        ),
        *(
            [entry.option_name, None, f"{entry.summary} [default: on; this turns it off]"]
            for entry in _options("no-flag")
        ),
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

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse the options, then check the configuration they make.

        @raise usage.UsageError: for a bad option or configuration, when
            parsed on their own.
        @raise SystemExit: instead, when parsed by C{twistd} as its
            C{callnet} command: one line, C{twistd callnet: <message>}, and
            status 1, rather than C{twistd}'s whole usage text.
            (C{--help} still prints the whole text.)
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            raise SystemExit(f"{COMMAND}: {e}") from None

    def postOptions(self) -> None:
        """
        Build the final L{NodeConfig} into C{self["node_config"]}.

        @raise usage.UsageError: for anything wrong with it, naming the key,
            option, endpoint or module at fault.
        """
        overrides: dict[str, object] = {}
        #: How messages call each key: its option if it has one and no file
        #: is read, or was given here; else where the file sets it.
        names: dict[str, str] = {}
        for entry in settings():
            option, kind = entry.option, entry.option_kind
            if option is None:
                value = None
            elif kind == "many":
                value = self[entry.key] or None
            elif kind == "flag":
                value = True if self[entry.option_name] else None
            elif kind == "no-flag":
                value = False if self[entry.option_name] else None
            elif isinstance(entry.default, int | float):
                value = _number(self[entry.option_name])
            else:
                value = self[entry.option_name]
            overrides[entry.key] = value
            if option is not None and (value is not None or not self["config"]):
                names[entry.key] = option
            elif self["config"]:
                names[entry.key] = f"{self['config']}: {key_label(entry.key)}"
        self._names = names
        self._overrides = overrides
        try:
            config = self.read_config()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

        if config.metrics_listen is not None:
            _check_metrics(config, self._names.get("metrics_listen", "metrics_listen"))
        _check_exposure(config)
        _check_modules(config.services, self._names.get("services", key_label("services")))
        self["node_config"] = config

    def read_config(self) -> NodeConfig:
        """
        The configuration: the file read afresh, with the command line's
        options over it (what a reload on SIGHUP reads too).

        @raise ConfigError: for anything wrong with it, naming the key.
        """
        config = load_config(self["config"]) if self["config"] else NodeConfig()
        return merge(config, self._overrides, source="", names=self._names)

    def reload_config(self) -> NodeConfig:
        """
        L{read_config} for a reload: with every check of a start, as
        L{ConfigError}s.
        """
        config = self.read_config()
        try:
            _check_exposure(config)
        except usage.UsageError as e:
            raise ConfigError(str(e)) from None
        return config


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

    On SIGHUP the node reads its configuration again (the C{--config} file,
    if any, with the command line's options over it) and applies what can
    change while running; with no file, that is its service modules.

    @raise SystemExit: with the message, if the node refuses its
        configuration (say, a service module with no procedures): C{twistd}
        then prints it and exits non-zero, without a traceback, before it
        daemonizes.
    """
    from twisted.internet import reactor

    from callnet.node import NodeService

    threads: Any = reactor

    try:
        node = NodeService(options["node_config"], cast("DispatchReactor", reactor))
    except ConfigError as e:
        raise SystemExit(f"{COMMAND}: {e}") from None
    node.reload_from = options.reload_config

    def install() -> None:
        signal.signal(signal.SIGHUP, lambda number, frame: threads.callFromThread(node.reload))

    reactor.callWhenRunning(install)
    return node
