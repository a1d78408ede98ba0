"""
Run the benchmark suite: start each system's server process, run a client
process per system, workload and run, and report medians and ratios.

    python benchmarks/run.py [--quick | --smoke] [--systems a,b] [--workloads x,y]
                             [--callnet REV] [--baseline REV]

It prints a table, and writes benchmarks/results/latest.json and
benchmarks/results/latest.png.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import CLIENT_GRACE, HOST, RESULT_PREFIX, Spec  # noqa: E402
from benchmarks.systems import MEMORY, SERVERS, STREAM, SYSTEMS, System  # noqa: E402

#: Seconds a server has to start listening.
SERVER_START_TIMEOUT = 30.0
#: Extra seconds the runner gives a client process beyond its own limit.
CLIENT_SLACK = 15.0
#: A callnet node for the idle-memory workload must accept this many.
IDLE_MAX_CONNECTIONS = 20000

MIB = 1024 * 1024

WORKLOAD_TITLES = {
    "seq": "one connection, one call in flight",
    "pipe": "one connection, 100 calls in flight",
    "conc": "50 connections, one call in flight each",
    "sync1": "blocking calls from 1 thread",
    "sync16": "blocking calls from 16 threads",
    "large-1k": "1 KiB string echoed, one call in flight",
    "large-1m": "1 MiB string echoed, one call in flight",
    "idle-mem": "callnet node RSS per idle connection",
    "leak": "callnet node RSS as calls accumulate",
    "large-mem": "callnet node peak RSS while echoing 1 MiB values",
    "stream": "one stream of small items (ints), taken as fast as the client can",
    "stream-1m": "one stream of 1 MiB strings",
}
THROUGHPUT = ("seq", "pipe", "conc", "sync1", "sync16", "large-1k", "large-1m", *STREAM)
WORKLOADS = THROUGHPUT + MEMORY


@dataclass
class Preset:
    """Bounds of every workload, and how many runs make a figure."""

    name: str
    runs: int
    memory_runs: int
    leak_runs: int
    specs: dict[str, Spec] = field(default_factory=dict)


def _specs(seconds: float, scale: float, warmup: int, idle: list[int], leak: list[int]) -> dict:
    def n(count: int) -> int:
        return max(1, int(count * scale))

    return {
        "seq": Spec("seq", n(20000), seconds, warmup=warmup),
        "pipe": Spec("pipe", n(200000), seconds, inflight=100, warmup=warmup),
        "conc": Spec("conc", n(200000), seconds, conns=50, warmup=warmup),
        "sync1": Spec("sync1", n(20000), seconds, threads=1, warmup=warmup),
        "sync16": Spec("sync16", n(100000), seconds, threads=16, warmup=warmup),
        "large-1k": Spec("large-1k", n(20000), seconds, size=1024, warmup=warmup),
        "large-1m": Spec(
            "large-1m", max(5, n(200)), seconds, size=MIB, warmup=max(1, warmup // 100)
        ),
        "idle-mem": Spec("idle-mem", 0, 120.0, steps=idle, warmup=0),
        "leak": Spec("leak", 0, 300.0, inflight=100, warmup=warmup, steps=leak),
        "large-mem": Spec("large-mem", max(5, n(200)), 60.0, size=MIB, warmup=0),
        "stream": Spec("stream", n(1_000_000), seconds, warmup=warmup),
        "stream-1m": Spec(
            "stream-1m", max(5, n(2000)), seconds, size=MIB, warmup=max(1, warmup // 100)
        ),
    }


PRESETS = {
    "full": Preset("full", 5, 3, 1, _specs(2.0, 1.0, 500, [1000, 10000], [100_000, 1_000_000])),
    "quick": Preset("quick", 3, 3, 1, _specs(1.0, 0.25, 200, [1000, 10000], [10_000, 100_000])),
    "smoke": Preset("smoke", 1, 1, 1, _specs(1.0, 0.01, 20, [100, 1000], [2_000, 20_000])),
}


# --- Processes -------------------------------------------------------------------


#: The suffix of a callnet system measured as the baseline revision
#: (C{--baseline}): C{callnet-async@base} is C{callnet-async} importing the
#: baseline's callnet.
BASELINE = "@base"


def variant(name: str) -> str:
    """C{BASELINE} if a measured system's name is a baseline one, else C{""}."""
    return BASELINE if name.endswith(BASELINE) else ""


