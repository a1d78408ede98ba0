"""
Integration tests of L{callnet.blocking} against a real node, with real threads.

The node is a C{twistd callnet} daemon (the installed copy, as C{.ci/run}
installs it).  Each test runs on both paths of the client: C{direct} is a
plain program's client, as it chooses for itself (its own socket I/O in the
calling thread), and C{reactor} one forced through the reactor thread.  Each test runs its client in a fresh Python process, because
the global reactor runs only once per process and the test process's own
reactor must stay untouched (trial checks it).  The child prints JSON lines
that the test reads; every child, and every wait in it, is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
# Not resolved: in a venv, sys.executable is a link whose folder holds twistd.
TWISTD = Path(sys.executable).parent / "twistd"
#: Bound on each child process.
SCRIPT_TIMEOUT = 60.0
#: Bound on the node's start.
START_TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(
    not TWISTD.exists(),
    reason=f"no twistd next to {sys.executable}: cannot start a node to test against",
)

#: Run before each test's script; C{sys.argv[1]} is the node's endpoint string.
PRELUDE = """
import _thread, json, os, signal, socket, sys, threading, time
from callnet import BlockingClient as _BlockingClient, ForkedProcessError, WrongThreadError
from callnet.errors import (
    CallCancelledError, DeadlineExceededError, NotFoundError, PermissionDeniedError,
    UnavailableError,
)

ADDRESS = sys.argv[1]
PORT = int(ADDRESS.split(":")[2])
#: "direct": the client chooses (a plain program: the plain-socket path);
#: "reactor": the reactor path, forced.
TRANSPORT = sys.argv[2]

def BlockingClient(*args, **kwargs):
    if TRANSPORT == "reactor":
        kwargs.setdefault("transport", "reactor")
    return _BlockingClient(*args, **kwargs)

def report(**fields):
    print(json.dumps(fields), flush=True)

def sleeps_in_flight():
    # Asked over a socket of its own, so it works whatever the client's state.
    with socket.create_connection(("127.0.0.1", PORT), timeout=5) as s:
        s.sendall(b"#s STATS\\n")
        reply = s.makefile("rb").readline()
    stats = json.loads(reply.split(b" ", 2)[2])
    return stats["procedures"].get("sleep", {}).get("in_flight", 0)

def until(predicate, seconds=5.0):
    # A bounded poll: each try is a round trip to the node.
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
    return True
"""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on just now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def served_node(directory: Path, *options: str) -> Iterator[str]:
    """
    A C{twistd callnet} node started in C{directory} with C{options}, for as
    long as the block runs; yields its client endpoint string.
    """
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with open(directory / "node.log", "wb") as log:
        process = subprocess.Popen(
            [
                str(TWISTD),
                "-n",
                "--pidfile=",
                "callnet",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                *options,
            ],
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_listener(process, port, directory / "node.log")
            yield f"tcp:127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running node with the built-in procedures; its client endpoint string."""
    with served_node(tmp_path_factory.mktemp("node")) as endpoint:
        yield endpoint


def wait_for_listener(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Wait, at most L{START_TIMEOUT}, until the node accepts connections."""
    for _ in range(int(START_TIMEOUT / 0.05)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pass
        try:
            process.wait(0.05)  # also the pause between tries
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"the node exited with {process.returncode}:\n{log.read_text()}")
    pytest.fail(f"the node did not listen on port {port} within {START_TIMEOUT}s")


@pytest.fixture(params=["direct", "reactor"])
def transport(request: pytest.FixtureRequest) -> str:
    """The path the clients of a test take (see the module's docstring)."""
    value: str = request.param
    return value


def run_script(node: str, body: str, tmp_path: Path, transport: str) -> dict[str, Any]:
    """Run C{body} (after L{PRELUDE}) in a new Python; the JSON it reported, merged."""
    env = dict(os.environ, PYTHONPATH=str(CHECKOUT))
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body), node, transport],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    reported: dict[str, Any] = {}
    for line in result.stdout.splitlines():
        reported.update(json.loads(line))
    return reported


