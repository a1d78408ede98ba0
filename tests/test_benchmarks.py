"""
A tiny run of the benchmark suite, so that it keeps working: every system
that needs nothing beyond callnet's own dependencies, on a few workloads,
once, and one callnet system against a baseline revision.  The figures mean
nothing here; that the run completes and reports does.  The gRPC peers run
where grpcio is installed (benchmarks/requirements.txt), and are reported as
skipped where it is not, as in CI.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from benchmarks.common import STREAM_WINDOW, LineReader, Spec, raw_stream
from benchmarks.run import baseline_ratios, stream_ratios
from benchmarks.systems.socketcopy_sys import _echo_lines
from callnet.client_stream import DEFAULT_WINDOW
from tests.daemon import require_loopback, require_twistd

ROOT = Path(__file__).resolve().parent.parent

#: Systems whose servers and clients need only Twisted and callnet.
SYSTEMS = (
    "callnet-async,callnet-thread,callnet-blocking,callnet-raw,amp,lineecho,socket-copy,"
    "socket-copy-json"
)
#: gRPC's server streaming, which needs grpcio: skipped by the runner without it.
GRPC = "grpc-sync,grpc-asyncio"
WORKLOADS = "seq,pipe,sync1,large-1m,large-mem,stream,stream-1m"
MIB = 1 << 20


def run_bench(test: SynchronousTestCase, *args: str) -> Path:
    """Run benchmarks/run.py with C{args}; fail C{test} unless it exits 0; return its output."""
    scratch = tempfile.TemporaryDirectory()
    test.addCleanup(scratch.cleanup)
    output = Path(scratch.name)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            *args,
            "--no-chart",
            "--output",
            str(output),
            "--python",
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    test.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
    return output


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


class SmokeTests(SynchronousTestCase):
    def test_handover_runs(self) -> None:
        """benchmarks/handover.py runs and gives a figure for each kind of one-shot."""
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "handover.py"), "--rounds", "200"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for kind in ("_Done", "threading.Event", "concurrent.futures.Future"):
            self.assertRegex(result.stdout, rf"{re.escape(kind)} +[0-9.]+ us per hand-over")

    def test_statemachine_runs(self) -> None:
        """benchmarks/statemachine.py runs and gives a figure for Automat and the session's way."""
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "statemachine.py"), "--inputs", "1000"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for kind in ("Automat TypeMachine", "state attribute"):
            self.assertRegex(result.stdout, rf"{kind} +[0-9]+ ns per input")

    def test_cluster_scale_runs(self) -> None:
        """
        benchmarks/cluster_scale.py, at 3 nodes with short timings: the mesh
        forms through its DNS server, forwards calls, sees a frozen node down
        within down_after + heartbeat_interval (plus slack) with no call lost,
        and a killed one before any heartbeat could tell.
        """
        require_twistd()
        require_loopback("127.0.0.10", "127.0.0.11", "127.0.0.12")
        output = Path(tempfile.mkdtemp(prefix="callnet-test-")) / "cluster_scale.json"
        self.addCleanup(shutil.rmtree, output.parent, True)
        heartbeat, down_after = 0.2, 1.0
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "cluster_scale.py"),
                *("--sizes", "3", "--rest", "1", "--seconds", "1"),
                *("--heartbeat", str(heartbeat), "--down-after", str(down_after)),
                *("--output", str(output)),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
        [run] = json.loads(output.read_text())
        self.assertEqual((run["nodes"], run["peers"]), (3, "dns"))
        self.assertGreater(run["forwarded_calls_per_s"], 0)
        self.assertLessEqual(run["frozen_detect_all_s"], down_after + heartbeat + 1.5)
        self.assertEqual(run["frozen_failed_calls"], 0)
        self.assertLess(run["killed_detect_all_s"], down_after)
        self.assertIn("| 3 |", result.stdout)

    def test_smoke_run(self) -> None:
        """
        benchmarks/run.py --smoke runs, and reports a figure for every system
        and workload: for a stream its items as calls and the bytes/s of 1 MiB
        items, and the stream ratios with their targets.
        """
        output = run_bench(
            self, "--smoke", "--systems", f"{SYSTEMS},{GRPC}", "--workloads", WORKLOADS
        )
        data = json.loads((output / "latest.json").read_text())
        measured = {
            (workload, system)
            for workload, by_system in data["results"].items()
            for system, result in by_system.items()
            if result["calls_per_s"] and result["calls_per_s"]["median"] > 0
        }
        self.assertIn(("seq", "callnet-async"), measured)
        self.assertIn(("seq", "socket-copy"), measured)
        self.assertIn(("sync1", "callnet-blocking"), measured)
        self.assertIn(("large-1m", "callnet-raw"), measured)
        self.assertIn(("large-1m", "amp"), measured)
        self.assertGreater(data["memory"]["large-mem"]["payloads"]["median"], 0)
        self.assertIn("callnet-async", (output / "latest.txt").read_text())
        for system in (
            "callnet-async",
            "callnet-thread",
            "callnet-raw",
            "socket-copy",
            "socket-copy-json",
        ):
            self.assertIn(("stream", system), measured)
            self.assertIn(("stream-1m", system), measured)
        grpc = importlib.util.find_spec("grpc") is not None
        for system in GRPC.split(","):
            if grpc:
                self.assertIn(("stream", system), measured)
                self.assertIn(("stream-1m", system), measured)
            else:
                self.assertIn("grpc is not available", data["skipped"][system])
        big = data["results"]["stream-1m"]["callnet-raw"]["runs"][0]
        self.assertGreater(big["calls"], 0)
        self.assertAlmostEqual(big["bytes_per_s"], big["calls_per_s"] * MIB)
        small = data["results"]["stream"]["callnet-async"]["runs"][0]
        self.assertGreater(small["calls"], 0)
        self.assertIsNone(small["bytes_per_s"])
        rows = {row["what"]: row for row in data["stream_ratios"]}
        self.assertIn("callnet-async stream / callnet-async pipe", rows)
        self.assertIn("callnet-raw stream-1m / socket-copy stream-1m", rows)
        self.assertEqual(rows["callnet-raw stream-1m / socket-copy stream-1m"]["target"], 0.8)
        text = (output / "latest.txt").read_text()
        self.assertIn("== streams against their targets", text)
        self.assertRegex(text, r"callnet-async stream / callnet-async pipe +\d+\.\d\d  \[")
        self.assertIn("items/s median", text)
        self.assertIn("MiB/s of items' payload", text)

    def test_baseline_run(self) -> None:
        """
        With --baseline, each callnet system runs a second time as the
        baseline, from a snapshot of its own, and the report gives the ratio.
        """
        output = run_bench(
            self,
            "--smoke",
            "--systems",
            "callnet-async",
            "--workloads",
            "seq",
            "--baseline",
            "HEAD",
        )
        data = json.loads((output / "latest.json").read_text())
        head = git("rev-parse", "--short", "HEAD")
        self.assertEqual((data["baseline"]["source"], data["baseline"]["commit"]), ("HEAD", head))
        self.assertEqual(data["callnet"]["commit"], head)
        seq = data["results"]["seq"]
        self.assertEqual(list(seq), ["callnet-async", "callnet-async@base"])
        new, base = (seq[name]["runs"][0] for name in seq)
        self.assertEqual(Path(new["callnet_from"]).parent, Path(data["callnet"]["path"]))
        self.assertEqual(Path(base["callnet_from"]).parent, Path(data["baseline"]["path"]))
        self.assertNotEqual(data["callnet"]["path"], data["baseline"]["path"])
        ratio = data["against_baseline"]["seq"]["callnet-async"]["median"]
        self.assertAlmostEqual(ratio, new["calls_per_s"] / base["calls_per_s"])
        text = (output / "latest.txt").read_text()
        self.assertIn(f"baseline (@base): HEAD at {head}", text)
        self.assertIn("== against the baseline", text)
        self.assertRegex(text, r"seq +callnet-async +\d+\.\d\d  \[")


