"""The HTTP front door (aiohttp): every request gets exactly one answer.

==================================  ==========================================================
request                             answer
==================================  ==========================================================
``<prefix>/<route>`` of a function  the function's response; 500 when it fails or times out
  with a disallowed method          405 with ``Allow``
  body over ``--max-body-size``     413 (before the body is read when Content-Length says so)
no route matches / disabled         404
``POST /admin/functions/<name>``    202 (invocation started), 400 (bad body/input), 404
``GET /admin/host/status``          200 ``{"state": "Running", "version": …}``
anything while shutting down        503
an emulator bug                     500 (logged)
==================================  ==========================================================
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from aiohttp import web

from ._config import HOST_VERSION
from ._rpchttp import HttpOutput, IncomingRequest

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["FrontDoor"]

_CHUNK: Final = 65536


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, headers=headers or None)


class FrontDoor:
    """The aiohttp server in front of an `Emulator`."""

    def __init__(self, emulator: Emulator, *, max_body_size: int) -> None:
        self.emulator = emulator
        self.max_body_size = max_body_size
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on `host`:`port` (0: a free port); return the port.

        Raises:
            OSError: the address cannot be bound.
        """
        app = web.Application(
            client_max_size=self.max_body_size + 1, handler_args={"max_field_size": 65536}
        )
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        bound: int = addresses[0][1] if addresses else port
        return bound

    async def stop(self) -> None:
        """Stop listening; requests in progress are given a few seconds."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.emulator.console.error(
                f"emulator error while handling {request.method} {request.path}: {exc!r}"
            )
            return _text(500, "the emulator failed to handle this request (see its log)\n")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        emulator = self.emulator
        if emulator.stopping:
            return _text(503, "the host is shutting down\n")
        raw_path = request.raw_path.split("?", 1)[0]
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        if segments and segments[0].lower() == "admin":
            return await self._admin(request, segments[1:])
        settings = emulator.host_settings
        prefix = [p for p in (settings.route_prefix if settings else "api").split("/") if p]
        if [s.lower() for s in segments[: len(prefix)]] != [p.lower() for p in prefix]:
            return _text(404, f"no function matches {request.path}\n")
        found = emulator.router.match(request.method, segments[len(prefix) :])
        if found is None:
            return _text(404, f"no function matches {request.path}\n")
        if isinstance(found, frozenset):
            allowed = ", ".join(sorted(found))
            return _text(
                405, f"{request.method} is not allowed here; use {allowed}\n", Allow=allowed
            )
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        if body is not None and request.content_length is None:
            emulator.console.warning(
                f"{request.method} {request.path}: the body came without Content-Length"
                " (chunked); the real host passes no body then, so neither does the emulator."
            )
            body = None
        incoming = IncomingRequest(
            method=request.method,
            url=f"{request.scheme}://{request.host}{request.raw_path}",
            headers=list(request.headers.items()),
            query=list(request.query.items()),
            params=found.params,
            body=body,
        )
        output = await emulator.invoke_http(found.entry.target, incoming)
        return _response(output)

    async def _read_body(self, request: web.Request) -> bytes | web.Response | None:
        limit = self.max_body_size
        length = request.content_length
        if length is not None and length > limit:
            return self._too_large(length)
        if not request.body_exists:
            return None
        data = bytearray()
        while chunk := await request.content.read(_CHUNK):
            data += chunk
            if len(data) > limit:
                return self._too_large(len(data))
        return bytes(data) if data else None

    def _too_large(self, size: int) -> web.Response:
        response = _text(
            413,
            f"the request body ({size} bytes or more) exceeds the limit of"
            f" {self.max_body_size} bytes\n",
        )
        response.force_close()
        return response

    async def _admin(self, request: web.Request, segments: list[str]) -> web.StreamResponse:
        if len(segments) == 2 and segments[0].lower() == "functions" and segments[1]:
            if request.method != "POST":
                return _text(405, "use POST\n", Allow="POST")
            body = await self._read_body(request)
            if isinstance(body, web.Response):
                return body
            status, text = self.emulator.admin_invoke(segments[1], body or b"")
            return _text(status, text) if text else web.Response(status=status)
        if [s.lower() for s in segments] == ["host", "status"]:
            state = {"state": "Running", "version": HOST_VERSION}
            return web.json_response(state)
        return _text(404, f"no admin endpoint {request.path}\n")


def _response(output: HttpOutput) -> web.Response:
    response = web.Response(status=output.status, body=output.body)
    response.headers.popall("Content-Type", None)  # only the function's (or the host's default)
    for name, value in output.headers:
        response.headers.add(name, value)
    return response
