"""
A TCP proxy that injects network faults, for tests that run real nodes.

    python tests/faultproxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT

It accepts connections on LISTEN_HOST:LISTEN_PORT (port 0: any free port)
and joins each to a new connection to TARGET_HOST:TARGET_PORT.  Once it
listens it prints ``listening PORT`` on stdout.  It then reads commands from
stdin, one a line, and answers each with ``ok ...`` (or ``error ...``):

    cut           drop every byte, both ways, from now on; sockets stay open,
                  so each end sees silence, as behind a dead router
    heal          forward bytes again (bytes dropped while cut are lost)
    delay SECONDS hold each chunk this long before forwarding it, in order
    reset         close every joined connection at once (RST where it can)
    status        ``ok connections=N cut=BOOL delay=S``
    quit          close everything and exit

New connections are accepted while cut (their bytes are dropped too).  A
connection closed at one end is closed at the other, cut or not.  End of
input on stdin also quits, so the proxy never outlives the test that
started it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass
class Faults:
    """What is done to the bytes now; each pump looks at it for every chunk."""

    cut: bool = False
    delay: float = 0.0
    links: set[Link] = field(default_factory=set)


class Link:
    """One accepted connection and its connection to the target."""

    def __init__(
        self,
        faults: Faults,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.faults = faults
        self.client = client
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.faults.links.add(self)
        for source, sink in ((self.client[0], self.server[1]), (self.server[0], self.client[1])):
            queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
            self.tasks.append(asyncio.create_task(self._read(source, queue)))
            self.tasks.append(asyncio.create_task(self._write(queue, sink)))

    async def _read(
        self, source: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while chunk := await source.read(CHUNK):
                if not self.faults.cut:
                    queue.put_nowait((loop.time() + self.faults.delay, chunk))
        except OSError:
            pass
        queue.put_nowait(None)

    async def _write(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], sink: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await queue.get()) is not None:
                due, chunk = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if self.faults.cut:
                    continue  # cut while it waited: dropped like the rest
                sink.write(chunk)
                await sink.drain()
        except OSError:
            pass
        # One side has closed (or failed): close both, as a router would let
        # the ends find out.
        self.close()

    def close(self, reset: bool = False) -> None:
        if self not in self.faults.links:
            return
        self.faults.links.discard(self)
        for _, writer in (self.client, self.server):
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER 0: close sends RST, not FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


async def serve(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    faults = Faults()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        Link(faults, (reader, writer), upstream).start()

    server = await asyncio.start_server(accepted, listen_host, listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        words = line.decode().split()
        if not words:
            continue
        verb, args = words[0], words[1:]
        if verb == "cut":
            faults.cut = True
            answer = "ok cut"
        elif verb == "heal":
            faults.cut = False
            answer = "ok healed"
        elif verb == "delay" and len(args) == 1:
            try:
                faults.delay = max(0.0, float(args[0]))
                answer = f"ok delay={faults.delay:g}"
            except ValueError:
                answer = f"error not a number of seconds: {args[0]}"
        elif verb == "reset":
            for link in list(faults.links):
                link.close(reset=True)
            answer = "ok reset"
        elif verb == "status":
            answer = f"ok connections={len(faults.links)} cut={faults.cut} delay={faults.delay:g}"
        elif verb == "quit":
            break
        else:
            answer = f"error unknown command: {line.decode().strip()}"
        print(answer, flush=True)
    server.close()
    for link in list(faults.links):
        link.close()
    print("ok bye", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    listen_host, listen_port, target_host, target_port = argv
    asyncio.run(serve(listen_host, int(listen_port), target_host, int(target_port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
