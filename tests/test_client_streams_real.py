"""
The clients' streams and progress against a real node (a C{twistd callnet}
daemon serving a module of producers), the blocking client on both of its
paths: items and the result, a break that cancels and runs the producer's
C{finally}, a deadline mid-stream, Ctrl-C, and progress reports.  As in
tests/test_blocking_real.py, each client runs in a fresh Python process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_blocking_real import SCRIPT_TIMEOUT, TWISTD, run_script, served_node

pytestmark = pytest.mark.skipif(
    not TWISTD.exists(),
    reason=f"no twistd next to {sys.executable}: cannot start a node to test against",
)

#: A module of producers the node serves: their ends are counted, to be asked.
PRODUCERS = '''
from twisted.internet.defer import Deferred

from callnet import procedure
from callnet.context import CallContext

ENDED = []
#: The steps of build calls that wait for next_step().
STEPS = []


@procedure
def rows(n: int):
    """Yield n items from a worker thread, counting the generator's end."""
    try:
        yield from range(n)
    finally:
        ENDED.append("rows")


@procedure(run="reactor")
async def stalls(n: int):
    """Yield n items, then wait in the reactor until the call ends; count the end."""
    try:
        for i in range(n):
            yield i
        await Deferred()
    finally:
        ENDED.append("stalls")


@procedure
def ended() -> int:
    """How many producers have ended."""
    return len(ENDED)


@procedure(run="reactor")
async def build(steps: int, context: CallContext) -> str:
    """
    Report each step, and then end, once its caller says next_step(): so
    no report is replaced by a newer one, or dropped by the call's end.
    """
    for step in range(1, steps + 2):
        gate = Deferred()
        STEPS.append(gate)
        await gate
        if step <= steps:
            context.progress(step, steps, f"step {step}")
    return "built"


@procedure(run="reactor")
def next_step() -> bool:
    """Let the waiting build report its next step."""
    if not STEPS:
        return False
    STEPS.pop(0).callback(None)
    return True
