"""
Reading a node's configuration: a TOML document or file, and overrides
such as command-line options, checked against the schema of
L{callnet.config} and put together into one L{NodeConfig}.

Every error is a L{ConfigError} of one line that names the setting.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from callnet.config import (
    NAMED_TABLES,
    SETTINGS_BY_KEY,
    NodeConfig,
    key_label,
    show_value,
)
from callnet.config_checks import ExpectationError, secret
from callnet.errors import ConfigError

#: The tables of a config file, in the order the schema declares them.
_SECTIONS = tuple(dict.fromkeys(entry.section for entry in SETTINGS_BY_KEY.values()))


def _prefix(source: str) -> str:
    """Start an error message with where the value came from, if that is known."""
    return f"{source}: " if source else ""


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _checked(key: str, value: object, source: str, label: Callable[[str], str]) -> object:
    """Run C{key}'s check on C{value}; raise L{ConfigError} naming the key if it fails."""
    check = SETTINGS_BY_KEY[key].check
    try:
        return check(value)
    except ExpectationError as invalid:
        # A token is never shown: this message goes to stderr and, on a
        # reload, to the log.
        shown = "" if check is secret else f", not {show_value(value)}"
        raise ConfigError(f"{_prefix(source)}{label(key)} must be {invalid}{shown}") from None


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
        into = sections.get(SETTINGS_BY_KEY[key].section, node)
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
    low, high = config.cluster.discover_min_interval, config.cluster.discover_max_interval
    if low > high:
        raise ConfigError(
            f"{_prefix(source)}{label('discover_min_interval')} ({low:g}) must not be greater"
            f" than {label('discover_max_interval')} ({high:g})"
        )
    _check_discovery_over_tls(config, _prefix(source))
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


def _check_discovery_over_tls(config: NodeConfig, prefix: str) -> None:
    """
    Refuse discovery over TLS links where a discovered peer could not be
    checked: its certificate must name the host its SRV record gives (as
    HTTPS checks the host it was asked for), and it proves it is a peer with
    the cluster token, since no certificate name is known in advance to say
    which callers are peers.

    @raise ConfigError: C{discover} reads A records, or there is no cluster token.
    """
    discover = config.cluster.discover
    if discover is None or not config.tls.secures_links:
        return
    if not discover.startswith("dns-srv:"):
        raise ConfigError(
            f"{prefix}[cluster] discover: with TLS links to peers, use dns-srv: a discovered"
            " peer's certificate is checked against the host name its SRV record gives, and A"
            " records give only addresses"
        )
    if config.security.cluster_token is None:
        raise ConfigError(
            f"{prefix}[cluster] discover with TLS links to peers needs [security]"
            " cluster_token: discovered peers are named by no certificate in advance, so the"
            " token is what makes a connection a peer"
        )


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
            if section in SETTINGS_BY_KEY:
                raise ConfigError(
                    f"{source}: {section} must be set inside [{SETTINGS_BY_KEY[section].section}],"
                    " not at the top of the file"
                )
            known = ", ".join(f"[{name}]" for name in _SECTIONS)
            raise ConfigError(
                f"{source}: unknown section [{section}]{_did_you_mean(section, _SECTIONS)};"
                f" the sections are {known}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, not {show_value(table)}")
        if section in NAMED_TABLES:
            values[section] = table
            continue
        keys = [key for key, entry in SETTINGS_BY_KEY.items() if entry.section == section]
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
        if key not in SETTINGS_BY_KEY:
            raise ConfigError(
                f"{_prefix(source)}unknown setting {key}{_did_you_mean(key, SETTINGS_BY_KEY)}"
            )
    naming = dict(names or {})

    def label(key: str) -> str:
        return naming.get(key) or key_label(key)

    return _build(config, given, source, label)
