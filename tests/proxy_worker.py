"""A worker that serves HTTP itself and reports ``HttpUri``, for the emulator's and the kit's
proxying tests (run as a subprocess). It pairs each forwarded request with its invocation by
the ``x-ms-invocation-id`` header on its own, whatever the order they come in; what it does
is chosen by the function's name (the part before any ``-``):

=============  ==========================================================================
echo           answers 200 with JSON: the forwarded request (method, path, headers, body),
               the invocation's RpcHttp and trigger metadata keys, the worker's pid
stream         streams ``?n=`` lines (3); each after the first only once the test has
               written a line to the FIFO named by ``?signal=``; after writing each, it
               appends ``wrote <k> of <n> on <port>`` to the file named by ``?log=``
pipe           echoes the request body back, each chunk as it arrives
silent         never answers the HTTP request; the invocation succeeds at once
held           answers the HTTP request (one chunk, no end yet); the invocation runs until
               cancelled
fail           answers 200 with a body, then fails the invocation
failempty      answers 200 without a body, then fails the invocation
=============  ==========================================================================

With ``PW_SDK`` set it serves no HTTP itself: every function is `countdown`, and workerkit's
own HTTP streaming serves it (``WORKERKIT_HTTP_STREAMING=true``).

Environment (the app's local.settings.json): ``PW_URI`` reports that instead of the server's
address; ``PW_CAPS`` a JSON object of more capabilities; ``PW_MATCH_TIMEOUT`` seconds a
request and its invocation wait for each other (30: then 504, or an invocation Failure). It
prints ``PW <event> <invocation id>`` lines on stderr (the emulator shows them): ``aborted``
when a forwarded request's connection closed before the handler was done, ``cancelled``
when an invocation was cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import betterproto2
from aiohttp import web

import workerkit
from workerkit import (
    FunctionInfo,
    HttpResponse,
    InitRequest,
    InitResult,
    Invocation,
    InvocationError,
    WorkerOptions,
)

INVOCATION_ID = "x-ms-invocation-id"


def note(event: str, invocation_id: str) -> None:
    print(f"PW {event} {invocation_id}", file=sys.stderr, flush=True)


class _Call:
    """One invocation id: its forwarded request, its invocation, and the HTTP answer's end."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.request: asyncio.Future[web.Request] = loop.create_future()
        self.invocation: asyncio.Future[Invocation] = loop.create_future()
        self.answered: asyncio.Future[None] = loop.create_future()


