"""HTTP, async def, streamed: counts down from n, one server-sent event every 100 ms.

With WORKERKIT_HTTP_STREAMING=true the host forwards the request to the worker's own HTTP
server and each event reaches the client as it is produced (``curl -N``); without it the
events are gathered and sent as one body once the function has finished.
"""

import asyncio
from collections.abc import AsyncIterator

from workerkit import HttpRequest, HttpResponse


async def main(req: HttpRequest) -> HttpResponse:
    n = int(req.params["n"])  # the route's {n:int}

    async def events() -> AsyncIterator[str]:
        for k in range(n, 0, -1):
            yield f"data: {k}\n\n"
            if k > 1:
                await asyncio.sleep(0.1)

    return HttpResponse(
        body=events(), headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
