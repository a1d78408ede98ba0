"""
The floor: a Twisted L{LineReceiver} server that writes back every line it
reads, and three clients of it:

  - C{async}: a Twisted LineReceiver client doing request/response, matching
    replies to requests in order (so it can pipeline);
  - C{raw}: the plain-socket client of C{callnet-raw}, sending the very same
    C{#tag add 1 2} lines;
  - C{blocking}: the async client driven from blocking threads through
    C{blockingCallFromThread} into a reactor thread, one shared connection.

Whatever a system does beyond moving a line each way shows against these.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.protocols.basic import LineReceiver

from benchmarks.common import (
    HOST,
    run_async,
    run_blocking,
    run_raw,
    run_reactor_server,
    system_main,
)

#: Longest line either side accepts: room for the 1 MiB echo.
MAX_LINE = 4 * 1024 * 1024
#: Seconds to wait for the reactor thread to start or connect.
TIMEOUT = 30.0


class EchoServer(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)


class EchoClient(LineReceiver):
    """Sends lines; each reply answers the oldest request without one."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self) -> None:
        self._waiting: deque[Deferred[bytes]] = deque()

    def request(self, line: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiting.append(d)
        self.sendLine(line)
        return d

    def lineReceived(self, line: bytes) -> None:
        self._waiting.popleft().callback(line)

    def connectionLost(self, reason: Any = None) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(reason)


def serve(port: int, extra: list[str]) -> None:
    from twisted.internet.protocol import Factory

    run_reactor_server(
        lambda reactor: reactor.listenTCP(
            port, Factory.forProtocol(EchoServer), backlog=1024, interface=HOST
        )
    )


def _connect(reactor: Any, port: int) -> Deferred[EchoClient]:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    return connectProtocol(TCP4ClientEndpoint(reactor, HOST, port, timeout=10), EchoClient())


def _add(conn: EchoClient) -> Deferred[Any]:
    # The echo of "add 1 2" is taken as the answer 3: the floor does no work.
    return conn.request(b"add 1 2").addCallback(lambda line: 3)


def _echo(conn: EchoClient, value: str) -> Deferred[Any]:
    return conn.request(value.encode()).addCallback(bytes.decode)


class AsyncClient:
    def connect(self, reactor: Any, port: int) -> Any:
        return _connect(reactor, port)

    def add(self, conn: Any) -> Any:
        return _add(conn)

    def echo(self, conn: Any, value: str) -> Any:
        return _echo(conn, value)

    def close(self, conn: Any) -> None:
        conn.transport.loseConnection()


class BlockingClient:
    """blockingCallFromThread into the global reactor, run in a daemon thread."""

    shared = True
    adopt = None

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor

    def connect(self, port: int) -> Any:
        running = threading.Event()
        self.reactor.callWhenRunning(running.set)
        threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        ).start()
        if not running.wait(TIMEOUT):
            raise TimeoutError("the reactor thread did not start")
        return blockingCallFromThread(self.reactor, _connect, self.reactor, port)

    def add(self, conn: Any) -> Any:
        return blockingCallFromThread(self.reactor, _add, conn)

    def echo(self, conn: Any, value: str) -> Any:
        return blockingCallFromThread(self.reactor, _echo, conn, value)

    def close(self, conn: Any) -> None:
        self.reactor.callFromThread(conn.transport.loseConnection)


if __name__ == "__main__":
    system_main(
        serve,
        {
            "async": lambda spec, port, pid: run_async(AsyncClient(), spec, port, pid),
            "raw": run_raw,
            "blocking": lambda spec, port, pid: run_blocking(BlockingClient(), spec, port, pid),
        },
    )
