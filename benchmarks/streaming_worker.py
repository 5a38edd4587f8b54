"""The worker of the HTTP streaming scenarios (streaming.py): workerkit, ``async def`` hook.

``echo`` returns the request body with its content type (as workerkit_echo.py); ``count``
reads the body with ``async for chunk in req.stream()`` and answers the number of bytes;
``first`` yields its first chunk at once, then ``LATER`` more, 20 ms apart. Streaming is on
when the host's environment has ``WORKERKIT_HTTP_STREAMING=true``.

    python benchmarks/streaming_worker.py --host ... (the host's argv)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import workerkit
from workerkit import FunctionInfo, HttpResponse, Invocation

LATER = 3


async def later_chunks() -> AsyncIterator[bytes]:
    yield b"first\n"
    for index in range(LATER):
        await asyncio.sleep(0.02)
        yield f"later {index}\n".encode()


class StreamingBench(workerkit.Worker):
    runtime_name = "bench-streaming"

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> HttpResponse:
        request = invocation.inputs["req"]
        name = invocation.function.name
        if name == "count":
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
            return HttpResponse(body=str(size))
        if name == "first":
            return HttpResponse(body=later_chunks(), headers={"content-type": "text/plain"})
        content_type = request.headers.get("content-type", "application/octet-stream")
        return HttpResponse(body=request.body, headers={"content-type": content_type})


if __name__ == "__main__":
    StreamingBench.main()
