"""
A tiny run of the benchmark suite, so that it keeps working: every system
that needs nothing beyond callnet's own dependencies, on a few workloads,
once.  The figures mean nothing here; that the run completes and reports
does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

#: Systems whose servers and clients need only Twisted and callnet.
SYSTEMS = "callnet-async,callnet-blocking,callnet-raw,amp,lineecho,socket-copy"
WORKLOADS = "seq,sync1,large-1m,large-mem"


class SmokeTests(SynchronousTestCase):
    def test_smoke_run(self) -> None:
        """benchmarks/run.py --smoke runs, and reports a figure for every system and workload."""
        scratch = tempfile.TemporaryDirectory()
        self.addCleanup(scratch.cleanup)
        output = Path(scratch.name)
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "run.py"),
                "--smoke",
                "--systems",
                SYSTEMS,
                "--workloads",
                WORKLOADS,
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
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
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
