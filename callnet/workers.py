"""
The threads that run plain (blocking) procedures: L{WorkerThreads}.

It does what Twisted's C{ThreadPool} does for callnet, with less in the way
of each job: a job crosses to a worker through C{queue.SimpleQueue} (a C
queue that wakes one waiting thread), and the worker reports its result to
a callback, as C{ThreadPool.callInThreadWithCallback} does.  Measured on a
node, a plain procedure's call cost several microseconds less CPU.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.python.failure import Failure

#: Seconds between a worker process's checks that the node that started it
#: still runs: a node killed outright (SIGKILL, the OOM killer) cannot end
#: its workers, which would otherwise wait for work for ever; a second is soon
#: enough to give back their memory, and costs nothing.
PARENT_CHECK_INTERVAL = 1.0


def start_worker_process(parent: int, interval: float = PARENT_CHECK_INTERVAL) -> None:
    """
    Set up a worker process (for C{run="process"} procedures) of the node
    whose process id is C{parent}: it ignores Ctrl-C, since the node, not the
    signal, ends its workers; and it exits once that node is gone, however
    the node ended.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="callnet-node-watch", daemon=True).start()


class ThreadRunner(Protocol):
    """
    What the dispatcher needs to run a plain procedure: L{WorkerThreads}, or
    the stand-ins of L{callnet.testing}.
    """

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], object], func: Callable[..., Any], *args: Any
    ) -> None: ...


#: What a job is: report its outcome to C{on_result(ok, value)}.
_Job = tuple[Callable[[bool, Any], object], Callable[..., Any], tuple[Any, ...]]


class WorkerThreads:
    """
    At most C{size} threads, started as jobs come and kept until L{stop}.

    @param size: the most threads running procedures at once; more jobs wait
        their turn, first come first served.
    @param name: the threads' names start with this.
    """

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one thread, not {size}")
        self.size = size
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopped = False
        #: Thread id -> the job it is running, to say what a stop abandons.
        self._running: dict[int, Callable[..., Any]] = {}

    @property
    def threads(self) -> int:
        """How many threads have been started."""
        return len(self._threads)

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], object], func: Callable[..., Any], *args: Any
    ) -> None:
        """
        Run C{func(*args)} in a worker thread, then call C{on_result(True,
        result)} or C{on_result(False, failure)} in that thread.  After
        L{stop}, the job is dropped.
        """
        if self._stopped:
            return
        self._jobs.put((on_result, func, args))
        with self._lock:
            self._grow()

    def _grow(self) -> None:
        """Start a thread if jobs wait and none is free (the lock held)."""
        if self._jobs.qsize() > self._idle and len(self._threads) < self.size:
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        jobs, lock, running = self._jobs, self._lock, self._running
        me = threading.get_ident()
        while True:
            with lock:
                self._idle += 1
            job = jobs.get()
            with lock:
                self._idle -= 1
                if job is not None:
                    # More waiting than free threads: another takes the next.
                    self._grow()
            if job is None:
                return
            on_result, func, args = job
            running[me] = func
            try:
                value, ok = func(*args), True
            except BaseException:
                value, ok = Failure(), False
            del running[me]
            on_result(ok, value)
            # Hold nothing of this job while waiting for the next.
            job = on_result = func = args = value = None  # type: ignore[assignment]

    def stop(self, timeout: float | None = None) -> list[str]:
        """
        Stop every thread once the jobs queued before are done (they are
        cancelled calls, skipped at once, when the node has drained); wait
        for them, at most C{timeout} seconds if given.

        A job that outlasts the wait is left running: its thread is a daemon
        thread, which does not keep the process from exiting.

        @return: the names of the jobs still running when the wait ended.
        """
        with self._lock:
            if self._stopped:
                return self.running()
            self._stopped = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.running()

    def running(self) -> list[str]:
        """The names of the jobs running now, sorted (a function's C{__name__})."""
        jobs = self._running.copy().values()  # one step, while threads change it
        return sorted(getattr(func, "__name__", repr(func)) for func in jobs)
