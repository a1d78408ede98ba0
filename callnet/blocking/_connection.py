"""
One socket of the plain-socket path to the node, and the codec's decoder
for what comes back on it: a blocking socket written without waiting and
read through C{poll()}, so every wait is bounded by a call's deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from callnet.blocking._shared import (
    LostError,
    Multiplexer,
    not_read,
)
from callnet.blocking._wait import INTERRUPT_CHECK_INTERVAL
from callnet.wire import (
    BadLine,
    Bye,
    ErrorReply,
    Item,
    LineDecoder,
    Progress,
    Success,
    encode_command,
)

log = Logger()

#: Bytes asked of the socket per read: a reply of a small result comes whole
#: in one read; a large one comes in pieces of this size.
READ_SIZE = 256 * 1024
#: How long a call given up on (Ctrl-C) may take to write its C{CANCEL}.
CANCEL_WRITE_TIMEOUT = 0.5

_POLL = getattr(select, "poll", None)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _report(on_progress: Callable[[Progress], object], report: Progress) -> None:
    """Hand a progress report to its callback; what the callback raises is logged."""
    try:
        on_progress(report)
    except Exception:
        log.failure("progress callback {fn!r} failed", fn=on_progress)


#: The connection ended (EOF or a socket error) while a call used it.
_LostError = LostError


class Connection:
    """
    One socket to the node, used by one call at a time, and the codec's
    decoder for what comes back on it.  Tags are never reused on it, so a
    late reply to a call given up on is recognised and dropped.
    """

    def __init__(self, sock: socket.socket, max_line: int, monotonic: Callable[[], float]):
        self.sock = sock
        self.decoder = LineDecoder(max_line)
        self._tags = map(str, itertools.count(1))
        self._monotonic = monotonic
        self.monotonic = monotonic
        #: Serialises writes: a call's own, and a C{CANCEL} from L{close}.
        self.write_lock = threading.Lock()
        #: The tag of the call waiting on this connection, for L{abort}.
        self.tag: str | None = None
        #: The calls of several threads on it, once it has carried them.
        self.shared: Multiplexer[Connection] | None = None
        self.closed = False
        #: Why the node closed this connection, if it said C{BYE}: it is
        #: never used again.
        self.said_bye: str | None = None
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._poll_in: Any = None
        self._poll_out: Any = None
        if _POLL is not None and not self._tls:
            # A plain socket stays in blocking mode and waits with poll(): a
            # socket timeout would cost a system call to set on every read.
            sock.setblocking(True)
            self._poll_in = _POLL()
            self._poll_in.register(sock, select.POLLIN)
            self._poll_out = _POLL()
            self._poll_out.register(sock, select.POLLOUT)

    def next_tag(self) -> str:
        return next(self._tags)

    def is_stale(self) -> bool:
        """
        Whether an idle connection has been closed by the node (or holds what
        nobody asked for): checked before reuse, so that a node restarted
        meanwhile costs a new connection, not a failed call.
        """
        if self._heard_bye():
            return True
        poller = self._poll_in
        if poller is None:
            return False
        if not poller.poll(0):
            return False
        try:
            data = self.sock.recv(READ_SIZE, _DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not data:
            return True
        self.decoder.feed(data)
        return self._heard_bye()

    def _heard_bye(self) -> bool:
        """
        Whether what the decoder holds, read while the connection was idle,
        says BYE; the late replies to calls given up on in it are dropped.
        """
        decoder = self.decoder
        while (event := decoder.next_event()) is not None:
            if type(event) is Bye:
                self.said_bye = event.reason
        return self.said_bye is not None

    def send(self, data: bytes, deadline: float) -> None:
        """Write all of C{data} by C{deadline}; C{TimeoutError} if it cannot."""
        with self.write_lock:
            if self._poll_out is None:
                self.sock.settimeout(max(deadline - self._monotonic(), 1e-6))
                self.sock.sendall(data)
                return
            sock = self.sock
            try:
                sent = sock.send(data, _DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            view = memoryview(data)
            while sent < len(data):
                remaining = deadline - self._monotonic()
                if remaining <= 0 or not self._poll_out.poll(remaining * 1000):
                    raise TimeoutError("the node does not read what is sent to it")
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(view[sent:], _DONTWAIT)

    def read_reply(
        self,
        tag: str,
        deadline: float,
        interruptible: bool,
        items: bool = False,
        on_progress: Callable[[Progress], object] | None = None,
    ) -> Any:
        """
        Read until the reply to C{tag}; return its event (L{Success} or a
        failure reply).

        @param interruptible: wake every L{INTERRUPT_CHECK_INTERVAL} so that
            a pending KeyboardInterrupt is raised (the main thread).
        @param items: return each L{Item} of C{tag} too (a stream).
        @param on_progress: hand each L{Progress} report of C{tag} to this.
        @raise TimeoutError: the deadline passed first.
        @raise _LostError: the connection ended first.
        """
        decoder = self.decoder
        while True:
            event = decoder.next_event()
            while event is not None:
                kind = type(event)
                if kind is Success or kind is ErrorReply:
                    if event.tag == tag:  # type: ignore[union-attr]
                        return event
                elif kind is Bye:
                    # Nothing read after it runs: the call did not.
                    self.said_bye = event.reason  # type: ignore[union-attr]
                    return not_read(self.said_bye, tag)
                elif kind is BadLine:
                    log.warn("unreadable line from the node: {error}", error=event.error)  # type: ignore[union-attr]
                elif kind is Item:
                    if items and event.tag == tag:  # type: ignore[union-attr]
                        return event
                elif kind is Progress and on_progress is not None and event.tag == tag:  # type: ignore[union-attr]
                    _report(on_progress, event)  # type: ignore[arg-type]
                event = decoder.next_event()
            self.read_more(deadline, interruptible)

    def read_more(self, deadline: float, interruptible: bool) -> None:
        """
        Wait for more bytes from the node, by C{deadline}, and feed them to
        the decoder (a wake to check for Ctrl-C may feed nothing).

        @raise TimeoutError: the deadline passed first.
        @raise _LostError: the connection ended first.
        """
        remaining = deadline - self._monotonic()
        if remaining <= 0:
            raise TimeoutError
        if interruptible and remaining > INTERRUPT_CHECK_INTERVAL:
            remaining = INTERRUPT_CHECK_INTERVAL
        sock = self.sock
        try:
            poller = self._poll_in
            if poller is not None:
                if not poller.poll(remaining * 1000):
                    return
                data = sock.recv(READ_SIZE)
            else:
                sock.settimeout(remaining)
                data = sock.recv(READ_SIZE)
        except TimeoutError:
            return
        except OSError as e:
            raise _LostError(e.strerror or str(e)) from None
        if not data:
            raise _LostError("the node closed the connection")
        self.decoder.feed(data)

    def kill(self, why: str) -> str:
        """End the connection from any thread (its reader wakes at once); return C{why}."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        return why

    def cancel(self, tag: str, timeout: float = CANCEL_WRITE_TIMEOUT) -> None:
        """Ask the node to cancel C{tag}, best effort, within C{timeout}."""
        with contextlib.suppress(OSError, ValueError):
            self.send(encode_command("CANCEL", (tag,)), self._monotonic() + timeout)

    def abort(self) -> None:
        """
        From another thread: cancel the call waiting here and end the
        connection, which wakes its reader at once.
        """
        tag = self.tag
        # The caller may be in the middle of its own write: wait for it, briefly.
        if (
            tag is not None
            and not self._tls
            and self.write_lock.acquire(timeout=CANCEL_WRITE_TIMEOUT)
        ):
            try:
                self.sock.send(encode_command("CANCEL", (tag,)), _DONTWAIT)
            except OSError:
                pass
            finally:
                self.write_lock.release()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
