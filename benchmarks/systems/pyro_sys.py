"""
Pyro5: a daemon (its default thread-pool server) serving an object with
C{add} and C{echo} under the id C{bench}, and a blocking client with one
proxy per thread (a Pyro5 proxy belongs to the thread that uses it).
"""

from __future__ import annotations

from typing import Any

import Pyro5.api

from benchmarks.common import HOST, run_blocking, system_main

#: Seconds a call waits at most.
TIMEOUT = 60.0


@Pyro5.api.expose
@Pyro5.api.behavior(instance_mode="single")
class Bench:
    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, value: str) -> str:
        return value


def serve(port: int, extra: list[str]) -> None:
    with Pyro5.api.Daemon(host=HOST, port=port) as daemon:
        daemon.register(Bench(), objectId="bench")
        daemon.requestLoop()


class BlockingClient:
    shared = False

    @staticmethod
    def adopt(conn: Any) -> None:
        conn._pyroClaimOwnership()

    def connect(self, port: int) -> Any:
        Pyro5.config.COMMTIMEOUT = TIMEOUT  # type: ignore[attr-defined]
        proxy = Pyro5.api.Proxy(f"PYRO:bench@{HOST}:{port}")
        proxy._pyroBind()
        return proxy

    def add(self, conn: Any) -> Any:
        return conn.add(1, 2)

    def echo(self, conn: Any, value: str) -> Any:
        return conn.echo(value)

    def close(self, conn: Any) -> None:
        conn._pyroRelease()


if __name__ == "__main__":
    system_main(
        serve,
        {"blocking": lambda spec, port, pid: run_blocking(BlockingClient(), spec, port, pid)},
    )
