"""
crochet around AMP: blocking code calls the AMP server of C{amp_sys} through
functions decorated with C{@crochet.wait_for}, which run C{callRemote} in
crochet's reactor thread and wait for the answer.  One AMP connection is
shared by every calling thread.
"""

from __future__ import annotations

from typing import Any

import crochet

from benchmarks.common import run_blocking, system_main
from benchmarks.systems import amp_sys

#: Seconds a blocking call waits at most.
TIMEOUT = 60.0


@crochet.wait_for(timeout=TIMEOUT)
def _connect(port: int) -> Any:
    from twisted.internet import reactor

    return amp_sys.connect(reactor, port)


@crochet.wait_for(timeout=TIMEOUT)
def _add(conn: Any) -> Any:
    return conn.callRemote(amp_sys.Add, a=1, b=2).addCallback(lambda answer: answer["total"])


@crochet.wait_for(timeout=TIMEOUT)
def _echo(conn: Any, value: str) -> Any:
    return conn.callRemote(amp_sys.Echo, value=value).addCallback(lambda answer: answer["value"])


@crochet.run_in_reactor
def _close(conn: Any) -> None:
    conn.transport.loseConnection()


class BlockingClient:
    shared = True
    adopt = None

    def connect(self, port: int) -> Any:
        crochet.setup()
        return _connect(port)

    def add(self, conn: Any) -> Any:
        return _add(conn)

    def echo(self, conn: Any, value: str) -> Any:
        return _echo(conn, value)

    def close(self, conn: Any) -> None:
        _close(conn).wait(TIMEOUT)


if __name__ == "__main__":
    system_main(
        amp_sys.serve,
        {"blocking": lambda spec, port, pid: run_blocking(BlockingClient(), spec, port, pid)},
    )
