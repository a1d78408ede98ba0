"""
The C{callnet} command against a real node: results on stdout, errors on
stderr, and an exit status that tells the kind of failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from callnet.cli import EXIT_CALL_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, endpoint_string

from .daemon import free_port, running_node


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
