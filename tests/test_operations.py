"""
Running nodes in production, on real C{twistd} subprocesses with every wait
bounded: a graceful drain on SIGTERM in a three-node cluster, JSON-lines logs
with the access log, and the systemd unit of C{etc/systemd}
(see C{docs/operations.md}).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from callnet.node import STOP_MARGIN
from callnet.workers import PARENT_CHECK_INTERVAL

from .daemon import (
    TWISTD,
    LineClient,
    Node,
    free_port,
    require_twistd,
    start_node,
    stats_of,
    wait_until,
    wait_until_listening,
)
from .test_cluster_faults import example_cluster

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "etc" / "systemd" / "callnet.service"
EXAMPLE_CONFIG = ROOT / "etc" / "callnet.toml"

#: beta's [node] shutdown_grace in the drain test, in seconds.
GRACE = 3.0
#: How long each call of the drain test runs on beta or gamma, in seconds.
WORK = 1.0
#: Seconds between two calls of the steady stream to alpha.
EVERY = 0.05

SLOW = '''\
"""A procedure that takes a while and says where it ran (not idempotent)."""

import os

from callnet import procedure

NODE = os.environ["SLOW_NODE"]


@procedure(run="reactor")
async def work(seconds: float) -> str:
    """Wait some seconds, then name the node that ran the call."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)
    return NODE
