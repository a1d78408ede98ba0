"""
Twisted Perspective Broker: a root L{pb.Root} with C{remote_add} and
C{remote_echo}, and a client calling them with C{callRemote}.

Banana refuses strings over 640 KiB unless told otherwise; both sides raise
the limit so that the 1 MiB echo can run.
"""

from __future__ import annotations

from typing import Any

from twisted.spread import banana, pb

from benchmarks.common import HOST, run_async, run_reactor_server, system_main

banana.SIZE_LIMIT = 4 * 1024 * 1024


class BenchRoot(pb.Root):
    def remote_add(self, a: int, b: int) -> int:
        return a + b

    def remote_echo(self, value: str) -> str:
        return value


def serve(port: int, extra: list[str]) -> None:
    run_reactor_server(
        lambda reactor: reactor.listenTCP(
            port, pb.PBServerFactory(BenchRoot()), backlog=1024, interface=HOST
        )
    )


class AsyncClient:
    async def connect(self, reactor: Any, port: int) -> Any:
        factory = pb.PBClientFactory()
        reactor.connectTCP(HOST, port, factory, timeout=10)
        root = await factory.getRootObject()
        root.bench_factory = factory
        return root

    def add(self, conn: Any) -> Any:
        return conn.callRemote("add", 1, 2)

    def echo(self, conn: Any, value: str) -> Any:
        return conn.callRemote("echo", value)

    def close(self, conn: Any) -> None:
        conn.bench_factory.disconnect()


if __name__ == "__main__":
    system_main(
        serve, {"async": lambda spec, port, pid: run_async(AsyncClient(), spec, port, pid)}
    )
