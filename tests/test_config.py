"""
Tests for L{callnet.config}: reading TOML, checking it, and merging overrides.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from callnet import config as config_module
from callnet.config import (
    DEFAULT_LISTEN,
    ClusterSettings,
    Limits,
    NodeConfig,
    Security,
    TLSSettings,
    key_label,
    settings,
    settings_table,
)
from callnet.config_load import load_config, merge, parse_config
from callnet.errors import ConfigError


def temp_path(case: SynchronousTestCase) -> str:
    """
    A path in a fresh directory outside the checkout, removed after the test.

    (C{case.mktemp()} is relative to the working directory, which under
    pytest is the checkout.)
    """
    directory = tempfile.mkdtemp(prefix="callnet-test-")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "file")


EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "callnet.toml"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"

FULL = """\
[node]
name = "alpha"
listen = ["tcp:7601:interface=127.0.0.2", "unix:/tmp/alpha.sock"]
services = ["myapp.procedures", "myapp.more"]
builtins = false
threads = 4
processes = 2
send_tracebacks = true

[limits]
max_line_bytes = 4096
max_calls_in_flight = 50
max_connections = 8
write_stall_timeout = 5
default_timeout = 1.5
max_timeout = 10.0
"""


class ConfigFileCase(SynchronousTestCase):
    """Helpers for tests that load config files."""

    def write(self, text: str) -> str:
        """Write C{text} to a fresh file and return its path."""
        path = temp_path(self)
        Path(path).write_text(text, encoding="utf-8")
        return path

    def assert_config_error(self, text: str, *fragments: str) -> ConfigError:
        """Loading C{text} raises L{ConfigError} whose message has each fragment."""
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path)
        message = str(error)
        self.assertTrue(message.startswith(f"{path}: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error


class LoadConfigTests(ConfigFileCase):
    """
    Tests for L{load_config} and L{parse_config}.
    """

    def test_every_key(self) -> None:
        """A file setting every key yields a config holding each value."""
        config = load_config(self.write(FULL))
        self.assertEqual(
            config,
            NodeConfig(
                name="alpha",
                listen=("tcp:7601:interface=127.0.0.2", "unix:/tmp/alpha.sock"),
                services=("myapp.procedures", "myapp.more"),
                builtins=False,
                threads=4,
                processes=2,
                send_tracebacks=True,
                limits=Limits(
                    max_line_bytes=4096,
                    max_calls_in_flight=50,
                    max_connections=8,
                    write_stall_timeout=5.0,
                    default_timeout=1.5,
                    max_timeout=10.0,
                ),
            ),
        )

    def test_seconds_are_floats(self) -> None:
        """A timeout written as a whole number is read as a float."""
        config = load_config(self.write(FULL))
        self.assertIsInstance(config.limits.write_stall_timeout, float)

    def test_empty_file(self) -> None:
        """An empty file gives the defaults."""
        self.assertEqual(load_config(self.write("")), NodeConfig())

    def test_defaults(self) -> None:
        """With nothing set, a node is named after its host and listens on loopback port 7600."""
        config = NodeConfig()
        self.assertEqual(config.name, socket.gethostname())
        self.assertEqual(config.listen, (DEFAULT_LISTEN,))
        self.assertEqual(DEFAULT_LISTEN, "tcp:7600:interface=127.0.0.1")
        self.assertTrue(config.builtins)
        self.assertFalse(config.send_tracebacks)

    def test_partial_section(self) -> None:
        """Keys a file leaves out keep their defaults."""
        config = load_config(self.write("[limits]\nmax_connections = 3\n"))
        self.assertEqual(config, NodeConfig(limits=Limits(max_connections=3)))

    def test_example_is_the_defaults(self) -> None:
        """The shipped example file sets every key to its default."""
        self.assertEqual(load_config(EXAMPLE), NodeConfig())

    def test_example_shows_every_key(self) -> None:
        """The shipped example file mentions every key a config may set."""
        text = EXAMPLE.read_text(encoding="utf-8")
        for cls in (NodeConfig, Limits, ClusterSettings, Security, TLSSettings):
            for f in dataclasses.fields(cls):
                if f.name in ("peers", "acl"):
                    self.assertRegex(text, rf"(?m)^\[{f.name}\]$")
                elif f.name not in ("limits", "cluster", "security", "tls"):
                    self.assertRegex(text, rf"(?m)^#? ?{f.name} = ")

    def test_example_lists_exactly_the_schema(self) -> None:
        """The example sets (or shows commented out) exactly the schema's keys, each in its
        section, and sets each one it sets to the schema's default."""
        listed: dict[str, str] = {}
        section = ""
        for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
            header = re.fullmatch(r"\[(\w+)\]", line)
            if header:
                section = header.group(1)
                if section in ("peers", "acl"):
                    listed[section] = section
                continue
            setting = re.match(r"(#? ?)(\w+) = (.*)", line)
            if setting and section not in ("peers", "acl"):
                commented, key, value = setting.groups()
                listed[key] = section
                if not commented:
                    default = config_module.SETTINGS_BY_KEY[key].show_default()
                    self.assertEqual(value, default, key)
        schema = {entry.key: entry.section for entry in settings()}
        self.assertEqual(listed, schema)

    def test_docs_table_is_the_schema(self) -> None:
        """docs/operations.md shows the table of settings the schema makes, unchanged."""
        text = DOCS.read_text(encoding="utf-8")
        begin, end = "<!-- settings table: begin -->\n", "<!-- settings table: end -->"
        table = text[text.index(begin) + len(begin) : text.index(end)]
        self.assertEqual(table, settings_table())
        for entry in settings():
            self.assertIn(f"| `{key_label(entry.key)}` | `{entry.show_default()}` |", table)

    def test_every_setting_is_declared_whole(self) -> None:
        """Every field of the config's dataclasses is a setting with a reason and a section."""
        keys = set()
        for cls in (NodeConfig, Limits, ClusterSettings, Security, TLSSettings):
            for f in dataclasses.fields(cls):
                if f.name not in ("limits", "cluster", "security", "tls"):
                    keys.add(f.name)
        self.assertEqual(keys, {entry.key for entry in settings()})
        for entry in settings():
            self.assertGreater(len(entry.reason), 20, entry.key)
            self.assertIn(
                entry.section, ("node", "limits", "cluster", "peers", "security", "acl", "tls")
            )

    def test_unknown_section(self) -> None:
        """An unknown section is refused, naming it and suggesting the close one."""
        self.assert_config_error("[limit]\nmax_connections = 3\n", "[limit]", '"limits"')

    def test_top_level_key(self) -> None:
        """A key written above any section is refused, naming the section it belongs in."""
        self.assert_config_error('name = "alpha"\n', "name", "[node]")

    def test_section_not_a_table(self) -> None:
        """A section name used as a plain key is refused."""
        self.assert_config_error("node = 3\n", "[node] must be a table")

    def test_unknown_key(self) -> None:
        """An unknown key is refused, naming it, its section and the close match."""
        self.assert_config_error("[node]\nthread = 4\n", "[node] unknown key thread", '"threads"')

    def test_key_in_wrong_section(self) -> None:
        """A known key in the other section is refused as unknown there."""
        self.assert_config_error("[node]\nmax_connections = 4\n", "[node] unknown key")

    def test_wrong_type_names_the_key(self) -> None:
        """A value of the wrong type is refused with a message naming the key and the value."""
        error = self.assert_config_error('[limits]\nmax_calls_in_flight = "ten"\n')
        self.assertEqual(
            str(error).split(": ", 1)[1],
            '[limits] max_calls_in_flight must be a whole number >= 1, not "ten"',
        )

    def test_wrong_types(self) -> None:
        """Each key refuses a value of the wrong type, naming the key."""
        cases = {
            "[node]\nname = 3\n": "[node] name must be a node name of letters, digits and _.-",
            '[node]\nname = ""\n': "[node] name must be a node name of letters, digits and _.-",
            '[node]\nname = "bad name"\n': '[node] name must be a node name of letters, digits and _.- (at most 128), not "bad name"',
            '[node]\nlisten = "tcp:7600"\n': "[node] listen must be a list",
            "[node]\nlisten = []\n": "[node] listen must be a list of at least one",
            "[node]\nlisten = [7600]\n": "[node] listen must be a list",
            "[node]\nservices = [1]\n": "[node] services must be a list of module names",
            '[node]\nbuiltins = "yes"\n': '[node] builtins must be true or false, not "yes"',
            "[node]\nsend_tracebacks = 1\n": "[node] send_tracebacks must be true or false",
            "[node]\nthreads = true\n": "[node] threads must be a whole number >= 1, not true",
            "[node]\nthreads = 2.5\n": "[node] threads must be a whole number >= 1, not 2.5",
            "[limits]\nmax_line_bytes = [1]\n": "[limits] max_line_bytes must be a whole number",
            '[limits]\ndefault_timeout = "1s"\n': "[limits] default_timeout must be a number",
        }
        for text, fragment in cases.items():
            self.assert_config_error(text, fragment)

    def test_out_of_range(self) -> None:
        """Counts below their minimum and timeouts not above zero are refused, naming the key."""
        cases = {
            "[node]\nthreads = 0\n": "[node] threads must be a whole number >= 1, not 0",
            "[node]\nprocesses = -1\n": "[node] processes must be a whole number >= 0, not -1",
            "[limits]\nmax_line_bytes = 0\n": "[limits] max_line_bytes must be",
            "[limits]\nmax_calls_in_flight = -5\n": "[limits] max_calls_in_flight must be",
            "[limits]\nmax_connections = 0\n": "[limits] max_connections must be",
            "[limits]\nwrite_stall_timeout = 0\n": "[limits] write_stall_timeout must be a number "
            "of seconds > 0, not 0",
            "[limits]\ndefault_timeout = -1.0\n": "[limits] default_timeout must be",
            "[limits]\nmax_timeout = inf\n": "[limits] max_timeout must be",
            "[limits]\nmax_timeout = nan\n": "[limits] max_timeout must be",
        }
        for text, fragment in cases.items():
            self.assert_config_error(text, fragment)

    def test_zero_processes(self) -> None:
        """C{processes = 0} is allowed: it means one per CPU."""
        self.assertEqual(load_config(self.write("[node]\nprocesses = 0\n")).processes, 0)

    def test_default_timeout_above_max(self) -> None:
        """A default timeout longer than the longest allowed is refused, naming both keys."""
        self.assert_config_error(
            "[limits]\ndefault_timeout = 20\nmax_timeout = 10\n",
            "[limits] default_timeout (20)",
            "[limits] max_timeout (10)",
        )

    def test_bad_toml(self) -> None:
        """A TOML syntax error is refused, naming the file and the line."""
        self.assert_config_error(
            '[node]\nname = "alpha"\nthreads = \n', "not valid TOML", "line 3"
        )

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is refused as invalid TOML."""
        path = temp_path(self)
        Path(path).write_bytes(b'[node]\nname = "\xff"\n')
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("not valid TOML", str(error))

    def test_missing_file(self) -> None:
        """A file that cannot be read is refused, naming it."""
        path = temp_path(self)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(error), f"{path}: cannot read config file: No such file or directory")

    def test_parse_config_source(self) -> None:
        """L{parse_config} names the document by the source it is given."""
        error = self.assertRaises(ConfigError, parse_config, {"x": {}}, "here")
        self.assertTrue(str(error).startswith("here: unknown section [x]"))


class SecurityConfigTests(ConfigFileCase):
    """The [security], [acl] and [tls] tables."""

    def test_tokens_acl_tls(self) -> None:
        """Tokens, access rules and TLS files are read into the config."""
        config = load_config(
            self.write(
                "[security]\n"
                'tokens = { alice = "0123456789abcdef", ops = "fedcba9876543210" }\n'
                'cluster_token = "cluster-token-0123"\n'
                "[acl]\n"
                'alice = ["greet", "stock*"]\n'
                '"*" = ["echo"]\n'
                "[tls]\n"
                'cert = "a.pem"\nkey = "a.key"\nca = "ca.pem"\n'
            )
        )
        self.assertEqual(
            config.security.tokens,
            (("alice", "0123456789abcdef"), ("ops", "fedcba9876543210")),
        )
        self.assertEqual(config.security.acl, (("alice", ("greet", "stock*")), ("*", ("echo",))))
        self.assertEqual(
            (config.tls.cert, config.tls.key, config.tls.ca), ("a.pem", "a.key", "ca.pem")
        )

    def test_short_token(self) -> None:
        """A token too short to be safe is refused, naming the key and not echoing the token."""
        error = self.assert_config_error(
            '[security]\ntokens = { alice = "short" }\n', "tokens", "16"
        )
        self.assertNotIn("short", str(error))

    def test_bad_cluster_token_is_not_echoed(self) -> None:
        """A cluster token refused as too short, or with spaces around it, is not shown in the
        error, which goes to stderr and, on a reload, to the log."""
        for token in ("fifteen-chars-x", " a-long-enough-cluster-token "):
            error = self.assert_config_error(
                f'[security]\ncluster_token = "{token}"\n', "cluster_token", "16"
            )
            self.assertNotIn(token.strip(), str(error))

    def test_acl_patterns_must_be_a_list(self) -> None:
        """An access rule that is not a list of patterns is refused."""
        self.assert_config_error('[acl]\nalice = "greet"\n', "[acl]")

    def test_cert_without_key(self) -> None:
        """A certificate without its key (or the reverse) is refused."""
        self.assert_config_error('[tls]\ncert = "a.pem"\n', "cert and key go together")


class MergeTests(SynchronousTestCase):
    """
    Tests for L{merge}.
    """

    def test_overrides_win(self) -> None:
        """Given overrides replace the file's values, node keys and limits alike."""
        base = NodeConfig(name="file", threads=3, limits=Limits(max_connections=9))
        merged = merge(base, {"name": "cli", "max_connections": 2, "listen": ["tcp:1"]})
        self.assertEqual(
            merged,
            NodeConfig(name="cli", listen=("tcp:1",), threads=3, limits=Limits(max_connections=2)),
        )

    def test_none_keeps_value(self) -> None:
        """An override of C{None} leaves the config's value alone."""
        base = NodeConfig(name="file", builtins=False)
        self.assertEqual(merge(base, {"name": None, "builtins": None}), base)

    def test_false_is_an_override(self) -> None:
        """C{False} is a value, not a missing one."""
        self.assertFalse(merge(NodeConfig(), {"builtins": False}).builtins)

    def test_original_unchanged(self) -> None:
        """Merging returns a new config and leaves the original as it was."""
        base = NodeConfig(name="file")
        merge(base, {"name": "cli"})
        self.assertEqual(base.name, "file")

    def test_checked_like_the_file(self) -> None:
        """An override out of range is refused with the file's message and the source."""
        error = self.assertRaises(ConfigError, merge, NodeConfig(), {"threads": 0}, "cli")
        self.assertEqual(str(error), "cli: [node] threads must be a whole number >= 1, not 0")

    def test_names(self) -> None:
        """Error messages call a key by the name given for it."""
        error = self.assertRaises(
            ConfigError,
            merge,
            NodeConfig(),
            {"max_connections": "many"},
            "command line",
            {"max_connections": "--max-connections"},
        )
        self.assertEqual(
            str(error), 'command line: --max-connections must be a whole number >= 1, not "many"'
        )

    def test_cross_check_after_merge(self) -> None:
        """A default timeout raised past the file's maximum is refused."""
        base = NodeConfig(limits=Limits(max_timeout=10.0))
        error = self.assertRaises(ConfigError, merge, base, {"default_timeout": 11})
        self.assertIn("default_timeout (11) must not be greater than", str(error))

    def test_unknown_key(self) -> None:
        """An override of a key that does not exist is refused, naming it."""
        error = self.assertRaises(ConfigError, merge, NodeConfig(), {"thread": 3})
        self.assertIn('unknown setting thread (did you mean "threads"?)', str(error))

    def test_keys_do_not_clash(self) -> None:
        """No key names both a node setting and a limit, so overrides can be flat."""
        node = {f.name for f in dataclasses.fields(NodeConfig)}
        limits = {f.name for f in dataclasses.fields(Limits)}
        self.assertEqual(node & limits, set())