def test_call_and_typed_errors(node: str, tmp_path: Path, transport: str) -> None:
    """A call returns its result and a remote error is raised as its own class; only the reactor path starts callnet-reactor."""
    out = run_script(
        node,
        """
        with BlockingClient(ADDRESS, timeout=10) as client:
            result = client.call("add", 1, 2)
            threads = {t.name: t.daemon for t in threading.enumerate()}
            try:
                client.call("nosuch", 1)
            except NotFoundError as e:
                not_found = [type(e).__name__, e.outcome.value, e.message]
            try:
                client.call("fail", "PERMISSION_DENIED", "no")
            except PermissionDeniedError as e:
                denied = e.outcome.value
            report(result=result, threads=threads, not_found=not_found, denied=denied,
                   ping=client.ping(), echo=client.call("echo", value={"a": [1, None]}))
        """,
        tmp_path,
        transport,
    )
    assert out["result"] == 3
    if transport == "reactor":
        assert out["threads"]["callnet-reactor"] is True
    else:
        assert "callnet-reactor" not in out["threads"]
    assert out["not_found"][:2] == ["NotFoundError", "not-run"]
    assert "nosuch" in out["not_found"][2]
    assert out["denied"] == "ran"
    assert out["ping"] == "pong"
    assert out["echo"] == {"a": [1, None]}


def test_timeout_cancels_call_on_node(node: str, tmp_path: Path, transport: str) -> None:
    """A call past its timeout raises DeadlineExceededError promptly and the node stops running it."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=10)
        client.ping()
        start = time.monotonic()
        try:
            client.call("sleep", 5, timeout=0.5)
        except DeadlineExceededError as e:
            error = [e.outcome.value, str(e)]
        elapsed = time.monotonic() - start
        report(error=error, elapsed=elapsed, in_flight=sleeps_in_flight())
        """,
        tmp_path,
        transport,
    )
    assert out["error"][0] == "may-have-run"
    assert 0.5 <= out["elapsed"] < 2
    assert out["in_flight"] == 0


def test_keyboard_interrupt_cancels_call(node: str, tmp_path: Path, transport: str) -> None:
    """Ctrl-C during a blocking call on the main thread raises at once and cancels the call on the node."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=60)
        client.ping()
        threading.Timer(0.3, _thread.interrupt_main).start()
        start = time.monotonic()
        try:
            client.call("sleep", 30)
            what = "returned"
        except KeyboardInterrupt:
            what = "interrupted"
        elapsed = time.monotonic() - start
        # The cancel was queued before this call, so the node has it by now.
        client.ping()
        report(what=what, elapsed=elapsed, in_flight=until(lambda: sleeps_in_flight() == 0))
        """,
        tmp_path,
        transport,
    )
    assert out["what"] == "interrupted"
    assert out["elapsed"] < 2
    assert out["in_flight"] is True


def test_many_threads_share_one_client(node: str, tmp_path: Path, transport: str) -> None:
    """32 threads making 500 calls each through one client all get their own correct results."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=30)
        wrong = []
        counts = [0] * 32

        def work(k):
            for i in range(500):
                result = client.call("add", k, i * 1000)
                if result != k + i * 1000:
                    wrong.append([k, i, result])
                counts[k] += 1

        threads = [threading.Thread(target=work, args=(k,)) for k in range(32)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(50)
        report(wrong=wrong[:5], counts=counts, alive=sum(t.is_alive() for t in threads),
               elapsed=time.monotonic() - start)
        """,
        tmp_path,
        transport,
    )
    assert out["alive"] == 0
    assert out["wrong"] == []
    assert out["counts"] == [500] * 32


def test_threads_sharing_a_connection_keep_every_promise(node: str, tmp_path: Path) -> None:
    """Threads whose calls ride the connection the main thread reads for get their results, a deadline among them cancels its call only, and Ctrl-C in the reader cancels its own call and leaves the connection to the others."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=30)
        client.ping()
        wrong = []
        seen = {}

        def worker(k):
            for i in range(200):
                if client.call("add", k, i) != k + i:
                    wrong.append([k, i])

        def short():
            try:
                client.call("sleep", 5, timeout=0.3)
            except DeadlineExceededError as e:
                seen["deadline"] = e.outcome.value

        def script():
            seen["reading"] = until(lambda: sleeps_in_flight() == 1)
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            threads.append(threading.Thread(target=short))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(20)
            seen["alive"] = sum(thread.is_alive() for thread in threads)
            seen["connections"] = len(client._direct._pool._shared)
            _thread.interrupt_main()

        helper = threading.Thread(target=script)
        helper.start()
        try:
            client.call("sleep", 30)
            what = "returned"
        except KeyboardInterrupt:
            what = "interrupted"
        helper.join(20)
        after = client.call("add", 1, 1)
        report(what=what, wrong=wrong, after=after, idle=len(client._direct._pool._idle),
               in_flight=until(lambda: sleeps_in_flight() == 0), **seen)
        """,
        tmp_path,
        "direct",
    )
    assert out["reading"] is True
    assert out["what"] == "interrupted"
    assert out["alive"] == 0
    assert out["wrong"] == []
    assert out["deadline"] == "may-have-run"
    assert out["connections"] == 1
    assert out["after"] == 2
    assert out["idle"] == 1
    assert out["in_flight"] is True


