"""
gRPC Python server streaming, the peer of callnet's streams: a server
method that yields items, taken by a client iterating over the call.

  - C{grpc-sync}: C{grpc.server} (a thread pool runs the handler, a plain
    generator) and a channel's blocking iterator;
  - C{grpc-asyncio} (L{benchmarks.systems.grpcaio_sys}): C{grpc.aio.server}
    (the handler an async generator) and a C{grpc.aio} channel's
    C{async for}.

No C{.proto} and no protoc step: the method is registered with a generic
handler (C{grpc.method_handlers_generic_handler} and
C{grpc.unary_stream_rpc_method_handler}) and called with
C{channel.unary_stream(...)}, all with no serializers, so requests and items
cross as raw bytes.  That spares gRPC the cost of protobuf messages which a
real service would pay on every item: these figures are gRPC's best case.

The request is C{b"COUNT SIZE"}; the items are the ints from 0 written in
decimal (size 0), or one C{bytes} of SIZE bytes sent COUNT times, as
callnet's C{stream_items} yields one string.  Both clients take their
stream as C{callnet-async} does: until it ends, or past the time bound,
cancelling it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.common import (
    CLOCK_EVERY,
    HOST,
    Meter,
    Spec,
    Tally,
    check_item,
    summarize_stream,
    system_main,
)

#: The service and method of the stream.
SERVICE = "callnet.bench.Bench"
METHOD = f"/{SERVICE}/Items"
#: Worker threads of the sync server: one stream at a time is measured.
SERVER_THREADS = 4
#: Message size limits raised past gRPC's default of 4 MiB received, so
#: that no item size the suite might use is refused.
OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


def parse_request(request: bytes) -> tuple[int, int]:
    count, size = request.split()
    return int(count), int(size)


def request_of(spec: Spec, count: int) -> bytes:
    return b"%d %d" % (count, spec.size)


def items(request: bytes, context: Any) -> Iterator[bytes]:
    """The sync server's handler: COUNT items of SIZE bytes, or the ints in decimal."""
    count, size = parse_request(request)
    if size:
        payload = b"x" * size
        for _ in range(count):
            yield payload
    else:
        for i in range(count):
            yield b"%d" % i


async def items_async(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """The asyncio server's handler: the same items as L{items}."""
    count, size = parse_request(request)
    if size:
        payload = b"x" * size
        for _ in range(count):
            yield payload
    else:
        for i in range(count):
            yield b"%d" % i


def handler(method: Any) -> Any:
    import grpc

    return grpc.method_handlers_generic_handler(
        SERVICE, {"Items": grpc.unary_stream_rpc_method_handler(method)}
    )


def serve(port: int, extra: list[str]) -> None:
    """The sync server, until the process ends."""
    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=SERVER_THREADS), options=OPTIONS)
    server.add_generic_rpc_handlers((handler(items),))
    server.add_insecure_port(f"{HOST}:{port}")
    server.start()
    server.wait_for_termination()


def serve_asyncio(port: int, extra: list[str]) -> None:
    """The asyncio server, until the process ends."""
    import grpc

    async def main() -> None:
        server = grpc.aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers((handler(items_async),))
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


# --- Clients ---------------------------------------------------------------------------


def take_sync(stub: Any, spec: Spec, count: int, seconds: float) -> Tally:
    """Take one stream with the blocking iterator; cancel it past C{seconds}."""
    import grpc

    tally = Tally()
    now = time.perf_counter
    every = 1 if spec.size else CLOCK_EVERY
    start = now()
    end = start + seconds
    items = 0
    call = stub(request_of(spec, count), timeout=seconds + 60)
    try:
        for item in call:
            if not items:
                check_item(spec, item)
            items += 1
            if not items % every and now() >= end:
                break
    except grpc.RpcError as e:
        tally.fail(repr(e))
    last = now()
    call.cancel()
    tally.calls = items
    tally.elapsed = last - start
    return tally


def run_sync(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """A warm-up stream, then the measured one, through a sync channel."""
    import grpc

    with grpc.insecure_channel(f"{HOST}:{port}", options=OPTIONS) as channel:
        stub = channel.unary_stream(METHOD)
        warm = take_sync(stub, spec, spec.warmup, spec.seconds)
        if warm.errors or warm.calls != spec.warmup:
            raise RuntimeError(f"the warm-up stream failed: {warm.first_error}")
        meter = Meter(server_pid)
        tally = take_sync(stub, spec, spec.count, spec.seconds)
        used = meter.read()
    return summarize_stream(spec, tally, used)


async def take_asyncio(stub: Any, spec: Spec, count: int, seconds: float) -> Tally:
    """Take one stream with C{async for}; cancel it past C{seconds}."""
    import grpc

    tally = Tally()
    now = time.perf_counter
    every = 1 if spec.size else CLOCK_EVERY
    start = now()
    end = start + seconds
    items = 0
    call = stub(request_of(spec, count), timeout=seconds + 60)
    try:
        async for item in call:
            if not items:
                check_item(spec, item)
            items += 1
            if not items % every and now() >= end:
                break
    except grpc.RpcError as e:
        tally.fail(repr(e))
    last = now()
    call.cancel()
    tally.calls = items
    tally.elapsed = last - start
    return tally


def run_asyncio(spec: Spec, port: int, server_pid: int) -> dict[str, Any]:
    """A warm-up stream, then the measured one, through a C{grpc.aio} channel."""
    import grpc

    async def main() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=OPTIONS) as channel:
            stub = channel.unary_stream(METHOD)
            warm = await take_asyncio(stub, spec, spec.warmup, spec.seconds)
            if warm.errors or warm.calls != spec.warmup:
                raise RuntimeError(f"the warm-up stream failed: {warm.first_error}")
            meter = Meter(server_pid)
            tally = await take_asyncio(stub, spec, spec.count, spec.seconds)
            used = meter.read()
        return summarize_stream(spec, tally, used)

    return asyncio.run(main())


if __name__ == "__main__":
    system_main(serve, {"sync": run_sync})