def system_of(name: str) -> System:
    """The system a measured name stands for (C{callnet-async@base}: C{callnet-async})."""
    return SYSTEMS[name.removesuffix(BASELINE)]


def child_env(callnet_path: Path) -> dict[str, str]:
    """
    A callnet snapshot (the folder holding its C{callnet/}), then the checkout
    (the benchmarks package) on the path.  The snapshot is a copy made at the
    start of the run (see L{snapshot_callnet}), so that edits made to the
    checkout while the suite runs do not mix versions within one run.
    Children also run in the snapshot's folder: C{python -m} puts the current
    folder first on the path, and the checkout's would win.
    """
    env = dict(os.environ)
    paths = [str(callnet_path), str(ROOT), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, timeout=60, check=False
    )
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode(errors="replace").strip()


def snapshot_callnet(source: str, into: Path) -> dict[str, Any]:
    """
    Copy the callnet package into C{into}: the working tree's as it is now
    (C{source="worktree"}), or as committed at a git revision.  Say which
    commit it is, which files of the working tree differ from it, and the
    git tree id of the package (None for a working tree that differs), by
    which two snapshots are seen to hold the same code.
    """
    if source == "worktree":
        shutil.copytree(
            ROOT / "callnet", into / "callnet", ignore=shutil.ignore_patterns("__pycache__")
        )
        try:
            commit = _git("rev-parse", "--short", "HEAD")
            modified = _git("status", "--porcelain", "--", "callnet").splitlines()
            tree = None if modified else _git("rev-parse", "HEAD:callnet")
        except (RuntimeError, OSError):
            commit, modified, tree = "unknown", [], None
        return {
            "source": source,
            "commit": commit,
            "modified": modified,
            "tree": tree,
            "path": str(into),
        }
    try:
        commit = _git("rev-parse", "--short", "--verify", f"{source}^{{commit}}")
        tree = _git("rev-parse", f"{commit}:callnet")
    except (RuntimeError, OSError) as e:
        raise RuntimeError(f"{source} is not a git revision with a callnet package: {e}") from e
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "callnet"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return {"source": source, "commit": commit, "modified": [], "tree": tree, "path": str(into)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """
    A server process of one adapter, listening on a port of its own, and
    importing callnet from the snapshot in C{callnet_path}, as the clients
    run against it do.  C{label} names it in messages and its log file.
    """

    def __init__(
        self,
        python: str,
        kind: str,
        logs: Path,
        callnet_path: Path,
        extra: list[str] | None = None,
        label: str | None = None,
    ):
        self.kind = kind
        self.label = label or kind
        self.callnet_path = callnet_path
        self.port = free_port()
        self.log_path = logs / f"server-{self.label}-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        command = [python, "-m", f"benchmarks.systems.{SERVERS[kind]}", "server", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *(extra or [])],
            cwd=callnet_path,
            env=child_env(callnet_path),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} server exited at start; see {self.log_path}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.label} server did not listen within {SERVER_START_TIMEOUT}s")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@contextlib.contextmanager
def server(
    python: str, kind: str, logs: Path, callnet_path: Path, extra: list[str] | None = None
) -> Iterator[Any]:
    started = ServerProcess(python, kind, logs, callnet_path, extra)
    try:
        yield started
    finally:
        started.stop()


