"""
What every system adapter shares: the command line of its server and client
processes, the measurements (latency, server CPU and memory from /proc), and
the three client drivers:

  - L{run_async}: a Twisted client keeping calls in flight on connections;
  - L{run_blocking}: blocking calls from one or more threads;
  - L{run_raw}: a plain-socket client (no Twisted) writing tagged lines.

The stream workloads (L{STREAM_WORKLOADS}) take one stream of items instead
of making calls: L{run_raw_stream} (the plain-socket client), and in each
adapter a client that takes the stream its own way; they report items as
calls, and the bytes/s of large items (L{summarize_stream}).

A client process prints one line C{RESULT <json>} on stdout and exits; the
runner (C{benchmarks/run.py}) collects it.  Every wait is bounded: a client
process gives up after its workload's time plus L{CLIENT_GRACE} seconds, and
a server process exits by itself after C{--lifetime} seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import math
import os
import resource
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

HOST = "127.0.0.1"
#: Seconds a client process may run past its workload's time bound before it
#: gives up (connecting, warming up, draining calls still in flight).
CLIENT_GRACE = 30.0
#: Seconds a server process lives at most, unless told otherwise.
SERVER_LIFETIME = 3600.0
#: The line a client process prints its result on.
RESULT_PREFIX = "RESULT "


# --- Processes ----------------------------------------------------------------


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def die_with_parent() -> None:
    """Have Linux send SIGTERM to this process when its parent dies (prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def exit_after(seconds: float, status: int, why: str) -> None:
    """End this process after C{seconds}, whatever it is doing."""

    def expire() -> None:
        sys.stderr.write(f"{why}: {seconds:g}s passed, exiting\n")
        sys.stderr.flush()
        os._exit(status)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process C{pid} (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    # Fields 14 and 15 of proc(5), counting from 1, are utime and stime; the
    # split starts at field 3 (state).
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int, field: bytes = b"VmRSS:") -> int:
    """Resident set size of process C{pid} (or its peak, C{VmHWM:}), from /proc."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field.decode()} for process {pid}")


def memory_mark(pid: int) -> int | None:
    """
    Reset process C{pid}'s peak RSS to its RSS now (proc(5): clear_refs 5);
    return that RSS, or None where the peak cannot be reset.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return rss_bytes(pid)


def peak_growth(pid: int, mark: int | None) -> int | None:
    """How far process C{pid}'s RSS rose above C{mark} at its peak since then."""
    return None if mark is None else rss_bytes(pid, b"VmHWM:") - mark


def emit(result: dict[str, Any]) -> None:
    """Print a client's result for the runner and end the process at once.

    C{os._exit} skips interpreter shutdown, where reactor threads and
    connection threads of some peers could otherwise hold the exit.
    """
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- Workloads ----------------------------------------------------------------


@dataclass
class Spec:
    """One workload as a client process runs it."""

    #: The workload's name: seq, pipe, conc, sync1, sync16, large-1k, ...
    name: str
    #: Measured calls (a stream workload: items of its one stream), at most.
    count: int
    #: Seconds the measured part may last, at most (calls in flight finish).
    seconds: float
    #: Connections (Twisted and raw drivers).
    conns: int = 1
    #: Calls kept in flight per connection (Twisted and raw drivers).
    inflight: int = 1
    #: Calling threads (blocking driver).
    threads: int = 1
    #: Size in bytes of the string echoed (or of each item streamed); 0 calls
    #: add(1, 2) (streams the ints from 0) instead.
    size: int = 0
    #: Calls made (items streamed) before measuring, untimed.
    warmup: int = 200
    #: Extra numbers some workloads need (idle-mem: connection counts; leak:
    #: call counts at which to read the server's memory).
    steps: list[int] = field(default_factory=list)

    def to_args(self) -> list[str]:
        return ["--spec", json.dumps(asdict(self))]

    @property
    def payload(self) -> str:
        return "x" * self.size


@dataclass
class Tally:
    """What a measured run of calls gave."""

    latencies: list[float] = field(default_factory=list)
    calls: int = 0
    errors: int = 0
    elapsed: float = 0.0
    first_error: str | None = None

    def fail(self, error: object) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = str(error)[:300]


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (None if empty)."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def _micro(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


class Meter:
    """What a measured run used: CPU time of server and client, and their peak memory."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.marks = memory_mark(server_pid), memory_mark(os.getpid())
        self.cpu = cpu_seconds(server_pid), cpu_seconds(os.getpid())

    def read(self) -> dict[str, Any]:
        """CPU seconds and peak RSS growth (bytes) since this meter was made."""
        return {
            "server_cpu_s": cpu_seconds(self.server_pid) - self.cpu[0],
            "client_cpu_s": cpu_seconds(os.getpid()) - self.cpu[1],
            "server_peak_bytes": peak_growth(self.server_pid, self.marks[0]),
            "client_peak_bytes": peak_growth(os.getpid(), self.marks[1]),
        }


def callnet_folder() -> str | None:
    """Where this process imported callnet from (None if it did not)."""
    callnet = sys.modules.get("callnet")
    return None if callnet is None else str(callnet.__path__[0])


def summarize(tally: Tally, used: dict[str, Any]) -> dict[str, Any]:
    """
    The figures a client reports for one measured run (L{Meter.read} gives
    C{used}), and the folder it imported callnet from, if it did (the JSON
    shows by it which snapshot a run measured).
    """
    ordered = sorted(tally.latencies)
    calls = tally.calls

    def per_call(seconds: float) -> float | None:
        return seconds / calls * 1e6 if calls else None

    return {
        "calls": calls,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "elapsed_s": tally.elapsed,
        "calls_per_s": calls / tally.elapsed if tally.elapsed > 0 else 0.0,
        "p50_us": _micro(percentile(ordered, 0.50)),
        "p99_us": _micro(percentile(ordered, 0.99)),
        "server_cpu_us_per_call": per_call(used["server_cpu_s"]),
        "client_cpu_us_per_call": per_call(used["client_cpu_s"]),
        "server_peak_bytes": used["server_peak_bytes"],
        "client_peak_bytes": used["client_peak_bytes"],
        "callnet_from": callnet_folder(),
    }


def check_result(spec: Spec, value: Any) -> None:
    """Fail loudly if the first answer of a run is not what the call asked for."""
    expected: Any = spec.payload if spec.size else 3
    if value != expected:
        shown = value if not isinstance(value, str | bytes) else f"{value[:40]!r}..."
        raise RuntimeError(f"unexpected answer {shown} ({type(value).__name__})")


# --- Command line of the adapters ----------------------------------------------


Server = Callable[[int, list[str]], None]
Flavor = Callable[[Spec, int, int], dict[str, Any]]


def system_main(serve: Server, flavors: dict[str, Flavor], argv: list[str] | None = None) -> None:
    """
    The command line of a system adapter module:

        python -m benchmarks.systems.X server PORT [--lifetime S] [server options]
        python -m benchmarks.systems.X client FLAVOR --port P --server-pid PID --spec JSON
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:
        parser = argparse.ArgumentParser(prog="server")
        parser.add_argument("port", type=int)
        parser.add_argument("--lifetime", type=float, default=SERVER_LIFETIME)
        options, extra = parser.parse_known_args(argv[1:])
        raise_nofile()
        die_with_parent()
        exit_after(options.lifetime, 0, "server lifetime")
        serve(options.port, extra)
        return
    if argv[:1] == ["client"]:
        parser = argparse.ArgumentParser(prog="client")
        parser.add_argument("flavor", choices=sorted(flavors))
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--server-pid", type=int, required=True)
        parser.add_argument("--spec", required=True)
        options = parser.parse_args(argv[1:])
        spec = Spec(**json.loads(options.spec))
        raise_nofile()
        die_with_parent()
        exit_after(spec.seconds + CLIENT_GRACE, 3, "client time limit")
        emit(flavors[options.flavor](spec, options.port, options.server_pid))
        return
    sys.exit(f"usage: {sys.argv[0]} server PORT | client FLAVOR --port P --server-pid PID ...")


# --- Twisted servers --------------------------------------------------------------


def run_reactor_server(listen: Callable[[Any], object]) -> None:
    """Run the global reactor with whatever C{listen(reactor)} sets up."""
    from twisted.internet import reactor

    listen(reactor)
    reactor.run()


# --- The Twisted client driver ------------------------------------------------------


class AsyncOps(Protocol):
    """What a Twisted client adapter provides (see L{run_async})."""

    def connect(self, reactor: Any, port: int) -> Any:
        """Return a Deferred (or coroutine) firing with a connection."""

    def add(self, conn: Any) -> Any:
        """Call add(1, 2); return a Deferred of the answer."""

    def echo(self, conn: Any, value: str) -> Any:
        """Call echo(value); return a Deferred of the answer."""

    def close(self, conn: Any) -> None: ...


def twisted_window(
    reactor: Any,
    conns: Sequence[Any],
    inflight: int,
    call: Callable[[Any], Any],
    count: int,
    seconds: float,
) -> Any:
    """
    Keep C{inflight} calls in flight on each connection until C{count} calls
    were sent or C{seconds} passed; fire with a L{Tally} once all are answered.
    """
    from twisted.internet.defer import Deferred

    done: Deferred[Tally] = Deferred()
    tally = Tally()
    now = time.perf_counter
    start = now()
    end = start + seconds
    sent = 0
    outstanding = 0
    latencies = tally.latencies

    def launch(conn: Any) -> None:
        nonlocal sent, outstanding
        if sent >= count or now() >= end or tally.errors > 100:
            if outstanding == 0 and not done.called:
                tally.elapsed = now() - start
                done.callback(tally)
            return
        sent += 1
        outstanding += 1
        d = call(conn)
        d.addCallbacks(answered, failed, (conn, now()), None, (conn,), None)

    def answered(_: object, conn: Any, started: float) -> None:
        nonlocal outstanding
        latencies.append(now() - started)
        tally.calls += 1
        outstanding -= 1
        launch(conn)

    def failed(reason: Any, conn: Any) -> None:
        nonlocal outstanding
        tally.fail(reason.getErrorMessage())
        outstanding -= 1
        # Not at once: a connection that fails every call synchronously
        # would otherwise recurse.
        reactor.callLater(0, launch, conn)

    for conn in conns:
        for _ in range(inflight):
            launch(conn)
    return done


def run_twisted(main: Callable[[Any], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run the global reactor until C{main(reactor)} is done; return its result."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def finish(result: Any) -> None:
        outcome.append(result)
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(main(reactor)).addBoth(finish))
    reactor.run(installSignalHandlers=False)
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, dict)
    return result


def run_async(ops: AsyncOps, spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """Run a workload with a Twisted client: spec.conns connections, spec.inflight each."""

    async def main(reactor: Any) -> dict[str, Any]:
        conns = [await ops.connect(reactor, port) for _ in range(spec.conns)]
        if spec.size:
            payload = spec.payload

            def call(conn: Any) -> Any:
                return ops.echo(conn, payload)
        else:

            def call(conn: Any) -> Any:
                return ops.add(conn)

        check_result(spec, await call(conns[0]))
        await twisted_window(reactor, conns, spec.inflight, call, spec.warmup, spec.seconds)
        meter = Meter(server_pid)
        tally = await twisted_window(reactor, conns, spec.inflight, call, spec.count, spec.seconds)
        used = meter.read()
        for conn in conns:
            ops.close(conn)
        return summarize(tally, used)

    return run_twisted(main)


# --- The blocking driver ------------------------------------------------------------


class BlockingOps(Protocol):
    """What a blocking client adapter provides (see L{run_blocking})."""

    #: One connection shared by every thread (else one per thread).
    shared: bool
    #: Called by each calling thread with its connection before its first
    #: call (None when nothing is needed).
    adopt: Callable[[Any], None] | None

    def connect(self, port: int) -> Any: ...
    def add(self, conn: Any) -> Any: ...
    def echo(self, conn: Any, value: str) -> Any: ...
    def close(self, conn: Any) -> None: ...


def blocking_threads(
    conns: Sequence[Any],
    call: Callable[[Any], Any],
    count: int,
    seconds: float,
    adopt: Callable[[Any], None] | None = None,
) -> Tally:
    """Call from one thread per connection (a shared one repeated) until the bounds."""
    tally = Tally()
    numbers = itertools.count()
    now = time.perf_counter
    lock = threading.Lock()

    def work(conn: Any, latencies: list[float]) -> None:
        if adopt is not None:
            adopt(conn)
        while next(numbers) < count and now() < end:
            started = now()
            try:
                call(conn)
            except Exception as e:
                with lock:
                    tally.fail(repr(e))
                if tally.errors > 100:
                    return
                continue
            latencies.append(now() - started)

    per_thread: list[list[float]] = [[] for _ in conns]
    threads = [
        threading.Thread(target=work, args=(conn, lat), daemon=True)
        for conn, lat in zip(conns, per_thread, strict=True)
    ]
    start = now()
    end = start + seconds
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, end + CLIENT_GRACE / 2 - now()))
        if thread.is_alive():
            raise TimeoutError("a calling thread did not finish in time")
    tally.elapsed = now() - start
    for latencies in per_thread:
        tally.latencies.extend(latencies)
    tally.calls = len(tally.latencies)
    return tally


