"""
The plain-socket path of the blocking client: a call does its I/O in the
calling thread, on a connection of its own, with no reactor and no thread
hand-off.

A L{DirectPath} keeps a small pool of connections to one node, as redis-py
and psycopg do: a call takes an idle connection (or opens one), sends its
tagged request through the codec of L{callnet.wire}, reads until its reply,
and gives the connection back.  So each thread calling at the same time has
a connection of its own, and no socket is ever shared by two calls.

The rules of the bridge hold here too: every wait is bounded by the call's
deadline (which still travels as C{+timeout=}); a call given up on, by its
deadline or by Ctrl-C, is cancelled on the node (C{CANCEL}); L{close} and
interpreter exit release every waiter; and a forked child never touches its
parent's sockets (the pool notices the new pid and starts afresh).
"""

from __future__ import annotations

import atexit
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from callnet.blocking._address import Address
from callnet.blocking._connection import _POLL, CANCEL_WRITE_TIMEOUT, Connection, _LostError
from callnet.blocking._direct_calls import AsyncThreads, DirectCallHandle, DirectStream
from callnet.blocking._shared import (
    THREADS_PER_CONNECTION,
    LostError,
    Multiplexer,
    NotSentError,
    SendTimeoutError,
)
from callnet.blocking._wait import INTERRUPT_CHECK_INTERVAL
from callnet.errors import (
    CallError,
    DeadlineExceededError,
    InvalidArgumentError,
    Outcome,
    UnavailableError,
)
from callnet.wire import (
    DEFAULT_MAX_LINE,
    Call,
    Success,
    encode_call,
    encode_command,
    encode_simple_call,
)

log = Logger()

#: Idle connections a client keeps for reuse.  One per thread that calls at
#: the same time is what a program needs; more than this after a burst are
#: closed as they come back, so a burst of threads leaves no crowd of sockets
#: open on the node.
MAX_IDLE_CONNECTIONS = 32
#: Threads that run the calls of C{call_async()} on this path (each with a
#: connection of its own while it runs a call).  Calls started beyond this
#: wait their turn, within their deadlines.
ASYNC_THREADS = 16
#: The name prefix of those threads.
ASYNC_THREAD_NAME = "callnet-call"


_paths: weakref.WeakSet[DirectPath] = weakref.WeakSet()
_exit_hook_registered = False
_exit_lock = threading.Lock()


def _close_all_at_exit() -> None:
    for path in list(_paths):
        path.close()