'''


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running node with the built-ins and the producers; its client endpoint string."""
    directory = tmp_path_factory.mktemp("producers")
    (directory / "producers.py").write_text(PRODUCERS)
    with served_node(directory, "--service", "producers") as endpoint:
        yield endpoint


@pytest.fixture(params=["direct", "reactor"])
def transport(request: pytest.FixtureRequest) -> str:
    """The path the blocking client takes."""
    value: str = request.param
    return value


def test_count(node: str, tmp_path: Path, transport: str) -> None:
    """A for loop takes count's items in order, and the result is how many it sent."""
    out = run_script(
        node,
        """
        with BlockingClient(ADDRESS, timeout=10) as client:
            with client.stream("count", 5, window=2) as items:
                report(items=list(items), result=items.result)
        """,
        tmp_path,
        transport,
    )
    assert out == {"items": [0, 1, 2, 3, 4], "result": 5}


def test_break_cancels_and_runs_finally(node: str, tmp_path: Path, transport: str) -> None:
    """A break out of the with block cancels the stream; the producer's finally runs on the node."""
    out = run_script(
        node,
        """
        with BlockingClient(ADDRESS, timeout=10) as client:
            before = client.call("ended")
            with client.stream("rows", 100000, window=8) as items:
                for item in items:
                    if item == 3:
                        break
            report(
                last=item,
                closed=until(lambda: client.call("ended") == before + 1),
                # The connection serves the next call (the direct path's is reused).
                after=client.call("add", 1, 2),
            )
        """,
        tmp_path,
        transport,
    )
    assert out == {"last": 3, "closed": True, "after": 3}


def test_deadline_mid_stream(node: str, tmp_path: Path, transport: str) -> None:
    """The deadline covers the whole stream: it ends mid-way, ran, and the producer is closed."""
    out = run_script(
        node,
        """
        with BlockingClient(ADDRESS, timeout=10) as client:
            before = client.call("ended")
            seen = []
            start = time.monotonic()
            try:
                with client.stream("stalls", 3, timeout=0.55) as items:
                    for item in items:
                        seen.append(item)
            except DeadlineExceededError as e:
                error = [e.outcome.value, time.monotonic() - start]
            report(
                error=error,
                seen=seen,
                closed=until(lambda: client.call("ended") == before + 1),
            )
        """,
        tmp_path,
        transport,
    )
    assert out["error"][0] == "ran"
    assert out["error"][1] < 2
    assert out["seen"] == [0, 1, 2]
    assert out["closed"] is True


def test_ctrl_c_cancels(node: str, tmp_path: Path, transport: str) -> None:
    """Ctrl-C while a stream waits for its next item cancels it on the node and is raised."""
    out = run_script(
        node,
        """
        client = BlockingClient(ADDRESS, timeout=60)
        before = client.call("ended")
        items = client.stream("stalls", 1)
        first = next(items)
        threading.Timer(0.2, _thread.interrupt_main).start()
        try:
            for item in items:
                pass
            what = "ended"
        except KeyboardInterrupt:
            what = "interrupted"
        report(
            first=first,
            what=what,
            closed=until(lambda: client.call("ended") == before + 1),
        )
        client.close()
        """,
        tmp_path,
        transport,
    )
    assert out == {"first": 0, "what": "interrupted", "closed": True}


def test_progress_on_the_handle(node: str, tmp_path: Path, transport: str) -> None:
    """A call_async handle's progress callback gets the procedure's reports before the result."""
    out = run_script(
        node,
        """
        with BlockingClient(ADDRESS, timeout=10) as client:
            reports = []
            came = threading.Event()

            def on_report(r):
                reports.append([r.done, r.total, r.message, handle.done()])
                came.set()

            handle = client.call_async("build", 3)
            handle.add_progress_callback(on_report)
            for _ in range(3):
                came.clear()
                until(lambda: client.call("next_step"))  # once build waits for it
                came.wait(10)
            until(lambda: client.call("next_step"))  # and now it may end
            report(result=handle.result(), reports=reports)
        """,
        tmp_path,
        transport,
    )
    assert out["result"] == "built"
    assert out["reports"] == [
        [1, 3, "step 1", False],
        [2, 3, "step 2", False],
        [3, 3, "step 3", False],
    ]


def test_async_client(node: str, tmp_path: Path) -> None:
    """The async client streams from a real node, cancels by leaving async with, and watches progress."""
    script = textwrap.dedent(
        """
        import json, sys
        from twisted.internet import defer, task
        from callnet import Client

        async def main(reactor):
            client = Client(sys.argv[1], reactor, timeout=10)
            out = {}
            stream = client.stream("count", 5)
            out["items"] = [item async for item in stream]
            out["result"] = stream.result
            before = await client.call("ended")
            async with client.stream("rows", 100000, window=8) as stream:
                async for item in stream:
                    if item == 2:
                        break
            for _ in range(100):
                if await client.call("ended") == before + 1:
                    break
                await task.deferLater(reactor, 0.05)
            out["closed"] = await client.call("ended") == before + 1
            reports = []
            came = [defer.Deferred()]

            def on_report(report):
                reports.append(report.done)
                came[0], fired = defer.Deferred(), came[0]
                fired.callback(None)

            building = client.with_progress(on_report).call("build", 2)
            for _ in range(2):
                report_came = came[0]
                for _ in range(500):  # until build waits for it, a bounded poll
                    if await client.call("next_step"):
                        break
                    await task.deferLater(reactor, 0.01)
                await report_came
            for _ in range(500):  # and now it may end
                if await client.call("next_step"):
                    break
                await task.deferLater(reactor, 0.01)
            out["built"] = await building
            out["reports"] = reports
            client.close()
            print(json.dumps(out))

        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, node],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        '{"items": [0, 1, 2, 3, 4], "result": 5, "closed": true, "built": "built",'
        ' "reports": [1, 2]}'
    )