def run_blocking(ops: BlockingOps, spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """Run a workload with blocking calls from spec.threads threads."""
    if ops.shared:
        conns = [ops.connect(port)] * spec.threads
    else:
        conns = [ops.connect(port) for _ in range(spec.threads)]
    if spec.size:
        payload = spec.payload

        def call(conn: Any) -> Any:
            return ops.echo(conn, payload)
    else:

        def call(conn: Any) -> Any:
            return ops.add(conn)

    distinct = list({id(conn): conn for conn in conns}.values())
    for conn in distinct:
        check_result(spec, call(conn))
    blocking_threads(conns, call, spec.warmup, spec.seconds, ops.adopt)
    meter = Meter(server_pid)
    tally = blocking_threads(conns, call, spec.count, spec.seconds, ops.adopt)
    used = meter.read()
    for conn in distinct:
        if ops.adopt is not None:
            ops.adopt(conn)
        ops.close(conn)
    return summarize(tally, used)


# --- The plain-socket driver --------------------------------------------------------


def raw_connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def raw_request(spec: Spec) -> Callable[[int], bytes]:
    """The line a raw client sends: the same bytes to callnet and the echo server."""
    # The payload is ASCII with nothing to escape, so it is its own JSON.
    echo = b'#%d echo "' + spec.payload.encode() + b'"\n'
    template = echo if spec.size else b"#%d add 1 2\n"
    return lambda tag: template % tag


def raw_window(
    socks: Sequence[socket.socket],
    inflight: int,
    request: Callable[[int], bytes],
    count: int,
    seconds: float,
    tags: Iterable[int],
) -> Tally:
    """
    Keep C{inflight} tagged requests in flight on each socket until C{count}
    were sent or C{seconds} passed, matching each reply (C{#tag ...}) to its
    request.  A reply whose second word is C{ERR} counts as an error.
    """
    tally = Tally()
    now = time.perf_counter
    start = now()
    end = start + seconds
    give_up = end + CLIENT_GRACE / 2
    tag_numbers = iter(tags)
    sent = 0
    pending: dict[socket.socket, dict[bytes, float]] = {sock: {} for sock in socks}
    buffers: dict[socket.socket, bytearray] = {sock: bytearray() for sock in socks}
    outstanding = 0

    def send(sock: socket.socket, wanted: int) -> None:
        nonlocal sent, outstanding
        lines = []
        waiting = pending[sock]
        at = now()
        while wanted > 0 and sent < count and at < end:
            tag = next(tag_numbers)
            waiting[b"%d" % tag] = at
            lines.append(request(tag))
            sent += 1
            outstanding += 1
            wanted -= 1
        if lines:
            sock.sendall(b"".join(lines))

    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(CLIENT_GRACE)
        selector.register(sock, selectors.EVENT_READ)
        send(sock, inflight)
    while outstanding:
        remaining = give_up - now()
        if remaining <= 0:
            raise TimeoutError(f"{outstanding} replies still missing")
        for key, _ in selector.select(min(remaining, 1.0)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the server closed the connection")
            buf = buffers[sock]
            scan = len(buf)
            buf += data
            answered = 0
            waiting = pending[sock]
            while (newline := buf.find(b"\n", scan)) >= 0:
                line = bytes(buf[:newline])
                del buf[: newline + 1]
                scan = 0
                head, _, rest = line.partition(b" ")
                started = waiting.pop(head[1:], None)
                if started is None:
                    tally.fail(f"unexpected reply {line[:80]!r}")
                    continue
                outstanding -= 1
                answered += 1
                if rest.startswith(b"ERR "):
                    tally.fail(rest[:200].decode(errors="replace"))
                else:
                    tally.latencies.append(now() - started)
            if answered:
                send(sock, answered)
    tally.elapsed = now() - start
    tally.calls = len(tally.latencies)
    selector.close()
    return tally


def run_raw(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """Run a workload with the plain-socket client (a stream workload: L{run_raw_stream})."""
    if is_stream(spec):
        return run_raw_stream(spec, port, server_pid)
    socks = [raw_connect(port) for _ in range(spec.conns)]
    request = raw_request(spec)
    tags = itertools.count(1)
    first = raw_window(socks[:1], 1, request, 1, spec.seconds, tags)
    if first.errors or first.calls != 1:
        raise RuntimeError(f"first call failed: {first.first_error}")
    raw_window(socks, spec.inflight, request, spec.warmup, spec.seconds, tags)
    meter = Meter(server_pid)
    tally = raw_window(socks, spec.inflight, request, spec.count, spec.seconds, tags)
    used = meter.read()
    for sock in socks:
        sock.close()
    return summarize(tally, used)


# --- Streams ------------------------------------------------------------------------

#: The workloads that take one stream of items rather than make calls.
STREAM_WORKLOADS = ("stream", "stream-1m")
#: The procedure the plain-socket client streams (benchmarks/procs.py): an
#: async generator, resumed in the node's reactor.
STREAM_PROCEDURE = "stream_items"
#: The window of the plain-socket stream reader, in items, granted again half
#: a window at a time: what callnet's async client does when asked for no
#: window (callnet.client_stream.DEFAULT_WINDOW; a test holds the two equal).
STREAM_WINDOW = 64
#: Small items taken between two looks at the clock, which would otherwise
#: cost the reader a share of what it measures.
CLOCK_EVERY = 64


def is_stream(spec: Spec) -> bool:
    """Whether a workload takes a stream of items (items/s) rather than calls."""
    return spec.name in STREAM_WORKLOADS


def stream_args(spec: Spec, count: int) -> list[int]:
    """
    The arguments of the benchmark's stream procedures: C{count} items, each
    a string of C{spec.size} characters (or, for size 0, the ints from 0).
    """
    return [count, spec.size] if spec.size else [count]


def check_item(spec: Spec, item: Any) -> None:
    """Fail loudly if the first item of a stream (str, int or bytes) is not what was asked."""
    expected = len(item) == spec.size if spec.size else item in (0, b"0")
    if not expected:
        shown = item if not isinstance(item, str | bytes) else f"{item[:40]!r}..."
        raise RuntimeError(f"unexpected first item {shown} ({type(item).__name__})")


def summarize_stream(spec: Spec, tally: Tally, used: dict[str, Any]) -> dict[str, Any]:
    """
    The figures a client reports for one measured stream: its items count
    as calls (C{calls_per_s} is items/s, the CPU figures are per item), with
    the bytes/s of the items' payload for a stream of strings.  A stream has
    no per-call latency.
    """
    result = summarize(tally, used)
    result["bytes_per_s"] = result["calls_per_s"] * spec.size if spec.size else None
    return result


class LineReader:
    """
    A socket's lines, read into one buffer and found where they lie: nothing
    is copied but by the kernel (and an unfinished line, when the buffer is
    full, moved to its front), so that the reader of a stream of 1 MiB lines
    costs as little as it can beside what it measures.  The unread bytes
    are C{store[start:end]}; no line ends in C{store[start:scan]}.
    """

    def __init__(self, sock: socket.socket, size: int = 4 << 20) -> None:
        self.sock = sock
        self.store = bytearray(size)
        self.start = self.end = self.scan = 0

    def fill(self) -> None:
        """Read what the socket has, waiting for some."""
        store = self.store
        if self.start == self.end:
            self.start = self.end = self.scan = 0
        elif len(store) - self.end < len(store) // 4:
            if self.start:
                kept = self.end - self.start
                store[:kept] = store[self.start : self.end]
                self.scan -= self.start
                self.start, self.end = 0, kept
            else:
                store.extend(bytes(len(store)))  # a line longer than the buffer
        read = self.sock.recv_into(memoryview(store)[self.end :])
        if not read:
            raise ConnectionError("the server closed the connection")
        self.end += read


def raw_stream(
    reader: LineReader,
    tag: int,
    spec: Spec,
    count: int,
    seconds: float,
    decode: Callable[[memoryview], Any] | None = None,
) -> Tally:
    """
    Take one stream as a plain-socket program does: ask with C{+window},
    grant what was taken with C{MORE} each time half a window has been,
    until the final reply; or, past C{seconds}, send C{CANCEL} and read on
    to the final reply, counting no more items.  The time measured ends at
    the last item counted.

    @param decode: what reads each item's JSON where it lies, if anything
        does: without it an item is counted, not read.
    """
    tally = Tally()
    sock = reader.sock
    store = reader.store
    args = b" ".join(b"%d" % arg for arg in stream_args(spec, count))
    prefix = b"#%d " % tag
    item = prefix + b"ITEM "
    step = max(1, STREAM_WINDOW // 2)
    now = time.perf_counter
    start = last = now()
    end = start + seconds
    give_up = end + CLIENT_GRACE / 2
    items = taken = 0
    cancelled = False
    sock.sendall(b"#%d +window=%d %s %s\n" % (tag, STREAM_WINDOW, STREAM_PROCEDURE.encode(), args))
    while True:
        if now() > give_up:
            raise TimeoutError(f"the stream did not end; {items} items taken")
        reader.fill()
        final = None
        at, scan, filled = reader.start, reader.scan, reader.end
        while (newline := store.find(b"\n", scan, filled)) >= 0:
            if store.startswith(item, at, newline):
                if not cancelled:
                    if decode is not None:
                        value = decode(memoryview(store)[at + len(item) : newline])
                        if not items:
                            check_item(spec, value)
                    elif not items:
                        check_item(spec, json.loads(store[at + len(item) : newline]))
                    items += 1
                    taken += 1
            elif store.startswith(prefix, at, newline):
                final = bytes(store[at + len(prefix) : newline])
            at = scan = newline + 1
            if final is not None:
                break
        reader.start = at
        reader.scan = scan if final is not None else filled
        if not cancelled:
            last = now()
        if final is not None:
            if final.startswith(b"ERR ") and not (cancelled and b" CANCELLED " in final):
                tally.fail(final[:200].decode(errors="replace"))
            break
        if cancelled:
            continue
        if last >= end:
            sock.sendall(b"CANCEL #%d\n" % tag)
            cancelled = True
        elif taken >= step:
            sock.sendall(b"MORE #%d %d\n" % (tag, taken))
            taken = 0
    tally.calls = items
    tally.elapsed = last - start
    return tally


def run_raw_stream(
    spec: Spec, port: int, server_pid: int, decode: Callable[[memoryview], Any] | None = None
) -> dict[str, Any]:
    """
    Run a stream workload with the plain-socket client: a warm-up stream,
    then one measured; each item read by C{decode}, if given (see L{raw_stream}).
    """
    sock = raw_connect(port)
    sock.settimeout(CLIENT_GRACE)
    reader = LineReader(sock)
    warm = raw_stream(reader, 1, spec, spec.warmup, spec.seconds, decode)
    if warm.errors or warm.calls != spec.warmup:
        raise RuntimeError(f"the warm-up stream failed: {warm.first_error}")
    meter = Meter(server_pid)
    tally = raw_stream(reader, 2, spec, spec.count, spec.seconds, decode)
    used = meter.read()
    sock.close()
    return summarize_stream(spec, tally, used)
