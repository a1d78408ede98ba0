"""
L{BlockingClient}: one class for synchronous callers, which does its I/O in
the calling thread (L{DirectPath}) in a program that runs no reactor, and
crosses to the reactor thread (L{ReactorThread}) in one that does.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any, Literal

from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python import threadable

import callnet.blocking._reactor_thread as _reactor_thread
from callnet.answers import MULTICALL, unpack
from callnet.blocking._address import TLSAddress, parse_address
from callnet.blocking._direct import ASYNC_THREADS, MAX_IDLE_CONNECTIONS, DirectPath
from callnet.blocking._direct_calls import DirectCallHandle
from callnet.blocking._handle import CallHandle, _Send
from callnet.blocking._reactor_thread import ReactorThread, default_reactor_thread
from callnet.blocking._shared import THREADS_PER_CONNECTION
from callnet.blocking._stream import BlockingStream, BridgedStream
from callnet.blocking._wait import GRACE, refuse_reactor_thread
from callnet.client import DEFAULT_TIMEOUT, Client, check_endpoint_string
from callnet.client_stream import DEFAULT_WINDOW, CallStream, Credit
from callnet.errors import Outcome, UnavailableError

#: The ways a client may be told to reach its node (C{None}: it chooses).
Transport = Literal["direct", "reactor"]


def reactor_in_use() -> bool:
    """
    Whether this process runs a Twisted reactor that blocking calls should
    cross into: callnet's own reactor thread, one the application adopted,
    or a reactor running in some thread of this process.
    """
    thread = _reactor_thread._default
    if thread is not None:
        state = thread.state
        if state == "started" or state == "adopted":
            return True
        if state == "forked" or state == "stopped":
            return False
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return False
    # A reactor that ran in a parent process still says it runs in a forked
    # child; it runs only if its thread is alive here.
    io_thread = threadable.ioThread
    if io_thread is None:
        return False
    # (A thread still starting has no ident yet: None must not match it.)
    return any(thread.ident == io_thread for thread in threading.enumerate())


class BlockingClient:
    """
    A client of one node for synchronous code: calls block until the answer,
    within a timeout, and raise L{CallError} subclasses as the async client's
    Deferreds fail.  One client may be used from many threads at once.

    It is a context manager that closes itself.  It connects on its first
    call, not before.

    How it reaches the node (see docs/clients.md): in a program that runs
    no reactor, each calling thread does its own socket I/O on a connection
    of its own (the plain-socket path); in a program that runs one, or with
    an endpoint object only Twisted can use, its calls cross into the
    reactor's thread (the reactor path).  The choice is made per call, so a
    program that starts a reactor later is served by it from then on.

    @param endpoint: a Twisted client endpoint string such as
        C{"tcp:127.0.0.1:7600"} or C{"unix:/run/callnet.sock"}, a
        L{TLSAddress}, or an L{IStreamClientEndpoint}.
    @param timeout: the deadline of a call that names none, in seconds.
    @param grace: how much longer than a deadline a caller waits for the
        other thread's answer before giving up on its own.
    @param reactor_thread: the reactor to call into; the global reactor's
        L{default_reactor_thread} when not given.  Given, it means the
        reactor path.
    @param token: a token to authenticate with, for a node that requires one.
    @param transport: C{"direct"} or C{"reactor"} to force a path; C{None}
        to let the client choose.
    @param max_idle_connections: on the plain-socket path, how many idle
        connections to keep for reuse (L{MAX_IDLE_CONNECTIONS}).
    @param async_threads: on the plain-socket path, how many threads run
        the calls of L{call_async} (L{ASYNC_THREADS}).
    @param threads_per_connection: on the plain-socket path, how many
        threads calling at once share one connection, their tagged calls
        pipelined on it (L{THREADS_PER_CONNECTION}); 1 gives each calling
        thread a connection of its own.
    @raise ValueError: C{transport="direct"} with an endpoint that the
        plain-socket path cannot reach.
    """

    def __init__(
        self,
        endpoint: str | IStreamClientEndpoint | TLSAddress,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        grace: float = GRACE,
        reactor_thread: ReactorThread | None = None,
        token: str | None = None,
        transport: Transport | None = None,
        max_idle_connections: int = MAX_IDLE_CONNECTIONS,
        async_threads: int = ASYNC_THREADS,
        threads_per_connection: int = THREADS_PER_CONNECTION,
    ) -> None:
        _check_seconds("timeout", timeout, positive=True)
        _check_seconds("grace", grace, positive=False)
        if transport not in (None, "direct", "reactor"):
            raise ValueError(f"transport must be 'direct', 'reactor' or None, not {transport!r}")
        if max_idle_connections < 0 or async_threads < 1 or threads_per_connection < 1:
            raise ValueError(
                "max_idle_connections must be 0 or more, async_threads and"
                " threads_per_connection 1 or more"
            )
        self.timeout = timeout
        self.grace = grace
        self._endpoint = endpoint
        self._token = token
        self._reactor_thread = reactor_thread
        self._async_client: Client | None = None
        self._lock = threading.Lock()
        self._closed = False
        address = parse_address(endpoint)
        if address is None and isinstance(endpoint, str):
            # Said here, not by the reactor thread at the first call, which
            # would leave every caller waiting out its deadline.
            check_endpoint_string(endpoint)
        if transport == "direct" and address is None:
            raise ValueError(
                f"the plain-socket path reaches tcp:HOST:PORT, unix:PATH and TLSAddress"
                f" endpoints, not {endpoint!r}: use transport='reactor' or None"
            )
        if transport is None and reactor_thread is not None:
            transport = "reactor"
        self.transport = transport
        self._direct: DirectPath | None = None
        if address is not None and transport != "reactor":
            self._direct = DirectPath(
                address,
                token=token,
                connect_timeout=timeout,
                max_idle=max_idle_connections,
                async_threads=async_threads,
                threads_per_connection=threads_per_connection,
            )
        if address is not None:
            self.address = address.text
        elif isinstance(endpoint, str):
            self.address = endpoint
        else:
            self.address = repr(endpoint)

    @property
    def _thread(self) -> ReactorThread:
        """The reactor thread of the reactor path, found on first use."""
        thread = self._reactor_thread
        if thread is None:
            thread = self._reactor_thread = default_reactor_thread()
        return thread

    @property
    def _client(self) -> Client:
        """The async client of the reactor path, made on first use."""
        client = self._async_client
        if client is None:
            with self._lock:
                client = self._async_client
                if client is None:
                    reactor = self._thread.reactor
                    endpoint: Any = self._endpoint
                    if isinstance(endpoint, TLSAddress):
                        endpoint = endpoint.reactor_endpoint(reactor)
                    client = self._async_client = Client(
                        endpoint, reactor, timeout=self.timeout, token=self._token
                    )
        return client

    def _direct_path(self) -> DirectPath | None:
        """The plain-socket path, if this call should take it."""
        direct = self._direct
        if direct is None or self.transport == "direct" or not reactor_in_use():
            return direct
        return None

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
        direct = self._direct_path()
        if direct is not None:
            budget = self._budget(timeout)
            refuse_reactor_thread("BlockingClient.call()")
            self._check_open(procedure)
            return direct.call(procedure, args, kwargs, budget, key, trace)
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
        thread, the reactor's included.  On the plain-socket path the call
        runs in one of the client's C{callnet-call} threads.
        """
        direct = self._direct_path()
        if direct is not None:
            budget = self._budget(timeout)
            self._check_open(procedure)
            handle = DirectCallHandle(
                direct,
                procedure,
                budget,
                self.grace,
                lambda h: direct.call(procedure, args, kwargs, h.timeout, key, trace, h),
            )
            direct.call_async(handle)
            return handle
        made: list[CallHandle] = []  # filled before any report can come
        bridged = self._submit(
            None,
            procedure,
            timeout,
            lambda client, left: client._call(
                procedure, args, kwargs, left, key, trace, lambda report: made[0]._progress(report)
            ),
        )
        made.append(bridged)
        return bridged

    def stream(
        self,
        procedure: str,
        /,
        *args: Any,
        timeout: float | None = None,
        window: int | None = None,
        trace: str | None = None,
        **kwargs: Any,
    ) -> BlockingStream:
        """
        Call a procedure that yields; iterate over the returned
        L{BlockingStream} for its items as they come.  Use it in a C{with}
        block: leaving the block cancels the stream on the node if it still
        runs.

        @param timeout: the deadline of the whole stream, in seconds.
        @param window: how many items the node may send before they are
            taken (L{DEFAULT_WINDOW} when C{None}): what the client holds at
            most.
        @raise WrongThreadError: called on the reactor thread.
        """
        window = DEFAULT_WINDOW if window is None else window
        Credit(window)  # a bad window is refused before anything is sent
        direct = self._direct_path()
        if direct is not None:
            budget = self._budget(timeout)
            refuse_reactor_thread("BlockingClient.stream()")
            self._check_open(procedure)
            return direct.stream(procedure, args, kwargs, budget, window, trace)
        budget = self._budget(timeout)
        thread = self._thread
        thread.ensure_running()
        thread.refuse_reactor_thread("BlockingClient.stream()")
        self._check_open(procedure)

        def open_stream(client: Client, left: float, bridge: CallStream) -> object:
            return client._stream(procedure, args, kwargs, left, window, trace, None, bridge)

        stream = BridgedStream(self, procedure, window, budget, open_stream)
        thread._submit(stream._handle, False)
        return stream

    def cast(self, procedure: str, /, *args: Any, **kwargs: Any) -> None:
        """
        Send a call that wants no reply; return once it is handed to the
        connection (within the client's timeout).
        """
        direct = self._direct_path()
        if direct is not None:
            refuse_reactor_thread("BlockingClient.cast()")
            self._check_open(procedure)
            direct.cast(procedure, args, kwargs, self.timeout)
            return
        self._submit(
            "BlockingClient.cast()",
            procedure,
            None,
            lambda client, left: client.cast(procedure, *args, **kwargs),
        )._wait_owned()

    def command(self, verb: str, *args: Any, timeout: float | None = None) -> Any:
        """Send a protocol command (C{PING}, C{LIST}, C{STATS}, C{HELP}); return its answer."""
        direct = self._direct_path()
        if direct is not None:
            budget = self._budget(timeout)
            refuse_reactor_thread("BlockingClient.command()")
            self._check_open(verb)
            return direct.command(verb, args, budget)
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
        if self._direct is not None:
            self._direct.close()
        if self._async_client is None:
            return  # the reactor path was never used
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

    def _budget(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout  # checked when the client was made
        _check_seconds("timeout", timeout, positive=False)
        return timeout

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise UnavailableError(
                f"the client of {self.address} is closed: {what} was not sent",
                Outcome.NOT_RUN,
            )

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
