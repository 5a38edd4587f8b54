"""A small Functions host for tests: a real grpclib server on 127.0.0.1 that workers dial.

    async with TestHost() as host:
        worker = await host.start_worker(MyWorker())            # in this process, or:
        worker = await host.spawn([sys.executable, "/path/to/worker.py"], cwd="/path/to/app")
        conn = worker.connection
        await conn.init()
        hello = await conn.load_function("hello", bindings=http_bindings())
        result = await conn.call(hello, {"req": HttpRequest("GET", "http://x/api/hello")})
        assert result.ok and result.http is not None and result.http.status_code == 200

`HostConnection.load_function` raises `FunctionLoadFailed` when the worker refuses the
function (``check=False`` returns the `LoadResult` instead); `HostConnection.call` returns a
`CallResult` with the status, the worker's error message, the return value, the named
outputs and the HTTP response as Python values, and the invocation's log records
(`LogEntry`). The protocol-level requests (`HostConnection.load`, `invoke`,
`start_invocation`, `send_load`, ...) return the worker's messages as received.

Replies are matched the way the real host matches them: status by ``request_id``, loads by
``function_id``, invocations by ``invocation_id``, the rest in order per kind; so overlapping
invocations can be started with `HostConnection.start_invocation` and awaited in any order
(`HostConnection.call_result` reads a response typed). Everything the worker sent is kept in
`HostConnection.messages`, in arrival order (its logs also in `HostConnection.logs`); a long
run, such as a load test, sets ``connection.record = False`` to keep none of it (the driver's
heap would grow with every call, and its garbage collections take longer with it).

A worker that exits before opening its stream is reported at once by `TestHost.spawn`
(`StreamNotOpened`, with its exit status and the end of its stderr).
"""

from __future__ import annotations

from ._hostside.connection import HostConnection, PendingInvocation, binding, http_bindings
from ._hostside.results import (
    CallFailed,
    CallResult,
    CallStatus,
    FunctionLoadFailed,
    LoadResult,
    LogEntry,
)
from ._hostside.server import InProcessWorker, StreamNotOpened, TestHost, WorkerProcess

__all__ = [
    "CallFailed",
    "CallResult",
    "CallStatus",
    "FunctionLoadFailed",
    "HostConnection",
    "InProcessWorker",
    "LoadResult",
    "LogEntry",
    "PendingInvocation",
    "StreamNotOpened",
    "TestHost",
    "WorkerProcess",
    "binding",
    "http_bindings",
]
