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

from __future__ import annotations

import atexit
import enum
import math
import os
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, Protocol

from twisted.internet.defer import CancelledError as DeferredCancelledError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure

from callnet.answers import MULTICALL, unpack
from callnet.client import DEFAULT_TIMEOUT, Client
from callnet.errors import (
    CallError,
    CancelledError,
    DeadlineExceededError,
    ForkedProcessError,
    Outcome,
    UnavailableError,
    WrongThreadError,
)

__all__ = [
    "GRACE",
    "BlockingClient",
    "CallHandle",
    "ForkedProcessError",
    "ReactorThread",
    "WrongThreadError",
    "default_reactor_thread",
]

log = Logger()

#: How much longer than a call's deadline its caller waits.  The reactor side
#: enforces the deadline itself (and tells the node); the grace lets that
#: error, which knows more, arrive first, while still bounding the wait when
#: the reactor is too busy or gone.
GRACE = 0.25
#: How often a wait on the main thread wakes to let Python run a pending
#: KeyboardInterrupt.  A real SIGINT interrupts the wait at once on POSIX;
#: one raised by C{_thread.interrupt_main} (or a signal on Windows) is only
#: noticed when the thread next runs Python code.
INTERRUPT_CHECK_INTERVAL = 0.1
#: How long the interpreter's exit waits for the reactor thread to shut down
#: (closing connections, cancelling calls on their nodes) before exiting anyway.
EXIT_JOIN_TIMEOUT = 2.0
#: The name of the thread the reactor runs in when callnet starts it.
THREAD_NAME = "callnet-reactor"


class BridgeReactor(Protocol):
    """
    What the blocking bridge needs of a reactor: L{IReactorCore},
    L{IReactorThreads}' C{callFromThread}, and whatever the async L{Client}
    needs (a clock, and the endpoint's transport).
    """

    running: bool

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...

    def addSystemEventTrigger(
        self,
        phase: str,
        eventType: str,  # noqa: N803 (Twisted's own name)
        callable: Callable[..., Any],
        *args: Any,
    ) -> Any: ...

    def run(self, installSignalHandlers: bool = ...) -> None: ...  # noqa: N803

    def stop(self) -> None: ...


class _Thread(Protocol):
    """The part of L{threading.Thread} that L{ReactorThread} uses."""

    @property
    def ident(self) -> int | None: ...

    def join(self, timeout: float | None = None) -> None: ...


