"""
A raw socket copy: a plain-socket server (no Twisted, a thread per
connection) that writes back every line it reads, driven by the plain-socket
client of C{callnet-raw}.  The bytes of a call go out and come back with
nothing done to them: the floor of a large value's round trip.

For the stream workloads it answers the very request line the client sends
a callnet node (C{#tag +window=N stream_items COUNT [SIZE]}) with the same
C{ITEM} lines and final C{OK} a node would send, written as fast as the
socket takes them: it drops C{MORE} (no flow control to wait for) and looks
for C{CANCEL} between batches.  The client reads what it would read from a
node, so its bytes/s are the ceiling of a stream through plain Python
sockets.

The C{json} client (system C{socket-copy-json}) is the same client reading
each item's JSON with orjson where it lies in its buffer, as any client
must that hands items over as values: the ceiling of such a client.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from benchmarks.common import HOST, Spec, run_raw, run_raw_stream, system_main

#: Bytes read at once.
CHUNK = 1 << 20
#: Small items written at once, and between two looks for C{CANCEL}.
BATCH = 256


def _cancelled(conn: socket.socket) -> bool:
    """Whether the client sent C{CANCEL} (anything else it sent now is C{MORE}: dropped)."""
    try:
        data = conn.recv(CHUNK, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return not data or b"CANCEL" in data


def _stream(conn: socket.socket, request: bytes) -> None:
    """Write the items and the final reply a node's C{stream_items} would."""
    tag, _, rest = request.partition(b" ")
    words = rest.split()
    count = int(words[2])
    size = int(words[3]) if len(words) > 3 else 0
    item = tag + b" ITEM "
    sent = 0
    if size:
        line = item + b'"' + b"x" * size + b'"\n'
        while sent < count:
            conn.sendall(line)
            sent += 1
            if _cancelled(conn):
                break
    else:
        while sent < count:
            batch = range(sent, min(sent + BATCH, count))
            conn.sendall(b"".join([item + b"%d\n" % i for i in batch]))
            sent += len(batch)
            if _cancelled(conn):
                break
    if sent < count:
        conn.sendall(tag + b" ERR CANCELLED may-have-run cancelled by its caller\n")
    else:
        conn.sendall(tag + b" OK %d\n" % count)


def _lines(conn: socket.socket, lines: bytes) -> None:
    """Complete lines where a stream is asked for: each echoed, streamed or dropped."""
    echo = []
    for line in lines.split(b"\n"):
        if line.startswith((b"MORE ", b"CANCEL ")):
            continue
        if b" +window=" in line[:40]:
            if echo:
                conn.sendall(b"".join(echo))
                echo = []
            _stream(conn, line)
        else:
            echo.append(line + b"\n")
    if echo:
        conn.sendall(b"".join(echo))


def _echo_lines(conn: socket.socket) -> None:
    buffer = bytearray()
    with conn:
        while data := conn.recv(CHUNK):
            scan = len(buffer)
            buffer += data
            end = buffer.rfind(b"\n", scan)
            if end < 0:
                continue
            # Stream requests and grants come at the start of what a client
            # sends (it sends them alone); anything else is copied as it is.
            head = bytes(buffer[:40])
            if b" +window=" in head or head.startswith((b"MORE ", b"CANCEL ")):
                _lines(conn, bytes(buffer[:end]))
            else:
                conn.sendall(memoryview(buffer)[: end + 1])
            del buffer[: end + 1]


def serve(port: int, extra: list[str]) -> None:
    listener = socket.create_server((HOST, port), backlog=1024)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_echo_lines, args=(conn,), daemon=True).start()


def run_json(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """A stream workload with the plain-socket client, each item's JSON read in place."""
    import orjson

    return run_raw_stream(spec, port, server_pid, orjson.loads)


if __name__ == "__main__":
    system_main(serve, {"raw": run_raw, "json": run_json})
