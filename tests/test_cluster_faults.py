"""
A real three-node cluster under faults: C{twistd} subprocesses on
127.0.0.1, 127.0.0.2 and 127.0.0.3, killed (SIGKILL), frozen (SIGSTOP) and
cut off from each other by a fault-injecting proxy (C{tests/faultproxy.py}),
with every wait bounded.

The nodes run the example configs of C{etc/cluster}, as the README starts
them; the fault tests only give them a free port, short cluster timings and
a test module, C{probe}, that tells where a call ran and writes down each run.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from .daemon import (
    TWISTD,
    LineClient,
    Node,
    accepts,
    connect,
    free_port_on,
    peer_states,
    require_loopback,
    require_twistd,
    start_node,
    stats_of,
    wait_until,
    wait_until_listening,
)
from .test_daemon import blocks_of, readme_blocks, replay

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "etc" / "cluster"
PROXY = Path(__file__).parent / "faultproxy.py"

HOSTS = {"alpha": "127.0.0.1", "beta": "127.0.0.2", "gamma": "127.0.0.3"}
#: The port of the README's configs, which the tests replace with a free one.
README_PORT = 7600

#: Short cluster timings, so that a fault shows within a second or two.
HEARTBEAT = 0.25
DOWN_AFTER = 1.0
FAST = {"heartbeat_interval": HEARTBEAT, "down_after": DOWN_AFTER, "reconnect_max_delay": 0.5}
#: Slack for a loaded two-core machine, on top of each bound the docs promise.
MARGIN = 0.75
#: How long a cluster may take to find all its peers up.
JOIN_TIMEOUT = 20.0

#: A call lost with its link: it may have run.  The error names the node at
#: either end of the link (alpha, which lost it, or the peer it lost).
LOST = re.compile(r"ERR UNAVAILABLE may-have-run @(alpha|beta|gamma) ")

PROBE = '''\
"""Test procedures: each says where it ran and writes each run down."""

import os

from callnet import procedure

NODE = os.environ["PROBE_NODE"]
RUNS = os.environ["PROBE_RUNS"]


def _record(token):
    """Write down a run of C{token}; true if it is the first, on any node."""
    try:
        with open(RUNS) as f:
            earlier = [line.split() for line in f]
    except FileNotFoundError:
        earlier = []
    with open(RUNS, "a") as f:
        f.write(f"{NODE} {token}\\n")
    return not any(words[1:] == [token] for words in earlier)


async def _run(token, seconds):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    if _record(token):
        await deferLater(reactor, seconds)
    return f"{token} on {NODE}"


@procedure(run="reactor", idempotent=True)
def where() -> str:
    """The name of the node that ran this call."""
    return NODE


@procedure(run="reactor")
async def record(token: str, seconds: float) -> str:
    """Not idempotent: write the run down; the first run of a token takes some seconds."""
    return await _run(token, seconds)


@procedure(run="reactor", idempotent=True)
async def record_idempotent(token: str, seconds: float) -> str:
    """The same, declared idempotent."""
    return await _run(token, seconds)
'''


# --- Configs ------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(document: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document of tables of plain values (all a node config holds)."""
    lines = []
    for section, table in document.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def on_port(endpoint: str, port: int) -> str:
    """An endpoint string of the README's configs, moved to another port."""
    moved = re.sub(rf"(?<=:){README_PORT}\b", str(port), endpoint)
    assert moved != endpoint, f"no port {README_PORT} in {endpoint}"
    return moved


def example_config(name: str) -> dict[str, dict[str, Any]]:
    """One node's config from C{etc/cluster}, as a TOML document."""
    with (EXAMPLE / f"{name}.toml").open("rb") as f:
        return tomllib.load(f)


# --- A cluster of real nodes --------------------------------------------------


class Cluster:
    """Three running nodes, by name, and the file where the probe writes runs."""

    def __init__(self, nodes: dict[str, Node], runs: Path, port: int) -> None:
        self.nodes = nodes
        self.runs_file = runs
        self.port = port

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def runs(self, token: str) -> list[str]:
        """The nodes that ran C{token}, in the order they started it."""
        if not self.runs_file.exists():
            return []
        words = [line.split() for line in self.runs_file.read_text().splitlines()]
        return [node for node, *rest in words if rest == [token]]


