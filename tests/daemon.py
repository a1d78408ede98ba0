"""
Real nodes for integration tests: C{twistd -n callnet} as a subprocess on a
loopback port, and a plain-socket line client to talk to it as a person would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

#: How long a node may take to start listening (a cold start imports Twisted).
START_TIMEOUT = 20.0
#: How long a reply may take before a test gives up on it.
REPLY_TIMEOUT = 10.0

TWISTD = Path(sys.executable).parent / "twistd"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_port_on(hosts: Sequence[str], attempts: int = 50) -> int:
    """A TCP port free on every one of C{hosts} right now (for nodes that share a port)."""
    for _ in range(attempts):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {', '.join(hosts)}")


def require_loopback(*hosts: str) -> None:
    """Skip the test unless each loopback address (127.0.0.2, ...) can be bound here."""
    for host in hosts:
        try:
            free_port(host)
        except OSError:
            pytest.skip(f"{host} is not usable here")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll C{condition} until it holds, failing after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        pause.wait(0.02)


def require_twistd() -> None:
    if not TWISTD.exists():
        pytest.skip(f"no twistd next to {sys.executable}: install callnet with pip install .")


class Node:
    """A running C{twistd -n callnet} subprocess."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, log: Path):
        self.process = process
        self.host = host
        self.port = port
        self.log = log

    @property
    def endpoint(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    def connect(self) -> LineClient:
        return LineClient(socket.create_connection((self.host, self.port), timeout=REPLY_TIMEOUT))

    def terminate(self, timeout: float = 5.0) -> int:
        """Send SIGTERM and return the exit status, failing if it takes over C{timeout}."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        """The node's tagged C{STATS}: its counters and, with peers, how it sees them."""
        client = self.connect()
        try:
            return stats_of(client)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the node vanishes at once, as in a crash; the kernel closes its sockets."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the node freezes, its sockets open and silent, as a hung process does."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused node goes on from where it stopped."""
        self.process.send_signal(signal.SIGCONT)


def start_node(
    command: Sequence[str],
    host: str,
    port: int,
    log: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> Node:
    """
    Start C{command} (a C{twistd -n ... callnet ...} line) and return at once.

    Its output goes to C{log}; wait for it with L{wait_until_listening}.
    """
    require_twistd()
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(env or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=environment
        )
    return Node(process, host, port, log)


@contextmanager
def running_node(
    tmp_path: Path,
    *options: str,
    host: str = "127.0.0.1",
    name: str = "demo",
    env: dict[str, str] | None = None,
) -> Iterator[Node]:
    """Run a node on a free port of C{host} for the duration of the block."""
    require_twistd()
    port = free_port(host)
    log = tmp_path / f"node-{name}-{port}.log"
    command: Sequence[str] = [
        str(TWISTD),
        "-n",
        "--pidfile=",
        "callnet",
        "--name",
        name,
        "--listen",
        f"tcp:{port}:interface={host}",
        *options,
    ]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(env or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=environment
        )
    node = Node(process, host, port, log)
    try:
        _wait_until_listening(node)
        yield node
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def documented_command(text: str) -> list[str]:
    """
    The words of the C{twistd ... callnet ...} command a doc's C{sh} block
    gives: its last command (after any C{&&}), continuation lines joined,
    with the doc's C{twistd} (C{.venv/bin/twistd} or plain) replaced by the
    one next to the Python running the tests.
    """
    line = text.replace("\\\n", " ").strip().splitlines()[-1]
    words = shlex.split(line.split("&&")[-1])
    assert words and Path(words[0]).name == "twistd", f"not a twistd command: {line!r}"
    assert "callnet" in words, f"not a callnet node: {line!r}"
    return [str(TWISTD), *words[1:]]


@contextmanager
def documented_node(
    tmp_path: Path, words: Sequence[str], host: str = "127.0.0.1"
) -> Iterator[Node]:
    """
    Run a node started with a documented command, as written, for the block.

    The command is run in C{tmp_path}; the only word added is a C{--listen}
    on a free port of C{host} in place of the default C{127.0.0.1:7600}
    (a command-line C{--listen} replaces the listeners of a config file).
    """
    require_twistd()
    port = free_port(host)
    log = tmp_path / f"node-{port}.log"
    node = start_node(
        [*words, "--listen", f"tcp:{port}:interface={host}"], host, port, log, tmp_path
    )
    try:
        _wait_until_listening(node)
        yield node
    finally:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=10)


def wait_until_listening(node: Node) -> None:
    """Wait until a started node accepts connections; fail if it exits or takes too long."""
    _wait_until_listening(node)


def _wait_until_listening(node: Node) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if node.process.poll() is not None:
            raise AssertionError(f"node exited with {node.process.returncode}:\n{node.output()}")
        try:
            socket.create_connection((node.host, node.port), timeout=1).close()
            # Every listener is bound once the node says it is serving: the
            # TCP port alone may answer before a unix or TLS one is bound.
            if " serving " in node.output():
                return
            raise OSError("not serving yet")
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"node did not listen within {START_TIMEOUT}s") from None
            # A bounded pause that ends early if the node exits.
            with suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=0.05)


def connect(host: str, port: int) -> LineClient:
    """A line client connected to C{host:port}."""
    return LineClient(socket.create_connection((host, port), timeout=REPLY_TIMEOUT))


def accepts(host: str, port: int) -> bool:
    """Whether something listens on C{host:port} now."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


class LineClient:
    """A blocking line client on a plain socket: what nc does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, line: str | bytes) -> None:
        data = line.encode() if isinstance(line, str) else line
        self.sock.sendall(data if data.endswith(b"\n") else data + b"\n")

    def read_line(self, timeout: float = REPLY_TIMEOUT) -> str:
        """Read one line, failing after C{timeout} seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line within {timeout}s; have {self.buffer!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; have {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode().rstrip("\r")

    def request(self, line: str, timeout: float = REPLY_TIMEOUT) -> str:
        """Send one request and read the one line that answers it."""
        self.send(line)
        return self.read_line(timeout)

    def read_reply(self) -> list[str]:
        """Read the lines of one reply: text lines, then its OK or ERR line."""
        lines = [self.read_line()]
        while lines[-1].startswith("|"):
            lines.append(self.read_line())
        return lines

    def closed_by_peer(self, timeout: float = REPLY_TIMEOUT) -> bool:
        self.sock.settimeout(timeout)
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def stats_of(client: LineClient) -> dict[str, Any]:
    """Ask for C{STATS} on an open connection, tagged, and return its JSON."""
    line = client.request("#stats STATS")
    assert line.startswith("#stats OK "), line
    value: dict[str, Any] = json.loads(line[len("#stats OK ") :])
    return value


def peer_states(client: LineClient) -> dict[str, str]:
    """Each peer's state (up, down, connecting) as the node on C{client} sees it."""
    return {name: peer["state"] for name, peer in stats_of(client).get("peers", {}).items()}


_REPLY = re.compile(r"(#\S+ )?(OK|ERR|ITEM|PROGRESS)\b|\|")


def is_reply(line: str) -> bool:
    """Whether a transcript line is the node's (a reply) rather than typed."""
    return bool(_REPLY.match(line))