'''

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- Draining a node of a cluster ----------------------------------------------


@contextmanager
def slow_cluster(tmp_path: Path) -> Iterator[dict[str, Node]]:
    """
    The example cluster with C{slow} on beta and gamma (alpha does not serve
    it), and beta's shutdown_grace L{GRACE}.  Yields once alpha sees both up.
    """

    def adjust(name: str, config: dict[str, Any]) -> None:
        if name == "beta":
            config["node"]["shutdown_grace"] = GRACE

    with example_cluster(
        tmp_path, ("slow", SLOW), lambda name: {"SLOW_NODE": name}, adjust=adjust
    ) as (nodes, _, _port):
        yield nodes


class Stream:
    """
    A steady stream of tagged calls on one connection, one every L{EVERY}
    seconds from a thread, with another thread reading every reply line.
    """

    def __init__(self, client: LineClient, line: str) -> None:
        self.client = client
        self.line = line
        #: Tag -> monotonic time it was sent.
        self.sent: dict[str, float] = {}
        #: Every reply line read, with the monotonic time it came.
        self.replies: list[tuple[float, str]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._reading = threading.Event()
        self._lock = threading.Lock()
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reading.set()
        self._reader.start()
        self._sender.start()

    def _send(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                tag = f"s{n}"
                with self._lock:
                    self.sent[tag] = time.monotonic()
                self.client.send(f"#{tag} {self.line}")
                n += 1
                self._stop.wait(EVERY)
        except BaseException as e:  # reported by stop()
            self.error = e

    def _read(self) -> None:
        try:
            while self._reading.is_set():
                try:
                    line = self.client.read_line(0.2)
                except (AssertionError, TimeoutError):
                    continue  # no line yet: look whether to go on
                self.replies.append((time.monotonic(), line))
        except BaseException as e:  # reported by stop()
            self.error = e

    def count_sent(self) -> int:
        with self._lock:
            return len(self.sent)

    def stop_sending(self) -> None:
        self._stop.set()
        self._sender.join(5)
        assert not self._sender.is_alive(), "the sender thread hung"

    def answered(self) -> bool:
        return len({line.partition(" ")[0] for _, line in self.replies}) >= len(self.sent)

    def stop_reading(self) -> None:
        self._reading.clear()
        self._reader.join(5)
        assert not self._reader.is_alive(), "the reader thread hung"
        if self.error is not None:
            raise AssertionError(f"the stream failed: {self.error!r}") from self.error


def test_drain_one_node_of_a_cluster_under_load(tmp_path: Path) -> None:
    """
    A steady stream of calls to alpha for C{work}, which beta and gamma serve
    (1 s each, not idempotent).  beta gets SIGTERM with several of them in
    flight: every call still gets exactly one reply, and all are OK.  beta's
    own calls end there within its shutdown_grace; calls after the SIGTERM
    run on gamma (alpha fails over on beta's UNAVAILABLE not-run, then routes
    around it once its link drops).  beta exits by the signal within
    shutdown_grace plus a few seconds, with no Traceback in its log.
    """
    with slow_cluster(tmp_path) as nodes:
        alpha, beta = nodes["alpha"], nodes["beta"]
        stream = Stream(alpha.connect(), f"+timeout=15 work {WORK:g}")
        try:
            watcher = beta.connect()
            try:
                wait_until(
                    lambda: stats_of(watcher)["in_flight"] >= 3,
                    10,
                    "beta has several of alpha's calls in flight",
                )
            finally:
                watcher.close()
            sent_before = stream.count_sent()
            terminated_at = time.monotonic()
            beta.process.send_signal(signal.SIGTERM)
            status = beta.process.wait(timeout=GRACE + 5)
            stopped_in = time.monotonic() - terminated_at
            # Go on sending once beta is gone: alpha routes around it.
            more = stream.count_sent()
            wait_until(
                lambda: stream.count_sent() >= more + 10, 5, "calls sent after beta stopped"
            )
            stream.stop_sending()
            wait_until(stream.answered, WORK + 10, "every call answered")
            # Nothing more comes: one reply per call, not two.
            pause = threading.Event()
            pause.wait(0.5)
        finally:
            stream.stop_sending()
            stream.stop_reading()
            stream.client.close()

        by_tag: dict[str, list[tuple[float, str]]] = {}
        for at, line in stream.replies:
            tag, _, rest = line.partition(" ")
            by_tag.setdefault(tag.lstrip("#"), []).append((at, rest))
        assert set(by_tag) == set(stream.sent), "a reply for each call, and no other"
        twice = {tag: replies for tag, replies in by_tag.items() if len(replies) != 1}
        assert not twice, f"calls answered more than once: {twice}"
        failed = {tag: r[0][1] for tag, r in by_tag.items() if not r[0][1].startswith("OK ")}
        assert not failed, f"calls that failed: {failed}"

        ran = {tag: json.loads(r[0][1][3:]) for tag, r in by_tag.items()}
        on_beta = [tag for tag, node in ran.items() if node == "beta"]
        assert len(on_beta) >= 3, "beta finished the calls it had in flight"
        for tag in on_beta:
            answered_at = by_tag[tag][0][0]
            assert stream.sent[tag] < terminated_at, f"{tag} reached beta after its SIGTERM"
            assert answered_at - terminated_at < GRACE + 1, f"{tag} outlived beta's grace"
        after = [tag for tag, at in stream.sent.items() if at > terminated_at]
        assert len(after) >= 10
        # Sent while beta drained: alpha still had its link to beta up.
        during = [tag for tag in after if stream.sent[tag] < terminated_at + stopped_in]
        assert len(during) >= 5, "calls were sent while beta drained"
        assert {ran[tag] for tag in after} == {"gamma"}, "calls after the SIGTERM ran on gamma"
        assert sent_before >= 3

        assert status in (-signal.SIGTERM, 128 + signal.SIGTERM), status
        assert stopped_in < GRACE + 3, f"beta took {stopped_in:.1f}s to stop"
        output = beta.output()
        assert "Traceback" not in output, output[-4000:]
        assert "draining" in output
        assert "cancelling" not in output, "no call was still running after the grace"
        for name in ("alpha", "gamma"):
            assert nodes[name].process.poll() is None, f"{name} serves on"
            assert "Traceback" not in nodes[name].output(), name


# --- JSON-lines logs and the access log ----------------------------------------


@pytest.fixture(scope="module")
def json_log(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """
    The output of C{twistd -n --logger callnet.logs.json_stdout callnet
    --access-log}, one string per line, after four calls and a SIGTERM:
    C{add 1 2}, a traced C{echo}, an unknown procedure, and a C{sleep} past
    its deadline.
    """
    require_twistd()
    here = tmp_path_factory.mktemp("jsonlog")
    port = free_port()
    node = start_node(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "--logger",
            "callnet.logs.json_stdout",
            "callnet",
            "--name",
            "jsonnode",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--access-log",
        ],
        "127.0.0.1",
        port,
        here / "node.log",
        cwd=here,
    )
    try:
        wait_until_listening(node)
        client = node.connect()
        try:
            assert client.request("add 1 2") == "OK 3"
            assert client.request(f"+trace={TRACE} echo traced") == 'OK "traced"'
            assert client.request("nosuch 1").startswith("ERR NOT_FOUND not-run @jsonnode ")
            assert client.request("#t1 +timeout=0.1 sleep 5").startswith(
                "#t1 ERR DEADLINE_EXCEEDED may-have-run @jsonnode "
            )
        finally:
            client.close()
        wait_until(
            lambda: node.output().count('"callnet.access"') >= 4,
            5,
            "an access event for each call",
        )
        status = node.terminate(timeout=15)
    finally:
        node.kill()
    assert status in (-signal.SIGTERM, 128 + signal.SIGTERM), status
    # Split on newlines only: str.splitlines would also split at a record separator.
    lines = node.log.read_bytes().decode().split("\n")
    assert lines.pop() == "", "the output ends with a newline"
    assert lines, "the node logged something"
    return lines


def events_of(lines: list[str]) -> list[dict[str, Any]]:
    """The events of a JSON log, each line read with any leading record separator dropped."""
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"not JSON, even without a record separator: {line!r}")
        assert isinstance(event, dict), line
        assert "log_namespace" in event and "log_time" in event, line
        events.append(event)
    return events


def test_json_log_events_and_access_log(json_log: list[str]) -> None:
    """
    Each line of the node's output holds one JSON event, and each call is
    one access event in the callnet.access namespace, with its procedure,
    caller, outcome, duration and trace id.
    """
    events = events_of(json_log)
    assert not any("Traceback" in line for line in json_log)
    access = [e for e in events if e["log_namespace"] == "callnet.access"]
    assert [(e["procedure"], e["outcome"]) for e in access] == [
        ("add", "OK"),
        ("echo", "OK"),
        ("nosuch", "NOT_FOUND"),
        ("sleep", "DEADLINE_EXCEEDED"),
    ]
    for event in access:
        assert event["caller"] == "anonymous", event
        assert event["address"] == "127.0.0.1", event
        assert isinstance(event["duration_ms"], int | float) and event["duration_ms"] >= 0
        assert "trace" in event
    traces = [e["trace"] for e in access]
    assert traces[1] == TRACE, "a caller's trace id is kept"
    # The node gives the others one each, in W3C traceparent form.
    for trace in (traces[0], traces[2], traces[3]):
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", trace), trace
    assert len(set(traces)) == 4
    assert access[3]["duration_ms"] >= 90, "the sleep ran until its deadline"
    assert access[3]["tag"] == "t1"
    namespaces = {e["log_namespace"] for e in events}
    assert {"callnet.node", "callnet.protocol", "callnet.access"} <= namespaces, namespaces
    stopped = [e for e in events if e["log_namespace"] == "callnet.node"]
    assert "stopped" in stopped[-1]["log_format"], "the clean stop is logged"


def test_json_log_lines_are_plain_json(json_log: list[str]) -> None:
    """Every line of the node's output is, as it stands, one JSON object (JSON Lines)."""
    for line in json_log:
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line[:120]!r}")
        assert isinstance(event, dict), line


# --- No child outlives the node -------------------------------------------------

SQUARE = """\
from callnet import procedure


@procedure(run="process")
def square(x: int) -> int:
    \"\"\"x times x, in a worker process.\"\"\"
    return x * x
"""


def children_of(pid: int) -> list[int]:
    """The pids of the processes whose parent is C{pid} now, read from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # pid (comm) state ppid ...: comm may hold spaces, so split after ")".
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def ended(pid: int) -> bool:
    """Whether process C{pid} has ended (gone, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("SIGTERM", 128 + signal.SIGTERM),
        ("Ctrl-C", 128 + signal.SIGINT),
        ("SIGKILL", 128 + signal.SIGKILL),
    ],
)
def test_no_child_outlives_the_node(tmp_path: Path, how: str, status: int) -> None:
    """
    After a run="process" call, SIGTERM (or Ctrl-C, SIGINT to the whole
    process group) ends the worker processes and multiprocessing's resource
    tracker with the node, and every line of its JSON log stays JSON; the
    workers of a node killed outright (SIGKILL) end within a few seconds,
    and the tracker with them, instead of waiting for work for ever.
    """
    require_twistd()
    (tmp_path / "square.py").write_text(SQUARE)
    port = free_port()
    log = tmp_path / "node.log"
    command = [
        str(TWISTD),
        "-n",
        "--pidfile=",
        "--logger",
        "callnet.logs.json_stdout",
        "callnet",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--service",
        "square",
        "--processes",
        "1",
    ]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with log.open("wb") as out:
        # A session of its own: Ctrl-C signals a terminal's whole foreground group.
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    node = Node(process, "127.0.0.1", port, log)
    try:
        wait_until_listening(node)
        client = node.connect()
        assert client.request("square 7") == "OK 49"
        children = children_of(process.pid)
        assert len(children) >= 2, "a worker process and the resource tracker"
        if how == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        elif how == "SIGKILL":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=15) in (-(status - 128), status)
    finally:
        node.kill()
    if how == "SIGKILL":
        # Orphans now: the workers see their node gone within a check, and
        # the resource tracker ends once they have.
        wait_until(
            lambda: all(ended(pid) for pid in children),
            3 * PARENT_CHECK_INTERVAL + 2,
            "orphans end",
        )
    left = [pid for pid in children if not ended(pid)]
    assert left == [], f"children still running after the node: {left}"
    if how == "SIGKILL":
        # The node wrote nothing more; the resource tracker, left to clean up
        # after it, warns on stderr of the semaphores it removes.
        return
    lines = log.read_bytes().decode().split("\n")
    assert lines.pop() == ""
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line[:160]!r}")
    assert "Traceback" not in log.read_text()


# --- The systemd unit -----------------------------------------------------------


def read_unit(path: Path) -> configparser.ConfigParser:
    """A systemd unit file as sections of keys (case kept; a repeated key's last value)."""
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(path.read_text())
    return unit


def test_systemd_unit() -> None:
    """
    etc/systemd/callnet.service runs the node in the foreground from its
    config with JSON logs, stops it with SIGTERM, waits as long as the
    drain plus the stop margin, takes 143 for a clean stop, restarts it on failure (a few times,
    not for ever), and is hardened.
    """
    unit = read_unit(UNIT)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/") and argv[0].endswith("/twistd"), argv
    callnet = argv.index("callnet")
    twistd_options, node_options = argv[1:callnet], argv[callnet + 1 :]
    assert "--nodaemon" in twistd_options and "--pidfile=" in twistd_options, argv
    logger = twistd_options.index("--logger")
    assert twistd_options[logger + 1] == "callnet.logs.json_stdout"
    assert node_options[:2] == ["--config", "/etc/callnet/callnet.toml"], argv

    with EXAMPLE_CONFIG.open("rb") as f:
        grace = tomllib.load(f)["node"]["shutdown_grace"]
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert float(service["TimeoutStopSec"]) >= grace + STOP_MARGIN
    success = service["SuccessExitStatus"].split()
    assert "143" in success or "SIGTERM" in success
    assert service["Restart"] == "on-failure"
    # The restarts of a node that cannot start end: its burst fits in the interval.
    limits = unit["Unit"]
    burst = int(limits["StartLimitBurst"])
    assert burst * float(service["RestartSec"]) < float(limits["StartLimitIntervalSec"])
    assert service["Type"] == "simple"
    assert service["User"] not in ("", "root")
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["WorkingDirectory"] in service["ReadWritePaths"].split()
    for key, value in {
        "ProtectClock": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "PrivateMounts": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service",
        "UMask": "0027",
    }.items():
        assert service.get(key) == value, key
    assert "MemoryDenyWriteExecute" not in service
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_memory_deny_write_execute_would_break_tls() -> None:
    """
    Why the unit leaves MemoryDenyWriteExecute off: under the same rule
    (the kernel's PR_SET_MDWE, which systemd's setting amounts to), the
    callbacks pyOpenSSL makes for certificate checks and ALPN cannot be made.
    """
    probe = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"
        "    sys.exit(3)\n"
        "from OpenSSL import SSL\n"
        "context = SSL.Context(SSL.TLS_METHOD)\n"
        "try:\n"
        "    context.set_alpn_select_callback(lambda connection, offered: b'callnet')\n"
        "except MemoryError:\n"
        "    sys.exit(4)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60)
    if result.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert result.returncode == 4, result.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit, with ExecStart on this venv's twistd."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here")
    require_twistd()
    text = UNIT.read_text()
    twistd = shlex.split(read_unit(UNIT)["Service"]["ExecStart"])[0]
    copy = tmp_path / "callnet.service"
    copy.write_text(text.replace(twistd, str(TWISTD)))
    result = subprocess.run(
        [analyze, "verify", str(copy)], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "callnet.service" not in result.stderr, result.stderr
