"""
gRPC Python's asyncio server streaming (C{grpc.aio} server and client); the
handler and clients live with the sync ones in L{benchmarks.systems.grpc_sys}.
"""

from __future__ import annotations

from benchmarks.common import system_main
from benchmarks.systems.grpc_sys import run_asyncio, serve_asyncio

if __name__ == "__main__":
    system_main(serve_asyncio, {"asyncio": run_asyncio})
