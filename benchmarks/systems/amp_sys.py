"""
Twisted AMP: a server answering the commands C{Add} and C{Echo}, and a client
calling them with C{callRemote}.  C{crochet_sys} uses the same server and
commands from blocking code.

An AMP value is at most 65,535 bytes, so C{Echo} carries its string in a
L{BigText} argument that spreads it over as many keys as it needs.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from benchmarks.common import HOST, run_async, run_reactor_server, system_main

#: The largest piece of a L{BigText} value put under one key.
CHUNK = 0xFFFF


class BigText(amp.Argument):
    """A str of any length, sent as UTF-8 in pieces under C{key}, C{key.2}, ..."""

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: Any, proto: Any) -> None:
        data = objects[name.decode()].encode()
        pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        strings[name] = pieces[0]
        for number, piece in enumerate(pieces[1:], start=2):
            strings[b"%s.%d" % (name, number)] = piece

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: Any, proto: Any) -> None:
        pieces = [strings[name]]
        number = 2
        while (piece := strings.get(b"%s.%d" % (name, number))) is not None:
            pieces.append(piece)
            number += 1
        objects[name.decode()] = b"".join(pieces).decode()


class Add(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class Echo(amp.Command):
    arguments = [(b"value", BigText())]
    response = [(b"value", BigText())]


class BenchAMP(amp.AMP):
    @Add.responder
    def add(self, a: int, b: int) -> dict[str, int]:
        return {"total": a + b}

    @Echo.responder
    def echo(self, value: str) -> dict[str, str]:
        return {"value": value}


def serve(port: int, extra: list[str]) -> None:
    from twisted.internet.protocol import Factory

    run_reactor_server(
        lambda reactor: reactor.listenTCP(
            port, Factory.forProtocol(BenchAMP), backlog=1024, interface=HOST
        )
    )


def connect(reactor: Any, port: int) -> Any:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    return connectProtocol(TCP4ClientEndpoint(reactor, HOST, port, timeout=10), amp.AMP())


class AsyncClient:
    def connect(self, reactor: Any, port: int) -> Any:
        return connect(reactor, port)

    def add(self, conn: Any) -> Any:
        return conn.callRemote(Add, a=1, b=2).addCallback(lambda answer: answer["total"])

    def echo(self, conn: Any, value: str) -> Any:
        return conn.callRemote(Echo, value=value).addCallback(lambda answer: answer["value"])

    def close(self, conn: Any) -> None:
        conn.transport.loseConnection()


if __name__ == "__main__":
    system_main(
        serve, {"async": lambda spec, port, pid: run_async(AsyncClient(), spec, port, pid)}
    )