def test_call_async_handle(node: str, tmp_path: Path, transport: str) -> None:
    """A handle is polled from plain code, calls back on the thread that finished it, and outlives a short result() timeout."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=10)
        handle = client.call_async("sleep", 0.3)
        called = threading.Event()
        seen = []
        handle.add_done_callback(
            lambda h: (seen.append(threading.current_thread().name), called.set()))
        done_at_first = handle.done()
        timeouts = 0
        start = time.monotonic()
        while not handle.done() and time.monotonic() < start + 5:
            try:
                handle.result(timeout=0.05)
            except TimeoutError:
                timeouts += 1
        result = handle.result()
        called.wait(5)

        late = []
        handle.add_done_callback(lambda h: late.append(threading.current_thread().name))

        cancelled = client.call_async("sleep", 5)
        cancelled.cancel()
        try:
            cancelled.result()
        except CallCancelledError as e:
            cancel_outcome = e.outcome.value
        report(done_at_first=done_at_first, timeouts=timeouts, result=result, seen=seen,
               late=late, cancel_outcome=cancel_outcome,
               in_flight=until(lambda: sleeps_in_flight() == 0))
        """,
        tmp_path,
        transport,
    )
    assert out["done_at_first"] is False
    assert out["timeouts"] >= 1
    assert out["result"] == 0.3
    if transport == "reactor":
        assert out["seen"] == ["callnet-reactor"]
    else:
        assert len(out["seen"]) == 1 and out["seen"][0].startswith("callnet-call")
    assert out["late"] == ["MainThread"]
    assert out["cancel_outcome"] in ("may-have-run", "not-run")
    assert out["in_flight"] is True


def test_blocking_on_reactor_thread_refused(node: str, tmp_path: Path, transport: str) -> None:
    """A blocking call made on the reactor thread raises WrongThreadError at once; a handle is awaited there instead."""
    out = run_script(
        node,
        """
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        client = BlockingClient(ADDRESS, timeout=10)
        client.ping()
        if TRANSPORT == "direct":
            # The application runs its own reactor: the client crosses into it.
            threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
            ).start()
            forced = _BlockingClient(ADDRESS, timeout=10, transport="direct")
        else:
            forced = client
        seen = {}
        finished = threading.Event()

        async def use_handle():
            return await client.call_async("add", 2, 3)

        def probe():
            start = time.monotonic()
            try:
                client.call("add", 1, 2)
                seen["call"] = "returned"
            except WrongThreadError as e:
                seen["call"] = str(e)
            seen["elapsed"] = time.monotonic() - start
            try:
                forced.call("add", 1, 2)
                seen["forced"] = "returned"
            except WrongThreadError as e:
                seen["forced"] = str(e)
            result = Deferred.fromCoroutine(use_handle())
            result.addCallback(lambda value: seen.update(awaited=value))
            result.addBoth(lambda _: finished.set())

        reactor.callFromThread(probe)
        report(finished=finished.wait(10), **seen)
        """,
        tmp_path,
        transport,
    )
    assert out["finished"] is True
    assert "reactor thread" in out["call"]
    assert "call_async" in out["call"]
    assert out["elapsed"] < 0.5
    assert "reactor thread" in out["forced"]
    assert out["awaited"] == 5


def test_close_releases_blocked_caller(node: str, tmp_path: Path, transport: str) -> None:
    """close() from one thread releases a caller blocked in another at once, and the node stops the call."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=60)
        client.ping()
        seen = {}

        def worker():
            try:
                client.call("sleep", 30)
            except UnavailableError as e:
                seen["error"] = [e.outcome.value, str(e)]
            seen["at"] = time.monotonic()

        thread = threading.Thread(target=worker)
        thread.start()
        sent = until(lambda: sleeps_in_flight() == 1)
        closed_at = time.monotonic()
        client.close()
        thread.join(5)
        try:
            client.call("add", 1, 2)
        except UnavailableError as e:
            after = e.outcome.value
        report(sent=sent, released_in=seen["at"] - closed_at, error=seen["error"], after=after,
               in_flight=until(lambda: sleeps_in_flight() == 0))
        """,
        tmp_path,
        transport,
    )
    assert out["sent"] is True
    assert out["released_in"] < 1
    assert out["error"][0] == "may-have-run"
    assert "closed" in out["error"][1]
    assert out["after"] == "not-run"
    assert out["in_flight"] is True


