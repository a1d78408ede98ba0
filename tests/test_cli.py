"""
The C{callnet} command against a real node: results on stdout, errors on
stderr, and an exit status that tells the kind of failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from callnet.cli import (
    EXIT_CALL_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    PROCEDURES_WIDTH,
    _procedure_list,
    endpoint_string,
    format_status,
)

from .daemon import free_port, peer_states, running_node, wait_until


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
    import os

    token = "cli-token-0123456789abcdef"
    config = tmp_path / "node.toml"
    config.write_text(f'[security]\ntokens = {{ ops = "{token}" }}\n')
    with running_node(tmp_path, "--config", str(config)) as node:
        refused = callnet("call", node.endpoint, "add", "1", "2")
        assert refused.returncode == EXIT_CALL_FAILED
        assert "UNAUTHENTICATED" in refused.stderr
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
