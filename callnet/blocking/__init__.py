"""
The blocking client, for ordinary synchronous Python: scripts, worker
threads, web views, notebooks.

    with BlockingClient("tcp:127.0.0.1:7600") as client:
        client.call("add", 1, 2)                  # 3, or a CallError raised
        handle = client.call_async("sleep", 2)    # go on; take the result later
        ...
        handle.result()

Underneath, the asynchronous L{Client} runs on a reactor in a background
thread (L{ReactorThread}): the application's, when one already runs in
another thread, or else the global reactor, started on first use in the
daemon thread C{callnet-reactor}.  Each call crosses into that thread with
C{callFromThread}, and its caller waits on an event.  The rules:

  - Every wait is bounded: by the call's timeout plus L{GRACE}.  A call that
    times out is cancelled on the node too (C{CANCEL}).
  - A blocking call made on the reactor thread raises L{WrongThreadError}
    at once instead of deadlocking.
  - Reactor shutdown, and L{BlockingClient.close}, release every waiter at
    once with L{UnavailableError}.
  - Ctrl-C during L{BlockingClient.call} cancels the call, then re-raises.
  - In a process forked after the reactor thread started, every call raises
    L{ForkedProcessError} instead of hanging.
"""

from callnet.blocking._address import TLSAddress
from callnet.blocking._client import BlockingClient, Transport, reactor_in_use
from callnet.blocking._direct import ASYNC_THREADS, MAX_IDLE_CONNECTIONS
from callnet.blocking._handle import CallHandle
from callnet.blocking._reactor_thread import (
    EXIT_JOIN_TIMEOUT,
    THREAD_NAME,
    BridgeReactor,
    ReactorThread,
    default_reactor_thread,
)
from callnet.blocking._shared import THREADS_PER_CONNECTION
from callnet.blocking._stream import BlockingStream
from callnet.blocking._wait import GRACE, INTERRUPT_CHECK_INTERVAL, _Done
from callnet.errors import ForkedProcessError, WrongThreadError

__all__ = [
    "ASYNC_THREADS",
    "EXIT_JOIN_TIMEOUT",
    "GRACE",
    "INTERRUPT_CHECK_INTERVAL",
    "MAX_IDLE_CONNECTIONS",
    "THREADS_PER_CONNECTION",
    "THREAD_NAME",
    "BlockingClient",
    "BlockingStream",
    "BridgeReactor",
    "CallHandle",
    "ForkedProcessError",
    "ReactorThread",
    "TLSAddress",
    "Transport",
    "WrongThreadError",
    "_Done",
    "default_reactor_thread",
    "reactor_in_use",
]
