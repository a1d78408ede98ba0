"""
RPyC: a C{ThreadedServer} (a thread per connection) of a service exposing
C{add} and C{echo}, and a blocking client with one connection per thread.

The client looks each remote method up once and keeps it: C{conn.root.add}
is itself a round trip, which idiomatic code pays on every call.
"""

from __future__ import annotations

import logging
from typing import Any

import rpyc
from rpyc.utils.server import ThreadedServer

from benchmarks.common import HOST, run_blocking, system_main

#: Seconds a call waits at most.
TIMEOUT = 60.0


class BenchService(rpyc.Service):
    def exposed_add(self, a: int, b: int) -> int:
        return a + b

    def exposed_echo(self, value: str) -> str:
        return value


def serve(port: int, extra: list[str]) -> None:
    logger = logging.getLogger("rpyc-bench")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    ThreadedServer(BenchService, hostname=HOST, port=port, backlog=1024, logger=logger).start()


class _Connection:
    def __init__(self, port: int) -> None:
        self.conn = rpyc.connect(HOST, port, config={"sync_request_timeout": TIMEOUT})
        self.add = self.conn.root.add
        self.echo = self.conn.root.echo


class BlockingClient:
    shared = False
    adopt = None

    def connect(self, port: int) -> Any:
        return _Connection(port)

    def add(self, conn: Any) -> Any:
        return conn.add(1, 2)

    def echo(self, conn: Any, value: str) -> Any:
        return conn.echo(value)

    def close(self, conn: Any) -> None:
        conn.conn.close()


if __name__ == "__main__":
    system_main(
        serve,
        {"blocking": lambda spec, port, pid: run_blocking(BlockingClient(), spec, port, pid)},
    )
