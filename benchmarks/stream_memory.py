"""
How much memory a long stream costs: a stream of large items made by one
node (beta), forwarded by another (alpha), read by a slow consumer that
grants items as it reads them.  Flow control should bound every process by
its window, not by the stream's length.

    python benchmarks/stream_memory.py [--total-mib 1024] [--item-kib 64]
                                       [--window 16] [--read-mib-per-s 32]

It prints each process's resident memory before the stream and its peak
during it, and exits 1 if any grew by more than --limit-mib (64).  Linux
only (it reads /proc).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: The module beta serves: a stream of strings of a given size.
BLOBS = '''
from callnet import procedure


@procedure
def blobs(count: int, size: int):
    """Yield count strings of size characters."""
    for i in range(count):
        yield format(i, "08d") + "x" * (size - 8)
'''

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (or its peak, with VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def start(directory: Path, name: str, port: int, *options: str) -> subprocess.Popen[bytes]:
    twistd = Path(sys.executable).parent / "twistd"
    command = [
        str(twistd),
        "-n",
        "--pidfile=",
        "callnet",
        "--name",
        name,
        "--listen",
        f"tcp:{port}:interface={HOST}",
        *options,
    ]
    log = (directory / f"{name}.log").open("wb")
    return subprocess.Popen(command, cwd=directory, stdout=log, stderr=subprocess.STDOUT)


class Reader:
    """A line reader over a socket that reads at most C{rate} bytes a second."""

    def __init__(self, sock: socket.socket, rate: float) -> None:
        self.sock = sock
        self.rate = rate
        self.buffer = b""
        self.read = 0
        self.began = time.monotonic()

    def line(self, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if self.rate:
                # Slow: no faster than the rate allows since the start.
                due = self.began + self.read / self.rate
                if due > time.monotonic():
                    time.sleep(due - time.monotonic())
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the node closed the connection")
            self.read += len(chunk)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def ask(port: int, line: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(line + b"\n")
        return Reader(sock, 0).line()


def stream(port: int, count: int, size: int, window: int, rate: float) -> tuple[int, bytes]:
    """Take the stream through alpha, granting as items are read; return items and the end."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        reader = Reader(sock, rate)
        sock.sendall(b"#1 +timeout=3600 +window=%d blobs %d %d\n" % (window, count, size))
        items, granted = 0, window
        while True:
            line = reader.line()
            if not line.startswith(b"#1 ITEM "):
                return items, line
            items += 1
            # Grant half a window at a time, as a client does.
            if granted - items <= window // 2:
                more = window - (granted - items)
                sock.sendall(b"MORE #1 %d\n" % more)
                granted += more


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--item-kib", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--read-mib-per-s", type=float, default=32.0)
    parser.add_argument("--limit-mib", type=float, default=64.0)
    options = parser.parse_args()
    size = options.item_kib * 1024
    count = options.total_mib * 1024 // options.item_kib
    rate = options.read_mib_per_s * 1024 * 1024

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / "blobsvc.py").write_text(BLOBS)
        beta_port, alpha_port = free_port(), free_port()
        beta = start(directory, "beta", beta_port, "--service", "blobsvc", "--no-builtins")
        alpha = start(directory, "alpha", alpha_port, "--peer", f"beta=tcp:{HOST}:{beta_port}")
        nodes = {"alpha (forwards)": alpha, "beta (produces)": beta}
        try:
            wait_for(lambda: b"blobs" in ask(alpha_port, b"#0 LIST"), 30, "alpha to link to beta")
            # Warm up: the first items import and allocate what every later one reuses.
            stream(alpha_port, 64, size, options.window, 0)
            before = {name: rss_kib(node.pid) for name, node in nodes.items()}
            before["consumer"] = rss_kib(os.getpid())
            peaks = dict(before)
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.2):
                    for name, node in nodes.items():
                        peaks[name] = max(peaks[name], rss_kib(node.pid))
                    peaks["consumer"] = max(peaks["consumer"], rss_kib(os.getpid()))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            began = time.monotonic()
            items, end = stream(alpha_port, count, size, options.window, rate)
            took = time.monotonic() - began
            done.set()
            sampler.join()
        finally:
            for node in nodes.values():
                node.terminate()
                node.wait(timeout=10)
    print(
        f"{items} items of {options.item_kib} KiB ({items * size / 2**30:.2f} GiB) in"
        f" {took:.1f} s ({items * size / 2**20 / took:.0f} MiB/s), window {options.window},"
        f" read at most {options.read_mib_per_s:g} MiB/s; ended: {end.decode()[:40]}"
    )
    worst = 0.0
    for name in peaks:
        grew = (peaks[name] - before[name]) / 1024
        worst = max(worst, grew)
        print(
            f"  {name:18} resident {before[name] / 1024:7.1f} MiB before,"
            f" peak {peaks[name] / 1024:7.1f} MiB: grew {grew:5.1f} MiB"
        )
    ok = items == count and end == b"#1 OK %d" % count and worst <= options.limit_mib
    print("OK" if ok else f"FAILED: limit {options.limit_mib:g} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
