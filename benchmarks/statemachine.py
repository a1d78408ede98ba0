"""
One input to a connection's state machine: an Automat C{TypeMachine} (the
state-machine library that comes with Twisted) beside the session's own way,
a state attribute checked in a method (L{callnet.session}).

    python benchmarks/statemachine.py [--inputs N]

Prints nanoseconds per input for each, measured in the same run.  The
session takes several such inputs per line it reads, on the path every call
takes.
"""

from __future__ import annotations

import argparse
import timeit
from dataclasses import dataclass
from typing import Protocol

from automat import TypeMachineBuilder


class Lines(Protocol):
    def line(self) -> int:
        """A line arrived."""

    def quit(self) -> None:
        """The peer said QUIT."""


@dataclass
class Core:
    lines: int = 0


def automat_machine() -> Lines:
    """Two states, as the session's OPEN and QUITTING: a line counts only while open."""
    builder = TypeMachineBuilder(Lines, Core)
    open_ = builder.state("open")
    quitting = builder.state("quitting")

    @open_.upon(Lines.line).loop()
    def count(lines: Lines, core: Core) -> int:
        core.lines += 1
        return core.lines

    @quitting.upon(Lines.line).loop()
    def drop(lines: Lines, core: Core) -> int:
        return 0

    open_.upon(Lines.quit).to(quitting).returns(None)
    quitting.upon(Lines.quit).loop().returns(None)
    return builder.build()(Core())


OPEN, QUITTING = "open", "quitting"


class StateAttribute:
    """The same machine as the session writes it: a state checked by identity."""

    def __init__(self) -> None:
        self.state = OPEN
        self.lines = 0

    def line(self) -> int:
        if self.state is OPEN:
            self.lines += 1
            return self.lines
        return 0

    def quit(self) -> None:
        self.state = QUITTING


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=300_000)
    n = parser.parse_args().inputs
    for name, machine in (
        ("Automat TypeMachine", automat_machine()),
        ("state attribute", StateAttribute()),
    ):
        best = min(timeit.repeat(machine.line, number=n, repeat=3)) / n * 1e9
        print(f"{name:20} {best:7.0f} ns per input (best of 3)")


if __name__ == "__main__":
    main()
