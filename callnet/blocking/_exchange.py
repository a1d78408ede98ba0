"""
The calls of the plain-socket path, each in its calling thread: a tagged
request written through the codec of L{callnet.wire} on a connection of the
L{ConnectionPool}, and its reply read back, with no reactor and no thread
hand-off.

The rules of the bridge hold here: every wait is bounded by the call's
deadline (which still travels as C{+timeout=}); a call given up on, by its
deadline or by Ctrl-C, is cancelled on the node (C{CANCEL}); and each error
says whether the procedure ran: not-run until the request is wholly
written, may-have-run after.
"""

from __future__ import annotations

import threading
from typing import Any

from callnet.blocking._connection import CANCEL_WRITE_TIMEOUT, Connection, _LostError
from callnet.blocking._direct_calls import DirectCallHandle, DirectStream
from callnet.blocking._pool import ConnectionPool
from callnet.blocking._shared import LostError, NotSentError, SendTimeoutError
from callnet.errors import DeadlineExceededError, InvalidArgumentError, Outcome
from callnet.wire import Call, Success, encode_call, encode_command, encode_simple_call


def call(
    pool: ConnectionPool,
    procedure: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    key: str | None,
    trace: str | None,
    handle: DirectCallHandle | None,
) -> Any:
    """Call a procedure in this thread; return its result or raise its error."""
    deadline = pool.monotonic() + timeout
    if handle is None and pool.can_share:
        return _call_shared(pool, procedure, args, kwargs, timeout, deadline, key, trace)
    connection = pool.take(deadline, procedure)
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
        pool.give_back(connection)
        raise InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN) from None
    return _exchange(pool, connection, tag, line, procedure, timeout, deadline, handle)


def _call_shared(
    pool: ConnectionPool,
    procedure: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    deadline: float,
    key: str | None,
    trace: str | None,
) -> Any:
    """A call on a connection that may carry other threads' calls too."""
    mux = pool.take_shared(deadline, procedure)
    try:
        assert mux.connection is not None
        tag = mux.connection.next_tag()
        try:
            if kwargs or key is not None or trace is not None:
                line = encode_call(Call(procedure, args, kwargs, tag, timeout, False, key, trace))
            else:
                line = encode_simple_call(tag, timeout, procedure, args)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN) from None
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
            raise pool.lost_error(procedure, str(e), Outcome.NOT_RUN) from None
        except TimeoutError:
            raise DeadlineExceededError(
                f"no reply to {procedure} within {timeout:g}s", Outcome.MAY_HAVE_RUN
            ) from None
        except LostError as e:
            raise pool.lost_error(procedure, str(e), Outcome.MAY_HAVE_RUN) from None
    finally:
        pool.give_back_shared(mux)
    if pool.closed:
        # close() began while this call waited: its CANCEL may have been
        # answered first, but a closed client's waiters all hear the same.
        raise pool.closed_error(procedure, Outcome.MAY_HAVE_RUN)
    if type(reply) is Success:
        return reply.value
    raise reply.error


def stream(
    pool: ConnectionPool,
    procedure: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    window: int,
    trace: str | None,
) -> DirectStream:
    """
    Send a stream's request in this thread; its items are read as the
    returned stream is iterated, on a connection it holds until it ends.
    """
    deadline = pool.monotonic() + timeout
    connection = pool.take(deadline, procedure)
    tag = connection.next_tag()
    try:
        line = encode_call(Call(procedure, args, kwargs, tag, timeout, trace=trace, window=window))
    except (TypeError, ValueError) as e:
        pool.give_back(connection)
        raise InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN) from None
    connection.tag = tag
    try:
        connection.send(line, deadline)
    except TimeoutError:
        pool.drop(connection)  # a part of the line may have gone
        raise DeadlineExceededError(
            f"{procedure} could not be sent within {timeout:g}s: the node does not read",
            Outcome.NOT_RUN,
        ) from None
    except OSError as e:
        pool.drop(connection)
        raise pool.lost_error(procedure, str(e), Outcome.NOT_RUN) from None
    return DirectStream(pool, connection, tag, procedure, window, timeout, deadline)


def command(pool: ConnectionPool, verb: str, args: tuple[Any, ...], timeout: float) -> Any:
    """Send a protocol command with a tag and return its answer."""
    deadline = pool.monotonic() + timeout
    connection = pool.take(deadline, verb)
    tag = connection.next_tag()
    line = encode_command(verb, args, tag)
    return _exchange(pool, connection, tag, line, verb, timeout, deadline, None)


def cast(
    pool: ConnectionPool,
    procedure: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
) -> None:
    """Send a call that wants no reply, within C{timeout}."""
    deadline = pool.monotonic() + timeout
    connection = pool.take(deadline, procedure)
    try:
        line = encode_call(Call(procedure, args, kwargs, None, None, True))
    except (TypeError, ValueError) as e:
        pool.give_back(connection)
        raise InvalidArgumentError(f"arguments are not JSON: {e}", Outcome.NOT_RUN) from None
    try:
        connection.send(line, deadline)
    except TimeoutError:
        pool.drop(connection)  # a part of the line may have gone
        raise DeadlineExceededError(
            f"{procedure} could not be sent within {timeout:g}s", Outcome.NOT_RUN
        ) from None
    except OSError as e:
        pool.drop(connection)
        raise pool.lost_error(procedure, str(e), Outcome.NOT_RUN) from None
    pool.give_back(connection)


def _exchange(
    pool: ConnectionPool,
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
            pool.drop(connection)  # a part of the line may have gone
            raise DeadlineExceededError(
                f"{what} could not be sent within {timeout:g}s: the node does not read",
                Outcome.NOT_RUN,
            ) from None
        connection.cancel(tag, CANCEL_WRITE_TIMEOUT)
        pool.give_back(connection)
        raise DeadlineExceededError(
            f"no reply to {what} within {timeout:g}s", Outcome.MAY_HAVE_RUN
        ) from None
    except (_LostError, OSError) as e:
        pool.drop(connection)
        outcome = Outcome.MAY_HAVE_RUN if sent else Outcome.NOT_RUN
        raise pool.lost_error(what, str(e), outcome) from None
    except BaseException:
        # Ctrl-C: cancel on the node; what was half read cannot be trusted.
        if sent:
            connection.cancel(tag, CANCEL_WRITE_TIMEOUT)
        pool.drop(connection)
        raise
    if pool.closed:
        # close() began while this call waited: its CANCEL may have been
        # answered first, but a closed client's waiters all hear the same.
        pool.drop(connection)
        raise pool.closed_error(what, Outcome.MAY_HAVE_RUN)
    pool.give_back(connection)
    if type(reply) is Success:
        return reply.value
    raise reply.error