class DirectPath:
    """
    The connections of one client to one node, and the calls made on them
    from the calling threads.

    @param address: where the node listens.
    @param token: sent with C{AUTH} on each new connection.
    @param connect_timeout: the deadline of a connection's C{AUTH}.
    @param max_idle: how many idle connections to keep.
    @param async_threads: how many threads run C{call_async()} calls.
    @param threads_per_connection: how many calling threads share one
        connection before the next opens another; 1 gives each its own.
    """

    def __init__(
        self,
        address: Address,
        *,
        token: str | None = None,
        connect_timeout: float = 30.0,
        max_line: int = DEFAULT_MAX_LINE,
        max_idle: int = MAX_IDLE_CONNECTIONS,
        async_threads: int = ASYNC_THREADS,
        threads_per_connection: int = THREADS_PER_CONNECTION,
        monotonic: Callable[[], float] = time.monotonic,
        atexit_register: Callable[[Callable[[], None]], object] = atexit.register,
    ) -> None:
        global _exit_hook_registered
        self.address = address
        self._token = token
        self._connect_timeout = connect_timeout
        self._max_line = max_line
        self._max_idle = max_idle
        self._async_threads = async_threads
        self._per_connection = threads_per_connection
        # TLS sockets cannot be read in one thread while written in another,
        # and without poll() reads and writes would race on the socket's
        # timeout: such connections carry one call at a time.
        self._can_share = threads_per_connection > 1 and address.tls is None and _POLL is not None
        self.monotonic = monotonic
        self._ssl_context = address.tls.ssl_context() if address.tls is not None else None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        #: Connections carrying the calls of several threads now.
        self._shared: list[Multiplexer[Connection]] = []
        self._executor: AsyncThreads | None = None
        self._handles: set[DirectCallHandle] = set()
        self.closed = False
        _paths.add(self)
        with _exit_lock:
            if not _exit_hook_registered:
                _exit_hook_registered = True
                atexit_register(_close_all_at_exit)

    # --- Connections --------------------------------------------------------

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        """
        In a forked child: forget the parent's connections without a word on
        them (closing our copy of a descriptor leaves the parent's socket be;
        a shutdown or a write would not), and every thread of the parent.
        """
        # Another thread may have held the lock at the fork: it never lets go here.
        self._lock = threading.Lock()
        for connection in [*self._idle, *self._busy, *(m.connection for m in self._shared)]:
            if connection is not None:
                connection.close()
        self._idle = []
        self._busy = set()
        self._shared = []
        self._executor = None
        self._handles = set()
        self._pid = os.getpid()

    def _take(self, deadline: float, what: str) -> Connection:
        """A connection for one call: an idle one, or a new one."""
        self._check_pid()
        while True:
            with self._lock:
                if self.closed:
                    raise self._closed_error(what, Outcome.NOT_RUN)
                if not self._idle:
                    break
                connection = self._idle.pop()
                self._busy.add(connection)
            if not connection.is_stale():
                return connection
            self._drop(connection)
        connection = self._connect(deadline, what)
        with self._lock:
            if self.closed:
                connection.close()
                raise self._closed_error(what, Outcome.NOT_RUN)
            self._busy.add(connection)
        return connection

    def _give_back(self, connection: Connection) -> None:
        connection.tag = None
        with self._lock:
            self._busy.discard(connection)
            if (
                not self.closed
                and not connection.closed
                and connection.said_bye is None
                and len(self._idle) < self._max_idle
            ):
                self._idle.append(connection)
                return
        connection.close()

    def _take_shared(self, deadline: float, what: str) -> Multiplexer[Connection]:
        """
        A connection to carry one call beside others: the least busy one
        that carries fewer than C{threads_per_connection} calls, or an
        idle or new one.
        """
        self._check_pid()
        opening = False
        with self._lock:
            if self.closed:
                raise self._closed_error(what, Outcome.NOT_RUN)
            best = None
            for mux in self._shared:
                if mux.lost is None and (best is None or mux.users < best.users):
                    best = mux
            if best is not None and best.users < self._per_connection:
                best.users += 1
                mux = best
            elif self._idle:
                best = None
            else:
                mux = Multiplexer[Connection]()
                mux.users = 1
                self._shared.append(mux)
                opening = True
        if best is None and not opening:
            return self._share_idle(deadline, what)
        if mux.connection is None:
            if opening:
                self._open_shared(mux, deadline, what)
            else:
                self._wait_shared(mux, deadline, what)
        return mux

    def _share_idle(self, deadline: float, what: str) -> Multiplexer[Connection]:
        """
        An idle connection, checked before it is shared (nobody else may
        read it meanwhile), with the multiplexer it keeps; or a new one.
        """
        while True:
            with self._lock:
                if self.closed:
                    raise self._closed_error(what, Outcome.NOT_RUN)
                if not self._idle:
                    mux = Multiplexer[Connection]()
                    mux.users = 1
                    self._shared.append(mux)
                    break
                connection = self._idle.pop()
            if connection.is_stale():
                connection.close()
                continue
            kept = connection.shared
            if kept is None:
                kept = connection.shared = Multiplexer(connection)
            mux = kept
            with self._lock:
                if self.closed:
                    connection.close()
                    raise self._closed_error(what, Outcome.NOT_RUN)
                mux.users = 1
                self._shared.append(mux)
            return mux
        self._open_shared(mux, deadline, what)
        return mux

    def _open_shared(self, mux: Multiplexer[Connection], deadline: float, what: str) -> None:
        """Open the connection of C{mux}, for the calls placed on it meanwhile too."""
        ready = mux.ready
        assert ready is not None
        try:
            connection = self._take(deadline, what)
        except BaseException as e:
            with self._lock:
                mux.lost = str(e)
                mux.failure = e
                mux.users -= 1
                if mux in self._shared:
                    self._shared.remove(mux)
            ready.set()
            raise
        connection.shared = mux
        with self._lock:
            self._busy.discard(connection)
            mux.connection = connection
            if self.closed:
                mux.lost = "the client was closed"
        ready.set()
        if mux.lost is not None:
            self._give_back_shared(mux)
            raise self._closed_error(what, Outcome.NOT_RUN)

    def _wait_shared(self, mux: Multiplexer[Connection], deadline: float, what: str) -> None:
        """Wait, by C{deadline}, for another thread to open the connection of C{mux}."""
        poll = threading.current_thread() is threading.main_thread()
        ready = mux.ready
        assert ready is not None
        try:
            while not ready.is_set():
                remaining = deadline - self.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"the deadline of {what} passed while connecting to {self.address.text}",
                        Outcome.NOT_RUN,
                    )
                ready.wait(min(remaining, INTERRUPT_CHECK_INTERVAL) if poll else remaining)
            failure = mux.failure
            if failure is not None:
                if isinstance(failure, CallError):
                    raise type(failure)(failure.message, Outcome.NOT_RUN) from None
                raise UnavailableError(
                    f"cannot connect to {self.address.text}: {failure!r}", Outcome.NOT_RUN
                )
        except BaseException:
            self._give_back_shared(mux)
            raise
        if mux.lost is not None:
            self._give_back_shared(mux)
            raise self._closed_error(what, Outcome.NOT_RUN)

    def _give_back_shared(self, mux: Multiplexer[Connection]) -> None:
        """A call placed on C{mux} is over; the last one keeps or closes the connection."""
        connection = mux.connection
        with self._lock:
            mux.users -= 1
            if mux.users:
                return
            if mux in self._shared:
                self._shared.remove(mux)
            if connection is None:
                return
            if (
                mux.lost is None
                and not self.closed
                and not connection.closed
                and len(self._idle) < self._max_idle
            ):
                self._idle.append(connection)
                return
        connection.close()

    def _drop(self, connection: Connection) -> None:
        with self._lock:
            self._busy.discard(connection)
        connection.close()

    def _connect(self, deadline: float, what: str) -> Connection:
        """Open, and authenticate, a new connection by C{deadline}."""
        address = self.address
        remaining = deadline - self.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"the deadline of {what} passed before it could be sent", Outcome.NOT_RUN
            )
        try:
            if address.family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(remaining)
                    sock.connect(address.target)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(address.target, timeout=remaining)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None and address.tls is not None:
                sock.settimeout(max(deadline - self.monotonic(), 1e-6))
                tls = address.tls
                try:
                    sock = self._ssl_context.wrap_socket(
                        sock, server_hostname=tls.name or tls.host
                    )
                except ssl.SSLCertVerificationError as e:
                    sock.close()
                    raise UnavailableError(
                        f"cannot connect to {address.text}: TLS handshake failed:"
                        f" certificate verify failed: {e.verify_message}",
                        Outcome.NOT_RUN,
                    ) from None
                except ssl.SSLError as e:
                    sock.close()
                    raise UnavailableError(
                        f"cannot connect to {address.text}: TLS handshake failed: {e.reason or e}",
                        Outcome.NOT_RUN,
                    ) from None
        except TimeoutError:
            raise DeadlineExceededError(
                f"the deadline of {what} passed while connecting to {address.text}",
                Outcome.NOT_RUN,
            ) from None
        except OSError as e:
            raise UnavailableError(
                f"cannot connect to {address.text}: {e.strerror or e}", Outcome.NOT_RUN
            ) from None
        connection = Connection(sock, self._max_line, self.monotonic)
        if self._token is not None:
            self._authenticate(connection, deadline)
        return connection

    def _authenticate(self, connection: Connection, deadline: float) -> None:
        """Send C{AUTH} on a new connection; raise the node's refusal, not-run."""
        auth_deadline = min(deadline, self.monotonic() + self._connect_timeout)
        tag = connection.next_tag()
        try:
            connection.send(encode_command("AUTH", (self._token,), tag), auth_deadline)
            reply = connection.read_reply(tag, auth_deadline, False)
        except TimeoutError:
            connection.close()
            raise DeadlineExceededError(
                f"the deadline passed while authenticating to {self.address.text}",
                Outcome.NOT_RUN,
            ) from None
        except (OSError, _LostError) as e:
            connection.close()
            raise UnavailableError(
                f"connection to {self.address.text} lost while authenticating: {e}",
                Outcome.NOT_RUN,
            ) from None
        except BaseException:
            connection.close()
            raise
        if type(reply) is not Success:
            connection.close()
            error: CallError = reply.error
            error.outcome = Outcome.NOT_RUN  # no call was sent
            raise error

    # --- Calls --------------------------------------------------------------

    def call(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
        key: str | None = None,
        trace: str | None = None,
        handle: DirectCallHandle | None = None,
    ) -> Any:
        """Call a procedure in this thread; return its result or raise its error."""
        deadline = self.monotonic() + timeout
        if handle is None and self._can_share:
            return self._call_shared(procedure, args, kwargs, timeout, deadline, key, trace)
        connection = self._take(deadline, procedure)
        tag = connection.next_tag()
        try:
            if handle is not None:
                # A handle may be given progress callbacks at any time: ask for reports.
                line = encode_call(
                    Call(procedure, args, kwargs, tag, timeout, False, key, trace, progress=True)
                )
            elif kwargs or key is not None or trace is not None:
                line = encode_call(Call(procedure, args, kwargs, tag, timeout, False, key, trace))
            else:
                line = encode_simple_call(tag, timeout, procedure, args)
        except (TypeError, ValueError) as e:
            self._give_back(connection)
            raise InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN) from None
        return self._exchange(connection, tag, line, procedure, timeout, deadline, handle)

    def _call_shared(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
        deadline: float,
        key: str | None,
        trace: str | None,
    ) -> Any:
        """A call on a connection that may carry other threads' calls too."""
        mux = self._take_shared(deadline, procedure)
        try:
            assert mux.connection is not None
            tag = mux.connection.next_tag()
            try:
                if kwargs or key is not None or trace is not None:
                    line = encode_call(
                        Call(procedure, args, kwargs, tag, timeout, False, key, trace)
                    )
                else:
                    line = encode_simple_call(tag, timeout, procedure, args)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(
                    f"arguments are not JSON: {e}", Outcome.NOT_RUN
                ) from None
            try:
                reply = mux.exchange(
                    tag, line, deadline, threading.current_thread() is threading.main_thread()
                )
            except SendTimeoutError:
                raise DeadlineExceededError(
                    f"{procedure} could not be sent within {timeout:g}s: the node does not read",
                    Outcome.NOT_RUN,
                ) from None
            except NotSentError as e:
                raise self._lost_error(procedure, str(e), Outcome.NOT_RUN) from None
            except TimeoutError:
                raise DeadlineExceededError(
                    f"no reply to {procedure} within {timeout:g}s", Outcome.MAY_HAVE_RUN
                ) from None
            except LostError as e:
                raise self._lost_error(procedure, str(e), Outcome.MAY_HAVE_RUN) from None
        finally:
            self._give_back_shared(mux)
        if self.closed:
            # close() began while this call waited: its CANCEL may have been
            # answered first, but a closed client's waiters all hear the same.
            raise self._closed_error(procedure, Outcome.MAY_HAVE_RUN)
        if type(reply) is Success:
            return reply.value
        raise reply.error

    def stream(
        self,
        procedure: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
        window: int,
        trace: str | None = None,
    ) -> DirectStream:
        """
        Send a stream's request in this thread; its items are read as the
        returned stream is iterated, on a connection it holds until it ends.
        """
        deadline = self.monotonic() + timeout
        connection = self._take(deadline, procedure)
        tag = connection.next_tag()
        try:
            line = encode_call(
                Call(procedure, args, kwargs, tag, timeout, trace=trace, window=window)
            )
        except (TypeError, ValueError) as e:
            self._give_back(connection)
            raise InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN) from None
        connection.tag = tag
        try:
            connection.send(line, deadline)
        except TimeoutError:
            self._drop(connection)  # a part of the line may have gone
            raise DeadlineExceededError(
                f"{procedure} could not be sent within {timeout:g}s: the node does not read",
                Outcome.NOT_RUN,
            ) from None
        except OSError as e:
            self._drop(connection)
            raise self._lost_error(procedure, str(e), Outcome.NOT_RUN) from None
        return DirectStream(self, connection, tag, procedure, window, timeout, deadline)

    def command(self, verb: str, args: tuple[Any, ...], timeout: float) -> Any:
        """Send a protocol command with a tag and return its answer."""
        deadline = self.monotonic() + timeout
        connection = self._take(deadline, verb)
        tag = connection.next_tag()
        line = encode_command(verb, args, tag)
        return self._exchange(connection, tag, line, verb, timeout, deadline, None)

    def cast(
        self, procedure: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
    ) -> None:
        """Send a call that wants no reply, within C{timeout}."""
        deadline = self.monotonic() + timeout
        connection = self._take(deadline, procedure)
        try:
            line = encode_call(Call(procedure, args, kwargs, None, None, True))
        except (TypeError, ValueError) as e:
            self._give_back(connection)
            raise InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN) from None
        try:
            connection.send(line, deadline)
        except TimeoutError:
            self._drop(connection)  # a part of the line may have gone
            raise DeadlineExceededError(
                f"{procedure} could not be sent within {timeout:g}s", Outcome.NOT_RUN
            ) from None
        except OSError as e:
            self._drop(connection)
            raise self._lost_error(procedure, str(e), Outcome.NOT_RUN) from None
        self._give_back(connection)

    def _exchange(
        self,
        connection: Connection,
        tag: str,
        line: bytes,
        what: str,
        timeout: float,
        deadline: float,
        handle: DirectCallHandle | None,
    ) -> Any:
        """Send a request and wait for its reply, giving up on it by the rules."""
        connection.tag = tag
        sent = False
        try:
            connection.send(line, deadline)
            sent = True
            if handle is not None and handle._sent(connection, tag):
                # Cancelled while it was being sent: the cancel is ours to send.
                connection.cancel(tag, CANCEL_WRITE_TIMEOUT)
            reply = connection.read_reply(
                tag,
                deadline,
                threading.current_thread() is threading.main_thread(),
                on_progress=None if handle is None else handle._progress,
            )
        except TimeoutError:
            if not sent:
                self._drop(connection)  # a part of the line may have gone
                raise DeadlineExceededError(
                    f"{what} could not be sent within {timeout:g}s: the node does not read",
                    Outcome.NOT_RUN,
                ) from None
            connection.cancel(tag, CANCEL_WRITE_TIMEOUT)
            self._give_back(connection)
            raise DeadlineExceededError(
                f"no reply to {what} within {timeout:g}s", Outcome.MAY_HAVE_RUN
            ) from None
        except (_LostError, OSError) as e:
            self._drop(connection)
            outcome = Outcome.MAY_HAVE_RUN if sent else Outcome.NOT_RUN
            raise self._lost_error(what, str(e), outcome) from None
        except BaseException:
            # Ctrl-C: cancel on the node; what was half read cannot be trusted.
            if sent:
                connection.cancel(tag, CANCEL_WRITE_TIMEOUT)
            self._drop(connection)
            raise
        if self.closed:
            # close() began while this call waited: its CANCEL may have been
            # answered first, but a closed client's waiters all hear the same.
            self._drop(connection)
            raise self._closed_error(what, Outcome.MAY_HAVE_RUN)
        self._give_back(connection)
        if type(reply) is Success:
            return reply.value
        raise reply.error

    def _closed_error(self, what: str, outcome: Outcome) -> UnavailableError:
        if outcome is Outcome.NOT_RUN:
            message = f"the client of {self.address.text} is closed: {what} was not sent"
        else:
            message = f"the client was closed before {what} completed"
        return UnavailableError(message, outcome)

    def _lost_error(self, what: str, why: str, outcome: Outcome) -> UnavailableError:
        if self.closed:
            return self._closed_error(what, outcome)
        return UnavailableError(
            f"connection to {self.address.text} lost while {what} was in flight: {why}", outcome
        )

    # --- Calls that finish later --------------------------------------------

    def call_async(self, handle: DirectCallHandle) -> None:
        """Run a handle's call on one of the async threads."""
        self._check_pid()
        with self._lock:
            if self.closed:
                raise self._closed_error(handle.procedure, Outcome.NOT_RUN)
            executor = self._executor
            if executor is None:
                executor = self._executor = AsyncThreads(self._async_threads, ASYNC_THREAD_NAME)
            self._handles.add(handle)
        executor.submit(handle._run)

    def _forget(self, handle: DirectCallHandle) -> None:
        with self._lock:
            self._handles.discard(handle)

    # --- Closing ------------------------------------------------------------

    def close(self) -> None:
        """
        Close every connection.  A call waiting on one is cancelled on the
        node and fails at once with L{UnavailableError}; later calls fail
        the same way, not-run.  Safe from any thread.
        """
        self._check_pid()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            shared = list(self._shared)
            handles = list(self._handles)
            executor, self._executor = self._executor, None
        for connection in idle:
            connection.close()
        for connection in busy:
            connection.abort()
        for mux in shared:
            carrier = mux.connection
            if carrier is None:
                continue  # being opened: its opener sees the client closed
            for tag in mux.tags():
                carrier.cancel(tag)
            mux.fail(carrier.kill("the client was closed"))
        for handle in handles:
            handle._closed()
        if executor is not None:
            executor.stop()
