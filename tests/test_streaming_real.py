"""
Streams on a real node: generators pulled by real worker threads, which only
a real thread pool shows holding (or not holding) a thread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.daemon import running_node, wait_until

FEED_SERVICE = '''
from pathlib import Path

from callnet import procedure


@procedure
def feed(n: int, marker: str):
    """Yield n items; note in a file that the generator's finally ran."""
    try:
        for i in range(n):
            yield {"i": i, "pad": "x" * 100}
    finally:
        Path(marker).write_text("closed")

'''


def test_stalled_streams_hold_no_thread(tmp_path: Path) -> None:
    """Streams waiting for MORE hold no worker thread: with one thread, calls still run."""
    (tmp_path / "feeds.py").write_text(FEED_SERVICE)
    with running_node(tmp_path, "--service", "feeds", "--threads", "1") as node:
        client = node.connect()
        for tag in range(1, 6):
            client.send(f"#{tag} +window=1 feed 1000 {tmp_path / f'm{tag}'}")
        seen = {client.read_line().split(" ", 1)[0] for _ in range(5)}
        assert seen == {f"#{tag}" for tag in range(1, 6)}
        client.send("#9 block 0.01")
        assert client.read_line(timeout=5) == "#9 OK 0.01"
        client.send("MORE #3 2")
        assert client.read_line().startswith('#3 ITEM {"i":1')
        assert client.read_line().startswith('#3 ITEM {"i":2')
        client.send("CANCEL #3")
        assert client.read_line().startswith("#3 ERR CANCELLED ran")
        assert client.read_line() == "OK true"
        wait_until((tmp_path / "m3").exists, 5, "the cancelled generator is closed")
        assert not (tmp_path / "m1").exists()


def test_deadline_and_lost_connection_close_thread_generators(tmp_path: Path) -> None:
    """The deadline, and a connection that drops, close a generator in its thread."""
    (tmp_path / "feeds.py").write_text(FEED_SERVICE)
    with running_node(tmp_path, "--service", "feeds") as node:
        client = node.connect()
        started = time.monotonic()
        # Two items, then the generator waits at a yield for MORE that never
        # comes, until the deadline.
        client.send(f"#1 +timeout=0.5 +window=2 feed 1000 {tmp_path / 'deadline'}")
        lines = []
        while not (line := client.read_line()).startswith("#1 ERR"):
            lines.append(line)
        assert line.startswith("#1 ERR DEADLINE_EXCEEDED ran"), line
        assert [item.split(" ")[1] for item in lines] == ["ITEM", "ITEM"]
        assert time.monotonic() - started < 3
        wait_until((tmp_path / "deadline").exists, 5, "the generator is closed at its deadline")

        other = node.connect()
        other.send(f"#1 +window=1 feed 1000 {tmp_path / 'lost'}")
        assert other.read_line().startswith('#1 ITEM {"i":0')
        other.sock.close()
        wait_until((tmp_path / "lost").exists, 5, "the generator is closed when its caller goes")
        client.send("#2 STATS")
        stats = json.loads(client.read_line().split(" ", 2)[2])
        wait_until(lambda: node.stats()["in_flight"] == 0, 5, "no stream in flight")
        assert stats["procedures"]["feed"]["calls"] >= 1


def test_stream_memory_benchmark_runs() -> None:
    """The stream memory benchmark, cut to 64 MiB, completes and stays within its bound."""
    import subprocess
    import sys

    root = Path(__file__).parent.parent
    done = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "stream_memory.py"),
            "--total-mib",
            "64",
            "--read-mib-per-s",
            "128",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1024 items of 64 KiB" in done.stdout
    assert done.stdout.rstrip().endswith("OK")