def _start_daemon_thread(target: Callable[[], None], name: str) -> _Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class _Waitable(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def _wait_event(event: _Waitable, timeout: float) -> bool:
    return event.wait(timeout)


class _Done:
    """
    A L{threading.Event} that is set once, made of one lock held until then:
    a waiter takes the lock and hands it on, so setting it and waking a
    caller cost a lock each, not a condition variable's several.
    """

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set it (once; from one thread at a time)."""
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until it is set, C{timeout} seconds at most; whether it is."""
        if self._set:
            return True
        if self._lock.acquire(True, -1 if timeout is None else timeout):
            self._lock.release()  # for the next waiter
            return True
        return self._set


def _twisted_io_thread() -> int | None:
    """The thread that runs the reactor, as Twisted records it when it starts."""
    ident = threadable.ioThread
    return ident if isinstance(ident, int) else None


class _State(enum.Enum):
    #: Not used yet: the first call starts or adopts a reactor.
    IDLE = "idle"
    #: callnet started the reactor in its own daemon thread.
    STARTED = "started"
    #: The application runs the reactor; callnet only uses it.
    ADOPTED = "adopted"
    #: The reactor shut down: no call can be made any more.
    STOPPED = "stopped"
    #: This is a child forked after the reactor thread started.
    FORKED = "forked"


#: (state, event) -> next state.  A pair missing here leaves the state alone.
_TRANSITIONS: dict[tuple[_State, str], _State] = {
    (_State.IDLE, "start"): _State.STARTED,
    (_State.IDLE, "adopt"): _State.ADOPTED,
    (_State.STARTED, "stop"): _State.STOPPED,
    (_State.ADOPTED, "stop"): _State.STOPPED,
    (_State.STARTED, "fork"): _State.FORKED,
    (_State.ADOPTED, "fork"): _State.FORKED,
    (_State.STOPPED, "fork"): _State.FORKED,
}


class ReactorThread:
    """
    A reactor running in a thread of its own, for blocking callers to cross into.

    It starts the reactor on first use (L{ensure_running}) in a daemon
    thread, or uses the reactor as it is when the application already runs
    it.  Everything it touches is a parameter, so tests drive it with a fake
    reactor and no threads.

    @param reactor: the reactor to run or use.
    @param start_thread: starts C{target} in a daemon thread of the given name
        and returns the thread.
    @param atexit_register: registers the reactor's shutdown at interpreter exit.
    @param register_at_fork: L{os.register_at_fork}, to learn of forked children.
    @param get_ident: the calling thread's identity.
    @param io_thread: the identity of the thread running an adopted reactor.
    @param monotonic: the callers' clock.
    @param wait: waits for an event at most some seconds; whether it is set.
    """

    def __init__(
        self,
        reactor: BridgeReactor,
        *,
        start_thread: Callable[[Callable[[], None], str], _Thread] = _start_daemon_thread,
        atexit_register: Callable[[Callable[[], None]], object] = atexit.register,
        register_at_fork: Callable[..., None] = os.register_at_fork,
        get_ident: Callable[[], int] = threading.get_ident,
        io_thread: Callable[[], int | None] = _twisted_io_thread,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Callable[[_Waitable, float], bool] = _wait_event,
    ) -> None:
        self.reactor = reactor
        self._start_thread = start_thread
        self._atexit_register = atexit_register
        self._register_at_fork = register_at_fork
        self._get_ident = get_ident
        self._io_thread = io_thread
        self.monotonic = monotonic
        self.wait = wait
        self._lock = threading.Lock()
        self._state = _State.IDLE
        self._thread: _Thread | None = None
        self._adopted = False
        self._pid = os.getpid()
        #: Calls handed to the reactor and not finished, released at shutdown.
        self._handles: set[CallHandle] = set()
        #: Calls handed to the reactor and not started yet, in order.
        self._to_start: list[CallHandle] = []

    @property
    def state(self) -> str:
        """C{"idle"}, C{"started"}, C{"adopted"}, C{"stopped"} or C{"forked"}."""
        return self._state.value

    def _move(self, event: str) -> bool:
        """Apply a state transition (the lock held); whether the state changed."""
        following = _TRANSITIONS.get((self._state, event))
        if following is None:
            return False
        self._state = following
        return True

    # --- Starting and stopping ----------------------------------------------

    def ensure_running(self) -> None:
        """
        Make sure there is a reactor to call into: start it, or adopt the one
        running.  Safe from any thread; only the first call does anything.

        @raise UnavailableError: the reactor has stopped.
        @raise ForkedProcessError: this process is a child forked after the
            reactor thread started.
        """
        state = self._state
        if state is _State.STARTED or state is _State.ADOPTED:
            return
        with self._lock:
            if self._state is _State.IDLE:
                self._begin(adopt=bool(self.reactor.running))
            self._check_usable()

    def adopt(self) -> None:
        """
        Declare that the application runs the reactor itself, now or later, so
        callnet must never start it (in the manner of crochet's C{no_setup}).

        Call it before the first call.  Calls made before the reactor runs
        wait for it, within their timeouts.

        @raise RuntimeError: callnet already started the reactor.
        """
        with self._lock:
            if self._state is _State.IDLE:
                self._begin(adopt=True)
            elif self._state is not _State.ADOPTED:
                raise RuntimeError(
                    f"cannot adopt the application's reactor: callnet's reactor thread is"
                    f" {self._state.value} already; call adopt() before the first call"
                )

    def _begin(self, adopt: bool) -> None:
        """Start or adopt the reactor (with the lock held)."""
        self._pid = os.getpid()
        self._register_at_fork(after_in_child=self._after_fork)
        reactor = self.reactor
        if adopt:
            self._move("adopt")
            self._adopted = True
            if reactor.running:
                # It runs in another thread: only its own thread may touch it.
                self.call_in_reactor(
                    reactor.addSystemEventTrigger, "before", "shutdown", self._on_shutdown
                )
            else:
                reactor.addSystemEventTrigger("before", "shutdown", self._on_shutdown)
            return
        self._move("start")
        reactor.addSystemEventTrigger("before", "shutdown", self._on_shutdown)
        self._thread = self._start_thread(self._run, THREAD_NAME)
        self._atexit_register(self._stop_at_exit)

    def _run(self) -> None:
        """The reactor thread's body."""
        try:
            self.reactor.run(installSignalHandlers=False)
        except Exception:
            # Typically ReactorNotRestartable: this process ran and stopped the
            # global reactor before.  Nothing can be called; say so to waiters.
            log.failure("callnet could not run the reactor")
        finally:
            self._stop("the reactor stopped")

    def _on_shutdown(self) -> None:
        """Before the reactor shuts down: release every waiter."""
        self._stop("the reactor is shutting down")

    def _stop(self, why: str) -> None:
        """No more calls: fail those in flight (they are cancelled on their nodes)."""
        with self._lock:
            self._move("stop")
            handles = list(self._handles)
        for handle in handles:
            handle._abort(UnavailableError, f"{why}, so {handle.procedure} cannot complete")

    def _stop_at_exit(self) -> None:
        """At interpreter exit: shut the reactor down, within a bound."""
        if self._state is not _State.STARTED:
            return
        self.reactor.callFromThread(self._stop_reactor)
        if self._thread is not None:
            self._thread.join(EXIT_JOIN_TIMEOUT)

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def _after_fork(self) -> None:
        """In a forked child: the reactor thread is gone; refuse every call."""
        # Another thread may have held the lock at the fork: it never lets go here.
        self._lock = threading.Lock()
        self._handles = set()
        self._to_start = []
        self._move("fork")

    def _check_usable(self) -> None:
        state = self._state
        if state is _State.STOPPED:
            raise UnavailableError(
                "the reactor has stopped (is the process shutting down?): no call can be made",
                Outcome.NOT_RUN,
            )
        if state is _State.FORKED:
            raise ForkedProcessError(
                f"this process (pid {os.getpid()}) was forked from pid {self._pid} after"
                f" callnet's reactor thread started there; threads do not survive fork(), so"
                f" no callnet call can be made here. Fork before the first call, or start"
                f" workers with multiprocessing's 'spawn' or 'forkserver' method."
            )

    # --- Threads ------------------------------------------------------------

    def is_reactor_thread(self) -> bool:
        """Whether the calling thread is the one running the reactor."""
        if self._adopted:
            ident = self._io_thread()
        else:
            thread = self._thread
            ident = None if thread is None else thread.ident
        return ident is not None and self._get_ident() == ident

    def refuse_reactor_thread(self, what: str) -> None:
        """
        Raise L{WrongThreadError} if called on the reactor thread.

        @param what: the blocking method, as the message should name it.
        """
        if self.is_reactor_thread():
            raise WrongThreadError(
                f"{what} blocks, and was called on the reactor thread, which it would"
                f" deadlock. Code running under the reactor must use the asynchronous API:"
                f" callnet.client.Client, whose call() returns a Deferred to await, or"
                f" BlockingClient.call_async(), whose handle can be awaited or turned into a"
                f" Deferred with as_deferred()."
            )

    def call_in_reactor(self, f: Callable[..., object], *args: Any) -> None:
        """Run C{f(*args)} on the reactor thread: now if this is it, else soon."""
        if self.is_reactor_thread():
            f(*args)
        else:
            self.reactor.callFromThread(f, *args)

    # --- Calls in flight ----------------------------------------------------

    def _submit(self, handle: CallHandle, on_reactor_thread: bool) -> None:
        """Hand a call to the reactor thread, unless no call can be made now."""
        with self._lock:
            self._check_usable()
            self._handles.add(handle)
            self._to_start.append(handle)
            # The calls of many threads cross together: one wake-up for all.
            first = len(self._to_start) == 1
        if on_reactor_thread:
            self._start_calls()
        elif first:
            self.reactor.callFromThread(self._start_calls)

    def _start_calls(self) -> None:
        """Send the calls handed over (reactor thread), each client's together."""
        releases: dict[int, Callable[[], None]] = {}
        try:
            while True:
                with self._lock:
                    handles, self._to_start = self._to_start, []
                if not handles:
                    return
                for handle in handles:
                    client = handle._client._client
                    if id(client) not in releases:
                        releases[id(client)] = client.hold_sends()
                    handle._start()
        finally:
            for release in releases.values():
                release()

    def _forget(self, handle: CallHandle) -> None:
        with self._lock:
            self._handles.discard(handle)

    def _handles_of(self, client: BlockingClient) -> list[CallHandle]:
        with self._lock:
            return [handle for handle in self._handles if handle._client is client]


_default: ReactorThread | None = None
_default_lock = threading.Lock()


def default_reactor_thread() -> ReactorThread:
    """
    The L{ReactorThread} of the global reactor, which blocking clients use
    unless they are given another.  This is callnet's only blocking entry
    point to the global reactor; importing this module does not install it.
    """
    global _default
    with _default_lock:
        if _default is None:
            from twisted.internet import reactor

            _default = ReactorThread(reactor)  # type: ignore[arg-type]
        return _default


#: How the async client is asked to do one thing, given the time left.
_Send = Callable[[Client, float], "Deferred[Any]"]


class CallHandle:
    """
    A call in flight, from L{BlockingClient.call_async}: wait for it, poll
    it, cancel it or have a function called when it is done, from any thread;
    or C{await} it on the reactor thread.

    Its state changes only on the reactor thread.

    @ivar procedure: the procedure called.
    @ivar timeout: the call's deadline, in seconds from when it was made.
    """

    def __init__(
        self, client: BlockingClient, procedure: str, timeout: float, send: _Send
    ) -> None:
        self._client = client
        self._thread = client._thread
        self.procedure = procedure
        self.timeout = timeout
        self._send: _Send | None = send
        self._deadline = self._thread.monotonic() + timeout
        #: Past this, waiters give up even if the reactor has not answered.
        self._give_up_at = self._deadline + client.grace
        self._event = _Done()
        self._lock = threading.Lock()
        self._done = False
        self._cancel_requested = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[CallHandle], object]] = []
        # Reactor thread only:
        self._deferred: Deferred[Any] | None = None
        self._abort_as: tuple[type[CallError], str] | None = None
        self._waiters: list[Deferred[Any]] = []

    def __repr__(self) -> str:
        state = "done" if self._done else "sent" if self._deferred is not None else "pending"
        return f"<CallHandle {self.procedure} {state}>"

    # --- Any thread ---------------------------------------------------------

    def done(self) -> bool:
        """Whether the call has finished: succeeded, failed or been cancelled."""
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """
        Wait for the call to finish; return its result or raise its error.

        Waiting is not owning: when C{timeout} runs out first, the call goes
        on (try again later, or L{cancel} it).  When the call's own deadline
        passes, it is cancelled on the node.

        @param timeout: the longest to wait, in seconds; C{None} waits until
            the call's deadline (plus L{GRACE}); C{0} only polls.
        @raise TimeoutError: C{timeout} passed first.
        @raise CallError: the call failed, as L{BlockingClient.call} raises.
        @raise WrongThreadError: on the reactor thread (unless C{timeout} is
            C{0}, which never blocks): C{await} the handle there instead.
        """
        if timeout is None or timeout > 0:
            self._thread.refuse_reactor_thread("CallHandle.result()")
        return self._wait(timeout)

    def cancel(self) -> bool:
        """
        Cancel the call, on the node too.

        The handle then fails with L{CancelledError} (unless it finished
        first): at once on the reactor thread, soon from any other.

        @return: C{False} if the call had finished already, else C{True}.
        """
        if self._event.is_set():
            return False
        # Seen by _start if it has not run yet: then nothing is sent at all.
        self._cancel_requested = True
        self._thread.call_in_reactor(
            self._abort, CancelledError, f"{self.procedure} was cancelled by its caller"
        )
        return True

    def add_done_callback(self, fn: Callable[[CallHandle], object]) -> None:
        """
        Have C{fn(handle)} called when the call finishes.

        It is called on the reactor thread, so it must not block (call
        C{result(0)} in it to read the outcome); or, if the call has finished
        already, at once in the calling thread.  What it raises is logged.
        """
        with self._lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        self._run_callback(fn)

    # --- The reactor thread -------------------------------------------------

    def as_deferred(self) -> Deferred[Any]:
        """
        A Deferred firing with the call's result, or failing with its error.
        Cancelling it cancels the call.  Reactor thread only.

        @raise WrongThreadError: called from another thread (Deferreds are
            not thread-safe); use L{result} there.
        """
        if not self._thread.is_reactor_thread():
            raise WrongThreadError(
                "CallHandle.as_deferred() and await work only on the reactor thread;"
                " use result() in other threads"
            )
        if self._done:
            return fail(self._error) if self._error is not None else succeed(self._value)
        waiter: Deferred[Any] = Deferred(self._waiter_cancelled)
        self._waiters.append(waiter)
        return waiter

    def _waiter_cancelled(self, waiter: Deferred[Any]) -> None:
        self.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        """C{await handle} in a coroutine running under the reactor."""
        return self.as_deferred().__await__()

    def _start(self) -> None:
        """Send the call (reactor thread), with the time left of its deadline."""
        send, self._send = self._send, None
        if self._done or send is None:
            return
        if self._cancel_requested:
            self._abort(CancelledError, f"{self.procedure} was cancelled by its caller")
            return
        remaining = self._deadline - self._thread.monotonic()
        if remaining <= 0:
            self._finish(
                error=DeadlineExceededError(
                    f"the deadline of {self.procedure} passed before it could be sent",
                    Outcome.NOT_RUN,
                )
            )
            return
        try:
            deferred = send(self._client._client, remaining)
        except Exception as e:
            self._finish(error=e)
            return
        self._deferred = deferred
        deferred.addBoth(self._settle)

    def _settle(self, result: object) -> None:
        """The async client's Deferred fired."""
        if not isinstance(result, Failure):
            self._finish(value=result)
            return
        error = result.value
        if isinstance(error, CancelledError | DeferredCancelledError):
            outcome = error.outcome if isinstance(error, CallError) else Outcome.MAY_HAVE_RUN
            node = error.node if isinstance(error, CallError) else None
            cls, message = self._abort_as or (
                CancelledError,
                f"{self.procedure} was cancelled by its caller",
            )
            error = cls(message, outcome, node)
        self._finish(error=error)

    def _abort(self, cls: type[CallError], message: str) -> None:
        """
        Give up on the call (reactor thread) and fail it as C{cls}; the outcome
        is the async client's: not-run if it was never sent, else may-have-run.
        """
        if self._done:
            return
        if self._deferred is None:
            self._send = None
            self._finish(error=cls(message, Outcome.NOT_RUN))
            return
        self._abort_as = (cls, message)
        self._deferred.cancel()
        if not self._done:  # a Deferred that ignored its cancellation
            self._finish(error=cls(message, Outcome.MAY_HAVE_RUN))

    def _finish(self, value: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome, wake every waiter, run the callbacks (reactor thread)."""
        with self._lock:
            if self._done:
                return
            self._done = True
            self._value = value
            self._error = error
            callbacks, self._callbacks = self._callbacks, []
        self._event.set()
        self._thread._forget(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:
                continue
            if error is not None:
                waiter.errback(Failure(error))
            else:
                waiter.callback(value)
        for fn in callbacks:
            self._run_callback(fn)

    def _run_callback(self, fn: Callable[[CallHandle], object]) -> None:
        try:
            fn(self)
        except Exception:
            log.failure("done callback {fn!r} of {handle!r} failed", fn=fn, handle=self)

    # --- Waiting ------------------------------------------------------------

    def _wait(self, timeout: float | None) -> Any:
        """Wait for the outcome (not on the reactor thread), then return or raise it."""
        if not self._event.is_set():
            self._thread.ensure_running()
            end = self._give_up_at
            if timeout is not None and self._thread.monotonic() + timeout < end:
                if not self._wait_until(self._thread.monotonic() + max(timeout, 0.0)):
                    raise TimeoutError(
                        f"{self.procedure} is not done after {timeout:g}s; the call goes on"
                        f" until its own deadline ({self.timeout:g}s)"
                    )
            elif not self._wait_until(end):
                raise self._give_up()
        if self._error is not None:
            raise self._error
        return self._value

    def _wait_until(self, end: float) -> bool:
        """Wait for the outcome until C{end} on the thread's clock; whether it came."""
        thread = self._thread
        event = self._event
        # Only the main thread gets KeyboardInterrupt: only it needs to wake up.
        poll = threading.current_thread() is threading.main_thread()
        while not event.is_set():
            remaining = end - thread.monotonic()
            if remaining <= 0:
                return False
            if poll:
                remaining = min(remaining, INTERRUPT_CHECK_INTERVAL)
            thread.wait(event, remaining)
        return True

    def _wait_owned(self) -> Any:
        """Wait as the call's owner: Ctrl-C cancels the call."""
        try:
            return self._wait(None)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def _give_up(self) -> DeadlineExceededError:
        """The reactor did not answer in time: cancel the call; the error to raise."""
        budget = f"{self.timeout:g}s (and {self._client.grace:g}s of grace)"
        self._thread.call_in_reactor(
            self._abort,
            DeadlineExceededError,
            f"no reply to {self.procedure} within {budget}; the call was cancelled",
        )
        if self._deferred is None:
            return DeadlineExceededError(
                f"{self.procedure} could not be sent within {budget}: the reactor did not"
                f" answer; the call was cancelled",
                Outcome.NOT_RUN,
            )
        return DeadlineExceededError(
            f"no reply to {self.procedure} within {budget}; the call was cancelled, but"
            f" {self.procedure} may have run",
            Outcome.MAY_HAVE_RUN,
        )


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
