"""
Tests for the plain-socket path of L{callnet.blocking.BlockingClient}
(L{callnet.blocking._direct}), against a scripted line server in a thread
on a loopback socket: what only the kernel shows (a connection closed under
a waiting reader, a reply that never comes) needs a real socket.  Every wait
is bounded; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.python import threadable

from callnet.blocking import BlockingClient, CallHandle, TLSAddress, reactor_in_use
from callnet.blocking._address import parse_address
from callnet.blocking._connection import Connection
from callnet.blocking._direct import DirectPath
from callnet.blocking._shared import LostError, Multiplexer, NotSentError
from callnet.blocking._wait import _Done
from callnet.errors import (
    CallCancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    UnauthenticatedError,
    UnavailableError,
)

#: Bound on every wait of these tests.
WAIT = 5.0

Handler = Callable[[bytes], bytes | None]


class LineServer:
    """
    A node stand-in: accepts connections, records every line, and answers
    each with what C{handler} returns (nothing for C{None}).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.lines: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.ended: queue.Queue[int] = queue.Queue()
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            number = len(self.connections)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self.ended.put(number)
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.lines.put((number, line))
                    reply = self.handler(line)
                    if reply is not None:
                        with contextlib.suppress(OSError):
                            conn.sendall(reply)

    def next_line(self) -> tuple[int, bytes]:
        """The next line any connection sent (connection number, line)."""
        return self.lines.get(timeout=WAIT)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture(autouse=True)
def plain_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Play a plain program: the test runner's own reactor (pytest-twisted runs
    one in the main thread) is hidden from the client, as it would not exist.
    """
    monkeypatch.setattr(threadable, "ioThread", None)


def answer(line: bytes) -> bytes | None:
    """Answer C{add a b} with its sum, C{echo x} with x; keep C{sleep} waiting."""
    words = line.split()
    tag = words[0]
    if not tag.startswith(b"#"):
        return None
    rest = [word for word in words[1:] if not word.startswith(b"+")]
    if rest[0] == b"add":
        return b"%b OK %d\n" % (tag, int(rest[1]) + int(rest[2]))
    if rest[0] == b"echo":
        return b"%b OK %b\n" % (tag, rest[1])
    if rest[0] == b"AUTH":
        if rest[1] == b'"good-token-good-token"':
            return tag + b' OK "alice"\n'
        return tag + b" ERR UNAUTHENTICATED not-run bad token\n"
    if rest[0] == b"nosuch":
        return tag + b" ERR NOT_FOUND not-run no procedure nosuch\n"
    return None


@pytest.fixture
def server() -> Iterator[LineServer]:
    serving = LineServer(answer)
    yield serving
    serving.close()


def test_addresses_the_plain_path_can_reach() -> None:
    """tcp: and unix: strings with a host and port or a path, and TLSAddress, go direct; any other endpoint does not."""
    cases: list[tuple[object, Any]] = [
        ("tcp:127.0.0.1:7600", ("127.0.0.1", 7600)),
        ("tcp:host=example.com:port=7600", ("example.com", 7600)),
        ("tcp:127.0.0.1:7600:timeout=5", ("127.0.0.1", 7600)),
        ("tcp:\\:\\:1:7600", ("::1", 7600)),
        ("unix:/run/callnet.sock", "/run/callnet.sock"),
        ("unix:path=/run/callnet.sock:checkPID=1", "/run/callnet.sock"),
        ("tcp:127.0.0.1:7600:bindAddress=127.0.0.2\\:0", None),
        ("tcp:127.0.0.1", None),
        ("tcp:127.0.0.1:http", None),
        ("ssl:127.0.0.1:7600", None),
        ("tls:127.0.0.1:7600", None),
        (object(), None),
    ]
    for endpoint, target in cases:
        address = parse_address(endpoint)
        assert (address.target if address else None) == target, endpoint
    tls = parse_address(TLSAddress("::1", 7601, ca="ca.pem"))
    assert tls is not None and tls.target == ("::1", 7601) and tls.text == "tls:[::1]:7601"
    with pytest.raises(ValueError, match="needs its key"):
        TLSAddress("127.0.0.1", 7601, ca="ca.pem", cert="client.pem")


def test_plain_program_goes_direct() -> None:
    """A plain program's client takes the plain-socket path; a reactor thread given, or an endpoint object, means the reactor path."""
    assert reactor_in_use() is False
    client = BlockingClient("tcp:127.0.0.1:1", timeout=1)
    assert client._direct_path() is not None
    endpoint_object = BlockingClient(object(), timeout=1)  # type: ignore[arg-type]
    assert endpoint_object._direct_path() is None
    with pytest.raises(ValueError, match="plain-socket path"):
        BlockingClient(object(), transport="direct")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="transport"):
        BlockingClient("tcp:127.0.0.1:1", transport="carrier-pigeon")  # type: ignore[arg-type]
    forced = BlockingClient("tcp:127.0.0.1:1", transport="reactor")
    assert forced._direct_path() is None