def run_client(python: str, system: System, spec: Spec, srv: ServerProcess) -> dict[str, Any]:
    """
    Run one client process, importing callnet from the same snapshot as its
    server; return its result, or one with an C{error}.
    """
    command = [
        python,
        "-m",
        f"benchmarks.systems.{system.module}",
        "client",
        system.flavor,
        "--port",
        str(srv.port),
        "--server-pid",
        str(srv.pid),
        *spec.to_args(),
    ]
    limit = spec.seconds + CLIENT_GRACE + CLIENT_SLACK
    try:
        done = subprocess.run(
            command,
            cwd=srv.callnet_path,
            env=child_env(srv.callnet_path),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"client did not finish within {limit:g}s"}
    for line in reversed(done.stdout.decode(errors="replace").splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
    return {"error": f"client exited {done.returncode}: {' | '.join(tail)}"}


def importable(python: str, modules: tuple[str, ...], callnet_path: Path) -> str | None:
    """None if the modules import in the client interpreter, else why not."""
    for module in modules:
        statement = (
            "from callnet.blocking import BlockingClient"
            if module == "callnet.blocking"
            else f"import {module}"
        )
        done = subprocess.run(
            [python, "-c", statement],
            cwd=callnet_path,
            env=child_env(callnet_path),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode:
            last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            return f"{module} is not available ({' '.join(last)})"
    return None


def machine(python: str, callnet_path: Path) -> dict[str, str]:
    probe = (
        "import platform, twisted, json, callnet; v = {'python': platform.python_version(),"
        " 'twisted': twisted.__version__, 'callnet_path': callnet.__path__[0]}\n"
        "for m in ('crochet', 'rpyc', 'Pyro5', 'grpc', 'matplotlib', 'psutil'):\n"
        "    try:\n"
        "        v[m] = __import__(m).__version__\n"
        "    except Exception:\n"
        "        v[m] = 'missing'\n"
        "print(json.dumps(v))"
    )
    done = subprocess.run(
        [python, "-c", probe],
        cwd=callnet_path,
        env=child_env(callnet_path),
        capture_output=True,
        timeout=60,
        check=False,
    )
    versions = json.loads(done.stdout) if done.returncode == 0 else {}
    return {"machine": platform.machine(), "nproc": str(os.cpu_count()), **versions}


# --- Statistics -------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r and r.get("calls")]

    def median(key: str) -> float | None:
        values = [r[key] for r in good if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "runs": runs,
        "calls_per_s": spread([r["calls_per_s"] for r in good]),
        "bytes_per_s": spread([r["bytes_per_s"] for r in good if r.get("bytes_per_s")]),
        "p50_us": median("p50_us"),
        "p99_us": median("p99_us"),
        "server_cpu_us_per_call": median("server_cpu_us_per_call"),
        "client_cpu_us_per_call": median("client_cpu_us_per_call"),
        "server_peak_bytes": median("server_peak_bytes"),
        "client_peak_bytes": median("client_peak_bytes"),
        "errors": sum(r.get("errors", 0) for r in good),
        "failed_runs": len(runs) - len(good),
    }


def paired_ratio(
    mine: list[dict[str, Any]], other: list[dict[str, Any]]
) -> dict[str, float] | None:
    """
    The spread of C{mine}'s calls/s over C{other}'s, run by run: run I of one
    against run I of the other, which ran next to it (runs are interleaved),
    so that what else the machine did at the time weighs on both.  A pair
    where either run failed counts for nothing.
    """
    paired = [
        a["calls_per_s"] / b["calls_per_s"]
        for a, b in zip(mine, other, strict=False)
        if "error" not in a and "error" not in b and a.get("calls") and b.get("calls")
    ]
    return spread(paired)


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float] | None]:
    """callnet / peer throughput, run by run, per pair (the baseline's callnet aside)."""
    out: dict[str, dict[str, float] | None] = {}
    names = list(results)
    for mine in (n for n in names if system_of(n).callnet and not variant(n)):
        for peer in (n for n in names if not system_of(n).callnet):
            out[f"{mine}/{peer}"] = paired_ratio(results[mine]["runs"], results[peer]["runs"])
    return out


#: What issue 16 (item 8) holds streams to: a stream's items/s at least this
#: many times the node's pipelined calls/s ...
STREAM_OVER_PIPE = 1.5
#: ... and gRPC Python's server streaming items/s;
STREAM_OVER_GRPC = 5.0
#: and a stream of 1 MiB items at least this share of a raw socket copy's bytes/s.
STREAM_1M_OVER_COPY = 0.8
#: The system whose stream-1m is the ceiling.
COPY = "socket-copy"


