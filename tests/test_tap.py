"""
Tests for L{callnet.tap}: the options of C{twistd callnet} and the service they build.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any
from unittest import mock

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from callnet import tap
from callnet.config import DEFAULT_LISTEN, Limits, NodeConfig, settings
from callnet.errors import ConfigError, StartError
from callnet.exposure import plaintext_exposure


def temp_path(case: SynchronousTestCase) -> str:
    """
    A path in a fresh directory outside the checkout, removed after the test.

    (C{case.mktemp()} is relative to the working directory, which under
    pytest is the checkout.)
    """
    directory = tempfile.mkdtemp(prefix="callnet-test-")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "file")


def parse(*argv: str) -> NodeConfig:
    """Parse C{argv} as C{twistd callnet}'s options and return the config they make."""
    options = tap.Options()
    options.parseOptions(list(argv))
    config = options["node_config"]
    assert isinstance(config, NodeConfig)
    return config


class ProtectedModeTests(SynchronousTestCase):
    """A node will not serve anyone who can reach the machine, in plain text, unasked."""

    def test_exposed_plain_text_refused(self) -> None:
        """Plain TCP on every interface with no tokens is refused, and the message says how out."""
        error = self.assertRaises(usage.UsageError, parse, "--listen", "tcp:7600")
        self.assertIn('"tcp:7600"', str(error))
        self.assertIn("--allow-insecure", str(error))
        self.assertIn("[security] tokens", str(error))

    def test_ways_out(self) -> None:
        """Loopback, unix sockets, TLS, tokens, or an explicit --allow-insecure are all accepted."""
        parse("--listen", "tcp:7600:interface=127.0.0.5")
        parse("--listen", "unix:/tmp/callnet-test.sock")
        parse("--listen", "tcp:7600", "--allow-insecure")
        path = temp_path(self)
        Path(path).write_text(
            '[node]\nlisten = ["tcp:7600"]\n[security]\ntokens = { a = "0123456789abcdef" }\n'
        )
        parse("--config", path)

    def test_exposure_rules(self) -> None:
        """Listeners are judged by the endpoint Twisted builds, whatever the spelling."""
        exposed = {
            "tcp:7600": "every interface",
            "tcp:7600:interface=0.0.0.0": "every interface",
            "tcp:port=7600": "every interface",
            "TCP6:7600": "every interface",
            "Tcp6:7600": "every interface",
            "tcp6:7600:interface=\\:\\:": "every interface",
            "haproxy:tcp:7600": "every interface",
            "HAProxy:TCP6:7600": "every interface",
            "tcp:7600:interface=192.0.2.7": "192.0.2.7",
        }
        for description, where in exposed.items():
            self.assertEqual(plaintext_exposure(description), where, description)
        for description in (
            "tcp6:7600:interface=\\:\\:1",
            "tcp:port=7600:interface=127.0.0.2",
            "tcp:7600:interface=localhost",
            "tcp6:7600:interface=\\:\\:ffff\\:127.0.0.1",
            "haproxy:tcp:7600:interface=127.0.0.1",
            "unix:/tmp/callnet-test.sock",
        ):
            self.assertIsNone(plaintext_exposure(description), description)
        # The node's own tls: form is TLS whatever it says.
        self.assertIsNone(plaintext_exposure("tls:7600", own_tls=True))

    def test_encrypted_endpoints_are_not_plain_text(self) -> None:
        """ssl: and Twisted's own TLS listeners are not plain text, wherever they listen."""
        from callnet.tls import make_ca, make_node_certificate

        folder = Path(temp_path(self))
        folder.mkdir()
        make_ca(folder)
        cert, key = make_node_certificate(folder, "alpha")
        self.assertIsNone(plaintext_exposure(f"ssl:7600:privateKey={key}:certKey={cert}"))
        self.assertIsNone(plaintext_exposure(f"TLS:{folder}:7600"))

    def test_endpoint_kinds_that_cannot_be_judged_count_as_exposed(self) -> None:
        """A listener whose address cannot be told (systemd's) needs tokens or --allow-insecure."""
        from twisted.internet import endpoints
        from twisted.python.systemd import ListenFDs

        with mock.patch.object(endpoints._SystemdParser, "_sddaemon", ListenFDs([3], ["web"])):
            self.assertEqual(
                plaintext_exposure("systemd:domain=INET:index=0"), "an address it cannot tell"
            )

    def test_every_spelling_is_refused_without_tokens(self) -> None:
        """--listen and --metrics-listen refuse exposed plain text in any capitalisation or wrapper."""
        for description in ("TCP6:7600", "tcp6:7600", "haproxy:tcp:7600", "tcp:port=7600"):
            with self.assertRaises(usage.UsageError) as raised:
                parse("--listen", description)
            self.assertIn(f'refusing to listen on "{description}"', str(raised.exception))
        with self.assertRaises(usage.UsageError) as raised:
            parse("--metrics-listen", "TCP6:9464")
        self.assertIn("refusing to serve metrics", str(raised.exception))
        parse("--listen", "TCP6:7600", "--allow-insecure")

    def test_reload_refuses_exposure_too(self) -> None:
        """A config read again on reload is held to the same rule as at start."""
        path = temp_path(self)
        Path(path).write_text('[node]\nlisten = ["tcp:7600:interface=127.0.0.1"]\n')
        options = tap.Options()
        options.parseOptions(["--config", path])
        Path(path).write_text('[node]\nlisten = ["haproxy:TCP6:7600"]\n')
        with self.assertRaises(ConfigError) as raised:
            options.reload_config()
        self.assertIn("refusing to listen", str(raised.exception))


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{tap.Options}.
    """

    def write_config(self, text: str) -> str:
        """Write a TOML config file and return its path."""
        path = temp_path(self)
        Path(path).write_text(text, encoding="utf-8")
        return path

    def assert_usage_error(self, *argv: str) -> str:
        """Parsing C{argv} raises L{usage.UsageError}; return its message."""
        error = self.assertRaises(usage.UsageError, parse, *argv)
        return str(error)

    def test_no_options(self) -> None:
        """With no options the node gets every default: loopback port 7600 and the builtins."""
        config = parse()
        self.assertEqual(config, NodeConfig())
        self.assertEqual(config.listen, ("tcp:7600:interface=127.0.0.1",))
        self.assertEqual(config.listen, (DEFAULT_LISTEN,))
        self.assertTrue(config.builtins)

    def test_every_option(self) -> None:
        """Each option sets its key of the config."""
        config = parse(
            "--name=beta",
            "--listen=tcp:7601:interface=127.0.0.2",
            "--service=json",
            "--threads=3",
            "--processes=2",
            "--no-builtins",
            "--send-tracebacks",
            "--max-line-bytes=4096",
            "--max-calls-in-flight=20",
            "--max-connections=7",
            "--write-stall-timeout=2.5",
            "--default-timeout=1.5",
            "--max-timeout=30",
        )
        self.assertEqual(
            config,
            NodeConfig(
                name="beta",
                listen=("tcp:7601:interface=127.0.0.2",),
                services=("json",),
                builtins=False,
                threads=3,
                processes=2,
                send_tracebacks=True,
                limits=Limits(
                    max_line_bytes=4096,
                    max_calls_in_flight=20,
                    max_connections=7,
                    write_stall_timeout=2.5,
                    default_timeout=1.5,
                    max_timeout=30.0,
                ),
            ),
        )

    def test_short_options(self) -> None:
        """C{-l}, C{-s} and C{-c} are short for C{--listen}, C{--service} and C{--config}."""
        path = self.write_config('[node]\nname = "short"\n')
        config = parse("-l", "tcp:7602:interface=127.0.0.1", "-s", "json", "-c", path)
        self.assertEqual(
            (config.listen, config.services, config.name),
            (("tcp:7602:interface=127.0.0.1",), ("json",), "short"),
        )

    def test_listen_repeated_in_order(self) -> None:
        """Repeated C{--listen} options are all kept, in the order given."""
        config = parse(
            "--listen",
            "tcp:7602:interface=127.0.0.1",
            "--listen",
            "unix:/tmp/n.sock",
            "-l",
            "tcp:7603:interface=127.0.0.1",
        )
        self.assertEqual(
            config.listen,
            ("tcp:7602:interface=127.0.0.1", "unix:/tmp/n.sock", "tcp:7603:interface=127.0.0.1"),
        )

    def test_service_repeated_in_order(self) -> None:
        """Repeated C{--service} options are all kept, in the order given."""
        config = parse("--service", "json", "--service", "os.path")
        self.assertEqual(config.services, ("json", "os.path"))

    def test_config_file(self) -> None:
        """C{--config} reads the TOML file."""
        path = self.write_config(
            '[node]\nname = "alpha"\nlisten = ["tcp:7604:interface=127.0.0.1"]\nbuiltins = false\n'
            "[limits]\nmax_connections = 5\n"
        )
        config = parse("--config", path)
        self.assertEqual(
            config,
            NodeConfig(
                name="alpha",
                listen=("tcp:7604:interface=127.0.0.1",),
                builtins=False,
                limits=Limits(max_connections=5),
            ),
        )

    def test_options_win_over_file(self) -> None:
        """Options given on the command line replace the file's values; the rest stay."""
        path = self.write_config(
            '[node]\nname = "alpha"\nlisten = ["tcp:7604:interface=127.0.0.1", "tcp:7605:interface=127.0.0.1"]\nthreads = 4\n'
            "[limits]\nmax_connections = 5\nmax_line_bytes = 100\n"
        )
        config = parse(
            "--config",
            path,
            "--name",
            "beta",
            "--listen",
            "tcp:7606:interface=127.0.0.1",
            "--max-connections",
            "6",
        )
        self.assertEqual(
            config,
            NodeConfig(
                name="beta",
                listen=("tcp:7606:interface=127.0.0.1",),
                threads=4,
                limits=Limits(max_connections=6, max_line_bytes=100),
            ),
        )

    def test_flags_absent_keep_file(self) -> None:
        """Flags not given leave the file's booleans alone."""
        path = self.write_config("[node]\nbuiltins = false\nsend_tracebacks = true\n")
        config = parse("--config", path)
        self.assertEqual((config.builtins, config.send_tracebacks), (False, True))

    def test_bad_number(self) -> None:
        """A number option that is not a number is refused, naming the option and the value."""
        message = self.assert_usage_error("--max-calls-in-flight", "ten")
        self.assertEqual(
            message,
            '--max-calls-in-flight must be a whole number >= 1, not "ten"',
        )

    def test_out_of_range_option(self) -> None:
        """A number option out of range is refused, naming the option."""
        self.assertIn(
            "--threads must be a whole number >= 1, not 0",
            self.assert_usage_error("--threads", "0"),
        )
        self.assertIn(
            "--default-timeout must be a number of seconds > 0, not 0",
            self.assert_usage_error("--default-timeout", "0"),
        )
        self.assertIn(
            "--processes must be a whole number >= 0, not 1.5",
            self.assert_usage_error("--processes", "1.5"),
        )

    def test_default_timeout_over_max(self) -> None:
        """A default timeout over the maximum is refused, naming both options."""
        message = self.assert_usage_error("--default-timeout", "7200")
        self.assertIn(
            "--default-timeout (7200) must not be greater than --max-timeout (3600)", message
        )

    def test_bad_config_file(self) -> None:
        """A bad value in the file is refused, naming the file and the key."""
        path = self.write_config('[limits]\nmax_calls_in_flight = "ten"\n')
        message = self.assert_usage_error("--config", path)
        self.assertEqual(
            message, f'{path}: [limits] max_calls_in_flight must be a whole number >= 1, not "ten"'
        )

    def test_missing_config_file(self) -> None:
        """A config file that does not exist is refused, naming it."""
        path = temp_path(self)
        self.assertIn(path, self.assert_usage_error("--config", path))

    def test_bad_toml(self) -> None:
        """A config file with a TOML syntax error is refused, naming the file and line."""
        path = self.write_config("[node\n")
        message = self.assert_usage_error("--config", path)
        self.assertIn(path, message)
        self.assertIn("line 1", message)

    def test_bad_endpoint(self) -> None:
        """An endpoint string that does not parse is refused, naming it."""
        message = self.assert_usage_error("--listen", "tcp:7600", "--listen", "bogus:xyz")
        self.assertIn('--listen: bad endpoint "bogus:xyz"', message)
        self.assertIn("Unknown endpoint type", message)

    def test_bad_endpoint_arguments(self) -> None:
        """An endpoint with a bad port or argument is refused, naming it."""
        self.assertIn('"tcp:http"', self.assert_usage_error("--listen", "tcp:http"))
        self.assertIn(
            '"tcp:1:colour=red"', self.assert_usage_error("--listen", "tcp:1:colour=red")
        )

    def test_bad_endpoint_in_file(self) -> None:
        """An endpoint string from the file that does not parse is refused, naming file and key."""
        path = self.write_config('[node]\nlisten = ["nope:1"]\n')
        message = self.assert_usage_error("--config", path)
        self.assertIn(f'{path}: [node] listen: bad endpoint "nope:1"', message)

    def test_unimportable_service(self) -> None:
        """A service module that does not exist is refused, naming it and the import error."""
        message = self.assert_usage_error("--service", "callnet_no_such_module_for_test")
        self.assertIn('cannot import service module "callnet_no_such_module_for_test"', message)
        self.assertIn("ModuleNotFoundError", message)
        self.assertNotIn("Traceback", message)

    def test_service_failing_on_import(self) -> None:
        """A service module that raises while importing is refused, naming it and the error."""
        directory = Path(temp_path(self))
        directory.mkdir()
        (directory / "callnet_broken_service_for_test.py").write_text("1 / 0\n")
        sys.path.insert(0, str(directory))
        self.addCleanup(sys.path.remove, str(directory))
        self.addCleanup(sys.modules.pop, "callnet_broken_service_for_test", None)
        message = self.assert_usage_error("--service", "callnet_broken_service_for_test")
        self.assertIn('"callnet_broken_service_for_test": ZeroDivisionError', message)

    def test_unimportable_service_in_file(self) -> None:
        """A service module from the file that does not import is refused, naming file and key."""
        path = self.write_config('[node]\nservices = ["callnet_no_such_module_for_test"]\n')
        message = self.assert_usage_error("--config", path)
        self.assertIn(f"{path}: [node] services: cannot import", message)

    def test_bad_node_name(self) -> None:
        """A --name that is not one word of letters, digits and _.- is refused, naming --name."""
        message = self.assert_usage_error("--name", "bad name")
        self.assertEqual(
            message,
            '--name must be a node name of letters, digits and _.- (at most 128), not "bad name"',
        )

    def test_peer_endpoint_that_does_not_parse(self) -> None:
        """A --peer whose endpoint a client could not dial is refused, naming the peer."""
        message = self.assert_usage_error("--peer", "beta=tcp:127.0.0.2")
        self.assertIn('--peer beta: bad endpoint "tcp:127.0.0.2"', message)
        self.assertIn("TypeError", message)

    def test_peer_endpoint_in_file(self) -> None:
        """A [peers] endpoint in the file that does not parse is refused, naming file and peer."""
        path = self.write_config('[peers]\nbeta = "garbage"\n')
        message = self.assert_usage_error("--config", path)
        self.assertIn(f'{path}: [peers] beta: bad endpoint "garbage"', message)

    def test_good_peers(self) -> None:
        """Peer endpoints that parse are kept, in order, and nothing is dialled."""
        config = parse(
            "--name", "alpha", "--peer", "beta=tcp:127.0.0.2:7600", "--peer", "gamma=unix:/g"
        )
        self.assertEqual(config.peers, (("beta", "tcp:127.0.0.2:7600"), ("gamma", "unix:/g")))

    def test_self_as_peer(self) -> None:
        """A node listing its own name among its peers is refused."""
        message = self.assert_usage_error("--name", "alpha", "--peer", "alpha=tcp:127.0.0.1:7601")
        self.assertIn("--peer alpha: a node cannot be its own peer", message)
        path = self.write_config('[node]\nname = "alpha"\n[peers]\nalpha = "tcp:127.0.0.1:1"\n')
        self.assertIn(
            f"{path}: [peers] alpha: a node cannot be", self.assert_usage_error("-c", path)
        )

    def test_reload_checks_peers(self) -> None:
        """A reload refuses a file whose new peers do not parse, as a start would."""
        path = self.write_config('[node]\nname = "alpha"\n')
        options = tap.Options()
        options.parseOptions(["--config", path])
        Path(path).write_text('[node]\nname = "alpha"\n[peers]\nbeta = "garbage"\n')
        error = self.assertRaises(ConfigError, options.reload_config)
        self.assertIn('[peers] beta: bad endpoint "garbage"', str(error))

    def test_extra_arguments(self) -> None:
        """Arguments that are not options are refused."""
        self.assert_usage_error("extra")

    def test_help_shows_defaults(self) -> None:
        """The help text lists every option, with the defaults from L{NodeConfig}."""
        text = str(tap.Options())
        for option in (
            "--listen",
            "--service",
            "--config",
            "--name",
            "--threads",
            "--processes",
            "--no-builtins",
            "--send-tracebacks",
            "--max-line-bytes",
            "--max-calls-in-flight",
            "--max-connections",
            "--write-stall-timeout",
            "--default-timeout",
            "--max-timeout",
        ):
            self.assertIn(option, text)
        self.assertIn("[default: 1000]", text)

    def test_help_is_the_schema(self) -> None:
        """Every setting with an option is in --help with its reason and default."""
        text = " ".join(str(tap.Options()).split())
        for entry in settings():
            if entry.option is None:
                continue
            self.assertIn(entry.option, text)
            if entry.option_kind == "value":
                self.assertIn(f"{entry.summary} [default: {entry.show_default()}]", text)
            elif entry.option_kind != "many":
                self.assertIn(entry.summary, text)

    def test_every_option_sets_its_key(self) -> None:
        """Each option with a value lands in the key the schema gives it."""
        for entry in settings():
            if (
                entry.option is None
                or entry.option_kind != "value"
                or entry.key == "metrics_listen"
            ):
                continue
            value = {
                "name": "beta",
                "max_timeout": "7000",
                "discover": "dns-a:callnet.example:7600",
            }.get(entry.key, "7")
            options = tap.Options()
            options.parseOptions([entry.option, value])
            config = options["node_config"]
            holder = config if entry.section == "node" else getattr(config, entry.section)
            self.assertEqual(getattr(holder, entry.key), entry.check(_number_or(value)))


