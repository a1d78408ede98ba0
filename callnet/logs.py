"""
Log output for log shippers: JSON lines.

twistd takes a log observer factory by name::

    twistd -n --logger callnet.logs.json_stdout callnet ...
    twistd --logger callnet.logs.json_file --logfile node.log.json callnet ...

Every event becomes one JSON object per line with its named fields
(C{log_namespace}, C{log_level}, C{log_time}, and callnet's own such as
C{procedure}, C{peer}, C{duration_ms}), serialized as
L{twisted.logger.eventAsJSON} does, but as plain JSON lines: without the
record separator Twisted's own JSON log files put before each event, which
strict JSON-lines readers refuse.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON

#: The file C{json_file} writes to unless C{CALLNET_LOG_FILE} names another.
DEFAULT_LOG_FILE = "callnet.log.json"


def json_lines(out: IO[Any]) -> ILogObserver:
    """A log observer writing each event to C{out} as one line of JSON."""
    return FileLogObserver(out, lambda event: eventAsJSON(event) + "\n")


def json_stdout() -> ILogObserver:
    """A log observer writing JSON lines to standard output (for C{twistd -n})."""
    return json_lines(sys.stdout)


def json_file() -> ILogObserver:
    """A log observer appending JSON lines to C{$CALLNET_LOG_FILE} (or callnet.log.json)."""
    import os

    path = os.environ.get("CALLNET_LOG_FILE", DEFAULT_LOG_FILE)
    return json_lines(open(path, "a", encoding="utf-8"))
