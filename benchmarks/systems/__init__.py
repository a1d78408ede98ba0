"""
One module per system adapter.  Each runs as

    python -m benchmarks.systems.X server PORT
    python -m benchmarks.systems.X client FLAVOR --port P --server-pid PID --spec JSON

and L{SYSTEMS} says which server and client flavor make up each system the
runner knows, and which workloads it takes part in.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Workloads of a Twisted (asynchronous) client or the plain-socket client.
ASYNC = ("seq", "pipe", "conc", "large-1k", "large-1m")
#: Workloads of a blocking client.
BLOCKING = ("sync1", "sync16", "large-1k", "large-1m")
#: Workloads measuring the callnet node alone: they get a fresh node each.
MEMORY = ("idle-mem", "leak", "large-mem")
#: Workloads taking one stream of items (items/s), not calls.
STREAM = ("stream", "stream-1m")


@dataclass(frozen=True)
class System:
    name: str
    #: The adapter module under benchmarks.systems.
    module: str
    #: The server this system talks to; systems sharing one share its process.
    server: str
    #: The client flavor the adapter's client command takes.
    flavor: str
    workloads: tuple[str, ...]
    #: Whether it is callnet (ratios are callnet / peer).
    callnet: bool
    #: Modules that must import for the system to run.
    needs: tuple[str, ...] = ()
    note: str = ""


SYSTEMS: dict[str, System] = {
    system.name: system
    for system in (
        System(
            "callnet-async",
            "callnet_sys",
            "callnet",
            "async",
            ASYNC + STREAM,
            True,
            note="callnet.client.Client, add (runs in the reactor); streams: Client.stream"
            " of stream_items (an async generator)",
        ),
        System(
            "callnet-thread",
            "callnet_sys",
            "callnet",
            "thread",
            ("seq", "pipe", "conc", *STREAM),
            True,
            note="callnet.client.Client, add_threaded (a plain function: thread pool);"
            " streams: Client.stream of stream_items_threaded (a generator in worker threads)",
        ),
        System(
            "callnet-blocking",
            "callnet_sys",
            "callnet",
            "blocking",
            BLOCKING,
            True,
            needs=("callnet.blocking",),
            note="callnet.blocking.BlockingClient, one client shared by all threads",
        ),
        System(
            "callnet-raw",
            "callnet_sys",
            "callnet",
            "raw",
            ASYNC + STREAM + MEMORY,
            True,
            note="plain-socket client writing '#tag add 1 2' lines; streams: '#tag +window=64"
            " stream_items ...' and MORE lines",
        ),
        System("amp", "amp_sys", "amp", "async", ASYNC, False, note="Twisted AMP, callRemote"),
        System(
            "pb", "pb_sys", "pb", "async", ASYNC, False, note="Twisted PB, Referenceable.remote_*"
        ),
        System(
            "crochet-amp",
            "crochet_sys",
            "amp",
            "blocking",
            BLOCKING,
            False,
            needs=("crochet",),
            note="crochet @wait_for around AMP callRemote, one connection shared",
        ),
        System(
            "lineecho",
            "lineecho_sys",
            "lineecho",
            "async",
            ASYNC,
            False,
            note="Twisted LineReceiver client of a LineReceiver echo server (the floor)",
        ),
        System(
            "lineecho-raw",
            "lineecho_sys",
            "lineecho",
            "raw",
            ASYNC,
            False,
            note="the callnet-raw client against the echo server (the raw floor)",
        ),
        System(
            "lineecho-sync",
            "lineecho_sys",
            "lineecho",
            "blocking",
            BLOCKING,
            False,
            note="blockingCallFromThread into a reactor thread, one connection (sync floor)",
        ),
        System(
            "socket-copy",
            "socketcopy_sys",
            "socketcopy",
            "raw",
            ("seq", "pipe", "large-1k", "large-1m", *STREAM),
            False,
            note="the callnet-raw client against a plain-socket echo server: a raw socket copy;"
            " streams: the lines a node sends, written with no flow control",
        ),
        System(
            "socket-copy-json",
            "socketcopy_sys",
            "socketcopy",
            "json",
            STREAM,
            False,
            note="socket-copy's streams, the client reading each item's JSON in place (orjson):"
            " the ceiling of a client that hands items over as values",
        ),
        System(
            "grpc-sync",
            "grpc_sys",
            "grpc-sync",
            "sync",
            STREAM,
            False,
            needs=("grpc",),
            note="gRPC server streaming: grpc.server (thread pool) and a sync channel, raw bytes",
        ),
        System(
            "grpc-asyncio",
            "grpcaio_sys",
            "grpc-asyncio",
            "asyncio",
            STREAM,
            False,
            needs=("grpc",),
            note="gRPC server streaming: grpc.aio server and channel, raw bytes",
        ),
        System(
            "rpyc",
            "rpyc_sys",
            "rpyc",
            "blocking",
            BLOCKING,
            False,
            needs=("rpyc",),
            note="RPyC ThreadedServer, one connection per thread",
        ),
        System(
            "pyro5",
            "pyro_sys",
            "pyro5",
            "blocking",
            BLOCKING,
            False,
            needs=("Pyro5.api",),
            note="Pyro5 daemon (thread pool), one proxy per thread",
        ),
    )
}

#: The adapter module that runs each server.
SERVERS: dict[str, str] = {
    "callnet": "callnet_sys",
    "amp": "amp_sys",
    "pb": "pb_sys",
    "lineecho": "lineecho_sys",
    "socketcopy": "socketcopy_sys",
    "rpyc": "rpyc_sys",
    "pyro5": "pyro_sys",
    "grpc-sync": "grpc_sys",
    "grpc-asyncio": "grpcaio_sys",
}