class TwistdCommand(usage.Options):
    """A stand-in for C{twistd}'s own options, with C{callnet} as its command."""

    subCommands = [["callnet", None, tap.Options, "Run a callnet node."]]


class CommandLineTests(SynchronousTestCase):
    """Parsed as C{twistd}'s command, a bad option ends the command with one line."""

    def test_bad_value_is_one_line(self) -> None:
        """A bad value exits with one line, C{twistd callnet: <message>}, not a usage error."""
        error = self.assertRaises(
            SystemExit, TwistdCommand().parseOptions, ["callnet", "--threads", "x"]
        )
        self.assertEqual(
            error.code, 'twistd callnet: --threads must be a whole number >= 1, not "x"'
        )

    def test_unknown_option_is_one_line(self) -> None:
        """An unknown option exits with one line naming it."""
        error = self.assertRaises(
            SystemExit, TwistdCommand().parseOptions, ["callnet", "--colour", "red"]
        )
        self.assertEqual(error.code, "twistd callnet: option --colour not recognized")

    def test_on_its_own_a_usage_error(self) -> None:
        """Parsed on its own (no parent command), a bad option is a L{usage.UsageError}."""
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--threads", "x"])


class FakeNodeService:
    """Stands in for L{callnet.node.NodeService}, recording what it was built from."""

    error: Exception | None = None

    def __init__(self, config: NodeConfig, reactor: Any) -> None:
        if self.error is not None:
            raise self.error
        self.config = config
        self.reactor = reactor


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{tap.makeService}.
    """

    def use_fake_node(self) -> type[FakeNodeService]:
        """Make C{callnet.node} a module whose C{NodeService} is a fake, for this test."""
        fake = types.ModuleType("callnet.node")
        node_service = type("NodeService", (FakeNodeService,), {})
        fake.NodeService = node_service  # type: ignore[attr-defined]
        missing = object()
        saved = sys.modules.get("callnet.node", missing)
        sys.modules["callnet.node"] = fake

        def restore() -> None:
            if saved is missing:
                del sys.modules["callnet.node"]
            else:
                sys.modules["callnet.node"] = saved  # type: ignore[assignment]

        self.addCleanup(restore)
        return node_service

    def test_builds_node_from_config(self) -> None:
        """C{makeService} builds the node from the parsed config and the global reactor."""
        self.use_fake_node()
        options = tap.Options()
        options.parseOptions(["--name", "gamma"])
        service: Any = tap.makeService(options)
        from twisted.internet import reactor

        self.assertIsInstance(service, FakeNodeService)
        self.assertIs(service.config, options["node_config"])
        self.assertIs(service.reactor, reactor)

    def test_config_refused_by_node(self) -> None:
        """A config the node refuses exits with its message, not a traceback."""
        node_service = self.use_fake_node()
        node_service.error = ConfigError('service module "m" has no procedures')
        options = tap.Options()
        options.parseOptions([])
        error = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertEqual(str(error), 'twistd callnet: service module "m" has no procedures')

    def test_real_node(self) -> None:
        """C{makeService} returns an unstarted L{callnet.node.NodeService} for the defaults."""
        from twisted.application.service import IService

        from callnet.node import NodeService

        options = tap.Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
        service = tap.makeService(options)
        self.assertIsInstance(service, NodeService)
        self.assertTrue(IService.providedBy(service))
        self.assertFalse(service.running)


class TakenReactor(MemoryReactorClock):
    """A reactor on which every TCP port is taken."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(
            interface, port, OSError(errno.EADDRINUSE, "Address already in use")
        )


