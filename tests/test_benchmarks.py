"""
A tiny run of the benchmark suite, so that it keeps working: every system
that needs nothing beyond callnet's own dependencies, on a few workloads,
once, and one callnet system against a baseline revision.  The figures mean
nothing here; that the run completes and reports does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from benchmarks.run import baseline_ratios

ROOT = Path(__file__).resolve().parent.parent

#: Systems whose servers and clients need only Twisted and callnet.
SYSTEMS = "callnet-async,callnet-blocking,callnet-raw,amp,lineecho,socket-copy"
WORKLOADS = "seq,sync1,large-1m,large-mem"


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

    def test_smoke_run(self) -> None:
        """benchmarks/run.py --smoke runs, and reports a figure for every system and workload."""
        output = run_bench(self, "--smoke", "--systems", SYSTEMS, "--workloads", WORKLOADS)
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
