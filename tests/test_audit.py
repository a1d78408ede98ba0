"""
Nothing from the network is unpickled, unmarshalled or evaluated: an audit
hook inside a real node watches for it while the node serves a varied workload.
"""

from __future__ import annotations

import json
from pathlib import Path

from .daemon import LineClient, running_node

#: Audit events that would mean bytes were turned into code or objects.
WATCHED = ("pickle.find_class", "marshal.loads", "marshal.load", "exec", "compile")

AUDIT_SERVICE = f'''
import sys

from callnet import procedure

WATCHED = {WATCHED!r}
armed = False
seen = []


def hook(event, args):
    if armed and event in WATCHED:
        seen.append([event, repr(args)[:200]])


sys.addaudithook(hook)


@procedure(run="reactor")
def arm() -> bool:
    """Start recording (after a warm-up, so that lazy imports are done)."""
    global armed
    armed = True
    return armed


@procedure(run="reactor")
def report() -> list:
    """What the hook saw since it was armed."""
    return list(seen)
'''

WORKLOAD: list[bytes] = [
    b"add 1 2",
    b'#1 echo [1, {"a": [true, null, 1.5e3]}]',
    b"#2 echo \"__import__('os').system('id')\"",
    b"#3 echo \"cos\\nsystem\\n(S'id'\\ntR.\"",
    b"#4 fail INTERNAL boom",
    b"#5 +timeout=0.05 sleep 1",
    b"#6 block 0.01",
    b"#7 nosuch 1",
    b"#8 HELP add",
    b"#9 STATS",
    b"#10 multicall add [1,2]",
    b"eval 1+1",
    b"#11 +key=k1 echo keyed",
    b'#12 add a=1 b={"x":1}',
    b"HELP",
    b"\x80\x04\x95 pickle-ish bytes",
    b"PING",
]


def _workload(client: LineClient) -> None:
    for line in WORKLOAD:
        client.send(line)
        assert client.read_reply(), line


def test_nothing_from_the_network_is_evaluated(tmp_path: Path) -> None:
    """While a node serves a varied workload, no pickle, marshal, exec or compile event fires."""
    (tmp_path / "audit_service.py").write_text(AUDIT_SERVICE)
    with running_node(tmp_path, "--service", "audit_service") as node:
        client = node.connect()
        _workload(client)  # warm-up: every code path and lazy import once
        client.send("#a arm")
        assert client.read_line() == "#a OK true"
        for _ in range(3):
            _workload(client)
        client.send("#r report")
        line = client.read_line()
        assert line.startswith("#r OK ")
        assert json.loads(line.split(" ", 2)[2]) == []
