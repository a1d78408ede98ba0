"""
A raw socket copy: a plain-socket server (no Twisted, a thread per
connection) that writes back every line it reads, driven by the plain-socket
client of C{callnet-raw}.  The bytes of a call go out and come back with
nothing done to them: the floor of a large value's round trip.
"""

from __future__ import annotations

import socket
import threading

from benchmarks.common import HOST, run_raw, system_main

#: Bytes read at once.
CHUNK = 1 << 20


def _echo_lines(conn: socket.socket) -> None:
    buffer = bytearray()
    with conn:
        while data := conn.recv(CHUNK):
            scan = len(buffer)
            buffer += data
            end = buffer.rfind(b"\n", scan)
            if end >= 0:
                conn.sendall(memoryview(buffer)[: end + 1])
                del buffer[: end + 1]


def serve(port: int, extra: list[str]) -> None:
    listener = socket.create_server((HOST, port), backlog=1024)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_echo_lines, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    system_main(serve, {"raw": run_raw})
