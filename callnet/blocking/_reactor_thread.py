"""
The reactor thread: a Twisted reactor running in a thread of its own, for
blocking callers to cross into (L{ReactorThread}); its life from start or
adoption to shutdown, interpreter exit and fork.
"""

from __future__ import annotations

import atexit
import enum
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python import threadable

from callnet.blocking._wait import _wait_event, _Waitable
from callnet.errors import (
    CallError,
    ForkedProcessError,
    Outcome,
    UnavailableError,
    WrongThreadError,
)
from callnet.reactors import DispatchReactor


class CallHandle(Protocol):
    """What the reactor thread needs of a call in flight (L{callnet.blocking.CallHandle})."""

    procedure: str

    @property
    def _client(self) -> Any: ...

    def _start(self) -> None: ...

    def _abort(self, cls: type[CallError], message: str) -> None: ...


log = Logger()

#: How long the interpreter's exit waits for the reactor thread to shut down
#: (closing connections, cancelling calls on their nodes) before exiting anyway.
EXIT_JOIN_TIMEOUT = 2.0
#: The name of the thread the reactor runs in when callnet starts it.
THREAD_NAME = "callnet-reactor"


class BridgeReactor(DispatchReactor, Protocol):
    """
    What the blocking bridge needs of a reactor: L{IReactorCore},
    L{IReactorThreads}' C{callFromThread}, and whatever the async L{Client}
    needs (a clock, and the endpoint's transport).
    """

    running: bool

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

    def _handles_of(self, client: object) -> list[CallHandle]:
        """The handles in flight of one client (a L{BlockingClient})."""
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