def stream_ratios(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Streams against their targets, run by run as every ratio: each callnet
    system's C{stream} items/s over C{callnet-async}'s C{pipe} calls/s (and
    over its own C{pipe}, where it ran one), over each gRPC system's
    C{stream} items/s; and its C{stream-1m} bytes/s over C{socket-copy}'s.
    C{results} holds the aggregates by workload, then system.
    """
    rows: list[dict[str, Any]] = []

    def add(mine: tuple[str, str], other: tuple[str, str], target: float) -> None:
        """One row: (system, workload) over (system, workload)."""
        (s1, w1), (s2, w2) = mine, other
        if s1 not in results.get(w1, {}) or s2 not in results.get(w2, {}):
            return
        ratio = paired_ratio(results[w1][s1]["runs"], results[w2][s2]["runs"])
        rows.append(
            {
                "what": f"{s1} {w1} / {s2} {w2}",
                "ratio": ratio,
                "target": target,
                "met": None if ratio is None else ratio["median"] >= target,
            }
        )

    def callnet_in(workload: str) -> list[str]:
        return [n for n in results.get(workload, {}) if system_of(n).callnet and not variant(n)]

    grpc = [n for n in results.get("stream", {}) if n.startswith("grpc-")]
    for name in callnet_in("stream"):
        add((name, "stream"), ("callnet-async", "pipe"), STREAM_OVER_PIPE)
        if name != "callnet-async":
            add((name, "stream"), (name, "pipe"), STREAM_OVER_PIPE)
        for peer in grpc:
            add((name, "stream"), (peer, "stream"), STREAM_OVER_GRPC)
    for name in callnet_in("stream-1m"):
        add((name, "stream-1m"), (COPY, "stream-1m"), STREAM_1M_OVER_COPY)
    return rows


def stream_lines(data: dict[str, Any]) -> list[str]:
    """The section "streams against their targets", as text (nothing without stream runs)."""
    rows = data.get("stream_ratios") or []
    if not rows:
        return []
    width = max(len(row["what"]) for row in rows)
    lines = [
        "== streams against their targets (issue 16, item 8)",
        "(items/s over calls/s or items/s, stream-1m: bytes/s over bytes/s; paired runs:"
        " median [min..max])",
    ]
    for row in rows:
        s = row["ratio"]
        shown = f"{s['median']:>6.2f}  [{s['min']:.2f}..{s['max']:.2f}]" if s else "failed"
        verdict = {True: "met", False: "missed", None: "-"}[row["met"]]
        lines.append(f"{row['what']:<{width}} {shown:<22} target >= {row['target']:g}: {verdict}")
    return lines


def baseline_ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float] | None]:
    """New / baseline throughput of each callnet system, run by run."""
    return {
        name: paired_ratio(results[name]["runs"], results[name + BASELINE]["runs"])
        for name in results
        if not variant(name) and name + BASELINE in results
    }


# --- Report -------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _rate(s: dict[str, float] | None) -> str:
    if s is None:
        return "failed"
    return f"{_n(s['median'])} [{_n(s['min'])}..{_n(s['max'])}]"


def _revision(source: dict[str, Any]) -> str:
    """What a callnet snapshot is: C{worktree at 1a2b3c4, 2 file(s) changed}, C{main at ...}."""
    rev, commit = source["source"], source["commit"]
    if source["modified"]:
        changed = f", {len(source['modified'])} file(s) changed"
    elif rev == "worktree" and source["tree"] is not None:
        changed = ", unchanged"
    else:
        changed = ""
    if commit.startswith(rev) or rev.startswith(commit):
        return f"{commit}{changed}"
    return f"{rev} at {commit}{changed}"


def report(data: dict[str, Any]) -> str:
    lines = []
    names = [name for results in data["results"].values() for name in results]
    width = max([17, *map(len, names)])
    m = data["machine"]
    lines.append(
        f"machine: {m.get('machine')}, {m.get('nproc')} CPUs; python {m.get('python')},"
        f" twisted {m.get('twisted')}; crochet {m.get('crochet')}, rpyc {m.get('rpyc')},"
        f" Pyro5 {m.get('Pyro5')}, grpcio {m.get('grpc')}"
    )
    lines.append(f"callnet: {_revision(data['callnet'])}")
    base = data.get("baseline")
    if base:
        same = base["tree"] is not None and base["tree"] == data["callnet"]["tree"]
        lines.append(
            f"baseline ({BASELINE}): {_revision(base)}"
            + ("; the same callnet code as the one measured" if same else "")
        )
    lines.append(
        f"preset {data['preset']}: each figure the median of {data['runs']} run(s),"
        " [min..max] across runs"
    )
    for name, why in data["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    for workload, results in data["results"].items():
        lines.append("")
        lines.append(f"== {workload}: {WORKLOAD_TITLES[workload]}")
        unit = "item" if workload in STREAM else "call"
        lines.append(
            f"{'system':<{width}} {unit + 's/s median [min..max]':<32} {'p50 us':>9}"
            f" {'p99 us':>9} {'CPU us/' + unit + ': server':>19} {'client':>7}"
        )
        for system, r in results.items():
            flag = ""
            if r["errors"]:
                flag += f"  ({r['errors']} call errors)"
            if r["failed_runs"]:
                errors = {x["error"] for x in r["runs"] if "error" in x}
                flag += f"  ({r['failed_runs']} failed runs: {'; '.join(errors)[:200]})"
            lines.append(
                f"{system:<{width}} {_rate(r['calls_per_s']):<32} {_n(r['p50_us']):>9}"
                f" {_n(r['p99_us']):>9} {_n(r['server_cpu_us_per_call'], 1):>19}"
                f" {_n(r['client_cpu_us_per_call'], 1):>7}{flag}"
            )
        pairs = data["ratios"].get(workload) or {}
        mine = list(dict.fromkeys(k.split("/")[0] for k in pairs))
        peers = list(dict.fromkeys(k.split("/")[1] for k in pairs))
        if mine and peers:
            lines.append(f"ratio of {unit}s/s, callnet / peer (median of paired runs):")
            lines.append(f"{'':<{width}} " + " ".join(f"{p:>13}" for p in peers))
            for a in mine:
                cells = []
                for p in peers:
                    s = pairs.get(f"{a}/{p}")
                    cells.append(f"{s['median']:>13.2f}" if s else f"{'-':>13}")
                lines.append(f"{a:<{width}} " + " ".join(cells))
        moved = {n: r["bytes_per_s"] for n, r in results.items() if r.get("bytes_per_s")}
        if moved:
            lines.append("MiB/s of items' payload, median [min..max]:")
            for system, b in moved.items():
                lines.append(
                    f"{system:<{width}} {b['median'] / MIB:,.0f}"
                    f" [{b['min'] / MIB:,.0f}..{b['max'] / MIB:,.0f}]"
                )
        size = data["specs"].get(workload, {}).get("size", 0)
        if size >= MIB:
            lines.append(
                "peak RSS above RSS at the start of the run, in payloads (server, client):"
            )
            for system, r in results.items():
                server_peak, client_peak = r.get("server_peak_bytes"), r.get("client_peak_bytes")
                if server_peak is not None and client_peak is not None:
                    lines.append(
                        f"{system:<{width}} {server_peak / size:>6.1f} {client_peak / size:>6.1f}"
                    )
    streams = stream_lines(data)
    if streams:
        lines.append("")
        lines.extend(streams)
    against = baseline_lines(data)
    if against:
        lines.append("")
        lines.extend(against)
    memory = memory_lines(data)
    if memory:
        lines.append("")
        lines.extend(memory)
    lines.append("")
    load = data["load_average"]
    lines.append(
        f"wall time {data['wall_seconds']:.0f} s; 1-minute load average"
        f" {load['before'][0]:.2f} before, {load['after'][0]:.2f} after"
    )
    return "\n".join(lines)


def baseline_lines(data: dict[str, Any]) -> list[str]:
    """The section "against the baseline", as text (nothing without C{--baseline})."""
    base = data.get("baseline")
    if not base:
        return []
    lines = [
        f"== against the baseline: calls/s of callnet {_revision(data['callnet'])}"
        f" / of callnet {_revision(base)}",
        f"(each callnet system against its {BASELINE} twin, run by run: median [min..max];"
        " above 1, the new one did more calls/s)",
        f"{'workload':<9} {'system':<17} {'ratio':>6}  [min..max]",
    ]
    for workload, by_system in data["against_baseline"].items():
        for system, s in by_system.items():
            shown = f"{s['median']:>6.2f}  [{s['min']:.2f}..{s['max']:.2f}]" if s else "failed"
            lines.append(f"{workload:<9} {system:<17} {shown}")
    return lines


def memory_lines(data: dict[str, Any]) -> list[str]:
    """The idle-mem, leak and large-mem figures, as text."""
    lines: list[str] = []
    memory = data["memory"]
    if "idle-mem" in memory:
        idle = memory["idle-mem"]
        lines.append(f"== idle-mem: {WORKLOAD_TITLES['idle-mem']}")
        lines.append("(server RSS minus its baseline, divided by the connections)")
        if idle.get("error"):
            lines.append(f"failed: {idle['error']}")
        for count, s in idle.get("kib_per_conn", {}).items():
            lines.append(
                f"{int(count):>6} idle connections: {s['median']:.2f} KiB per connection"
                f" [{s['min']:.2f}..{s['max']:.2f}]"
            )
        if idle.get("baseline_rss_mib"):
            b = idle["baseline_rss_mib"]
            lines.append(f"baseline RSS {b['median']:.1f} MiB")
    if "leak" in memory:
        leak = memory["leak"]
        lines.append("")
        lines.append(f"== leak: {WORKLOAD_TITLES['leak']} (pipelined add, raw client)")
        for run in leak.get("runs", []):
            if "error" in run:
                lines.append(f"failed: {run['error']}")
                continue
            for step in run["steps"]:
                lines.append(f"{step['calls']:>10,} calls: RSS {step['rss_mib']:.1f} MiB")
            per_call = run.get("growth_bytes_per_call")
            lines.append(
                f"growth {run['growth_kib']:.0f} KiB ({_n(per_call, 3)} bytes/call)"
                f" at {_n(run['calls_per_s'])} calls/s"
                f"{'' if run.get('complete') else ' (time bound hit before the last step)'}"
                f"{', ' + str(run['errors']) + ' call errors' if run.get('errors') else ''}"
            )
    if "large-mem" in memory:
        large = memory["large-mem"]
        lines.append("")
        lines.append(f"== large-mem: {WORKLOAD_TITLES['large-mem']} (raw client, fresh node)")
        lines.append("(peak RSS minus idle RSS, in payloads: copies, slack, memory kept to reuse)")
        if large.get("error"):
            lines.append(f"failed: {large['error']}")
        else:
            s, mib = large["payloads"], large["peak_growth_mib"]
            lines.append(
                f"peak {s['median']:.1f} payloads [{s['min']:.1f}..{s['max']:.1f}]"
                f" = {mib['median']:.1f} MiB above idle"
            )
    return lines


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w, r in data["results"].items() if r]
    memory = memory_lines(data)
    panels = len(workloads) + (1 if memory else 0)
    if not panels:
        return
    cols = 2
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.2 * rows), squeeze=False)
    for ax, workload in zip(axes.flat, workloads, strict=False):
        results = data["results"][workload]
        names = [n for n, r in results.items() if r["calls_per_s"]]
        medians = [results[n]["calls_per_s"]["median"] for n in names]
        low = [m - results[n]["calls_per_s"]["min"] for n, m in zip(names, medians, strict=True)]
        high = [results[n]["calls_per_s"]["max"] - m for n, m in zip(names, medians, strict=True)]
        colors = [
            ("lightsteelblue" if variant(n) else "tab:blue")
            if system_of(n).callnet
            else "tab:gray"
            for n in names
        ]
        ax.barh(names, medians, xerr=[low, high], color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_title(f"{workload}: {WORKLOAD_TITLES[workload]}", fontsize=10)
        ax.set_xlabel("calls/s (median, bars min..max)", fontsize=8)
        ax.tick_params(labelsize=8)
        for y, (name, value) in enumerate(zip(names, medians, strict=True)):
            right = results[name]["calls_per_s"]["max"]
            ax.text(right, y, f"  {value:,.0f}", va="center", fontsize=7)
        ax.set_xlim(0, max(results[n]["calls_per_s"]["max"] for n in names) * 1.18)
    spare = list(axes.flat)[len(workloads) :]
    for ax in spare:
        ax.axis("off")
    if memory:
        spare[0].set_title("callnet node memory", fontsize=10)
        spare[0].text(0, 1, "\n".join(memory), va="top", fontsize=8, family="monospace")
    m = data["machine"]
    fig.suptitle(
        f"callnet benchmarks ({data['preset']}): {m.get('machine')}, {m.get('nproc')} CPUs,"
        f" Python {m.get('python')}, Twisted {m.get('twisted')}; blue = callnet"
        + (f" (light: {BASELINE}, the baseline)" if data.get("baseline") else ""),
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- Main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="shorter bounds, 3 runs (~3 min)")
    mode.add_argument("--smoke", action="store_true", help="tiny counts, one run (<1 min)")
    parser.add_argument("--systems", help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    parser.add_argument("--workloads", help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    parser.add_argument("--runs", type=int, help="runs per figure (default: the preset's)")
    parser.add_argument("--seconds", type=float, help="time bound of each throughput run")
    parser.add_argument(
        "--scale", type=float, help="multiply the call-count bound of each throughput run"
    )
    parser.add_argument(
        "--callnet",
        default="worktree",
        metavar="REV",
        help="measure callnet as in the working tree (default) or as committed at git REV",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help=f"also measure each callnet system as committed at git REV (as NAME{BASELINE}),"
        " runs interleaved, and report the ratios new / baseline",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter of the server and client processes"
    )
    return parser.parse_args(argv)


def _chosen(text: str | None, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    if not text:
        return list(known)
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        sys.exit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="callnet-bench-") as snapshot:
        # Each callnet measured gets a folder of its own, put on the path of
        # its servers and clients alone.
        wanted = {"": (args.callnet, "new")}
        if args.baseline:
            wanted[BASELINE] = (args.baseline, "base")
        try:
            sources = {
                key: snapshot_callnet(rev, Path(snapshot) / folder)
                for key, (rev, folder) in wanted.items()
            }
        except RuntimeError as e:
            sys.exit(str(e))
        return run_suite(args, sources)


def run_suite(args: argparse.Namespace, sources: dict[str, dict[str, Any]]) -> int:
    """
    Measure, report and write the results.  C{sources} holds the callnet
    snapshots by variant: C{""} is the one measured, L{BASELINE} the baseline.
    """
    folders = {key: Path(source["path"]) for key, source in sources.items()}
    preset = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    runs = args.runs or preset.runs
    specs = dict(preset.specs)
    for name in THROUGHPUT:
        if args.seconds:
            specs[name] = replace(specs[name], seconds=args.seconds)
        if args.scale:
            specs[name] = replace(specs[name], count=max(1, int(specs[name].count * args.scale)))
    systems = _chosen(args.systems, list(SYSTEMS), "systems")
    workloads = _chosen(args.workloads, WORKLOADS, "workloads")
    python = args.python
    args.output.mkdir(parents=True, exist_ok=True)
    logs = args.output / "logs"
    logs.mkdir(exist_ok=True)
    for old_log in logs.glob("server-*.log"):
        old_log.unlink()
    started = time.monotonic()
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(
            f"note: load average {load_before[0]:.2f} before the run; other work on this"
            " machine will show in the figures"
        )

    # Each callnet system is followed by its baseline twin, so that in every
    # run the two are measured one after the other.
    measured = [
        name + key for name in systems for key in sources if not key or SYSTEMS[name].callnet
    ]
    skipped: dict[str, str] = {}
    for name in measured:
        needs = system_of(name).needs
        why = importable(python, needs, folders[variant(name)]) if needs else None
        if why:
            skipped[name] = why
            log(f"skipping {name}: {why}")
    measured = [s for s in measured if s not in skipped]
    systems = [s for s in systems if s not in skipped]

    plan = [
        (w, [s for s in measured if w in system_of(s).workloads])
        for w in workloads
        if w in THROUGHPUT
    ]
    plan = [(w, ss) for w, ss in plan if ss]
    collected: dict[str, dict[str, list[dict[str, Any]]]] = {
        w: {s: [] for s in ss} for w, ss in plan
    }
    memory: dict[str, Any] = {}

    def server_of(name: str) -> str:
        """The server a measured system talks to: the baseline's callnet has its own."""
        return system_of(name).server + variant(name)

    def start(label: str) -> ServerProcess:
        kind = label.removesuffix(BASELINE)
        return ServerProcess(python, kind, logs, folders[variant(label)], label=label)

    servers: dict[str, ServerProcess] = {}
    try:
        for label in dict.fromkeys(server_of(s) for _, ss in plan for s in ss):
            log(f"starting the {label} server")
            try:
                servers[label] = start(label)
            except RuntimeError as e:
                log(str(e))
                for _, names in plan:
                    for name in names:
                        if server_of(name) == label:
                            skipped[name] = str(e)
        for run in range(runs):
            for workload, names in plan:
                for name in names:
                    system = system_of(name)
                    srv = servers.get(server_of(name))
                    if srv is None:
                        collected[workload][name].append({"error": skipped[name]})
                        continue
                    if not srv.alive:
                        log(f"the {srv.label} server died (see {srv.log_path}); restarting it")
                        srv.stop()
                        srv = servers[srv.label] = start(srv.label)
                    result = run_client(python, system, specs[workload], srv)
                    collected[workload][name].append(result)
                    unit = "items" if workload in STREAM else "calls"
                    shown = result.get("error") or f"{result['calls_per_s']:,.0f} {unit}/s"
                    log(f"[run {run + 1}/{runs}] {workload:<8} {name:<21} {shown}")
    finally:
        for srv in servers.values():
            srv.stop()

    callnet_raw = SYSTEMS["callnet-raw"]
    if "callnet-raw" in systems and "idle-mem" in workloads:
        idle_runs = []
        for run in range(args.runs or preset.memory_runs):
            with server(
                python,
                "callnet",
                logs,
                folders[""],
                ["--max-connections", str(IDLE_MAX_CONNECTIONS)],
            ) as srv:
                result = run_client(python, callnet_raw, specs["idle-mem"], srv)
            idle_runs.append(result)
            log(f"[run {run + 1}] idle-mem {result.get('error') or result['steps']}")
        good = [r for r in idle_runs if "error" not in r]
        per_conn: dict[str, list[float]] = {}
        for r in good:
            for step in r["steps"]:
                per_conn.setdefault(str(step["connections"]), []).append(step["kib_per_conn"])
        memory["idle-mem"] = {
            "runs": idle_runs,
            "kib_per_conn": {k: spread(v) for k, v in per_conn.items()},
            "baseline_rss_mib": spread([r["baseline_rss_mib"] for r in good]),
            "error": None if good else "every run failed",
        }
    if "callnet-raw" in systems and "leak" in workloads:
        leak_runs = []
        for run in range(preset.leak_runs):
            with server(python, "callnet", logs, folders[""]) as srv:
                result = run_client(python, callnet_raw, specs["leak"], srv)
            leak_runs.append(result)
            log(f"[run {run + 1}] leak {result.get('error') or result['steps']}")
        memory["leak"] = {"runs": leak_runs}
    if "callnet-raw" in systems and "large-mem" in workloads:
        large_runs = []
        for run in range(args.runs or preset.memory_runs):
            with server(python, "callnet", logs, folders[""]) as srv:
                result = run_client(python, callnet_raw, specs["large-mem"], srv)
            large_runs.append(result)
            shown = result.get("error") or f"{result['payloads']:.1f} payloads"
            log(f"[run {run + 1}] large-mem {shown}")
        good = [r for r in large_runs if "error" not in r]
        memory["large-mem"] = {
            "runs": large_runs,
            "payloads": spread([r["payloads"] for r in good]),
            "peak_growth_mib": spread([r["peak_growth_mib"] for r in good]),
            "error": None if good else "every run failed",
        }

    results = {w: {s: aggregate(rs) for s, rs in by.items()} for w, by in collected.items()}
    base = sources.get(BASELINE)
    data = {
        "preset": preset.name,
        "runs": runs,
        "machine": machine(python, folders[""]),
        "callnet": sources[""],
        "baseline": base,
        "specs": {name: asdict(spec) for name, spec in specs.items() if name in workloads},
        "systems": {
            name: system_of(name).note
            + (f" (callnet at {base['commit']}, the baseline)" if base and variant(name) else "")
            for name in measured
        },
        "skipped": skipped,
        "results": results,
        "ratios": {w: ratios(r) for w, r in results.items()},
        "stream_ratios": stream_ratios(results),
        "against_baseline": {w: baseline_ratios(r) for w, r in results.items()} if base else {},
        "memory": memory,
        "wall_seconds": time.monotonic() - started,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    (args.output / "latest.json").write_text(json.dumps(data, indent=1) + "\n")
    text = report(data)
    print(text)
    (args.output / "latest.txt").write_text(text + "\n")
    if not args.no_chart:
        try:
            chart(data, args.output / "latest.png")
        except ImportError as e:
            log(f"no chart: {e}")
    failed = any(r["failed_runs"] for by in results.values() for r in by.values()) or any(
        "error" in run or run.get("errors")
        for entry in memory.values()
        for run in entry.get("runs", [])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
