"""
L{BlockingClient}: one class for synchronous callers, which does its I/O
in the calling thread or crosses to the reactor thread, whichever the
program needs.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint

from callnet.blocking._handle import CallHandle, _Send
from callnet.blocking._reactor_thread import ReactorThread, default_reactor_thread
from callnet.blocking._wait import GRACE
from callnet.client import DEFAULT_TIMEOUT, Client
from callnet.errors import Outcome, UnavailableError


class BlockingClient:
    """
    A client of one node for synchronous code: calls block until the answer,
    within a timeout, and raise L{CallError} subclasses as the async client's
    Deferreds fail.  One client may be used from many threads at once.

    It is a context manager that closes itself.  It starts the reactor thread
    on its first call, not before.

    @param endpoint: a Twisted client endpoint string such as
        C{"tcp:127.0.0.1:7600"}, or an L{IStreamClientEndpoint}.
    @param timeout: the deadline of a call that names none, in seconds.
    @param grace: how much longer than a deadline a caller waits for the
        reactor's answer before giving up on its own.
    @param reactor_thread: the reactor to call into; the global reactor's
        L{default_reactor_thread} when not given.
    @param token: a token to authenticate with, for a node that requires one.
    """

    def __init__(
        self,
        endpoint: str | IStreamClientEndpoint,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        grace: float = GRACE,
        reactor_thread: ReactorThread | None = None,
        token: str | None = None,
    ) -> None:
        _check_seconds("timeout", timeout, positive=True)
        _check_seconds("grace", grace, positive=False)
        self._thread = reactor_thread if reactor_thread is not None else default_reactor_thread()
        self.timeout = timeout
        self.grace = grace
        self._client = Client(endpoint, self._thread.reactor, timeout=timeout, token=token)
        self.address = self._client.address
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<BlockingClient {self.address}{' closed' if self._closed else ''}>"

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(
        self,
        procedure: str,
        /,
        *args: Any,
        timeout: float | None = None,
        key: str | None = None,
        trace: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """
        Call a procedure on the node and wait for its result.

        @param timeout: the call's deadline in seconds; the client's when
            C{None}.  When it passes, the call is cancelled on the node.
        @param key: an idempotency key.
        @param trace: a trace id.
        @raise CallError: the call failed; L{DeadlineExceededError} when it
            timed out, L{UnavailableError} when the client was closed or the
            reactor shut down meanwhile.
        @raise WrongThreadError: called on the reactor thread.
        """
        return self._submit(
            "BlockingClient.call()",
            procedure,
            timeout,
            lambda client, left: client.call(
                procedure, *args, timeout=left, key=key, trace=trace, **kwargs
            ),
        )._wait_owned()

    def call_async(
        self,
        procedure: str,
        /,
        *args: Any,
        timeout: float | None = None,
        key: str | None = None,
        trace: str | None = None,
        **kwargs: Any,
    ) -> CallHandle:
        """
        Start a call and return at once with its L{CallHandle}.  Works on any
        thread, the reactor's included.
        """
        return self._submit(
            None,
            procedure,
            timeout,
            lambda client, left: client.call(
                procedure, *args, timeout=left, key=key, trace=trace, **kwargs
            ),
        )

    def cast(self, procedure: str, /, *args: Any, **kwargs: Any) -> None:
        """
        Send a call that wants no reply; return once it is handed to the
        connection (within the client's timeout).
        """
        self._submit(
            "BlockingClient.cast()",
            procedure,
            None,
            lambda client, left: client.cast(procedure, *args, **kwargs),
        )._wait_owned()

    def command(self, verb: str, *args: Any, timeout: float | None = None) -> Any:
        """Send a protocol command (C{PING}, C{LIST}, C{STATS}, C{HELP}); return its answer."""
        return self._submit(
            "BlockingClient.command()",
            verb,
            timeout,
            lambda client, left: client.command(verb, *args, timeout=left),
        )._wait_owned()

    def ping(self, timeout: float | None = None) -> Any:
        """Ask the node to answer; return C{"pong"}."""
        return self.command("PING", timeout=timeout)

    def multicall(
        self,
        procedure: str,
        /,
        *args: Any,
        nodes: list[str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """
        Call a procedure on every node that serves it (or on C{nodes}),
        under one deadline; return node name -> result, or node name -> the
        L{CallError} that node's call failed with.
        """
        from callnet.cluster.multicall import MULTICALL, unpack

        answer = self.call(MULTICALL, procedure, list(args), kwargs, nodes, timeout=timeout)
        return unpack(answer)

    def close(self) -> None:
        """
        Close the connection.  Every call of this client still in flight
        fails at once with L{UnavailableError} (and is cancelled on the node);
        later calls fail the same way.  Safe from any thread, the reactor's too.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread.state not in ("started", "adopted"):
            return  # never used, or the reactor is gone: nothing is in flight
        closed = threading.Event()
        thread.call_in_reactor(self._close_in_reactor, closed)
        if not thread.is_reactor_thread():
            thread.wait(closed, self.grace)

    def _close_in_reactor(self, closed: threading.Event) -> None:
        for handle in self._thread._handles_of(self):
            handle._abort(
                UnavailableError, f"the client was closed before {handle.procedure} completed"
            )
        self._client.close()
        closed.set()

    def _submit(
        self, blocking: str | None, procedure: str, timeout: float | None, send: _Send
    ) -> CallHandle:
        """Hand a call to the reactor; C{blocking} names the method if it will wait."""
        if timeout is None:
            budget = self.timeout  # checked when the client was made
        else:
            _check_seconds("timeout", timeout, positive=False)
            budget = timeout
        thread = self._thread
        thread.ensure_running()
        on_reactor_thread = thread.is_reactor_thread()
        if blocking is not None and on_reactor_thread:
            thread.refuse_reactor_thread(blocking)
        if self._closed:
            raise UnavailableError(
                f"the client of {self.address} is closed: {procedure} was not sent",
                Outcome.NOT_RUN,
            )
        handle = CallHandle(self, procedure, budget, send)
        thread._submit(handle, on_reactor_thread)
        return handle


def _check_seconds(name: str, value: float, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be more than 0 seconds, not {value!r}")