def test_calls_share_an_idle_connection(server: LineServer) -> None:
    """Calls one after another from one thread use one connection, with fresh tags and the deadline sent."""
    with BlockingClient(server.endpoint, timeout=7) as client:
        assert client.call("add", 1, 2) == 3
        assert client.call("echo", "hi") == "hi"
    first, second = server.next_line(), server.next_line()
    assert first[0] == second[0] == 1
    assert first[1] == b"#1 +timeout=7.0 add 1 2"
    assert second[1] == b'#2 +timeout=7.0 echo "hi"'


def test_threads_get_connections_of_their_own(server: LineServer) -> None:
    """With threads_per_connection=1, two calls in flight at once, from two threads, travel on two connections."""
    client = BlockingClient(server.endpoint, timeout=WAIT, threads_per_connection=1)
    results: queue.Queue[Any] = queue.Queue()
    thread = threading.Thread(
        target=lambda: results.put(_outcome(lambda: client.call("sleep", 1)))
    )
    thread.start()
    waiting = server.next_line()
    assert client.call("add", 2, 2) == 4
    other = server.next_line()
    assert waiting[0] != other[0]
    client.close()
    thread.join(WAIT)
    assert isinstance(results.get(timeout=WAIT), UnavailableError)


def _outcome(f: Callable[[], Any]) -> Any:
    try:
        return f()
    except Exception as e:
        return e


def test_errors_are_typed_and_bad_arguments_not_sent(server: LineServer) -> None:
    """A node's error is raised as its class; arguments that are not JSON fail not-run and the connection goes on."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    with pytest.raises(NotFoundError) as raised:
        client.call("nosuch")
    assert raised.value.outcome is Outcome.NOT_RUN
    with pytest.raises(InvalidArgumentError) as bad:
        client.call("echo", {1, 2})
    assert bad.value.outcome is Outcome.NOT_RUN
    assert client.call("add", 1, 1) == 2
    lines = [server.next_line()[1] for _ in range(2)]
    assert lines == [b"#1 +timeout=5.0 nosuch", b"#3 +timeout=5.0 add 1 1"]
    client.close()


def test_timeout_cancels_and_late_reply_is_dropped(server: LineServer) -> None:
    """A call past its deadline sends CANCEL for its tag and raises may-have-run; a late reply is dropped and the connection serves the next call."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    with pytest.raises(DeadlineExceededError) as raised:
        client.call("sleep", 5, timeout=0.2)
    assert raised.value.outcome is Outcome.MAY_HAVE_RUN
    assert server.next_line() == (1, b"#1 +timeout=0.2 sleep 5")
    assert server.next_line() == (1, b'CANCEL "1"')
    server.connections[0].sendall(b"#1 ERR CANCELLED may-have-run cancelled\n")
    assert client.call("add", 5, 5) == 10
    assert server.next_line() == (1, b"#2 +timeout=5.0 add 5 5")
    client.close()


