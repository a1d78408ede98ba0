"""
A connection's states and the moves between them, in the manner of h11's
state table; L{callnet.session} explains each and re-exports them.
"""

from __future__ import annotations

from typing import Final

OPEN: Final = "OPEN"
QUITTING: Final = "QUITTING"
ENDING: Final = "ENDING"
LEAVING: Final = "LEAVING"
CLOSED: Final = "CLOSED"

#: What moves a session from one state to another.  Any pair not here is a
#: bug in the session, and raises.  A table and a state attribute rather than
#: Automat: benchmarks/statemachine.py measures one input to an Automat
#: TypeMachine at about 2.3-3.5 us against 0.08-0.2 us for a state checked by
#: identity, and the session takes several inputs for every line it reads.
TRANSITIONS: Final = {
    (OPEN, "quit"): QUITTING,
    (OPEN, "input done"): ENDING,
    (OPEN, "bye"): LEAVING,
    (QUITTING, "bye"): LEAVING,
    (ENDING, "bye"): LEAVING,
    (OPEN, "close"): CLOSED,
    (QUITTING, "close"): CLOSED,
    (ENDING, "close"): CLOSED,
    (LEAVING, "close"): CLOSED,
    (OPEN, "lost"): CLOSED,
    (QUITTING, "lost"): CLOSED,
    (ENDING, "lost"): CLOSED,
    (LEAVING, "lost"): CLOSED,
    (CLOSED, "lost"): CLOSED,
}


def next_state(state: str, event: str) -> str:
    """The state C{event} moves a session in C{state} to; a move not in the table raises."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise RuntimeError(f"session: {event} in state {state}") from None