class EndpointCheckTests(SynchronousTestCase):
    """
    Tests for the checks of the endpoints a config names, wherever it comes from.
    """

    def test_bad_listen_in_file(self) -> None:
        """A listen string that does not parse is refused, naming the file and key."""
        error = self.assertRaises(
            ConfigError, parse_config, {"node": {"listen": ["nonsense:1"]}}, "a.toml"
        )
        self.assertIn('a.toml: [node] listen: bad endpoint "nonsense:1"', str(error))

    def test_bad_metrics_listen(self) -> None:
        """A metrics endpoint that does not parse is refused, naming its key."""
        error = self.assertRaises(ConfigError, merge, NodeConfig(), {"metrics_listen": "tcp:x"})
        self.assertIn('[node] metrics_listen: bad endpoint "tcp:x"', str(error))

    def test_bad_peer_endpoint(self) -> None:
        """A peer whose endpoint cannot be dialled is refused, naming the peer."""
        error = self.assertRaises(
            ConfigError, parse_config, {"peers": {"beta": "garbage"}}, "a.toml"
        )
        self.assertIn('a.toml: [peers] beta: bad endpoint "garbage"', str(error))

    def test_self_as_peer(self) -> None:
        """A node that lists itself among its peers is refused, even when the name comes later."""
        document = {"node": {"name": "alpha"}, "peers": {"alpha": "tcp:127.0.0.1:1"}}
        error = self.assertRaises(ConfigError, parse_config, document, "a.toml")
        self.assertIn("a.toml: [peers] alpha: a node cannot be its own peer", str(error))
        base = parse_config({"peers": {"alpha": "tcp:127.0.0.1:1"}, "node": {"name": "beta"}})
        error = self.assertRaises(ConfigError, merge, base, {"name": "alpha"}, "cli")
        self.assertIn("cli: [peers] alpha: a node cannot be its own peer", str(error))

    def test_good_endpoints(self) -> None:
        """Listeners of each plain kind and peers of each kind are accepted."""
        config = parse_config(
            {
                "node": {"name": "alpha", "listen": ["tcp:7600", "unix:/tmp/x.sock"]},
                "peers": {"beta": "tcp:127.0.0.2:7600", "gamma": "unix:/tmp/g.sock"},
            }
        )
        self.assertEqual(len(config.peers), 2)


class SharedDefaultsTests(SynchronousTestCase):
    """
    Tests that the node, the clients and the command line share the defaults they have
    in common.
    """

    def test_call_timeout(self) -> None:
        """A call naming no deadline gets the same one from the node, the clients and the CLI."""
        from callnet import cli, client, testing
        from callnet.wire import DEFAULT_CALL_TIMEOUT

        self.assertEqual(Limits().default_timeout, DEFAULT_CALL_TIMEOUT)
        self.assertEqual(client.DEFAULT_TIMEOUT, DEFAULT_CALL_TIMEOUT)
        self.assertEqual(testing.MemoryNode().client().timeout, DEFAULT_CALL_TIMEOUT)
        options = cli._parser().parse_args(["call", "tcp:127.0.0.1:7600", "echo"])
        self.assertEqual(options.timeout, DEFAULT_CALL_TIMEOUT)

    def test_max_line(self) -> None:
        """The node's line bound is the codec's default."""
        from callnet.wire import DEFAULT_MAX_LINE, LineDecoder

        self.assertEqual(Limits().max_line_bytes, DEFAULT_MAX_LINE)
        self.assertEqual(LineDecoder().max_line, DEFAULT_MAX_LINE)
