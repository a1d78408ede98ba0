"""
How a real node ends its connections, seen where only the kernel shows it:
sockets left in CLOSE_WAIT, and connections a client has closed still counted.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .daemon import REPLY_TIMEOUT, connect, running_node, stats_of, wait_until

#: The kernel's name for a socket whose peer has closed and which has not closed itself.
CLOSE_WAIT = "08"


def close_wait_count(port: int) -> int:
    """Sockets on local TCP port C{port} (IPv4) in CLOSE_WAIT, from /proc/net/tcp."""
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for row in table:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == CLOSE_WAIT:
                count += 1
    return count


def read_to_end(sock: socket.socket) -> list[bytes]:
    """Every line the node sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received.splitlines()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_quit_then_end_of_input_leaves_no_close_wait(tmp_path: Path) -> None:
    """C{printf '#1 sleep ..\\nQUIT\\n' | nc}, 70 times: each is answered and closed, none stays in CLOSE_WAIT."""
    with running_node(tmp_path) as node:
        for _ in range(7):
            batch = []
            for _ in range(10):
                sock = socket.create_connection((node.host, node.port), timeout=REPLY_TIMEOUT)
                sock.sendall(b"#1 sleep 0.1\nQUIT\n")
                sock.shutdown(socket.SHUT_WR)
                batch.append(sock)
            for sock in batch:
                with sock:
                    assert read_to_end(sock) == [b"#1 OK 0.1", b'OK "bye"']
        wait_until(lambda: close_wait_count(node.port) == 0, REPLY_TIMEOUT, "no CLOSE_WAIT")
        client = connect(node.host, node.port)
        try:
            assert client.request("PING") == 'OK "pong"'
        finally:
            client.close()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_cast_then_close_is_not_kept_open(tmp_path: Path) -> None:
    """A client that casts a long call and half-closes is closed at once and no longer counted."""
    with running_node(tmp_path) as node:
        sock = socket.create_connection((node.host, node.port), timeout=REPLY_TIMEOUT)
        with sock:
            sock.sendall(b"+cast sleep 60\n")
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            assert read_to_end(sock) == []
        assert close_wait_count(node.port) == 0
        client = connect(node.host, node.port)
        try:
            wait_until(lambda: stats_of(client)["connections"] == 1, 5, "one connection counted")
        finally:
            client.close()
