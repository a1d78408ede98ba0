"""
L{callnet.workers.WorkerThreads}, with real threads and bounded waits.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from callnet.workers import WorkerThreads

#: Seconds any wait of these tests lasts at most.
WAIT = 30.0


class Results:
    """Collects what jobs report, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reported: list[tuple[bool, Any, str]] = []
        self.changed = threading.Condition(self.lock)

    def __call__(self, ok: bool, value: Any) -> None:
        with self.lock:
            self.reported.append((ok, value, threading.current_thread().name))
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.lock:
            if not self.changed.wait_for(lambda: len(self.reported) >= count, WAIT):
                raise AssertionError(f"{len(self.reported)} results, not {count}")


class WorkerThreadsTests(SynchronousTestCase):
    def pool(self, size: int) -> WorkerThreads:
        pool = WorkerThreads(size, "test-pool")
        self.addCleanup(pool.stop)
        return pool

    def test_results_and_failures(self) -> None:
        """A job's result, or its exception as a Failure, is reported from a worker thread."""
        pool = self.pool(2)
        results = Results()

        def broken() -> None:
            raise KeyError("gone")

        pool.callInThreadWithCallback(results, lambda a, b: a + b, 1, 2)
        pool.callInThreadWithCallback(results, broken)
        results.wait_for(2)
        by_ok = {ok: (value, name) for ok, value, name in results.reported}
        self.assertEqual(by_ok[True][0], 3)
        failure = by_ok[False][0]
        self.assertIsInstance(failure, Failure)
        self.assertTrue(failure.check(KeyError))
        self.assertTrue(all(name.startswith("test-pool-") for _, name in by_ok.values()))

    def test_at_most_size_at_once(self) -> None:
        """Past its size, jobs wait their turn, and are all run in the end."""
        pool = self.pool(3)
        results = Results()
        release = threading.Event()
        running = threading.Semaphore(0)
        at_once: list[int] = []
        lock = threading.Lock()
        now = [0]

        def job(n: int) -> int:
            with lock:
                now[0] += 1
                at_once.append(now[0])
            running.release()
            release.wait(WAIT)
            with lock:
                now[0] -= 1
            return n

        for n in range(9):
            pool.callInThreadWithCallback(results, job, n)
        for _ in range(3):
            self.assertTrue(running.acquire(timeout=WAIT))
        # Three run and hold their threads; the other six wait, unstarted.
        self.assertEqual((pool.threads, now[0], len(results.reported)), (3, 3, 0))
        release.set()
        results.wait_for(9)
        self.assertEqual(sorted(value for _, value, _ in results.reported), list(range(9)))
        self.assertLessEqual(max(at_once), 3)
        self.assertEqual(pool.threads, 3)

    def test_threads_start_as_needed(self) -> None:
        """Jobs one after another need one thread."""
        pool = self.pool(8)
        results = Results()
        for n in range(20):
            pool.callInThreadWithCallback(results, lambda x: x, n)
            results.wait_for(n + 1)
        self.assertEqual(pool.threads, 1)

    def test_stop(self) -> None:
        """stop() waits for the job running, ends every thread, and drops later jobs."""
        pool = WorkerThreads(2, "test-pool")
        results = Results()
        started = threading.Event()
        pause = threading.Event()  # never set: a bounded pause between looks

        def finish_once_stopping() -> str:
            # Ends only after stop() has begun: stop() must wait for it.
            started.set()
            deadline = time.monotonic() + WAIT
            while not pool._stopped and time.monotonic() < deadline:
                pause.wait(0.001)
            return "done" if pool._stopped else "stop() was not called"

        pool.callInThreadWithCallback(results, finish_once_stopping)
        self.assertTrue(started.wait(WAIT))
        pool.stop()
        self.assertEqual([value for _, value, _ in results.reported], ["done"])
        pool.callInThreadWithCallback(results, lambda: "late")
        self.assertEqual(len(results.reported), 1)
        self.assertFalse(any(t.name.startswith("test-pool-") for t in threading.enumerate()))

    def test_stop_with_timeout_leaves_a_stuck_job(self) -> None:
        """stop(timeout) returns after the timeout, naming the job still running, in a daemon thread."""
        pool = WorkerThreads(2, "test-pool")
        release = threading.Event()
        self.addCleanup(release.set)
        started = threading.Event()

        def sleep_blocking() -> None:
            started.set()
            release.wait(WAIT)

        pool.callInThreadWithCallback(Results(), sleep_blocking)
        self.assertTrue(started.wait(WAIT))
        self.assertEqual(pool.running(), ["sleep_blocking"])
        self.assertEqual(pool.stop(timeout=0.01), ["sleep_blocking"])
        busy = [t for t in threading.enumerate() if t.name.startswith("test-pool-")]
        self.assertEqual(len(busy), 1)
        self.assertTrue(busy[0].daemon, "a stuck job must not keep the process alive")
        release.set()
        busy[0].join(WAIT)
        self.assertEqual(pool.running(), [])

    def test_size(self) -> None:
        """A pool has at least one thread."""
        self.assertRaises(ValueError, WorkerThreads, 0, "none")
