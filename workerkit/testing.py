"""A small Functions host for tests: a real grpclib server on 127.0.0.1 that workers dial.

    async with TestHost() as host:
        worker = await host.start_worker(MyWorker())            # in this process, or:
        worker = await host.spawn([sys.executable, "worker.py"])  # a subprocess, real argv
        conn = worker.connection
        await conn.init()
        await conn.load("f1", "hello", bindings=http_bindings())
        response = await conn.invoke("f1", {"req": HttpRequest("GET", "http://x/api/hello")})

Replies are matched the way the real host matches them: status by ``request_id``, loads by
``function_id``, invocations by ``invocation_id``, the rest in order per kind; so overlapping
invocations can be started with `HostConnection.start_invocation` and awaited in any order.
Everything the worker sent is kept in `HostConnection.messages`, in arrival order.
"""

from __future__ import annotations

from ._hostside.connection import HostConnection, PendingInvocation, binding, http_bindings
from ._hostside.server import InProcessWorker, StreamNotOpened, TestHost, WorkerProcess

__all__ = [
    "HostConnection",
    "InProcessWorker",
    "PendingInvocation",
    "StreamNotOpened",
    "TestHost",
    "WorkerProcess",
    "binding",
    "http_bindings",
]
