"""
How a full mesh of real nodes behaves as it grows, on one machine.

For each cluster size N it starts N real nodes (C{twistd -n callnet}), each
on its own loopback address (127.0.0.10, 127.0.0.11, ...) and one shared
port, finding each other through a DNS server this script runs (the A
records of one name, C{dns-a:}), or through static C{[peers]} tables with
C{--peers static}; then it measures:

- converge: from the first node started until every node sees every other
  up (each node's C{STATS}), and from the last node listening;
- rest: each node's CPU (heartbeats and nothing else) and memory, over
  C{--rest} seconds without calls;
- forwarded calls/s: pipelined calls of a procedure only the other nodes
  serve, sent to the first node, which forwards every one;
- a frozen node (SIGSTOP, as a hung process): time until the first node
  marks it down, until every node has, and the longest a caller waited on
  the first node meanwhile (its calls fail over to other nodes);
- a killed node (SIGKILL, as a crash): time until every node marks it down.

Run from the checkout, with callnet installed (C{pip install .}) in the
Python that runs it:

    .venv/bin/python benchmarks/cluster_scale.py --sizes 8,16,32

Linux only: CPU time and memory come from C{/proc}.  Results are printed as
a table and written as JSON (C{--output}).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

TWISTD = Path(sys.executable).parent / "twistd"
#: The first node's address; the others follow it.
FIRST_HOST = 10
#: How long a node may take to listen, and the cluster to converge.
START_TIMEOUT = 120.0
CONVERGE_TIMEOUT = 180.0
#: The DNS records' TTL.  Every record is there from the start, so a node
#: needs one lookup; a long TTL keeps lookups out of the figures at rest.
TTL = 60

PROBE = '''
import os

from callnet import procedure


@procedure(run="reactor", idempotent=True)
def where() -> str:
    """The node that answered."""
    return os.environ["SCALE_NODE"]
'''


class Line:
    """A blocking line connection to a node."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def request(self, text: str) -> str:
        self.send(text.encode() + b"\n")
        return self.line()

    def peers(self) -> dict[str, str]:
        reply = self.request("#s STATS")
        assert reply.startswith("#s OK "), reply
        stats = json.loads(reply[len("#s OK ") :])
        return {name: peer["state"] for name, peer in stats.get("peers", {}).items()}

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def shared_port(hosts: list[str]) -> int:
    """A port free on every host now (nodes bind it a moment later; a clash is retried)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise SystemExit(f"no port free on all of {hosts[0]}..{hosts[-1]}")


class DnsServer:
    """An authoritative DNS server on 127.0.0.1, on its own reactor thread."""

    def __init__(self, zone: str, records: dict[str, list[str]]) -> None:
        from twisted.internet.selectreactor import SelectReactor
        from twisted.names import authority, dns, server

        class Zone(authority.FileAuthority):
            def __init__(self) -> None:
                super().__init__(None)

            def loadFile(self, filename: object) -> None:
                self.soa = (
                    zone.encode(),
                    dns.Record_SOA(mname=f"ns.{zone}", rname=f"root.{zone}", minimum=TTL, ttl=TTL),
                )
                self.records = {
                    name.encode(): [dns.Record_A(address, ttl=TTL) for address in addresses]
                    for name, addresses in records.items()
                }

        self.reactor = SelectReactor()
        factory = server.DNSServerFactory(authorities=[Zone()])
        # The nodes ask over TCP.
        self.port = self.reactor.listenTCP(0, factory, interface="127.0.0.1").getHost().port
        self.thread = threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(timeout=10)


class Cluster:
    """N running nodes, named n00, n01, ..., on 127.0.0.10, 127.0.0.11, ..."""

    def __init__(self, size: int, where: Path, settings: dict[str, float], peers: str) -> None:
        self.names = [f"n{i:02d}" for i in range(size)]
        self.hosts = {name: f"127.0.0.{FIRST_HOST + i}" for i, name in enumerate(self.names)}
        self.where = where
        self.settings = settings
        self.peers = peers
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.dns: DnsServer | None = None
        self.port = 0

    def config(self, name: str) -> str:
        lines = [
            "[node]",
            f'name = "{name}"',
            f'listen = ["tcp:{self.port}:interface={self.hosts[name]}"]',
            # The first node serves no probe: every call of it is forwarded.
            f"services = {json.dumps([] if name == self.names[0] else ['scale_probe'])}",
            "",
            "[cluster]",
            *(f"{key} = {value}" for key, value in self.settings.items()),
        ]
        if self.peers == "dns":
            assert self.dns is not None
            lines += [
                f'discover = "dns-a:nodes.scale.test:{self.port}"',
                f'discover_nameservers = ["127.0.0.1:{self.dns.port}"]',
                "discover_min_interval = 1.0",
            ]
        else:
            lines += ["", "[peers]"]
            lines += [
                f'{other} = "tcp:{self.hosts[other]}:{self.port}"'
                for other in self.names
                if other != name
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> float:
        """Start every node; return the seconds until the last one listens."""
        (self.where / "scale_probe.py").write_text(PROBE)
        for attempt in range(3):
            self.port = shared_port(list(self.hosts.values()))
            if self.peers == "dns":
                self.dns = DnsServer("scale.test", {"nodes.scale.test": list(self.hosts.values())})
            started = time.monotonic()
            for name in self.names:
                (self.where / f"{name}.toml").write_text(self.config(name))
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                env["SCALE_NODE"] = name
                with (self.where / f"{name}.log").open("wb") as out:
                    self.processes[name] = subprocess.Popen(
                        [str(TWISTD), "-n", "--pidfile=", "callnet", "--config", f"{name}.toml"],
                        cwd=self.where,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
            if self._all_listening():
                return time.monotonic() - started
            print(f"  port {self.port} was taken meanwhile; again (attempt {attempt + 2})")
            self.stop()
        raise SystemExit("the nodes could not start; see the logs in " + str(self.where))

    def _all_listening(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = set(self.names)
        while waiting:
            for name in sorted(waiting):
                process = self.processes[name]
                log = (self.where / f"{name}.log").read_text(errors="replace")
                if process.poll() is not None:
                    if "Address already in use" in log:
                        return False
                    raise SystemExit(f"{name} exited:\n{log[-3000:]}")
                if " serving " in log:
                    waiting.discard(name)
            if time.monotonic() > deadline:
                raise SystemExit(f"not listening within {START_TIMEOUT}s: {sorted(waiting)}")
            threading.Event().wait(0.05)
        return True

    def connect(self, name: str) -> Line:
        return Line(self.hosts[name], self.port)

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def stop(self) -> None:
        for process in self.processes.values():
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
        for process in self.processes.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()
        if self.dns is not None:
            self.dns.stop()
            self.dns = None


def wait_for(what: Callable[[], bool], timeout: float, pause: float = 0.02) -> float:
    """Poll until C{what} holds; return the seconds it took, or raise after C{timeout}."""
    started = time.monotonic()
    while not what():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not within {timeout}s")
        threading.Event().wait(pause)
    return time.monotonic() - started


def converged(lines: dict[str, Line], names: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        for name, line in lines.items():
            states = line.peers()
            if any(states.get(other) != "up" for other in names if other != name):
                return False
        return True

    return check


def forwarded_rate(line: Line, seconds: float, window: int = 200) -> float:
    """Pipelined calls of C{where} on the first node (each forwarded): answers per second."""
    sent = answered = 0
    started = time.monotonic()
    end = started + seconds
    while sent < window:
        line.send(f"#{sent} where\n".encode())
        sent += 1
    while answered < sent:
        reply = line.line()
        assert " OK " in reply, reply
        answered += 1
        if time.monotonic() < end:
            line.send(f"#{sent} where\n".encode())
            sent += 1
    return answered / (time.monotonic() - started)


class Caller(threading.Thread):
    """Calls C{where} on the first node one after another, noting how long each took."""

    def __init__(self, line: Line) -> None:
        super().__init__(daemon=True)
        self.line = line
        self.calls: list[tuple[float, float, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        tag = 0
        while not self.stopping.is_set():
            tag += 1
            began = time.monotonic()
            reply = self.line.request(f"#c{tag} +timeout=10 where")
            self.calls.append((began, time.monotonic() - began, reply))


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    settings = {
        "heartbeat_interval": args.heartbeat,
        "down_after": args.down_after,
        "reconnect_max_delay": 1.0,
    }
    where = Path(tempfile.mkdtemp(prefix=f"callnet-scale-{size}-"))
    cluster = Cluster(size, where, settings, args.peers)
    result: dict[str, Any] = {"nodes": size, "peers": args.peers, **settings}
    began = time.monotonic()
    try:
        result["start_s"] = cluster.start()
        lines = {name: cluster.connect(name) for name in cluster.names}
        result["converge_after_listening_s"] = wait_for(
            converged(lines, cluster.names), CONVERGE_TIMEOUT, pause=0.1
        )
        result["converge_s"] = time.monotonic() - began
        print(f"  converged in {result['converge_s']:.1f}s", flush=True)

        # At rest: heartbeats only.
        threading.Event().wait(2.0)
        before = {name: cpu_seconds(cluster.pid(name)) for name in cluster.names}
        threading.Event().wait(args.rest)
        cpu = [
            100 * (cpu_seconds(cluster.pid(name)) - before[name]) / args.rest
            for name in cluster.names
        ]
        rss = [rss_mib(cluster.pid(name)) for name in cluster.names]
        result["rest_cpu_percent_per_node"] = statistics.median(cpu)
        result["rest_cpu_percent_total"] = sum(cpu)
        result["rss_mib_per_node"] = statistics.median(rss)
        print(
            f"  at rest: {statistics.median(cpu):.2f}% CPU and"
            f" {statistics.median(rss):.1f} MiB per node",
            flush=True,
        )

        first = cluster.names[0]
        result["forwarded_calls_per_s"] = forwarded_rate(cluster.connect(first), args.seconds)
        print(f"  forwarded: {result['forwarded_calls_per_s']:.0f} calls/s", flush=True)

        # A node that hangs: heartbeats must find it.
        frozen = cluster.names[-1]
        caller = Caller(cluster.connect(first))
        caller.start()
        threading.Event().wait(0.5)
        others = {name: line for name, line in lines.items() if name != frozen}
        cluster.processes[frozen].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        result["frozen_detect_first_s"] = wait_for(
            lambda: lines[first].peers().get(frozen) == "down", 60
        )
        wait_for(lambda: all(line.peers().get(frozen) == "down" for line in others.values()), 60)
        result["frozen_detect_all_s"] = time.monotonic() - stopped
        threading.Event().wait(0.5)
        caller.stopping.set()
        caller.join(timeout=15)
        after = [(at, took, reply) for at, took, reply in caller.calls if at + took >= stopped]
        result["frozen_longest_wait_s"] = max((took for _, took, _ in after), default=0.0)
        result["frozen_failed_calls"] = sum(1 for *_, reply in after if " OK " not in reply)
        print(
            f"  frozen node: down on {first} after {result['frozen_detect_first_s']:.2f}s,"
            f" everywhere after {result['frozen_detect_all_s']:.2f}s; longest wait"
            f" {result['frozen_longest_wait_s']:.2f}s, {result['frozen_failed_calls']} failed",
            flush=True,
        )
        cluster.processes[frozen].send_signal(signal.SIGCONT)
        lines.pop(frozen).close()

        # A node that crashes: its sockets close.
        killed = cluster.names[-2]
        cluster.processes[killed].kill()
        gone = time.monotonic()
        lines.pop(killed).close()
        wait_for(lambda: all(line.peers().get(killed) == "down" for line in lines.values()), 60)
        result["killed_detect_all_s"] = time.monotonic() - gone
        print(f"  killed node: down everywhere after {result['killed_detect_all_s']:.2f}s")
        for line in lines.values():
            line.close()
    finally:
        cluster.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,16,32", help="cluster sizes (default 8,16,32)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat_interval")
    parser.add_argument("--down-after", type=float, default=3.0, help="down_after")
    parser.add_argument("--rest", type=float, default=10.0, help="seconds measured at rest")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of forwarded calls")
    parser.add_argument("--peers", choices=("dns", "static"), default="dns")
    parser.add_argument("--output", default="benchmarks/results/cluster_scale.json")
    args = parser.parse_args()
    if not TWISTD.exists():
        raise SystemExit(f"no twistd next to {sys.executable}: pip install . first")
    results = []
    for size in (int(n) for n in args.sizes.split(",")):
        print(f"{size} nodes", flush=True)
        results.append(measure(size, args))
    columns = [
        ("nodes", "N", "{:d}"),
        ("converge_s", "converge s", "{:.1f}"),
        ("converge_after_listening_s", "after listen s", "{:.1f}"),
        ("rest_cpu_percent_per_node", "CPU %/node", "{:.2f}"),
        ("rest_cpu_percent_total", "CPU % all", "{:.1f}"),
        ("rss_mib_per_node", "RSS MiB/node", "{:.1f}"),
        ("forwarded_calls_per_s", "fwd calls/s", "{:.0f}"),
        ("frozen_detect_first_s", "hang seen s", "{:.2f}"),
        ("frozen_detect_all_s", "hang all s", "{:.2f}"),
        ("frozen_longest_wait_s", "longest wait s", "{:.2f}"),
        ("killed_detect_all_s", "crash all s", "{:.2f}"),
    ]
    print("| " + " | ".join(title for _, title, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for result in results:
        print("| " + " | ".join(form.format(result[key]) for key, _, form in columns) + " |")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
