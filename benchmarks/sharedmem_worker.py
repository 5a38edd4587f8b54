"""The worker of the shared-memory scenarios (sharedmem.py): workerkit, ``async def`` hook.

``echo`` sends its ``blob`` input back as its ``copy`` output. Shared-memory data transfer is
on when the host's environment has ``FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED``.
``WORKERKIT_BENCH_PROFILE=FILE`` writes a cProfile of the whole run to FILE at exit.

    python benchmarks/sharedmem_worker.py --host ... (the host's argv)
"""

from __future__ import annotations

import os
import sys

import workerkit
from workerkit import FunctionInfo, Invocation, InvocationResult
from workerkit.cli import parse_host_args_or_exit


class BlobEcho(workerkit.Worker):
    runtime_name = "bench-sharedmem"

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> InvocationResult:
        return InvocationResult(outputs={"copy": invocation.inputs["blob"]})


def main() -> None:
    profile = os.environ.get("WORKERKIT_BENCH_PROFILE")
    if not profile:
        BlobEcho.main()
        return
    # workerkit.run may leave through os._exit; serve here so the profile gets written.
    import asyncio
    import cProfile

    args = parse_host_args_or_exit(sys.argv[1:])
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        code = asyncio.run(BlobEcho().serve(args))
    finally:
        profiler.disable()
        profiler.dump_stats(profile)
    os._exit(code)


if __name__ == "__main__":
    main()
