"""The worker of the shared-memory scenarios (sharedmem.py): workerkit, ``async def`` hook.

``echo`` sends its ``blob`` input back as its ``copy`` output. Shared-memory data transfer is
on when the host's environment has ``FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED``.
``WORKERKIT_BENCH_PROFILE=FILE`` writes a cProfile of the whole run to FILE at exit.

    python benchmarks/sharedmem_worker.py --host ... (the host's argv)
"""

from __future__ import annotations

# workerkit_echo.py is beside this file, which is run as a script (its folder on sys.path)
from workerkit_echo import serve  # type: ignore[import-not-found]

import workerkit
from workerkit import FunctionInfo, Invocation, InvocationResult


class BlobEcho(workerkit.Worker):
    runtime_name = "bench-sharedmem"

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> InvocationResult:
        return InvocationResult(outputs={"copy": invocation.inputs["blob"]})


def main() -> None:
    serve(BlobEcho)


if __name__ == "__main__":
    main()
