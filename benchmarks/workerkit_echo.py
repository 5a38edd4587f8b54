"""The minimal workerkit echo worker the benchmark measures until examples/python exists.

``echo`` returns the request body with its content type; ``echolog`` also logs 10 lines.
``WORKERKIT_BENCH_SYNC=1`` makes `on_invocation` a plain ``def`` (run in the thread pool,
as a sync user function would be); by default it is ``async def`` (on the event loop).
``WORKERKIT_BENCH_PROFILE=FILE`` writes a cProfile of the whole run to FILE at exit.

    python benchmarks/workerkit_echo.py --host ... (the host's argv)
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import workerkit
from workerkit import FunctionInfo, HttpResponse, Invocation
from workerkit.cli import parse_host_args_or_exit

log = logging.getLogger("bench")
log.setLevel(logging.INFO)
LOG_LINES = 10


class EchoWorker(workerkit.Worker):
    runtime_name = "bench-echo"

    def __init__(self) -> None:
        super().__init__()
        self.logging: dict[str, bool] = {}

    def on_function_load(self, function: FunctionInfo) -> None:
        self.logging[function.function_id] = function.name == "echolog"

    async def on_invocation(self, invocation: Invocation) -> HttpResponse:
        return self.echo(invocation)

    def echo(self, invocation: Invocation) -> HttpResponse:
        request = invocation.inputs["req"]
        if self.logging[invocation.function.function_id]:
            for line in range(LOG_LINES):
                log.info("echo log line %d", line)
        content_type = request.headers.get("content-type", "application/octet-stream")
        return HttpResponse(body=request.body, headers={"content-type": content_type})


class SyncEchoWorker(EchoWorker):
    def on_invocation(self, invocation: Invocation) -> Any:
        return self.echo(invocation)


def serve(worker: type[workerkit.Worker]) -> None:
    """Serve `worker` as the host launched it; under cProfile into the file named by
    ``WORKERKIT_BENCH_PROFILE`` when that is set."""
    profile = os.environ.get("WORKERKIT_BENCH_PROFILE")
    if not profile:
        worker.main()
        return
    # workerkit.run may leave through os._exit; serve here so the profile gets written.
    import asyncio
    import cProfile

    args = parse_host_args_or_exit(sys.argv[1:])
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        code = asyncio.run(worker().serve(args))
    finally:
        profiler.disable()
        profiler.dump_stats(profile)
    os._exit(code)


def main() -> None:
    serve(SyncEchoWorker if os.environ.get("WORKERKIT_BENCH_SYNC") == "1" else EchoWorker)


if __name__ == "__main__":
    main()