def wait_for_peers(
    client: LineClient, expected: Mapping[str, str], timeout: float, what: str
) -> float:
    """Poll C{STATS} until the peers' states are as expected; return the seconds it took."""
    started = time.monotonic()
    seen: dict[str, str] = {}

    def arrived() -> bool:
        seen.update(peer_states(client))
        return all(seen.get(name) == state for name, state in expected.items())

    try:
        wait_until(arrived, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen {seen}") from None
    return time.monotonic() - started


@contextmanager
def example_cluster(
    tmp_path: Path,
    module: tuple[str, str],
    env: Callable[[str], dict[str, str]],
    port: int | None = None,
    adjust: Callable[[str, dict[str, Any]], None] | None = None,
) -> Iterator[tuple[dict[str, Node], Path, int]]:
    """
    Run alpha, beta and gamma from C{etc/cluster}'s configs, on one free port
    of their three addresses, with L{FAST} timings and one more service
    module on beta and gamma, until alpha sees both peers up.

    @param module: the extra module's name and source.
    @param env: each node's extra environment, by its name.
    @param adjust: changes a node's config (its name, the parsed TOML) before
        it is written.
    @return: the nodes, the directory they run in, and their port.
    """
    require_twistd()
    require_loopback(*HOSTS.values())
    port = port or free_port_on(list(HOSTS.values()))
    here = tmp_path / "cluster"
    here.mkdir()
    shutil.copy(EXAMPLE / "inventory.py", here)
    module_name, source = module
    (here / f"{module_name}.py").write_text(source)
    for name in HOSTS:
        config = example_config(name)
        config["node"]["listen"] = [on_port(e, port) for e in config["node"]["listen"]]
        config["peers"] = {peer: on_port(e, port) for peer, e in config["peers"].items()}
        config.setdefault("cluster", {}).update(FAST)
        if config["node"].get("services"):
            config["node"]["services"] = [*config["node"]["services"], module_name]
        if adjust is not None:
            adjust(name, config)
        (here / f"{name}.toml").write_text(toml_text(config))
    nodes: dict[str, Node] = {}
    try:
        for name, host in HOSTS.items():
            nodes[name] = start_node(
                [str(TWISTD), "-n", "--pidfile=", "callnet", "--config", f"{name}.toml"],
                host,
                port,
                here / f"{name}.log",
                cwd=here,
                env=env(name),
            )
        for node in nodes.values():
            wait_until_listening(node)
        watcher = nodes["alpha"].connect()
        try:
            wait_for_peers(
                watcher, {"beta": "up", "gamma": "up"}, JOIN_TIMEOUT, "alpha sees its peers up"
            )
        finally:
            watcher.close()
        yield nodes, here, port
    except BaseException:
        # Shown by pytest with the failure: what each node logged.
        print("\n".join(f"--- {name}:\n{node.output()[-6000:]}" for name, node in nodes.items()))
        raise
    finally:
        for node in nodes.values():
            with suppress(Exception):
                node.kill()


@contextmanager
def running_cluster(
    tmp_path: Path,
    port: int | None = None,
    peers: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[Cluster]:
    """
    The example cluster with the probe module on beta and gamma.

    @param peers: endpoints to put in a node's [peers] table instead of the
        example's, by node and peer name (to go through a proxy).
    """
    runs = tmp_path / "runs.txt"

    def adjust(name: str, config: dict[str, Any]) -> None:
        config["peers"].update((peers or {}).get(name, {}))

    with example_cluster(
        tmp_path,
        ("probe", PROBE),
        lambda name: {"PROBE_NODE": name, "PROBE_RUNS": str(runs)},
        port,
        adjust,
    ) as (nodes, _, used_port):
        yield Cluster(nodes, runs, used_port)


class Replies:
    """Reads the tagged replies on one connection in a thread, noting when each came."""

    def __init__(self, client: LineClient, count: int, timeout: float) -> None:
        self.client = client
        self.count = count
        self.timeout = timeout
        #: Tag -> (monotonic time it arrived, the reply without its tag).
        self.got: dict[str, tuple[float, str]] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while len(self.got) < self.count:
                line = self.client.read_line(max(deadline - time.monotonic(), 0.001))
                tag, _, rest = line.partition(" ")
                self.got[tag.lstrip("#")] = (time.monotonic(), rest)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self) -> dict[str, tuple[float, str]]:
        self._thread.join(self.timeout + 5)
        assert not self._thread.is_alive(), "the reader thread hung"
        if self.error is not None:
            raise AssertionError(
                f"{len(self.got)} of {self.count} replies, then: {self.error}"
            ) from self.error
        return self.got


# --- The README's cluster ------------------------------------------------------


def test_readme_cluster(tmp_path: Path) -> None:
    """
    The README's commands start the example cluster; its nc session and its
    callnet status output are what alpha gives; its stop command stops all three.
    """
    require_twistd()
    require_loopback(*HOSTS.values())
    port = free_port_on(list(HOSTS.values()))
    # A checkout in miniature: the example's files with the port moved, and
    # .venv/bin holding the twistd and callnet of the Python running the tests.
    checkout = tmp_path / "checkout"
    here = checkout / "etc" / "cluster"
    here.mkdir(parents=True)
    for path in EXAMPLE.iterdir():
        if path.suffix == ".toml":
            (here / path.name).write_text(path.read_text().replace(f":{README_PORT}", f":{port}"))
        elif path.suffix == ".py":
            shutil.copy(path, here)
    bin_dir = checkout / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("twistd", "callnet"):
        (bin_dir / tool).symlink_to(Path(sys.executable).parent / tool)

    commands = readme_blocks("commands")["cluster"]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pidfiles = [here / f"{name}.pid" for name in HOSTS]
    try:
        started = subprocess.run(
            ["bash", "-e", "-c", commands],
            cwd=checkout,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        assert all(pidfile.exists() for pidfile in pidfiles)

        host = HOSTS["alpha"]
        wait_until(lambda: accepts(host, port), 20, "alpha listens")
        watcher = connect(host, port)
        wait_for_peers(watcher, {"beta": "up", "gamma": "up"}, JOIN_TIMEOUT, "alpha's peers up")
        watcher.close()

        client = connect(host, port)
        replay(client, readme_blocks("transcript")["cluster"])
        assert client.closed_by_peer(), "QUIT closes the connection"

        # docs/cluster.md's tagged STATS after that session, cut short where
        # it says so; QUIT, so that the connection is gone before the status.
        stats = connect(host, port)
        cluster_doc = ROOT / "docs" / "cluster.md"
        shown_stats = blocks_of(cluster_doc, "transcript")["cluster-stats"]
        replay(stats, shown_stats.replace(f":{README_PORT}", f":{port}"))
        assert stats.request("quit") == 'OK "bye"'
        assert stats.closed_by_peer()

        shown = readme_blocks("status")["cluster"].splitlines()
        command = shown[0].removeprefix("$ ").replace(f":{README_PORT}", f":{port}")
        status = subprocess.run(
            ["bash", "-c", command],
            cwd=here,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        actual = status.stdout.splitlines()
        assert [_in_flight_hidden(line) for line in actual] == [
            _in_flight_hidden(line.replace(f":{README_PORT}", f":{port}")) for line in shown[1:]
        ]
        # docs/cluster.md shows the same command and output.
        also = blocks_of(cluster_doc, "status")["cluster"].splitlines()
        assert also[0] == "$ callnet status 127.0.0.1:7600"
        assert also[1:] == shown[1:]

        stop = re.search(r"Stop the three with `([^`]+)`", (ROOT / "README.md").read_text())
        assert stop is not None, "the README says how to stop the cluster"
        stopped = subprocess.run(
            ["bash", "-e", "-c", stop.group(1)], cwd=here, capture_output=True, timeout=30
        )
        assert stopped.returncode == 0, stopped.stderr
        wait_until(
            lambda: not any(pidfile.exists() for pidfile in pidfiles),
            10,
            "each node stops and removes its pid file",
        )
        for name in HOSTS:
            assert "Traceback" not in (here / f"{name}.log").read_text(), name
    finally:
        for pidfile in pidfiles:
            with suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text()), 9)


def _in_flight_hidden(line: str) -> str:
    """
    A status line with a peer's calls in flight as N, spaces as one: a
    heartbeat may be on its way.  The node's own counters are exact.
    """
    line = re.sub(r"^(\S+ +\S+ +\S+ +)\d+ ", r"\1N ", line) if " up " in line else line
    return " ".join(line.split())


# --- 10. A node killed with 1,000 calls in flight through it -------------------------


def test_kill_node_with_1000_calls_in_flight(tmp_path: Path) -> None:
    """
    1,000 calls for beta, with deadlines from 3 to 20 s, pipelined to alpha
    over four connections beside 200 short calls for gamma; once beta runs
    all 1,000 it is killed (SIGKILL).  Every call is answered by its deadline
    plus 1 s: beta's at once, UNAVAILABLE may-have-run; gamma's as usual.
    Nothing is left in flight, and alpha and gamma serve on.
    """
    with running_cluster(tmp_path) as cluster:
        alpha, beta = cluster["alpha"], cluster["beta"]
        watcher, beta_watcher = alpha.connect(), beta.connect()
        clients = [alpha.connect() for _ in range(4)]
        # Tag -> (what should become of it, its timeout).
        plan: dict[str, tuple[str, float]] = {}
        batches: list[list[str]] = [[] for _ in clients]
        for i in range(1200):
            tag = f"c{i}"
            if i < 1000:
                kind, timeout = "lost", (3.0, 6.0, 10.0, 20.0)[i % 4]
                line = f"#{tag} +timeout={timeout:g} sleep@beta 60"
            elif i % 2:
                kind, timeout, line = "done", 5.0, f"#{tag} +timeout=5 sleep@gamma 0.2"
            else:
                kind, timeout, line = "expires", 0.5, f"#{tag} +timeout=0.5 sleep@gamma 60"
            plan[tag] = (kind, timeout)
            batches[i % len(clients)].append(line + "\n")
        readers = [
            Replies(client, len(batch), 30) for client, batch in zip(clients, batches, strict=True)
        ]
        sent_at = time.monotonic()
        for client, batch in zip(clients, batches, strict=True):
            client.send("".join(batch).encode())

        wait_until(
            lambda: stats_of(beta_watcher)["in_flight"] == 1000,
            5,
            "beta runs the 1,000 calls",
        )
        assert stats_of(watcher)["peers"]["beta"]["in_flight"] >= 1000
        early = [
            reply
            for r in readers
            for tag, (_, reply) in list(r.got.items())
            if plan[tag][0] == "lost"
        ]
        assert not early, f"calls for beta answered before it was killed: {early[:3]}"
        killed_at = time.monotonic()
        beta.kill()
        got: dict[str, tuple[float, str]] = {}
        for reader in readers:
            got.update(reader.join())

        assert set(got) == set(plan)
        late, wrong = [], []
        for tag, (kind, timeout) in plan.items():
            at, reply = got[tag]
            if at - sent_at > timeout + 1.0:
                late.append(f"#{tag} after {at - sent_at:.2f}s (timeout {timeout:g}s): {reply}")
            if kind == "done":
                ok = reply == "OK 0.2"
            elif kind == "expires":
                ok = reply.startswith("ERR DEADLINE_EXCEEDED may-have-run @")
            else:
                ok = LOST.match(reply) is not None
                if at - killed_at > 1.0:
                    late.append(f"#{tag} {at - killed_at:.2f}s after the kill: {reply}")
            if not ok:
                wrong.append(f"#{tag} ({kind}): {reply}")
        assert not late, f"{len(late)} late, such as {late[:3]}"
        assert not wrong, f"{len(wrong)} wrong, such as {wrong[:3]}"

        # The survivors serve on, on the same connections and new ones.
        client = clients[0]
        assert client.request("#a add 1 2") == "#a OK 3"
        assert client.request("#g echo@gamma still-here") == '#g OK "still-here"'
        assert client.request("#s stock widget") == "#s OK 12"
        assert client.request("#w where") == '#w OK "gamma"'
        refused = client.request("#b sleep@beta 1")
        assert refused.startswith("#b ERR UNAVAILABLE not-run @alpha "), refused
        wait_until(lambda: stats_of(watcher)["in_flight"] == 0, 5, "alpha has no call left")
        assert peer_states(watcher) == {"beta": "down", "gamma": "up"}
        gamma = cluster["gamma"].connect()
        assert gamma.request("add 2 2") == "OK 4"
        wait_until(lambda: stats_of(gamma)["in_flight"] == 0, 5, "gamma has no call left")


def test_busy_link_is_not_taken_for_a_dead_one(tmp_path: Path) -> None:
    """
    1,000 calls of 2 s each from alpha to a healthy beta: beta stays up,
    although they outlast down_after, and every call succeeds.
    """
    with running_cluster(tmp_path) as cluster:
        watcher = cluster["alpha"].connect()
        clients = [cluster["alpha"].connect() for _ in range(4)]
        readers = [Replies(client, 250, 20) for client in clients]
        for k, client in enumerate(clients):
            client.send(
                "".join(f"#c{i} +timeout=10 sleep@beta 2\n" for i in range(k, 1000, 4)).encode()
            )
        got = {}
        for reader in readers:
            got.update(reader.join())
        replies = sorted({reply for _, reply in got.values()})
        assert replies == ["OK 2.0"], f"{len(got)} replies, of these kinds: {replies[:3]}"
        assert peer_states(watcher)["beta"] == "up"


#: Connections that flood alpha, and the calls each pipelines in one write:
#: enough that one turn of alpha's reactor (a read of each) takes seconds,
#: several times down_after.
FLOOD_CONNECTIONS = 20
FLOOD_CALLS = 4000


def test_local_flood_does_not_take_peers_for_dead(tmp_path: Path) -> None:
    """
    20 connections each pipeline 4,000 add 1 2 at alpha while calls
    forwarded to beta and gamma run: alpha, too busy to read for longer than
    down_after, marks neither peer down, and every call succeeds.
    """
    with running_cluster(tmp_path) as cluster:
        alpha = cluster["alpha"]
        watcher, caller = alpha.connect(), alpha.connect()
        forwarded = [
            f"#s{k} +timeout=60 sleep@{('beta', 'gamma')[k % 2]} 1.5" for k in range(10)
        ] + [f"#w{k} +timeout=60 stock widget" for k in range(10)]
        floods = [alpha.connect() for _ in range(FLOOD_CONNECTIONS)]
        # Some forwarded calls are running when the flood comes, more follow it.
        caller.send("".join(line + "\n" for line in forwarded[:10]).encode())
        for flood in floods:
            flood.send(b"add 1 2\n" * FLOOD_CALLS)
        caller.send("".join(line + "\n" for line in forwarded[10:]).encode())

        for flood in floods:
            replies = [flood.read_line(timeout=60) for _ in range(FLOOD_CALLS)]
            assert set(replies) == {"OK 3"}, sorted(set(replies))[:3]
        answers = dict(caller.read_line(timeout=60).split(" ", 1) for _ in forwarded)
        assert answers == {
            **{f"#s{k}": "OK 1.5" for k in range(10)},
            **{f"#w{k}": "OK 12" for k in range(10)},
        }
        assert peer_states(watcher) == {"beta": "up", "gamma": "up"}
        log = alpha.output()
        assert "marking it down" not in log, log[-3000:]
        assert "up -> down" not in log, log[-3000:]


# --- 11. A node frozen (SIGSTOP), then thawed -----------------------------------------


def test_frozen_node_marked_down_then_back_without_stray_replies(tmp_path: Path) -> None:
    """
    beta is frozen: alpha marks it down within down_after + heartbeat_interval
    (+ slack), the calls waiting on it fail then with UNAVAILABLE may-have-run,
    and its work goes to gamma.  Thawed, beta is reconnected to and used again,
    and no late reply from it answers another call.
    """
    with running_cluster(tmp_path) as cluster:
        alpha, beta = cluster["alpha"], cluster["beta"]
        watcher, caller = alpha.connect(), alpha.connect()
        assert caller.request("echo@beta before") == 'OK "before"'
        caller.send("#waiting +timeout=30 sleep@beta 20")
        beta_watcher = beta.connect()
        wait_until(lambda: stats_of(beta_watcher)["in_flight"] == 1, 5, "beta runs the call")
        beta_watcher.close()
        bound = DOWN_AFTER + HEARTBEAT + MARGIN
        replies = Replies(caller, 2, bound + 5)
        frozen_at = time.monotonic()
        beta.pause()
        try:
            # Sent into the frozen node: no reply can come from it.
            caller.send("#during +timeout=30 echo@beta during")
            took = wait_for_peers(watcher, {"beta": "down"}, bound + 2, "beta marked down")
            assert took <= bound, f"beta marked down after {took:.2f}s, not within {bound:g}s"
            answers = replies.join()
            for tag in ("waiting", "during"):
                at, reply = answers[tag]
                assert LOST.match(reply), (tag, reply)
                assert at - frozen_at <= bound, f"#{tag} failed after {at - frozen_at:.2f}s"

            # Routing goes around it, and calls for it are refused at once.
            assert [caller.request("where") for _ in range(4)] == ['OK "gamma"'] * 4
            assert caller.request("stock widget") == "OK 12"
            refused = caller.request("where@beta")
            assert refused.startswith("ERR UNAVAILABLE not-run @alpha "), refused
        finally:
            beta.resume()

        wait_for_peers(watcher, {"beta": "up"}, 10, "beta back up after SIGCONT")
        # Many calls to beta at once, and untagged ones in between: each reply
        # must be the one for its own call.
        tags = [f"e{k}" for k in range(300)]
        caller.send("".join(f"#{tag} echo@beta value-{tag}\n" for tag in tags).encode())
        replies = {}
        for _ in tags:
            tag, _, reply = caller.read_line().partition(" ")
            replies[tag.lstrip("#")] = reply
        assert replies == {tag: f'OK "value-{tag}"' for tag in tags}
        for k in range(20):
            assert caller.request(f"echo@beta plain-{k}") == f'OK "plain-{k}"'
        assert caller.request("where@beta") == 'OK "beta"'


# --- 12. A link cut by a proxy, then healed --------------------------------------------


class FaultProxy:
    """C{tests/faultproxy.py} in a subprocess, driven through its stdin."""

    def __init__(self, listen_host: str, target_host: str, target_port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(PROXY), listen_host, "0", target_host, str(target_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.host = listen_host
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        line = self._read_line(10)
        assert line.startswith("listening "), line
        self.port = int(line.split()[1])

    def _read_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        if not self._selector.select(timeout):
            raise AssertionError(f"the proxy said nothing within {timeout}s")
        return self.process.stdout.readline().strip()

    def command(self, line: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self._read_line(5)
        assert answer.startswith("ok"), f"{line}: {answer}"
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._selector.close()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with suppress(OSError):
                    stream.close()


def test_link_cut_then_healed(tmp_path: Path) -> None:
    """
    alpha reaches beta through a proxy.  Cut (bytes dropped, sockets open):
    calls for beta end by their deadlines, beta is marked down, and calls
    served by both go to gamma.  Healed: the link comes back and is used.
    Slowed: calls take longer but the link stays up.
    """
    require_twistd()
    require_loopback(*HOSTS.values())
    port = free_port_on(list(HOSTS.values()))
    proxy = FaultProxy(HOSTS["beta"], HOSTS["beta"], port)
    try:
        through = {"alpha": {"beta": f"tcp:{proxy.host}:{proxy.port}"}}
        with running_cluster(tmp_path, port=port, peers=through) as cluster:
            alpha = cluster["alpha"]
            watcher, caller = alpha.connect(), alpha.connect()
            assert caller.request("echo@beta through-the-proxy") == 'OK "through-the-proxy"'
            assert stats_of(watcher)["peers"]["beta"]["endpoint"].endswith(f":{proxy.port}")
            spread = {caller.request("where") for _ in range(10)}
            assert spread == {'OK "beta"', 'OK "gamma"'}, "calls go to both replicas"

            timeouts = {"t1": 0.3, "t2": 0.6, "t3": 5.0, "t4": 20.0}
            replies = Replies(caller, len(timeouts), 30)
            proxy.command("cut")
            cut_at = time.monotonic()
            for tag, timeout in timeouts.items():
                caller.send(f"#{tag} +timeout={timeout:g} echo@beta {tag}")
            took = wait_for_peers(watcher, {"beta": "down"}, 10, "beta marked down while cut")
            bound = DOWN_AFTER + HEARTBEAT + MARGIN
            assert took <= bound, f"beta marked down {took:.2f}s after the cut"
            answers = replies.join()
            for tag, timeout in timeouts.items():
                at, reply = answers[tag]
                elapsed = at - cut_at
                assert elapsed <= timeout + MARGIN, (
                    f"#{tag} answered after {elapsed:.2f}s: {reply}"
                )
                if timeout < DOWN_AFTER:
                    assert reply.startswith("ERR DEADLINE_EXCEEDED may-have-run @alpha "), reply
                else:
                    assert LOST.match(reply), reply

            # While cut, every call served by both goes to gamma.
            assert [caller.request("where") for _ in range(6)] == ['OK "gamma"'] * 6
            assert caller.request("stock widget") == "OK 12"
            refused = caller.request("where@beta")
            assert refused.startswith("ERR UNAVAILABLE not-run @alpha "), refused

            proxy.command("heal")
            wait_for_peers(watcher, {"beta": "up"}, 10, "beta back up once healed")
            assert caller.request("where@beta") == 'OK "beta"'
            assert caller.request("echo@beta healed") == 'OK "healed"'
            spread = {caller.request("where") for _ in range(10)}
            assert 'OK "beta"' in spread, "beta is used again"

            # A slow link: calls take the delay both ways; short deadlines expire.
            proxy.command("delay 0.2")
            started = time.monotonic()
            assert caller.request("+timeout=5 echo@beta slow") == 'OK "slow"'
            assert time.monotonic() - started >= 0.4
            expired = caller.request("+timeout=0.1 echo@beta too-slow")
            assert expired.startswith("ERR DEADLINE_EXCEEDED may-have-run @alpha "), expired
            assert peer_states(watcher)["beta"] == "up", "a slow peer is not a dead one"
            proxy.command("delay 0")
            assert caller.request("echo@beta fast-again") == 'OK "fast-again"'
    finally:
        proxy.close()


# --- 13. At most once, or exactly once through failover -----------------------------


@pytest.mark.parametrize("how", ["plain", "idempotent", "keyed"])
def test_call_interrupted_by_a_crash(tmp_path: Path, how: str) -> None:
    """
    The node running a call is killed mid-call.  A plain (non-idempotent)
    call is not run again anywhere: its caller hears it may have run.  An
    idempotent call, or one with a key, is run again on the other replica
    and its caller gets one success; the key's outcome is then remembered.
    """
    with running_cluster(tmp_path) as cluster:
        caller = cluster["alpha"].connect()
        token = f"order-{how}"
        procedure = "record_idempotent" if how == "idempotent" else "record"
        key = f"+key=key-{how} " if how == "keyed" else ""
        line = f"#c +timeout=20 {key}{procedure} {token} 30"
        caller.send(line)
        wait_until(lambda: bool(cluster.runs(token)), 5, "a replica starts the call")
        [first] = cluster.runs(token)
        survivor = {"beta": "gamma", "gamma": "beta"}[first]
        killed_at = time.monotonic()
        cluster[first].kill()
        reply = caller.read_line(timeout=5)
        elapsed = time.monotonic() - killed_at
        assert elapsed <= 1.0 + MARGIN, f"answered {elapsed:.2f}s after the kill"
        if how == "plain":
            assert LOST.match(reply.removeprefix("#c ")), reply
            # A round trip to the survivor, then: it has not run it.
            assert caller.request(f"where@{survivor}") == f'OK "{survivor}"'
            assert cluster.runs(token) == [first]
        else:
            assert reply == f'#c OK "{token} on {survivor}"'
            assert cluster.runs(token) == [first, survivor]
        if how == "keyed":
            # The same call again: the first outcome, not a third run.
            assert caller.request(line) == reply
            assert cluster.runs(token) == [first, survivor]
        assert cluster["alpha"].process.poll() is None


def test_keyed_call_survives_its_callers_disconnect(tmp_path: Path) -> None:
    """
    A caller sends a keyed call and goes away (closes its connection) while
    the call runs on beta or gamma.  The call runs on; the caller, back on a
    new connection, sends it again with the same key and gets its outcome,
    without a second run.
    """
    with running_cluster(tmp_path) as cluster:
        line = "#k +timeout=20 +key=order-9 record order-9 1"
        first = cluster["alpha"].connect()
        first.send(line)
        wait_until(lambda: bool(cluster.runs("order-9")), 5, "a replica starts the call")
        [runner] = cluster.runs("order-9")
        first.close()
        again = cluster["alpha"].connect()
        assert again.request(line) == f'#k OK "order-9 on {runner}"'
        assert cluster.runs("order-9") == [runner]