class ProxyWorker(workerkit.Worker):
    runtime_name = "proxied"

    def __init__(self) -> None:
        self.wait = float(os.environ.get("PW_MATCH_TIMEOUT") or "30")
        super().__init__(options=WorkerOptions(http_match_timeout=self.wait))
        self.calls: dict[str, _Call] = {}
        self.runner: web.AppRunner | None = None

    @property
    def sdk(self) -> bool:
        """workerkit's own HTTP streaming serves instead (also once an environment reload
        brought the setting)."""
        return bool(os.environ.get("PW_SDK"))

    def call(self, invocation_id: str) -> _Call:
        if invocation_id not in self.calls:
            self.calls[invocation_id] = _Call()
        return self.calls[invocation_id]

    async def on_init(self, request: InitRequest) -> InitResult:
        if self.sdk:
            return InitResult()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        uri = os.environ.get("PW_URI") or f"http://127.0.0.1:{port}/"
        extra = json.loads(os.environ.get("PW_CAPS") or "{}")
        return InitResult(capabilities={"HttpUri": uri, **extra})

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    # -- the HTTP side ---------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        invocation_id = request.headers.get(INVOCATION_ID)
        if not invocation_id:
            return web.Response(status=400, text=f"no {INVOCATION_ID} header\n")
        call = self.call(invocation_id)
        call.request.set_result(request)
        try:
            invocation = await asyncio.wait_for(asyncio.shield(call.invocation), self.wait)
        except TimeoutError:
            return web.Response(status=504, text="its invocation never came\n")
        name = invocation.function.name.split("-")[0]
        try:
            response = await getattr(self, "http_" + name)(request, invocation)
        except asyncio.CancelledError:
            note("aborted", invocation_id)
            raise
        if not call.answered.done():
            call.answered.set_result(None)
        return response

    async def http_echo(self, request: web.Request, invocation: Invocation) -> web.StreamResponse:
        raw = invocation.raw_inputs["req"]
        http = raw.http
        seen = {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": (await request.read()).decode(errors="replace"),
            "pid": os.getpid(),
            "invocation_id": invocation.invocation_id,
            "input_kind": betterproto2.which_one_of(raw, "data")[0],
            "input_empty": http == type(http)() if http is not None else None,
            "params": dict(http.params) if http is not None else None,
            "nullable_params": (
                {k: v.value for k, v in http.nullable_params.items()} if http is not None else None
            ),
            "metadata": sorted(invocation.trigger_metadata),
        }
        return web.json_response(seen)

    async def http_stream(self, request: web.Request, invocation: Invocation) -> web.StreamResponse:
        count = int(request.query.get("n", "3"))
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        signal = request.query.get("signal")
        # (a plain descriptor: closing it does not wait for a read blocked in a thread)
        fifo = await asyncio.to_thread(os.open, signal, os.O_RDONLY) if signal else None
        log = request.query.get("log")
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        try:
            for index in range(count):
                if index and fifo is not None:
                    await asyncio.to_thread(os.read, fifo, 64)  # one line from the test
                await response.write(f"line {index}\n".encode())
                if log:  # what the test waits for before it lets the next line go
                    with open(log, "a") as file:
                        file.write(f"wrote {index} of {count} on {port}\n")
        finally:
            if fifo is not None:
                os.close(fifo)
        await response.write_eof()
        return response

    async def http_pipe(self, request: web.Request, invocation: Invocation) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        while chunk := await request.content.readany():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def http_silent(self, request: web.Request, invocation: Invocation) -> web.StreamResponse:
        await asyncio.Event().wait()  # until the connection closes (handler cancellation)
        raise AssertionError("unreachable")

    async def http_held(self, request: web.Request, invocation: Invocation) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"held\n")
        await response.write_eof()
        return response

    async def http_fail(self, request: web.Request, invocation: Invocation) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"partial\n")
        await response.write_eof()
        return response

    async def http_failempty(
        self, request: web.Request, invocation: Invocation
    ) -> web.StreamResponse:
        return web.Response(status=200)

    # -- the invocation side ---------------------------------------------------------------
    async def on_invocation(self, invocation: Invocation) -> Any:
        if self.sdk:
            return countdown(invocation)
        call = self.call(invocation.invocation_id)
        call.invocation.set_result(invocation)
        try:
            await asyncio.wait_for(asyncio.shield(call.request), self.wait)
        except TimeoutError:
            raise InvocationError("its forwarded request never came") from None
        name = invocation.function.name.split("-")[0]
        try:
            if name == "silent":
                return None
            if name == "held":
                await asyncio.Event().wait()  # until cancelled
            await call.answered
        except asyncio.CancelledError:
            note("cancelled", invocation.invocation_id)
            raise
        finally:
            self.calls.pop(invocation.invocation_id, None)
        if name in ("fail", "failempty"):
            raise InvocationError(f"{name} failed on purpose")
        return None


def countdown(invocation: Invocation) -> HttpResponse:
    """With ``PW_SDK``: a server-sent event per line, the body an async iterator that
    workerkit streams; line k+1 once the test wrote to the FIFO ``?signal=``, and each line
    written logged to ``?log=`` (as ``stream`` does)."""
    query = invocation.inputs["req"].query
    count = int(query.get("n", "3"))
    signal, log = query.get("signal"), query.get("log")

    async def lines() -> AsyncIterator[str]:
        fifo = await asyncio.to_thread(os.open, signal, os.O_RDONLY) if signal else None
        try:
            for index in range(count):
                if index and fifo is not None:
                    await asyncio.to_thread(os.read, fifo, 64)
                yield f"data: {index}\n\n"
                if log and index + 1 < count:  # asked for the next: this one was written
                    with open(log, "a") as file:
                        file.write(f"wrote {index} of {count} on {listening_port()}\n")
        finally:
            if fifo is not None:
                os.close(fifo)

    return HttpResponse(body=lines(), headers={"content-type": "text/event-stream"})


def listening_port() -> int:
    """The port of this process's one listening TCP socket (workerkit's HTTP server)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as file:
            for line in list(file)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in mine:
                    return int(fields[1].rsplit(":", 1)[1], 16)
    return 0


if __name__ == "__main__":
    ProxyWorker.main()