class NeverStops(Service):
    """A child service whose stop never ends, as a hung peer link's might not."""

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred()


class NodeLifecycleTests(SynchronousTestCase):
    """How a L{callnet.node.NodeService} starts and stops, on a fake reactor."""

    def test_cannot_listen(self) -> None:
        """A listener that cannot listen fails the start with status 1, naming the endpoint."""
        from callnet.node import NodeService

        node = NodeService(
            NodeConfig(name="n", listen=("tcp:7600:interface=127.0.0.1",)), TakenReactor()
        )
        error = self.assertRaises(StartError, node.privilegedStartService)
        self.assertEqual(error.code, 1)
        self.assertEqual(
            str(error), "Address already in use: cannot listen on tcp:7600:interface=127.0.0.1"
        )
        self.assertIsInstance(error, Exception)

    def test_stop_is_bounded(self) -> None:
        """A stop ends within shutdown_grace + STOP_MARGIN though a child service never stops."""
        from callnet.node import STOP_MARGIN, NodeService

        clock = MemoryReactorClock()
        node = NodeService(NodeConfig(name="n", shutdown_grace=2.0), clock)
        NeverStops().setServiceParent(node)
        node.startService()
        stopping = node.stopService()
        clock.advance(1.0)
        self.assertNoResult(stopping)
        clock.pump([0.05] * round((1.0 + STOP_MARGIN) / 0.05))
        self.assertIsNone(self.successResultOf(stopping))


def _number_or(text: str) -> object:
    """A command-line word as the option would read it: a number if it is one."""
    return int(text) if text.isdigit() else text
