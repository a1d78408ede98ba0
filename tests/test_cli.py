"""
The C{callnet} command against a real node: results on stdout, errors on
stderr, and an exit status that tells the kind of failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from callnet import tls
from callnet.cli import (
    EXIT_CALL_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    endpoint_string,
    main,
)
from callnet.cli_format import PROCEDURES_WIDTH, _procedure_list, format_status
from callnet.terminal import _speaks_tls, explain

from .daemon import (
    REPLY_TIMEOUT,
    TWISTD,
    Node,
    free_port,
    peer_states,
    running_node,
    start_node,
    wait_until,
    wait_until_listening,
)


def callnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callnet", *args], capture_output=True, text=True, timeout=60
    )


class EndpointTests(SynchronousTestCase):
    """How the command reads an endpoint."""

    def test_shorthand(self) -> None:
        """C{host:port} and a bare port mean TCP; full endpoint strings pass through."""
        self.assertEqual(endpoint_string("127.0.0.2:7600"), "tcp:127.0.0.2:7600")
        self.assertEqual(endpoint_string("7600"), "tcp:127.0.0.1:7600")
        self.assertEqual(endpoint_string("unix:/run/x.sock"), "unix:/run/x.sock")

    def test_ipv6(self) -> None:
        """C{tcp6:HOST:PORT} and C{[HOST]:PORT} become the C{tcp:} string Twisted's clients take."""
        for text in ("tcp6:[::1]:7600", "tcp6:::1:7600", "[::1]:7600"):
            self.assertEqual(endpoint_string(text), "tcp:\\:\\:1:7600")

    def test_unbuildable_refused(self) -> None:
        """A string no client endpoint can be made of is a usage error naming it and what is wrong."""
        error = self.assertRaises(argparse.ArgumentTypeError, endpoint_string, "tcp:127.0.0.1")
        self.assertIn("not an endpoint: 'tcp:127.0.0.1' (missing 'port')", str(error))
        error = self.assertRaises(argparse.ArgumentTypeError, endpoint_string, "tcp:h:http")
        self.assertIn("not an endpoint: 'tcp:h:http'", str(error))


def test_call_and_errors(tmp_path: Path) -> None:
    """A result prints as JSON with status 0; each kind of failure has its own status."""
    with running_node(tmp_path) as node:
        ok = callnet("call", node.endpoint, "echo", '{"a": [1, 2]}')
        assert (ok.returncode, json.loads(ok.stdout)) == (EXIT_OK, {"a": [1, 2]}), ok.stderr

        add = callnet("call", f"127.0.0.1:{node.port}", "add", "1", "b=2")
        assert (add.returncode, add.stdout.strip()) == (EXIT_OK, "3")

        missing = callnet("call", node.endpoint, "nosuch")
        assert missing.returncode == EXIT_CALL_FAILED
        assert "NOT_FOUND (not-run) at demo" in missing.stderr
        assert missing.stdout == ""

        late = callnet("call", node.endpoint, "sleep", "5", "--timeout", "0.3")
        assert late.returncode == EXIT_UNREACHABLE
        assert "DEADLINE_EXCEEDED" in late.stderr

        bad = callnet("call", node.endpoint, "add", "[1,")
        assert bad.returncode == EXIT_USAGE
        assert "bad argument" in bad.stderr

        ping = callnet("ping", node.endpoint)
        assert (ping.returncode, ping.stdout.strip()) == (EXIT_OK, '"pong"')


def test_unreachable() -> None:
    """A node that is not there gives status 3 and says it cannot connect."""
    result = callnet("call", f"127.0.0.1:{free_port()}", "add", "1", "2", "--timeout", "5")
    assert result.returncode == EXIT_UNREACHABLE
    assert "UNAVAILABLE" in result.stderr and "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage() -> None:
    """A malformed command line is a usage error with status 2."""
    result = callnet("call")
    assert result.returncode == EXIT_USAGE


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf", "soon"])
@pytest.mark.parametrize(
    "command", [["call", "7600", "add", "1", "2", "--timeout"], ["ping", "7600", "--wait"]]
)
def test_seconds_must_be_above_zero(command: list[str], timeout: str) -> None:
    """A --timeout or --wait that is not a number of seconds above 0 is a usage error, not a node that did not answer."""
    result = callnet(*command, timeout)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert f"{command[-1]}: must be a number of seconds above 0, not '{timeout}'" in result.stderr


