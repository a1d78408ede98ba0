"""
Log output for people and for log shippers: JSON lines, quiet retries, and
the level a failed call is logged at.

twistd takes a log observer factory by name::

    twistd -n --logger callnet.logs.json_stdout callnet ...
    twistd --logger callnet.logs.json_file --logfile node.log.json callnet ...

Every event becomes one JSON object per line (see L{json_line}): its time,
its level as a word (C{"log_level": "info"}), its namespace, its format and
the message rendered for people (C{log_text}), then each of its own fields
once (C{procedure}, C{peer}, C{duration_ms}, ...).  Addresses are written
C{host:port}.  There is no record separator before each event, as Twisted's
own JSON log files have, which strict JSON-lines readers refuse.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import provider

__all__ = [
    "DEFAULT_LOG_FILE",
    "drop_retry_notices",
    "failure_level",
    "json_file",
    "json_line",
    "json_lines",
    "json_stdout",
    "readable",
]

#: The file C{json_file} writes to unless C{CALLNET_LOG_FILE} names another.
DEFAULT_LOG_FILE = "callnet.log.json"

#: The event keys Twisted adds that a JSON line carries, under these names;
#: the others (C{log_logger}, C{log_source}, C{log_flattened}, ...) are
#: objects or copies of the fields, and are left out.
_KEPT = ("log_time", "log_namespace", "log_system", "log_format")

#: Keys a legacy observer (C{twisted.python.log}) adds to the events it sees,
#: in place: copies of the C{log_} ones, left out too.
_LEGACY = frozenset(("format", "isError", "system", "time", "why", "failure"))

#: Failed calls by error code: the level they are logged at.  The rule: a
#: fault of the node an operator must look at is an error; what time, load
#: or a departing caller did is information; a caller's own mistake, which
#: anyone can cause cheaply and the caller is told of, is for debugging.
_FAILURE_LEVELS: dict[str, LogLevel] = {
    **dict.fromkeys(("INTERNAL", "DATA_LOSS", "UNKNOWN"), LogLevel.error),
    **dict.fromkeys(
        ("DEADLINE_EXCEEDED", "CANCELLED", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED"),
        LogLevel.info,
    ),
    **dict.fromkeys(
        (
            "INVALID_ARGUMENT",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "UNAUTHENTICATED",
            "FAILED_PRECONDITION",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
        ),
        LogLevel.debug,
    ),
}


def failure_level(code: str) -> LogLevel:
    """
    The level to log a call that failed with C{code} at (see
    C{docs/operations.md}): C{error} for the node's faults (C{INTERNAL}),
    C{info} for deadlines, cancels and load, C{debug} for the caller's
    mistakes; C{warn} for a code this node does not know.
    """
    level: LogLevel = _FAILURE_LEVELS.get(code, LogLevel.warn)
    return level


def readable(value: Any) -> Any:
    """
    A field's value as a JSON line and a message carry it: an address as
    C{host:port} (C{[host]:port} for IPv6), a UNIX socket as its path, bytes
    decoded; numbers, strings, lists and mappings as they are.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    host, port = getattr(value, "host", None), getattr(value, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(value, "name", None)
    if type(value).__name__ == "UNIXAddress":
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list | tuple):
        return [readable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): readable(item) for key, item in value.items()}
    return str(value)


def json_line(event: Mapping[str, Any]) -> str:
    """
    One event as one line of JSON: C{log_time}, C{log_level} (C{"info"}, ...),
    C{log_namespace}, C{log_system}, C{log_format}, C{log_text} (the message,
    with the readable values), C{traceback} for a failure, then the event's
    own fields, each once.
    """
    fields = {
        key: readable(value)
        for key, value in event.items()
        if not key.startswith("log_") and key not in _LEGACY
    }
    if fields.get("message") == []:
        del fields["message"]  # the legacy observers' empty tuple
    line: dict[str, Any] = {key: readable(event[key]) for key in _KEPT if key in event}
    level = event.get("log_level")
    line["log_level"] = getattr(level, "name", None)
    text = formatEvent({**event, **fields})
    if text:
        line["log_text"] = text
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        line["traceback"] = failure.getTraceback()
    for key, value in fields.items():
        line.setdefault(key, value)
    return json.dumps(line, ensure_ascii=False, default=str) + "\n"


def json_lines(out: IO[Any]) -> ILogObserver:
    """A log observer writing each event to C{out} as one line of JSON."""
    return FileLogObserver(out, json_line)


def json_stdout() -> ILogObserver:
    """A log observer writing JSON lines to standard output (for C{twistd -n})."""
    return json_lines(sys.stdout)


def json_file() -> ILogObserver:
    """A log observer appending JSON lines to C{$CALLNET_LOG_FILE} (or callnet.log.json)."""
    import os

    path = os.environ.get("CALLNET_LOG_FILE", DEFAULT_LOG_FILE)
    return json_lines(open(path, "a", encoding="utf-8"))


@provider(ILogObserver)
def drop_retry_notices(event: Mapping[str, Any]) -> None:
    """
    Pass a L{twisted.application.internet.ClientService}'s events on to the
    global log, but not its "Scheduling retry" notice for each attempt: a
    peer that is down would log one every few seconds for as long as it
    stays down.  The peer's own log lines say when it goes down and when it
    comes back.
    """
    if str(event.get("log_format", "")).startswith("Scheduling retry"):
        return
    globalLogPublisher(dict(event))
