"""
Log output for log shippers: JSON lines.

twistd takes a log observer factory by name::

    twistd -n --logger callnet.logs.json_stdout callnet ...
    twistd --logger callnet.logs.json_file --logfile node.log.json callnet ...

Every event becomes one JSON object per line with its named fields
(C{log_namespace}, C{log_level}, C{log_time}, and callnet's own such as
C{procedure}, C{peer}, C{duration_ms}), as L{twisted.logger.jsonFileLogObserver}
writes them.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

#: The file C{json_file} writes to unless C{CALLNET_LOG_FILE} names another.
DEFAULT_LOG_FILE = "callnet.log.json"


def json_stdout() -> ILogObserver:
    """A log observer writing JSON lines to standard output (for C{twistd -n})."""
    return jsonFileLogObserver(sys.stdout)


def json_file() -> ILogObserver:
    """A log observer appending JSON lines to C{$CALLNET_LOG_FILE} (or callnet.log.json)."""
    import os

    path = os.environ.get("CALLNET_LOG_FILE", DEFAULT_LOG_FILE)
    return jsonFileLogObserver(open(path, "a", encoding="utf-8"))