@pytest.mark.parametrize("command", [["call", "tcp:127.0.0.1", "add", "1", "2"], ["shell"]])
def test_unbuildable_endpoint_is_a_usage_error(command: list[str]) -> None:
    """An endpoint string with no port fails at once with status 2 and one line naming it (the shell used to hang)."""
    if command == ["shell"]:
        command = ["shell", "tcp:127.0.0.1"]
    result = subprocess.run(
        [sys.executable, "-m", "callnet", *command],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "not an endpoint: 'tcp:127.0.0.1' (missing 'port')" in result.stderr
    assert "Traceback" not in result.stderr and "TCP4ClientEndpoint" not in result.stderr


def test_ipv6_endpoints(tmp_path: Path) -> None:
    """C{tcp6:HOST:PORT} and C{[HOST]:PORT} reach a node listening on an IPv6 address, as the help says."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = int(probe.getsockname()[1])
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with running_node(tmp_path, "--listen", f"tcp6:{port}:interface=\\:\\:1"):
        # The node listens on both before it says it serves, which running_node waits for.
        for endpoint in (f"tcp6:[::1]:{port}", f"[::1]:{port}", f"tcp6:::1:{port}"):
            result = callnet("call", endpoint, "add", "1", "2")
            assert (result.returncode, result.stdout.strip()) == (EXIT_OK, "3"), result.stderr


class StatusFormatTests(SynchronousTestCase):
    """How C{callnet status} lays out a node's STATS."""

    def stats(self, **peers: dict[str, object]) -> dict[str, object]:
        return {
            "node": "alpha",
            "connections": 3,
            "calls": 12,
            "errors": 1,
            "in_flight": 2,
            "procedures": {},
            **({"peers": peers} if peers else {}),
        }

    def test_node_and_peers(self) -> None:
        """A line for the node, a header, then one aligned row per peer."""
        text = format_status(
            self.stats(
                beta={
                    "endpoint": "tcp:127.0.0.2:7600",
                    "state": "up",
                    "in_flight": 7,
                    "procedures": ["add", "reserve", "stock"],
                },
                gamma={
                    "endpoint": "tcp:127.0.0.3:7600",
                    "state": "connecting",
                    "in_flight": 0,
                    "procedures": [],
                },
                delta={
                    "endpoint": "unix:/run/delta.sock",
                    "state": "down",
                    "in_flight": 0,
                    "procedures": ["add", "echo"],
                },
            ),
            local=["add", "echo"],
        )
        self.assertEqual(
            text.splitlines(),
            [
                "node alpha: 3 connections, 12 calls, 1 errors, 2 in flight",
                "peer   state       endpoint              in flight  procedures",
                "beta   up          tcp:127.0.0.2:7600            7"
                "  reserve, stock (+1 also served here)",
                "gamma  connecting  tcp:127.0.0.3:7600            0  -",
                "delta  down        unix:/run/delta.sock          0  (2 also served here)",
            ],
        )

    def test_no_peers(self) -> None:
        """A node without peers says so under its own line."""
        self.assertEqual(format_status(self.stats()).splitlines()[1:], ["no peers"])

    def test_long_procedure_lists_cut_short(self) -> None:
        """Many procedures are cut short with a count of the rest; a long name with dots."""
        names = [f"billing.procedure_{n}" for n in range(20)]
        cut = _procedure_list(names)
        self.assertLessEqual(len(cut), PROCEDURES_WIDTH)
        self.assertTrue(cut.startswith("billing.procedure_0, billing.procedure_1"), cut)
        shown = cut.split(", ... ")[0].split(", ")
        self.assertTrue(cut.endswith(f", ... (+{20 - len(shown)} more)"), cut)
        self.assertEqual(_procedure_list(["x" * 100]), "x" * (PROCEDURES_WIDTH - 3) + "...")
        self.assertEqual(_procedure_list(["add", "echo"]), "add, echo")


GREETER = """
from callnet import procedure


@procedure
def greet(name: str) -> str:
    return f"Hello, {name}!"
"""


def test_status_of_a_node_with_peers(tmp_path: Path) -> None:
    """
    C{callnet status} against a real node with two peers, one running and
    one that is not there: a row for each, with its state, endpoint and what
    it serves that the node does not; status 0.  A node that cannot be
    reached gives status 3.
    """
    (tmp_path / "greeter.py").write_text(GREETER)
    ghost = f"tcp:127.0.0.1:{free_port()}"
    with (
        running_node(tmp_path, "--service", "greeter", name="beta") as beta,
        running_node(
            tmp_path, "--peer", f"beta={beta.endpoint}", "--peer", f"ghost={ghost}", name="alpha"
        ) as alpha,
    ):
        watcher = alpha.connect()
        wait_until(
            lambda: peer_states(watcher) == {"beta": "up", "ghost": "down"},
            15,
            "alpha sees beta up and ghost down",
        )
        result = callnet("status", f"127.0.0.1:{alpha.port}")
    assert result.returncode == EXIT_OK, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[0][:2] == ["node", "alpha:"]
    assert lines[1] == ["peer", "state", "endpoint", "in", "flight", "procedures"]
    rows = {row[0]: row for row in lines[2:]}
    assert rows["beta"][1:4] == ["up", beta.endpoint, "0"]
    assert re.fullmatch(r"greet \(\+\d+ also served here\)", " ".join(rows["beta"][4:]))
    assert rows["ghost"][1:] == ["down", ghost, "0", "-"]

    gone = callnet("status", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert gone.returncode == EXIT_UNREACHABLE
    assert "Traceback" not in gone.stderr


def test_token_from_the_environment(tmp_path: Path) -> None:
    """A node that requires a token refuses the command without it, and answers with $CALLNET_TOKEN."""
    token = "cli-token-0123456789abcdef"
    config = tmp_path / "node.toml"
    config.write_text(f'[security]\ntokens = {{ ops = "{token}" }}\n')
    with running_node(tmp_path, "--config", str(config)) as node:
        refused = callnet("call", node.endpoint, "add", "1", "2")
        assert refused.returncode == EXIT_CALL_FAILED
        assert "UNAUTHENTICATED" in refused.stderr
        assert "set CALLNET_TOKEN" in refused.stderr
        assert "AUTH <token>" not in refused.stderr
        assert token not in refused.stderr
        env = {**os.environ, "CALLNET_TOKEN": token}
        allowed = subprocess.run(
            [sys.executable, "-m", "callnet", "call", node.endpoint, "add", "1", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert (allowed.returncode, allowed.stdout.strip()) == (EXIT_OK, "3"), allowed.stderr
        wrong = subprocess.run(
            [sys.executable, "-m", "callnet", "call", node.endpoint, "add", "1", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "CALLNET_TOKEN": "not-the-token-0123456789"},
        )
        assert wrong.returncode == EXIT_CALL_FAILED
        assert "the node refused the token in $CALLNET_TOKEN" in wrong.stderr


# --- A command line that explains itself ------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the installed package's version, not Twisted's."""
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"callnet {version('callnet')}\n"


@pytest.mark.parametrize(
    "command", ["shell", "call", "cast", "describe", "ping", "list", "stats", "status"]
)
def test_help_of_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's --help names the endpoint forms, its defaults, exit codes and CALLNET_TOKEN."""
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needed in ("HOST:PORT", "tcp:HOST:PORT", "unix:/PATH", "--ca", "CALLNET_TOKEN"):
        assert needed in text, needed
    assert "exit status: 0 success, 1 the call failed on the node, 2 a usage error, 3" in text
    assert "130 interrupted by Ctrl-C" in text
    timeout = "30.0" if command in ("shell", "call", "cast") else "10.0"
    assert f"--timeout TIMEOUT deadline in seconds (default: {timeout})" in " ".join(
        text.replace("a call's deadline", "deadline").split()
    )
    assert "(default: None)" not in text
    if command == "ping":
        assert "--wait SECONDS" in text


def test_describe(tmp_path: Path) -> None:
    """describe prints a procedure's signature, doc and where it runs; an unknown one is status 1."""
    with running_node(tmp_path) as node:
        add = callnet("describe", node.endpoint, "add")
        assert (add.returncode, add.stdout) == (
            EXIT_OK,
            "add(a: float, b: float) -> float\n\n    Return a + b.\n\nruns in: reactor; idempotent\n",
        ), add.stderr
        missing = callnet("describe", node.endpoint, "nosuch")
        assert missing.returncode == EXIT_CALL_FAILED
        assert "NOT_FOUND" in missing.stderr


def test_ping_waits_for_a_node_to_start(tmp_path: Path) -> None:
    """
    ping --wait keeps trying a node that is not up yet and exits 0 once it
    answers; with no node within the time, it exits 3 saying so.
    """
    port = free_port()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "callnet", "ping", f"127.0.0.1:{port}", "--wait", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    node: Node | None = None
    try:
        # Let it fail a few times first: it must still be waiting.
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=1)
        command = [str(TWISTD), "-n", "--pidfile=", "callnet", "--name", "demo"]
        command += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
        node = start_node(command, "127.0.0.1", port, tmp_path / "node.log", tmp_path)
        wait_until_listening(node)
        out, err = waiting.communicate(timeout=30)
        assert (waiting.returncode, out) == (EXIT_OK, '"pong"\n'), err
    finally:
        if waiting.poll() is None:
            waiting.kill()
        if node is not None:
            node.kill()

    started = time.monotonic()
    nobody = callnet("ping", f"127.0.0.1:{free_port()}", "--wait", "0.5")
    assert nobody.returncode == EXIT_UNREACHABLE
    assert "within 0.5s" in nobody.stderr and "Traceback" not in nobody.stderr
    assert time.monotonic() - started < 20


def test_interrupt_cancels_the_call(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) during a call exits 130 with one line, and the node cancels the call."""
    with running_node(tmp_path) as node:
        process = subprocess.Popen(
            [sys.executable, "-m", "callnet", "call", node.endpoint, "sleep", "20"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def sleeping() -> int:
                entry: dict[str, Any] = node.stats()["procedures"].get("sleep", {})
                return int(entry.get("in_flight", 0))

            wait_until(lambda: sleeping() == 1, REPLY_TIMEOUT, "sleep runs on the node")
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=REPLY_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == EXIT_INTERRUPTED == 130
        assert (out, err) == ("", "callnet: interrupted; sleep was cancelled on the node\n")
        wait_until(
            lambda: node.stats()["procedures"]["sleep"]["outcomes"] == {"CANCELLED": 1},
            REPLY_TIMEOUT,
            "the node counts sleep cancelled",
        )
        assert "sleep was cancelled by its caller" in node.output()


class ExplainTests(SynchronousTestCase):
    """How the command words failures that would otherwise show OpenSSL's internals."""

    def options(self, endpoint: str, ca: str | None = None) -> argparse.Namespace:
        return argparse.Namespace(endpoint=endpoint, ca=ca)

    def test_openssl_tuples(self) -> None:
        """OpenSSL's error tuples become one sentence saying what is wrong."""
        tuples = "[('SSL routines', '', 'tlsv13 alert certificate required')]"
        self.assertEqual(
            explain(f"connection lost while add was in flight: {tuples}", self.options("tls:x")),
            "TLS failed: the node requires a client certificate signed by its CA (--cert and"
            " --key, or certificate= and privateKey= in a tls: string).",
        )
        verify = (
            "[('SSL routines', 'tls_process_server_certificate', 'certificate verify failed')]"
        )
        self.assertEqual(
            explain(verify, self.options("tls:x")),
            "TLS failed: the node's certificate is not signed by a CA this client trusts"
            " (trustRoots= or --ca).",
        )
        self.assertEqual(
            explain("[('SSL routines', '', 'something new')]", self.options("tls:x")),
            "TLS failed: something new.",
        )

    def test_other_messages_pass(self) -> None:
        """A message with nothing to explain is left as it is."""
        message = "cannot connect to tcp:127.0.0.1:1: Connection refused."
        self.assertEqual(explain(message, self.options("tcp:127.0.0.1:1")), message)


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, int, Path]]:
    """A node with a tcp: port and a tls: port that requires a client certificate."""
    here = tmp_path_factory.mktemp("tls")
    certs = here / "certs"
    tls.make_ca(certs)
    tls.make_node_certificate(certs, "demo", ips=["127.0.0.1"])
    tls.make_node_certificate(certs, "ops")
    (here / "node.toml").write_text(
        "[tls]\n"
        f'cert = "{certs / "demo.pem"}"\nkey = "{certs / "demo.key"}"\nca = "{certs / "ca.pem"}"\n'
        "require_client_certificate = true\n"
    )
    port = free_port()
    listen = f"tls:{port}:interface=127.0.0.1"
    with running_node(here, "--config", "node.toml", "--listen", listen) as node:
        yield node, port, certs


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == EXIT_UNREACHABLE, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "SSL routines" not in result.stderr
    return result.stderr


def test_tls_failures_in_words(tls_node: tuple[Node, int, Path]) -> None:
    """
    Plain TCP to a TLS port, TLS to a plain port, a missing client
    certificate and a name that does not match are each one line saying
    what is wrong and what to do; with the right files the call is answered.
    """
    node, port, certs = tls_node
    ca = ("--ca", str(certs / "ca.pem"))
    client = (*ca, "--cert", str(certs / "ops.pem"), "--key", str(certs / "ops.key"))

    # The check behind the first sentence: a TLS handshake of its own.
    assert _speaks_tls(argparse.Namespace(endpoint=f"tcp:127.0.0.1:{port}", ca=None))
    assert not _speaks_tls(argparse.Namespace(endpoint=node.endpoint, ca=None))
    plain = _one_line(callnet("call", f"127.0.0.1:{port}", "add", "1", "2"))
    assert f"127.0.0.1:{port} is a TLS port and closed this plain connection: connect" in plain
    assert "closed cleanly" not in plain

    not_tls = _one_line(callnet("call", node.endpoint, "add", "1", "2", *ca))
    assert f"127.0.0.1:{node.port} does not speak TLS: drop --ca" in not_tls

    no_certificate = _one_line(callnet("call", f"127.0.0.1:{port}", "add", "1", "2", *ca))
    assert "it requires a client certificate signed by its CA" in no_certificate

    twisted_string = f"tls:127.0.0.1:{port}:trustRoots={certs}"
    raw = _one_line(callnet("call", twisted_string, "add", "1", "2"))
    assert "TLS failed: the node requires a client certificate" in raw

    wrong_name = _one_line(
        callnet("call", f"127.0.0.1:{port}", "add", "1", "2", *client, "--name", "beta")
    )
    assert "the certificate names demo, not beta" in wrong_name

    answered = callnet("call", f"127.0.0.1:{port}", "add", "1", "2", *client)
    assert (answered.returncode, answered.stdout) == (EXIT_OK, "3\n"), answered.stderr


def test_shell_over_tls(tls_node: tuple[Node, int, Path], tmp_path: Path) -> None:
    """The shell takes --ca, --cert and --key as call does."""
    _, port, certs = tls_node
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["XDG_STATE_HOME"] = str(tmp_path)
    files = ["--ca", str(certs / "ca.pem"), "--cert", str(certs / "ops.pem")]
    files += ["--key", str(certs / "ops.key")]
    result = subprocess.run(
        [sys.executable, "-m", "callnet", "shell", f"127.0.0.1:{port}", *files],
        input="add 1 2\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert result.returncode == EXIT_OK, result.stderr
    # The port speaks TLS only, so an answer at all is one over TLS.
    assert result.stdout.splitlines() == ["3"]
