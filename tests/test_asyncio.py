"""
The async client inside an asyncio program, on Twisted's asyncio reactor.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .daemon import running_node

PROGRAM = """
import asyncio
import sys

from twisted.internet import asyncioreactor

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
asyncioreactor.install(loop)

from twisted.internet import reactor

import callnet
from callnet.client import Client


async def main():
    client = Client(sys.argv[1], reactor, timeout=10)
    print(await client.call("add", 1, 2).asFuture(loop))
    results = await asyncio.gather(
        *(client.call("echo", i).asFuture(loop) for i in range(100))
    )
    print(sum(results))
    try:
        await client.call("nosuch").asFuture(loop)
    except callnet.NotFoundError as error:
        print(error.code)
    client.close()


loop.run_until_complete(main())
"""


def test_await_from_asyncio(tmp_path: Path) -> None:
    """An asyncio coroutine awaits calls (one, a hundred at once, a failing one) as futures."""
    with running_node(tmp_path) as node:
        result = subprocess.run(
            [sys.executable, "-c", PROGRAM, node.endpoint],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "4950", "NOT_FOUND"]