def test_reactor_shutdown_releases_blocked_caller(
    node: str, tmp_path: Path, transport: str
) -> None:
    """Stopping the reactor releases a blocked caller with UnavailableError, and later calls fail at once."""
    if transport == "direct":
        pytest.skip(
            "only the reactor path has a reactor to stop; see test_exit_releases_blocked_caller"
        )
    out = run_script(
        node,
        """
        from twisted.internet import reactor

        client = BlockingClient(ADDRESS, timeout=60)
        client.ping()
        seen = {}

        def worker():
            try:
                client.call("sleep", 30)
            except UnavailableError as e:
                seen["error"] = [e.outcome.value, str(e)]
            seen["at"] = time.monotonic()

        thread = threading.Thread(target=worker)
        thread.start()
        sent = until(lambda: sleeps_in_flight() == 1)
        stopped_at = time.monotonic()
        reactor.callFromThread(reactor.stop)
        thread.join(5)
        start = time.monotonic()
        try:
            client.call("add", 1, 2)
        except UnavailableError as e:
            after = [e.outcome.value, str(e), time.monotonic() - start]
        report(sent=sent, released_in=seen["at"] - stopped_at, error=seen["error"], after=after,
               in_flight=until(lambda: sleeps_in_flight() == 0))
        """,
        tmp_path,
        transport,
    )
    assert out["sent"] is True
    assert out["released_in"] < 1
    assert out["error"][0] == "may-have-run"
    assert "shutting down" in out["error"][1]
    assert out["after"][0] == "not-run"
    assert "stopped" in out["after"][1]
    assert out["after"][2] < 0.5
    assert out["in_flight"] is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_forked_child_gets_clear_error(node: str, tmp_path: Path, transport: str) -> None:
    """On the reactor path a child forked after the client was used gets ForkedProcessError at once; the parent goes on."""
    if transport == "direct":
        pytest.skip("the plain-socket path serves forked children: see test_forked_children_*")
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=10)
        client.call("add", 1, 2)
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a hang would be the bug: die rather than wait
            code = 0
            for attempt in (lambda: client.call("add", 1, 2),
                            lambda: BlockingClient(ADDRESS).call("add", 1, 2)):
                start = time.monotonic()
                try:
                    attempt()
                    code = code or 1
                except ForkedProcessError as e:
                    if "fork" not in str(e) or time.monotonic() - start > 1:
                        code = code or 3
                except BaseException:
                    code = code or 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        report(child=os.waitstatus_to_exitcode(status), parent=client.call("add", 2, 2))
        """,
        tmp_path,
        transport,
    )
    assert out["child"] == 0
    assert out["parent"] == 4


def test_cast_multicall_and_trace(node: str, tmp_path: Path, transport: str) -> None:
    """A cast reaches the node, a multicall answers per node, and a trace id comes back on an error."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=10)
        client.cast("sleep", 0.5)
        cast_ran = until(lambda: sleeps_in_flight() == 1)
        answers = client.multicall("add", 1, 2)
        try:
            client.call("fail", "NOT_FOUND", "gone", trace="req-42")
        except NotFoundError as e:
            traced = [e.trace, e.message]
        # Leave no sleep running for the next test to count.
        report(cast_ran=cast_ran, answers=answers, traced=traced,
               cast_ended=until(lambda: sleeps_in_flight() == 0))
        """,
        tmp_path,
        transport,
    )
    assert out["cast_ran"] is True
    assert out["cast_ended"] is True
    assert list(out["answers"].values()) == [3]
    assert out["traced"][0] == "req-42"


def test_exit_releases_blocked_caller(node: str, tmp_path: Path, transport: str) -> None:
    """At interpreter exit a caller blocked in another thread and a handle in flight are released with UnavailableError, the node stops both calls, and the exit does not wait for their deadlines."""
    out = run_script(
        node,
        """
        import atexit
        released = threading.Event()
        seen = {}

        def last_words():
            # Registered before the client's own hook, so it runs after it.
            seen["released"] = released.wait(10)
            try:
                handle.result(timeout=10)
            except UnavailableError as e:
                seen["handle"] = e.outcome.value
            report(error=seen.get("error"), released=seen["released"], handle=seen.get("handle"),
                   in_flight=until(lambda: sleeps_in_flight() == 0))

        atexit.register(last_words)
        client = BlockingClient(ADDRESS, timeout=60)
        client.ping()

        def worker():
            try:
                client.call("sleep", 50)
            except UnavailableError as e:
                seen["error"] = [e.outcome.value, str(e)]
            released.set()

        threading.Thread(target=worker, daemon=True).start()
        handle = client.call_async("sleep", 50)
        report(sent=until(lambda: sleeps_in_flight() == 2), started=time.monotonic())
        """,
        tmp_path,
        transport,
    )
    assert out["sent"] is True
    assert out["released"] is True
    assert out["error"][0] == "may-have-run"
    assert out["handle"] == "may-have-run"
    assert out["in_flight"] is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_forked_children_get_fresh_connections(node: str, tmp_path: Path) -> None:
    """Worker processes forked from a parent whose client is in use each call on connections of their own, as under a pre-forking WSGI server."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=10)
        assert client.call("add", 1, 2) == 3   # the parent's connection is open
        parent_ports = {c.sock.getsockname()[1] for c in client._direct._pool._idle}
        workers = []
        for k in range(4):
            pid = os.fork()
            if pid == 0:
                signal.alarm(20)  # a hang would be the bug: die rather than wait
                code = 0
                try:
                    for i in range(300):
                        if client.call("add", k, i * 10) != k + i * 10:
                            code = 1
                            break
                    ports = {c.sock.getsockname()[1] for c in client._direct._pool._idle}
                    if not ports or ports & parent_ports:
                        code = 2
                except BaseException:
                    code = 3
                os._exit(code)
            workers.append(pid)
        # The parent keeps calling on its own connection meanwhile.
        parent_wrong = sum(client.call("add", 100, i) != 100 + i for i in range(300))
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers]
        report(codes=codes, parent_wrong=parent_wrong,
               parent_same=parent_ports == {c.sock.getsockname()[1] for c in client._direct._pool._idle})
        """,
        tmp_path,
        "direct",
    )
    assert out["codes"] == [0, 0, 0, 0]
    assert out["parent_wrong"] == 0
    assert out["parent_same"] is True


def test_tls_and_token(tmp_path: Path, transport: str) -> None:
    """Over TLS to a node that wants a token, a client with the CA and the token calls; a wrong CA or name is refused not-run, and so is a wrong token."""
    from callnet import tls
    from tests.daemon import running_node

    certs = tmp_path / "certs"
    tls.make_ca(certs)
    tls.make_node_certificate(certs, "alpha", ips=["127.0.0.1"])
    rogue = tmp_path / "rogue"
    tls.make_ca(rogue)
    token = "a-long-random-token-for-alice"
    tls_port = free_port()
    (tmp_path / "alpha.toml").write_text(
        "[security]\n"
        f'tokens = {{ alice = "{token}" }}\n'
        "[tls]\n"
        f'cert = "{certs / "alpha.pem"}"\n'
        f'key = "{certs / "alpha.key"}"\n'
    )
    with running_node(
        tmp_path,
        "--config",
        "alpha.toml",
        "--listen",
        f"tls:{tls_port}:interface=127.0.0.1",
        name="alpha",
    ) as node:
        out = run_script(
            node.endpoint,
            f"""
            from callnet.blocking import TLSAddress
            from callnet.errors import CallError
            CERTS, ROGUE, TLS_PORT, TOKEN = {str(certs)!r}, {str(rogue)!r}, {tls_port}, {token!r}

            def attempt(address, token):
                try:
                    with BlockingClient(address, timeout=10, token=token) as client:
                        return ["ok", client.call("add", 1, 2), client.call("echo", "x", trace="t1")]
                except CallError as e:
                    return [type(e).__name__, e.outcome.value, str(e)]

            good = TLSAddress("127.0.0.1", TLS_PORT, ca=CERTS + "/ca.pem", name="alpha")
            report(
                good=attempt(good, TOKEN),
                by_ip=attempt(TLSAddress("127.0.0.1", TLS_PORT, ca=CERTS + "/ca.pem"), TOKEN),
                wrong_name=attempt(
                    TLSAddress("127.0.0.1", TLS_PORT, ca=CERTS + "/ca.pem", name="beta"), TOKEN),
                wrong_ca=attempt(
                    TLSAddress("127.0.0.1", TLS_PORT, ca=ROGUE + "/ca.pem", name="alpha"), TOKEN),
                wrong_token=attempt(good, "not-the-token-at-all-0000"),
                no_token=attempt(good, None),
            )
            """,
            tmp_path,
            transport,
        )
    assert out["good"] == ["ok", 3, "x"]
    assert out["by_ip"] == ["ok", 3, "x"]
    for refused in ("wrong_name", "wrong_ca"):
        assert out[refused][:2] == ["UnavailableError", "not-run"], out[refused]
        assert "certificate verify failed" in out[refused][2], out[refused]
    assert out["wrong_token"][:2] == ["UnauthenticatedError", "not-run"]
    assert out["no_token"][:2] == ["UnauthenticatedError", "not-run"]