class BaselineRatioTests(SynchronousTestCase):
    def test_paired_run_by_run(self) -> None:
        """The ratio pairs run I of a system with run I of its baseline; failed pairs drop out."""

        def runs(*rates: float | None) -> dict[str, list[dict[str, object]]]:
            return {
                "runs": [
                    {"error": "failed"} if r is None else {"calls": 10, "calls_per_s": r}
                    for r in rates
                ]
            }

        results = {
            "callnet-raw": runs(100.0, 300.0, 50.0, 90.0),
            "callnet-raw@base": runs(200.0, 100.0, None, 100.0),
            "lineecho": runs(1.0, 1.0, 1.0, 1.0),
        }
        self.assertEqual(
            baseline_ratios(results), {"callnet-raw": {"median": 0.9, "min": 0.5, "max": 3.0}}
        )


def _runs(*rates: float | None) -> dict[str, list[dict[str, object]]]:
    """An aggregate holding runs of these calls/s (None: a failed run)."""
    return {
        "runs": [
            {"error": "failed"} if r is None else {"calls": 10, "calls_per_s": r} for r in rates
        ]
    }


class StreamRatioTests(SynchronousTestCase):
    def test_targets(self) -> None:
        """
        Each callnet stream is held to 1.5 times callnet-async's pipelined
        calls/s (and its own), 5 times each gRPC peer, and stream-1m to 0.8
        of the socket copy; paired run by run, met or missed by the median.
        """
        results = {
            "pipe": {"callnet-async": _runs(100.0, 100.0), "callnet-raw": _runs(200.0, 200.0)},
            "stream": {
                "callnet-async": _runs(140.0, 160.0),
                "callnet-raw": _runs(400.0, 400.0),
                "callnet-raw@base": _runs(1.0, 1.0),
                "grpc-sync": _runs(20.0, 40.0),
                "socket-copy": _runs(1000.0, 1000.0),
            },
            "stream-1m": {"callnet-raw": _runs(90.0, None), "socket-copy": _runs(100.0, 100.0)},
        }
        rows = {
            row["what"]: (row["ratio"], row["target"], row["met"])
            for row in stream_ratios(results)
        }
        self.assertEqual(
            rows,
            {
                "callnet-async stream / callnet-async pipe": (
                    {"median": 1.5, "min": 1.4, "max": 1.6},
                    1.5,
                    True,
                ),
                "callnet-async stream / grpc-sync stream": (
                    {"median": 5.5, "min": 4.0, "max": 7.0},
                    5.0,
                    True,
                ),
                "callnet-raw stream / callnet-async pipe": (
                    {"median": 4.0, "min": 4.0, "max": 4.0},
                    1.5,
                    True,
                ),
                "callnet-raw stream / callnet-raw pipe": (
                    {"median": 2.0, "min": 2.0, "max": 2.0},
                    1.5,
                    True,
                ),
                "callnet-raw stream / grpc-sync stream": (
                    {"median": 15.0, "min": 10.0, "max": 20.0},
                    5.0,
                    True,
                ),
                "callnet-raw stream-1m / socket-copy stream-1m": (
                    {"median": 0.9, "min": 0.9, "max": 0.9},
                    0.8,
                    True,
                ),
            },
        )

    def test_missed_and_failed(self) -> None:
        """A median under the target is missed; a ratio with no good pair is failed, not met."""
        results = {
            "pipe": {"callnet-async": _runs(100.0)},
            "stream": {"callnet-async": _runs(120.0), "grpc-asyncio": _runs(None)},
        }
        rows = {row["what"]: row["met"] for row in stream_ratios(results)}
        self.assertEqual(
            rows,
            {
                "callnet-async stream / callnet-async pipe": False,
                "callnet-async stream / grpc-asyncio stream": None,
            },
        )


class RawStreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        """The plain-socket stream client against the socket copy, over a socket pair."""
        self.client, server = socket.socketpair()
        self.client.settimeout(30)
        self.addCleanup(self.client.close)
        self.copier = threading.Thread(target=_echo_lines, args=(server,), daemon=True)
        self.copier.start()

    def test_window_matches_the_async_client(self) -> None:
        """The plain-socket client grants the window callnet's async client asks by default."""
        self.assertEqual(STREAM_WINDOW, DEFAULT_WINDOW)

    def test_whole_streams(self) -> None:
        """A stream of ints and one of large strings are taken whole, one after the other."""
        reader = LineReader(self.client, 1 << 16)
        small = raw_stream(reader, 1, Spec("stream", 0, 30.0), 5000, 30.0)
        self.assertEqual((small.calls, small.errors), (5000, 0))
        big = raw_stream(reader, 2, Spec("stream-1m", 0, 30.0, size=MIB), 5, 30.0)
        self.assertEqual((big.calls, big.errors), (5, 0))

    def test_time_bound_cancels(self) -> None:
        """
        Past its time bound the client cancels the stream and reads on to its
        final reply, with no error; the connection then serves the next stream.
        """
        reader = LineReader(self.client, 1 << 16)
        cut = raw_stream(reader, 1, Spec("stream", 0, 0.0), 10**9, 0.0)
        self.assertEqual(cut.errors, 0)
        self.assertGreater(cut.calls, 0)
        self.assertLess(cut.calls, 10**9)
        after = raw_stream(reader, 2, Spec("stream", 0, 30.0), 100, 30.0)
        self.assertEqual((after.calls, after.errors), (100, 0))


class ReadmeTableTests(SynchronousTestCase):
    """The README's performance figures are those of the run kept beside its chart."""

    def test_readme_table_is_the_kept_run(self) -> None:
        """README.md shows exactly the table benchmarks/readme_table.py writes from docs/images/benchmarks.json."""
        from benchmarks.readme_table import plain_procedures, table

        data = json.loads((ROOT / "docs" / "images" / "benchmarks.json").read_text())
        readme = (ROOT / "README.md").read_text()
        self.assertIn(table(data), readme)
        self.assertIn(plain_procedures(data), readme)

    def test_table_reads_a_run(self) -> None:
        """A run's figures land in their cells, with the ratios worked out from them."""
        from benchmarks.readme_table import table

        def result(rate: float) -> dict[str, object]:
            return {"calls_per_s": {"median": rate, "min": rate, "max": rate}}

        data = {
            "results": {
                "seq": {
                    "callnet-async": result(2000),
                    "amp": result(1000),
                    "lineecho": result(4000),
                }
            }
        }
        row = next(line for line in table(data).splitlines() if line.startswith("| seq"))
        self.assertEqual(
            row,
            "| seq (1 connection, 1 in flight), async | 2,000 | 1,000 |  |  |  |  | 4,000 |  | 2.00 | 0.50 |",
        )