def test_close_releases_waiting_caller(server: LineServer) -> None:
    """close() from another thread cancels a waiting call and releases its caller at once; later calls fail not-run."""
    client = BlockingClient(server.endpoint, timeout=60)
    results: queue.Queue[Any] = queue.Queue()
    thread = threading.Thread(
        target=lambda: results.put(_outcome(lambda: client.call("sleep", 30)))
    )
    thread.start()
    assert server.next_line()[1].endswith(b"sleep 30")
    client.close()
    error = results.get(timeout=WAIT)
    assert isinstance(error, UnavailableError)
    assert error.outcome is Outcome.MAY_HAVE_RUN
    assert "closed" in error.message
    assert server.next_line() == (1, b'CANCEL "1"')
    assert server.ended.get(timeout=WAIT) == 1
    with pytest.raises(UnavailableError) as later:
        client.call("add", 1, 2)
    assert later.value.outcome is Outcome.NOT_RUN
    thread.join(WAIT)


def test_connection_closed_by_node_is_replaced(server: LineServer) -> None:
    """An idle connection the node has closed is noticed before reuse: the call goes on a new one and succeeds."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    assert client.call("add", 1, 2) == 3
    server.next_line()
    server.connections[0].shutdown(socket.SHUT_RDWR)
    assert server.ended.get(timeout=WAIT) == 1
    assert client.call("add", 2, 3) == 5
    assert server.next_line()[0] == 2
    client.close()


def test_connection_lost_in_flight(server: LineServer) -> None:
    """A connection lost while a call waits fails it may-have-run, promptly."""
    client = BlockingClient(server.endpoint, timeout=60)
    results: queue.Queue[Any] = queue.Queue()
    thread = threading.Thread(
        target=lambda: results.put(_outcome(lambda: client.call("sleep", 9)))
    )
    thread.start()
    server.next_line()
    server.connections[0].shutdown(socket.SHUT_RDWR)
    error = results.get(timeout=WAIT)
    assert isinstance(error, UnavailableError)
    assert error.outcome is Outcome.MAY_HAVE_RUN
    assert "lost" in error.message
    thread.join(WAIT)
    client.close()


def test_refused_connection_is_not_run() -> None:
    """A node that does not listen fails the call not-run, saying so."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(UnavailableError) as raised:
        BlockingClient(f"tcp:127.0.0.1:{port}", timeout=WAIT).call("add", 1, 2)
    assert raised.value.outcome is Outcome.NOT_RUN
    assert "cannot connect" in raised.value.message


def test_token_sent_on_each_new_connection(server: LineServer) -> None:
    """AUTH with the token opens every connection; a refused token fails the call not-run."""
    client = BlockingClient(server.endpoint, timeout=WAIT, token="good-token-good-token")
    assert client.call("add", 1, 2) == 3
    assert server.next_line() == (1, b'#1 AUTH "good-token-good-token"')
    assert server.next_line()[1].endswith(b"add 1 2")
    client.close()
    wrong = BlockingClient(server.endpoint, timeout=WAIT, token="bad-token-bad-token!!")
    with pytest.raises(UnauthenticatedError) as raised:
        wrong.call("add", 1, 2)
    assert raised.value.outcome is Outcome.NOT_RUN
    assert server.next_line()[1] == b'#1 AUTH "bad-token-bad-token!!"'
    wrong.close()


