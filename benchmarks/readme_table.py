"""
The README's performance table, written from one run's C{latest.json}.

    python benchmarks/readme_table.py [benchmarks/results/latest.json]

Prints the Markdown table and the sentence on plain procedures that
README.md shows under "Performance", so that they come from one full run of
C{benchmarks/run.py} and from nothing typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: The peers' columns, in the README's order.
COLUMNS = ("amp", "pb", "crochet-amp", "rpyc", "pyro5", "lineecho", "socket-copy")
HEADER = (
    "| calls/s | callnet | AMP | PB | crochet+AMP | RPyC | Pyro5 | line echo | socket copy"
    " | callnet / AMP | callnet / line echo |"
)

#: Each row: its label, the workload, the callnet system, and the system
#: the line echo column shows for it (the bridge's or the raw client's own).
ROWS = (
    ("seq (1 connection, 1 in flight), async", "seq", "callnet-async", "lineecho"),
    ("pipe (1 connection, 100 in flight), async", "pipe", "callnet-async", "lineecho"),
    ("conc (50 connections), async", "conc", "callnet-async", "lineecho"),
    ("blocking, 1 thread", "sync1", "callnet-blocking", "lineecho-sync"),
    ("blocking, 16 threads, one client", "sync16", "callnet-blocking", "lineecho-sync"),
    ("1 MiB string echoed, async", "large-1m", "callnet-async", "lineecho"),
)


def rate(data: dict[str, Any], workload: str, system: str) -> float | None:
    """The median calls/s of a system in a workload, if it ran."""
    result = data["results"].get(workload, {}).get(system)
    if not result or not result.get("calls_per_s"):
        return None
    return float(result["calls_per_s"]["median"])


def _shown(value: float | None, note: str = "") -> str:
    return "" if value is None else f"{value:,.0f}{note}"


def _ratio(a: float | None, b: float | None, note: str = "") -> str:
    return "" if a is None or not b else f"{a / b:.2f}{note}"


def table(data: dict[str, Any]) -> str:
    """The README's table of calls/s, from one run's results."""
    lines = [HEADER, "|" + "---|" * 11]
    for label, workload, system, echo in ROWS:
        ours = rate(data, workload, system)
        blocking = workload.startswith("sync")
        cells = [_shown(ours)]
        for peer in COLUMNS:
            peer_system = echo if peer == "lineecho" else peer
            cells.append(
                _shown(
                    rate(data, workload, peer_system),
                    " ¹" if blocking and peer == "lineecho" else "",
                )
            )
        # The blocking rows compare with crochet+AMP, the blocking client of AMP.
        versus = rate(data, workload, "crochet-amp" if blocking else "amp")
        cells.append(_ratio(ours, versus, " ²" if blocking else ""))
        cells.append(_ratio(ours, rate(data, workload, echo)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    raw = [rate(data, w, "callnet-raw") for w in ("seq", "pipe")]
    echo_raw = [rate(data, w, "lineecho-raw") for w in ("seq", "pipe")]
    if all(value is not None for value in raw + echo_raw):
        lines.append(
            "| the node driven by a plain-socket client, seq / pipe"
            f" | {_shown(raw[0])} / {_shown(raw[1])} | | | | | |"
            f" {_shown(echo_raw[0])} / {_shown(echo_raw[1])} ³ | | |"
            f" {_ratio(raw[0], echo_raw[0])} / {_ratio(raw[1], echo_raw[1])} |"
        )
    return "\n".join(lines) + "\n"


def plain_procedures(data: dict[str, Any]) -> str:
    """The sentence on plain procedures, from the callnet-thread figures."""
    seq, pipe, conc = (rate(data, w, "callnet-thread") for w in ("seq", "pipe", "conc"))
    reactor = rate(data, "seq", "callnet-async")
    if None in (seq, pipe, conc, reactor):
        return ""
    return (
        "A plain procedure (run in a worker thread) costs more than a reactor one:\n"
        f"{seq:,.0f} calls/s seq ({_ratio(seq, reactor)} of a reactor procedure's),"
        f" {pipe:,.0f} pipelined and {conc:,.0f} over 50 connections."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results", nargs="?", default=Path(__file__).parent / "results" / "latest.json"
    )
    data = json.loads(Path(parser.parse_args().results).read_text())
    print(table(data))
    print(plain_procedures(data))


if __name__ == "__main__":
    main()
