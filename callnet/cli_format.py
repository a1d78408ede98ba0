"""
What the command line prints besides results: C{callnet status}'s table of
a node and its peers, and C{callnet call}'s progress bar.  No I/O of its
own but the stream it is given.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, TextIO

from callnet.wire import Progress

#: Widest the procedures column of C{status} grows before it is cut short.
PROCEDURES_WIDTH = 60


def format_status(stats: Mapping[str, Any], local: Collection[str] = ()) -> str:
    """
    A node's C{STATS} as C{callnet status} prints it: a line for the node,
    then, if it has peers, a table with a row for each.

    @param local: the procedures the node serves itself.  A peer's row names
        the procedures it serves that the node does not (what is forwarded
        to it), and counts the others.
    """
    lines = [
        f"node {stats.get('node', '?')}: {stats.get('connections', 0)} connections,"
        f" {stats.get('calls', 0)} calls, {stats.get('errors', 0)} errors,"
        f" {stats.get('in_flight', 0)} in flight"
    ]
    peers: Mapping[str, Mapping[str, Any]] = stats.get("peers") or {}
    if not peers:
        lines.append("no peers")
        return "\n".join(lines)
    rows = [("peer", "state", "endpoint", "in flight", "procedures")]
    for name, peer in peers.items():
        rows.append(
            (
                name,
                str(peer.get("state", "?")),
                str(peer.get("endpoint", "?")),
                str(peer.get("in_flight", 0)),
                _procedures(peer.get("procedures") or [], set(local)),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        name, state, endpoint, in_flight, procedures = row
        lines.append(
            f"{name:<{widths[0]}}  {state:<{widths[1]}}  {endpoint:<{widths[2]}}"
            f"  {in_flight:>{widths[3]}}  {procedures}"
        )
    return "\n".join(lines)


def _procedures(names: Sequence[str], local: set[str]) -> str:
    """A peer's procedures: those not served here by name, then how many are."""
    own = sorted(name for name in names if name not in local)
    shared = len(names) - len(own)
    if not names:
        return "-"
    if not own:
        return f"({shared} also served here)"
    text = _procedure_list(own)
    return f"{text} (+{shared} also served here)" if shared else text


def _procedure_list(names: Sequence[str], width: int = PROCEDURES_WIDTH) -> str:
    """Names joined by commas, cut short to about C{width} with a count of the rest."""
    text = ", ".join(names)
    if len(text) <= width:
        return text
    if len(names) == 1:
        return text[: max(width - 3, 1)] + "..."
    for count in range(len(names) - 1, 1, -1):
        text = ", ".join(names[:count]) + f", ... (+{len(names) - count} more)"
        if len(text) <= width:
            return text
    return f"{names[0]}, ... (+{len(names) - 1} more)"


#: The width of C{callnet call}'s progress bar, in characters.
PROGRESS_BAR_WIDTH = 30


def format_progress(report: Progress, width: int = PROGRESS_BAR_WIDTH) -> str:
    """
    One line showing a L{Progress} report: a bar and a percentage when the
    total is known, else the count alone; then the message, if any.
    """
    done = report.done
    if report.total:
        fraction = min(max(done / report.total, 0.0), 1.0)
        filled = round(fraction * width)
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} {done:g}/{report.total:g}"
        )
    else:
        text = f"{done:g} done"
    if report.message:
        text += f" {report.message}"
    return text


class ProgressLine:
    """
    C{callnet call}'s progress bar: one line on a terminal, redrawn in place
    with each report and wiped before anything else is printed.  Nothing is
    drawn on what is not a terminal.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = False
        self.enabled = stream.isatty()

    def show(self, report: Progress) -> None:
        if not self.enabled:
            return
        self._stream.write("\r\x1b[K" + format_progress(report))
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False
