"""
callnet: a real node (L{NodeService}) serving the built-ins and
C{benchmarks.procs}, and its clients:

  - C{async}: L{callnet.client.Client} calling C{add} (runs in the reactor),
    and taking the streams of C{stream_items} (an async generator) with
    L{callnet.client.Client.stream};
  - C{thread}: the same client calling C{add_threaded} (a plain function,
    run in the node's thread pool), and taking the streams of
    C{stream_items_threaded} (a generator, pulled in worker threads);
  - C{blocking}: L{callnet.blocking.BlockingClient}, one client shared by
    every calling thread;
  - C{raw}: a plain socket writing C{#tag add 1 2} lines, no Twisted (and
    for streams C{#tag +window=N stream_items ...} and C{MORE} lines); it
    also runs the node-only workloads C{idle-mem} and C{leak}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    CLOCK_EVERY,
    HOST,
    Meter,
    Spec,
    Tally,
    check_item,
    is_stream,
    memory_mark,
    peak_growth,
    raw_connect,
    raw_request,
    raw_window,
    rss_bytes,
    run_async,
    run_blocking,
    run_raw,
    run_twisted,
    stream_args,
    summarize_stream,
    system_main,
)

#: Seconds the node is left to settle before its memory is read.
SETTLE = 0.5


def serve(port: int, extra: list[str]) -> None:
    from twisted.internet import reactor

    from callnet.config import Limits, NodeConfig
    from callnet.node import NodeService

    parser = argparse.ArgumentParser(prog="callnet server")
    parser.add_argument("--max-connections", type=int, default=Limits.max_connections)
    parser.add_argument("--backlog", type=int, default=1024)
    options = parser.parse_args(extra)
    config = NodeConfig(
        name="bench",
        listen=(f"tcp:{port}:interface={HOST}:backlog={options.backlog}",),
        services=("benchmarks.procs",),
        # Every benchmark client comes from one loopback address: the
        # per-address bound must not be the one that is measured.
        limits=Limits(
            max_connections=options.max_connections,
            max_connections_per_address=options.max_connections,
        ),
    )
    node = NodeService(config, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    node.startService()
    reactor.run()


class AsyncClient:
    """The Twisted client, calling C{procedure} for the add workloads."""

    def __init__(self, procedure: str) -> None:
        self.procedure = procedure

    async def connect(self, reactor: Any, port: int) -> Any:
        from callnet.client import Client

        client = Client(f"tcp:{HOST}:{port}", reactor, timeout=60)
        await client.connect()
        return client

    def add(self, conn: Any) -> Any:
        return conn.call(self.procedure, 1, 2)

    def echo(self, conn: Any, value: str) -> Any:
        return conn.call("echo", value)

    def close(self, conn: Any) -> None:
        conn.close()


async def take_stream(
    client: Any, procedure: str, spec: Spec, count: int, seconds: float
) -> Tally:
    """
    Take one stream with L{callnet.client.Client.stream} (its default
    window) until it ends, or past C{seconds} close it (which cancels it on
    the node).  The time measured ends at the last item taken.
    """
    from callnet.errors import CallError

    tally = Tally()
    now = time.perf_counter
    every = 1 if spec.size else CLOCK_EVERY
    start = now()
    end = start + seconds
    items = 0
    stream = client.stream(procedure, *stream_args(spec, count))
    try:
        async for item in stream:
            if not items:
                check_item(spec, item)
            items += 1
            if not items % every and now() >= end:
                break
    except CallError as e:
        tally.fail(repr(e))
    last = now()
    await stream.aclose()
    tally.calls = items
    tally.elapsed = last - start
    return tally


def run_stream(procedure: str, spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """Run a stream workload with the async client: a warm-up stream, then the measured one."""

    async def main(reactor: Any) -> dict[str, Any]:
        from callnet.client import Client

        client = Client(f"tcp:{HOST}:{port}", reactor, timeout=spec.seconds + 60)
        await client.connect()
        warm = await take_stream(client, procedure, spec, spec.warmup, spec.seconds)
        if warm.errors or warm.calls != spec.warmup:
            raise RuntimeError(f"the warm-up stream failed: {warm.first_error}")
        meter = Meter(server_pid)
        tally = await take_stream(client, procedure, spec, spec.count, spec.seconds)
        used = meter.read()
        client.close()
        return summarize_stream(spec, tally, used)

    return run_twisted(main)


def async_flavor(procedure: str, streams: str) -> Callable[[Spec, int, int], dict[str, Any]]:
    """The async client calling C{procedure}, or in a stream workload streaming C{streams}."""

    def flavor(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
        if is_stream(spec):
            return run_stream(streams, spec, port, server_pid)
        return run_async(AsyncClient(procedure), spec, port, server_pid)

    return flavor


class BlockingClient:
    shared = True
    adopt = None

    def connect(self, port: int) -> Any:
        from callnet.blocking import BlockingClient as Client

        return Client(f"tcp:{HOST}:{port}", timeout=60)

    def add(self, conn: Any) -> Any:
        return conn.call("add", 1, 2)

    def echo(self, conn: Any, value: str) -> Any:
        return conn.call("echo", value)

    def close(self, conn: Any) -> None:
        conn.close()


# --- Node-only workloads ---------------------------------------------------------


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while (newline := buf.find(b"\n")) < 0:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the node closed the connection")
        buf += data
    line = bytes(buf[:newline])
    del buf[: newline + 1]
    return line


def _connections(control: socket.socket, buf: bytearray) -> int:
    """How many connections the node counts, from a tagged STATS."""
    control.sendall(b"#s STATS\n")
    line = _read_line(control, buf)
    if not line.startswith(b"#s OK "):
        raise RuntimeError(f"STATS failed: {line[:200]!r}")
    return int(json.loads(line[6:])["connections"])


def _wait_for_connections(control: socket.socket, buf: bytearray, wanted: int) -> None:
    deadline = time.monotonic() + 60
    while (seen := _connections(control, buf)) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node counts {seen} connections, not {wanted}")
        time.sleep(0.05)


def idle_memory(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """Server RSS per idle connection, at each count in spec.steps."""
    control = raw_connect(port)
    buf = bytearray()
    _wait_for_connections(control, buf, 1)
    time.sleep(SETTLE)
    baseline = rss_bytes(server_pid)
    held: list[socket.socket] = []
    steps = []
    try:
        for target in spec.steps:
            while len(held) < target:
                held.append(socket.create_connection((HOST, port), timeout=10))
            _wait_for_connections(control, buf, target + 1)
            time.sleep(SETTLE)
            rss = rss_bytes(server_pid)
            steps.append(
                {
                    "connections": target,
                    "rss_mib": rss / 2**20,
                    "kib_per_conn": (rss - baseline) / target / 1024,
                }
            )
    finally:
        for sock in held:
            sock.close()
    _wait_for_connections_at_most(control, buf, 1)
    time.sleep(SETTLE)
    after = rss_bytes(server_pid)
    control.close()
    return {
        "baseline_rss_mib": baseline / 2**20,
        "steps": steps,
        "rss_after_close_mib": after / 2**20,
    }


def _wait_for_connections_at_most(control: socket.socket, buf: bytearray, wanted: int) -> None:
    deadline = time.monotonic() + 60
    while (seen := _connections(control, buf)) > wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node still counts {seen} connections")
        time.sleep(0.05)


def leak(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """Server RSS after each total number of calls in spec.steps (pipelined add)."""
    sock = raw_connect(port)
    request = raw_request(spec)
    tags = itertools.count(1)
    raw_window([sock], spec.inflight, request, spec.warmup, spec.seconds, tags)
    started = time.perf_counter()
    done = 0
    errors = 0
    steps = []
    for target in spec.steps:
        left = spec.seconds - (time.perf_counter() - started)
        tally = raw_window([sock], spec.inflight, request, target - done, max(left, 0.0), tags)
        done += tally.calls
        errors += tally.errors
        time.sleep(SETTLE)
        steps.append({"calls": done, "rss_mib": rss_bytes(server_pid) / 2**20})
    elapsed = time.perf_counter() - started
    sock.close()
    first, last = steps[0], steps[-1]
    grown = (last["rss_mib"] - first["rss_mib"]) * 2**20
    calls_between = last["calls"] - first["calls"]
    return {
        "steps": steps,
        "errors": errors,
        "calls_per_s": done / elapsed if elapsed > 0 else 0.0,
        "growth_kib": grown / 1024,
        "growth_bytes_per_call": grown / calls_between if calls_between else None,
        "complete": done == spec.steps[-1],
    }


def large_memory(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """
    How far a fresh node's RSS rises at its peak above its idle RSS while it
    echoes large values one at a time, in payloads: every copy of a value,
    the allocator's slack and the freed memory kept for reuse included.
    """
    sock = raw_connect(port)
    time.sleep(SETTLE)
    mark = memory_mark(server_pid)
    if mark is None:
        raise RuntimeError("cannot reset the node's peak RSS (/proc/PID/clear_refs)")
    tally = raw_window([sock], 1, raw_request(spec), spec.count, spec.seconds, itertools.count(1))
    peak = peak_growth(server_pid, mark)
    sock.close()
    assert peak is not None
    return {
        "calls": tally.calls,
        "errors": tally.errors,
        "idle_rss_mib": mark / 2**20,
        "peak_growth_mib": peak / 2**20,
        "payloads": peak / spec.size,
    }


def raw(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    if spec.name == "large-mem":
        return large_memory(spec, port, server_pid)
    if spec.name == "idle-mem":
        return idle_memory(spec, port, server_pid)
    if spec.name == "leak":
        return leak(spec, port, server_pid)
    return run_raw(spec, port, server_pid)


if __name__ == "__main__":
    system_main(
        serve,
        {
            "async": async_flavor("add", "stream_items"),
            "thread": async_flavor("add_threaded", "stream_items_threaded"),
            "blocking": lambda spec, port, pid: run_blocking(BlockingClient(), spec, port, pid),
            "raw": raw,
        },
    )