def test_fork_forgets_parent_connections(
    server: LineServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a (simulated) forked child the pool forgets the parent's connections and opens one of its own."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    assert client.call("add", 1, 2) == 3
    path = client._direct
    assert path is not None
    inherited = path._pool._idle[0]
    monkeypatch.setattr("callnet.blocking._pool.os.getpid", lambda: path._pool._pid + 1)
    assert client.call("add", 2, 2) == 4
    assert [server.next_line()[0] for _ in range(2)] == [1, 2]
    assert inherited.closed and inherited not in path._pool._idle
    client.close()


def test_handle_result_callback_and_cancel(server: LineServer) -> None:
    """call_async returns a CallHandle whose result, done and callbacks work; cancel sends CANCEL and fails it may-have-run."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    handle = client.call_async("sleep", 1)
    assert isinstance(handle, CallHandle)
    assert server.next_line()[1].endswith(b"sleep 1")
    assert not handle.done()
    seen: queue.Queue[str] = queue.Queue()
    handle.add_done_callback(lambda h: seen.put(threading.current_thread().name))
    server.connections[0].sendall(b"#1 OK 1\n")
    assert handle.result() == 1
    assert handle.done()
    assert seen.get(timeout=WAIT).startswith("callnet-call")
    handle.add_done_callback(lambda h: seen.put(threading.current_thread().name))
    assert seen.get(timeout=WAIT) == threading.current_thread().name

    slow = client.call_async("sleep", 10)
    server.next_line()
    with pytest.raises(TimeoutError):
        slow.result(timeout=0.05)
    assert not slow.done()  # waiting is not owning
    assert slow.cancel() is True
    assert slow.cancel() is False
    with pytest.raises(CallCancelledError) as raised:
        slow.result()
    assert raised.value.outcome is Outcome.MAY_HAVE_RUN
    _, line = server.next_line()
    assert line.startswith(b"CANCEL")
    client.close()


def test_handle_deadline_and_close(server: LineServer) -> None:
    """A handle's call ends at its deadline (cancelled on the node), and close() fails the calls still running."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    short = client.call_async("sleep", 10, timeout=0.2)
    with pytest.raises(DeadlineExceededError):
        short.result()
    running = client.call_async("sleep", 10, timeout=30)
    lines = {server.next_line()[1] for _ in range(3)}
    assert any(line.startswith(b"CANCEL") for line in lines)
    client.close()
    with pytest.raises(UnavailableError) as raised:
        running.result(timeout=WAIT)
    assert "closed" in raised.value.message


def test_direct_path_limits(server: LineServer) -> None:
    """No more idle connections are kept than the limit; the rest are closed as they come back."""
    address = parse_address(server.endpoint)
    assert address is not None
    direct = DirectPath(address, max_idle=1, threads_per_connection=1)
    results: queue.Queue[Any] = queue.Queue()
    thread = threading.Thread(
        target=lambda: results.put(_outcome(lambda: direct.call("sleep", (1,), {}, WAIT)))
    )
    thread.start()
    assert server.next_line()[0] == 1
    assert direct.call("add", (1, 1), {}, WAIT) == 2  # on a second connection, kept idle
    server.connections[0].sendall(b"#1 OK 1\n")
    assert results.get(timeout=WAIT) == 1
    thread.join(WAIT)
    assert len(direct._pool._idle) == 1
    assert server.ended.get(timeout=WAIT) == 1  # the one beyond the limit
    direct.close()


def test_client_limits_are_checked() -> None:
    """The pool's limits are the client's to set, and nonsense is refused."""
    client = BlockingClient("tcp:127.0.0.1:1", max_idle_connections=0, async_threads=2)
    assert client._direct is not None
    assert (client._direct._pool._max_idle, client._direct._async_threads) == (0, 2)
    with pytest.raises(ValueError, match="async_threads"):
        BlockingClient("tcp:127.0.0.1:1", async_threads=0)


# --- Several threads on one connection ----------------------------------------


class _Peer:
    """The node's end of a socket pair: reads request lines, writes scripted replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(WAIT)
        self._buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self._buffer:
            data = self.sock.recv(65536)
            assert data, "the client closed the connection"
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def tag(self) -> str:
        """The tag of the next request line."""
        return self.line().split()[0][1:].decode()


@pytest.fixture
def pair() -> Iterator[tuple[Multiplexer, _Peer]]:
    ours, theirs = socket.socketpair()
    mux = Multiplexer(Connection(ours, 65536, time.monotonic))
    yield mux, _Peer(theirs)
    ours.close()
    theirs.close()


def _in_thread(f: Callable[[], Any]) -> tuple[threading.Thread, queue.Queue[Any]]:
    """Run C{f} in a thread; its outcome (result or exception) goes in the queue."""
    results: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        try:
            results.put(f())
        except BaseException as e:
            results.put(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def _until(predicate: Callable[[], bool]) -> bool:
    """Whether C{predicate} holds within L{WAIT} (checked every millisecond)."""
    deadline = time.monotonic() + WAIT
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.001)
    return True


def _exchange(mux: Multiplexer, tag: str, timeout: float = WAIT) -> Callable[[], Any]:
    line = b"#%b echo %b\n" % (tag.encode(), tag.encode())
    return lambda: mux.exchange(tag, line, time.monotonic() + timeout, False)


def test_lone_call_reads_its_own_reply_with_no_hand_off(
    pair: tuple[Multiplexer, _Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread alone on a shared connection sends, reads its own reply and returns: no waiter is ever woken."""
    mux, peer = pair
    sets: list[object] = []
    original = _Done.set

    def counted(self: Any) -> None:
        sets.append(self)
        original(self)

    monkeypatch.setattr(_Done, "set", counted)
    peer.sock.sendall(b"#1 OK 1\n")  # the reply is there before the request is read
    reply = _exchange(mux, "1")()
    assert (reply.tag, reply.value) == ("1", 1)
    assert peer.line() == b"#1 echo 1"
    assert sets == []
    assert mux.tags() == [] and mux._reader is None


def test_replies_in_any_order_reach_their_callers(pair: tuple[Multiplexer, _Peer]) -> None:
    """Three threads' calls pipelined on one connection each get their own reply, whatever order the node answers in."""
    mux, peer = pair
    running = [_in_thread(_exchange(mux, tag)) for tag in ("1", "2", "3")]
    tags = sorted(peer.tag() for _ in range(3))
    assert tags == ["1", "2", "3"]
    peer.sock.sendall(b"#3 OK 30\n#1 OK 10\n#9 OK 90\n#2 OK 20\n")
    values = {}
    for thread, results in running:
        reply = results.get(timeout=WAIT)
        values[reply.tag] = reply.value
        thread.join(WAIT)
    assert values == {"1": 10, "2": 20, "3": 30}
    assert mux.tags() == [] and mux._reader is None


def test_reader_past_its_deadline_hands_the_role_on(pair: tuple[Multiplexer, _Peer]) -> None:
    """The reader whose deadline passes cancels its own call only and makes a waiting thread the reader, which then gets its reply."""
    mux, peer = pair
    first, first_results = _in_thread(_exchange(mux, "1", timeout=0.3))
    assert peer.tag() == "1"
    assert _until(lambda: mux._reader is not None and mux._reader.tag == "1")
    second, second_results = _in_thread(_exchange(mux, "2"))
    assert peer.tag() == "2"
    assert isinstance(first_results.get(timeout=WAIT), TimeoutError)
    assert peer.line() == b'CANCEL "1"'
    peer.sock.sendall(b"#1 ERR CANCELLED may-have-run cancelled\n#2 OK 2\n")
    assert second_results.get(timeout=WAIT).value == 2
    first.join(WAIT)
    second.join(WAIT)


def test_follower_past_its_deadline_leaves_alone(pair: tuple[Multiplexer, _Peer]) -> None:
    """A waiting thread whose deadline passes cancels its call; the reader reads on for its own."""
    mux, peer = pair
    first, first_results = _in_thread(_exchange(mux, "1"))
    assert peer.tag() == "1"
    second, second_results = _in_thread(_exchange(mux, "2", timeout=0.3))
    assert peer.tag() == "2"
    assert isinstance(second_results.get(timeout=WAIT), TimeoutError)
    assert peer.line() == b'CANCEL "2"'
    peer.sock.sendall(b"#1 OK 1\n")
    assert first_results.get(timeout=WAIT).value == 1
    first.join(WAIT)
    second.join(WAIT)


def test_ctrl_c_in_the_reader_hands_the_role_on(pair: tuple[Multiplexer, _Peer]) -> None:
    """KeyboardInterrupt in the main thread while it reads cancels its call only; a waiting thread becomes the reader and gets its reply."""
    import _thread

    mux, peer = pair
    waiting: list[tuple[threading.Thread, queue.Queue[Any]]] = []

    def script() -> None:
        assert peer.tag() == "1"
        waiting.append(_in_thread(_exchange(mux, "2")))
        assert peer.tag() == "2"
        _thread.interrupt_main()

    helper, helper_results = _in_thread(script)
    with pytest.raises(KeyboardInterrupt):
        mux.exchange("1", b"#1 echo 1\n", time.monotonic() + WAIT, True)
    helper.join(WAIT)
    assert helper_results.get(timeout=WAIT) is None
    assert peer.line() == b'CANCEL "1"'
    peer.sock.sendall(b"#2 OK 2\n")
    thread, results = waiting[0]
    assert results.get(timeout=WAIT).value == 2
    thread.join(WAIT)


def test_lost_connection_fails_every_waiter(pair: tuple[Multiplexer, _Peer]) -> None:
    """When the node ends a shared connection, the reader and every waiting thread fail at once, and no call is placed on it again."""
    mux, peer = pair
    running = [_in_thread(_exchange(mux, tag)) for tag in ("1", "2", "3")]
    for _ in range(3):
        peer.tag()
    peer.sock.shutdown(socket.SHUT_RDWR)
    for thread, results in running:
        assert isinstance(results.get(timeout=WAIT), LostError)
        thread.join(WAIT)
    assert mux.lost is not None
    with pytest.raises(NotSentError):
        _exchange(mux, "4")()


def test_bye_fails_every_waiter_not_run(pair: tuple[Multiplexer, _Peer]) -> None:
    """A node's BYE on a shared connection answers every call still waiting there as not run, and no call is placed on it again."""
    mux, peer = pair
    running = [_in_thread(_exchange(mux, tag)) for tag in ("1", "2", "3")]
    for _ in range(3):
        peer.tag()
    peer.sock.sendall(b'#2 OK 20\nBYE "alpha is shutting down"\n')
    replies = {}
    for thread, results in running:
        reply = results.get(timeout=WAIT)
        replies[reply.tag] = reply
        thread.join(WAIT)
    assert replies["2"].value == 20
    for tag in ("1", "3"):
        error = replies[tag].error
        assert isinstance(error, UnavailableError) and error.outcome is Outcome.NOT_RUN
        assert error.message == "alpha is shutting down: the call was not read"
    assert mux.lost is not None
    with pytest.raises(NotSentError):
        _exchange(mux, "4")()


def bye_after(line: bytes) -> bytes | None:
    """Answer C{add} and then say BYE, as a node that stops does; to C{sleep}, only BYE."""
    bye = b'BYE "alpha is shutting down"\n'
    if b"sleep" in line.split()[1:]:
        return bye
    reply = answer(line)
    return None if reply is None else reply + bye


def test_bye_on_a_connection_of_its_own() -> None:
    """A call waiting when the node says BYE fails not-run; a connection that said BYE is never used again."""
    serving = LineServer(bye_after)
    try:
        client = BlockingClient(serving.endpoint, timeout=WAIT)
        with pytest.raises(UnavailableError) as caught:
            client.call("sleep", 9)
        assert caught.value.outcome is Outcome.NOT_RUN
        assert client.call("add", 1, 2) == 3
        assert client.call("add", 2, 3) == 5
        numbers = [serving.next_line()[0] for _ in range(3)]
        assert len(set(numbers)) == 3, "each connection that said BYE is left"
        client.close()
    finally:
        serving.close()


def test_threads_share_a_connection(server: LineServer) -> None:
    """By default two calls in flight at once, from two threads, travel pipelined on one connection with their own tags."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    thread, results = _in_thread(lambda: client.call("sleep", 1))
    assert server.next_line() == (1, b"#1 +timeout=5.0 sleep 1")
    assert client.call("add", 2, 2) == 4
    assert server.next_line() == (1, b"#2 +timeout=5.0 add 2 2")
    server.connections[0].sendall(b"#1 OK 7\n")
    assert results.get(timeout=WAIT) == 7
    thread.join(WAIT)
    assert client._direct is not None and client._direct._pool._shared == []
    assert len(client._direct._pool._idle) == 1
    client.close()


def test_threads_per_connection_bounds_sharing(server: LineServer) -> None:
    """With threads_per_connection=2, a third thread calling at once opens a second connection."""
    client = BlockingClient(server.endpoint, timeout=WAIT, threads_per_connection=2)
    running = []
    seen = []
    for _ in range(3):
        running.append(_in_thread(lambda: client.call("sleep", 1)))
        seen.append(server.next_line()[0])
    assert seen == [1, 1, 2]
    client.close()
    for thread, results in running:
        assert isinstance(results.get(timeout=WAIT), UnavailableError)
        thread.join(WAIT)


def test_close_releases_every_shared_caller(server: LineServer) -> None:
    """close() cancels every call waiting on a shared connection and releases all their threads at once, may-have-run."""
    client = BlockingClient(server.endpoint, timeout=60)
    running = [_in_thread(lambda: client.call("sleep", 30)) for _ in range(2)]
    assert {server.next_line() for _ in range(2)} == {
        (1, b"#1 +timeout=60.0 sleep 30"),
        (1, b"#2 +timeout=60.0 sleep 30"),
    }
    client.close()
    for thread, results in running:
        error = results.get(timeout=WAIT)
        assert isinstance(error, UnavailableError)
        assert error.outcome is Outcome.MAY_HAVE_RUN
        assert "closed" in error.message
        thread.join(WAIT)
    assert {server.next_line() for _ in range(2)} == {(1, b'CANCEL "1"'), (1, b'CANCEL "2"')}
    assert server.ended.get(timeout=WAIT) == 1


def test_lost_shared_connection_fails_every_caller(server: LineServer) -> None:
    """A shared connection lost in flight fails every caller on it may-have-run; the next call opens a new one."""
    client = BlockingClient(server.endpoint, timeout=60)
    running = [_in_thread(lambda: client.call("sleep", 9)) for _ in range(2)]
    server.next_line()
    server.next_line()
    server.connections[0].shutdown(socket.SHUT_RDWR)
    for thread, results in running:
        error = results.get(timeout=WAIT)
        assert isinstance(error, UnavailableError)
        assert error.outcome is Outcome.MAY_HAVE_RUN
        assert "lost" in error.message
        thread.join(WAIT)
    assert client.call("add", 1, 1) == 2
    assert server.next_line()[0] == 2
    client.close()


def test_stream_keeps_a_connection_of_its_own(server: LineServer) -> None:
    """A stream started while another thread's call waits on a shared connection is sent on a connection of its own."""
    address = parse_address(server.endpoint)
    assert address is not None
    direct = DirectPath(address)
    thread, results = _in_thread(lambda: direct.call("sleep", (1,), {}, WAIT))
    assert server.next_line()[0] == 1
    stream = direct.stream("count", (3,), {}, WAIT, 4)
    number, line = server.next_line()
    assert number == 2 and b"count 3" in line
    stream.close()
    direct.close()
    assert isinstance(results.get(timeout=WAIT), UnavailableError)
    thread.join(WAIT)


def test_fork_forgets_shared_connections(
    server: LineServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a (simulated) forked child the pool forgets the parent's shared connections, in use by the parent's threads, and opens one of its own."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    path = client._direct
    assert path is not None
    # A short deadline: the parent's thread, which a real child would not
    # have, may poll a descriptor number the child reuses until then.
    thread, results = _in_thread(lambda: client.call("sleep", 1, timeout=1))
    assert server.next_line()[0] == 1
    inherited = path._pool._shared[0]
    monkeypatch.setattr("callnet.blocking._pool.os.getpid", lambda: path._pool._pid + 1)
    assert client.call("add", 2, 2) == 4
    assert server.next_line() == (2, b"#1 +timeout=5.0 add 2 2")
    assert inherited.connection.closed and inherited not in path._pool._shared
    assert isinstance(results.get(timeout=WAIT), UnavailableError | DeadlineExceededError)
    thread.join(WAIT)
    client.close()


def test_threads_starting_together_share_one_new_connection(server: LineServer) -> None:
    """Threads that call at once on a fresh client wait for the one connection being opened instead of opening one each."""
    client = BlockingClient(server.endpoint, timeout=WAIT)
    start = threading.Barrier(4)

    def call() -> Any:
        start.wait(WAIT)
        return client.call("sleep", 1)

    running = [_in_thread(call) for _ in range(4)]
    assert sorted(server.next_line() for _ in range(4)) == [
        (1, b"#%d +timeout=5.0 sleep 1" % k) for k in range(1, 5)
    ]
    client.close()
    for thread, results in running:
        assert isinstance(results.get(timeout=WAIT), UnavailableError)
        thread.join(WAIT)
