"""The HTTP front door (aiohttp): every request gets exactly one answer.

==================================  ==========================================================
request                             answer
==================================  ==========================================================
``<prefix>/<route>`` of a function  the function's response; 204 without one; 500, no body,
                                    when it fails or times out (the console has the error)
  whose worker reported HttpUri     forwarded there, the worker's response relayed as it
                                    comes (`_proxy`)
  with a disallowed method          404, no body (the route does not match: the host's
                                    routes constrain methods, so no 405)
  body over ``--max-body-size``     413 (before the body is read when Content-Length says so,
                                    and without ``100 Continue``)
no route matches / disabled         404, no body (ASP.NET Core's answer)
``/``                               the home page (`_admin`), unless a function route takes it
``/admin/...``                      as the host answers (`_admin`): ping, status, warmup,
                                    ``POST /admin/functions/<name>``
headers over 32 KiB in all          431
a header line over 32 KiB, over     400 (aiohttp's parser; the connection is closed)
  100 headers, a request line over
  8 KiB, malformed HTTP, HTTP/0.9
a body slower than the minimum      408, and the connection is closed
  data rate
anything while shutting down        503
over ``maxOutstandingRequests``     429 with ``X-FUNCTION-SCALEOUT: 1`` (not ``/admin``)
a connection over the cap           closed at once, no response (``max_connections``)
an emulator bug                     500 (logged)
==================================  ==========================================================

Limits, as Kestrel (the host's web server) sets them by default: request line 8 KiB, 100
headers, 32 KiB of headers in all. Paths are percent-decoded segment by segment (``%2F``
stays encoded, as in ASP.NET Core) and ``.``/``..`` segments are resolved before routing, as
Kestrel resolves them: a route parameter never holds a dot segment and a path never climbs
above the root (``/api/../admin/host/status`` is ``/admin/host/status``).

Slow clients are cut off: the request line and headers must arrive within ``header_timeout``
(also the idle time allowed between requests on a kept-alive connection); a request body, or a
client reading a response, must keep up ``min_data_rate`` bytes/s after a grace period of
``data_rate_grace`` seconds (Kestrel's MinRequestBodyDataRate and MinResponseDataRate). A body
too slow is answered 408; a response read too slowly has its connection aborted.

At most ``max_connections`` TCP connections are open at once (default 1,000, lowered to fit
the process's open-file limit). Past it a new connection is closed at once without a response,
as Kestrel closes one past ``MaxConcurrentConnections`` (dotnet/aspnetcore,
src/Servers/Kestrel/Core/src/Internal/ConnectionLimitMiddleware.cs), and the console says so,
at most once every 10 s. The host sets no such limit on Kestrel
(src/WebJobs.Script.WebHost/Program.cs); the emulator has one so that a flood of connections
cannot exhaust its file descriptors.

``host.json`` ``extensions.http.maxConcurrentRequests`` and ``maxOutstandingRequests`` apply
as the host applies them (src/WebJobs.Script.WebHost/Middleware/HttpThrottleMiddleware.cs,
HttpRequestQueue.cs): every request but ``/admin`` ones enters a queue that runs at most
``maxConcurrentRequests`` at once and holds at most ``maxOutstandingRequests`` (running ones
included); one more is answered 429 with ``X-FUNCTION-SCALEOUT: 1`` and no body. Both are
unlimited by default, as in the host outside the Windows Consumption plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ._admin import answer_admin, home_page
from ._connections import Counted, RateLimited, Refused, RequestQueue, fit_open_files
from ._proxy import HttpProxy, ProxiedRequest, Rejected
from ._rpchttp import HttpOutput, IncomingRequest

if TYPE_CHECKING:
    from ._console import Console
    from ._emulator import Emulator

__all__ = ["FrontDoor", "RateLimited", "normalize_path"]

_CHUNK: Final = 65536
#: Kestrel's defaults: MaxRequestLineSize, MaxRequestHeaderCount, MaxRequestHeadersTotalSize.
MAX_REQUEST_LINE: Final = 8192
MAX_HEADERS: Final = 100
MAX_HEADERS_TOTAL: Final = 32768
_ENCODED_SLASH: Final = re.compile(r"(%2[fF])")
#: The header the host adds to a 429 (ScriptConstants.AntaresScaleOutHeaderName).
SCALE_OUT_HEADER: Final = "X-FUNCTION-SCALEOUT"


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, headers=headers or None)


def normalize_path(raw_path: str) -> tuple[list[str], str]:
    """Decoded path segments with dot segments resolved, and the raw path they come from.

    Each segment is percent-decoded except ``%2F`` (kept as written, as ASP.NET Core keeps
    it); a segment that decodes to ``.`` is dropped and one that decodes to ``..`` also drops
    the segment before it (never above the root), as RFC 3986 §5.2.4 and Kestrel do. A
    trailing dot segment leaves a trailing ``/``.
    """
    raw_kept: list[str] = []
    kept: list[str] = []
    pieces = raw_path.split("/")[1:] if raw_path.startswith("/") else raw_path.split("/")
    for index, raw in enumerate(pieces):
        decoded = "".join(
            part if _ENCODED_SLASH.fullmatch(part) else unquote(part)
            for part in _ENCODED_SLASH.split(raw)
        )
        if decoded in (".", ".."):
            if decoded == ".." and kept:
                kept.pop()
                raw_kept.pop()
            if index == len(pieces) - 1:
                kept.append("")
                raw_kept.append("")
            continue
        kept.append(decoded)
        raw_kept.append(raw)
    return kept, "/" + "/".join(raw_kept)


class _ConsoleLog(logging.Handler):
    """aiohttp's server log (malformed requests, its own failures) as one console line each."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc = record.exc_info[1] if record.exc_info else None
            text = " ".join(record.getMessage().split())
            if exc is not None:
                detail = " ".join(str(exc).split()) or repr(exc)
                text += f": {detail[:300]}"
            if isinstance(exc, HttpProcessingError) or record.levelno < logging.ERROR:
                self.console.warning(f"HTTP: {text}")
            else:
                self.console.error(f"HTTP: {text} ({type(exc).__name__})")
        except Exception:
            self.handleError(record)


class FrontDoor:
    """The aiohttp server in front of an `Emulator`.

    Args:
        max_body_size: the largest request body accepted (bytes).
        header_timeout: seconds for a request's line and headers (and for idling between
            requests on a kept-alive connection).
        min_data_rate: bytes per second a request body or a response must keep up...
        data_rate_grace: ...after this many seconds.
        max_connections: TCP connections open at once; past it, new ones are closed at
            once (lowered to fit the open-file limit).
    """

    def __init__(
        self,
        emulator: Emulator,
        *,
        max_body_size: int,
        header_timeout: float = 30.0,
        min_data_rate: float = 240.0,
        data_rate_grace: float = 5.0,
        max_connections: int = 1000,
    ) -> None:
        self.emulator = emulator
        self.max_body_size = max_body_size
        self.header_timeout = header_timeout
        self.min_data_rate = min_data_rate
        self.data_rate_grace = data_rate_grace
        self.max_connections, self._lowered = fit_open_files(max_connections)
        self.connections = 0
        self.addresses: list[str] = []
        self._runner: web.AppRunner | None = None
        self._listeners: list[asyncio.Server] = []
        self._log = logging.Logger("workerkit.host.http", logging.WARNING)
        self._log.addHandler(_ConsoleLog(emulator.console))
        self._refusals = RateLimited(emulator.console.warning)
        self._rejections = RateLimited(emulator.console.warning)
        settings = emulator.host_settings
        concurrent = settings.max_concurrent_requests if settings is not None else None
        outstanding = settings.max_outstanding_requests if settings is not None else None
        self._queue = (
            RequestQueue(concurrent, outstanding)
            if concurrent is not None or outstanding is not None
            else None
        )
        self._proxy = HttpProxy(
            emulator.console,
            max_body_size=max_body_size,
            min_data_rate=min_data_rate,
            data_rate_grace=data_rate_grace,
        )

    async def start(self, host: str, port: int) -> int:
        """Listen on every address `host` resolves to, at `port` (0: a free port, the same
        for all); return the port. `addresses` lists the addresses bound.

        Raises:
            OSError: the name does not resolve, or an address cannot be bound.
        """
        app = web.Application(client_max_size=self.max_body_size + 1)
        # Every path, also with an encoded line break in it (`.` would stop there).
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle, expect_handler=self._expect)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=5.0,
            keepalive_timeout=self.header_timeout,
            max_line_size=MAX_REQUEST_LINE,
            max_field_size=MAX_HEADERS_TOTAL,
            max_headers=MAX_HEADERS,
            logger=self._log,
        )
        await runner.setup()
        server = runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.Protocol:
            if self.connections >= self.max_connections:
                self._refusals(self._refusal_line)
                return Refused()
            self.connections += 1
            return Counted(server(), self._released)

        try:
            addresses = await _resolve(host)
            bound = port
            for address in addresses:
                listener = await loop.create_server(
                    connection, address, bound, reuse_address=True, backlog=128
                )
                self._listeners.append(listener)
                bound = listener.sockets[0].getsockname()[1]
        except BaseException:
            await self._close_listeners()
            await runner.cleanup()
            raise
        self._runner = runner
        self.addresses = addresses
        return bound

    def _released(self) -> None:
        self.connections -= 1

    def _refusal_line(self, refused: int) -> str:
        lowered = (
            f" (lowered from {self._lowered[0]} to fit the open-file limit, ulimit -n"
            f" {self._lowered[1]})"
            if self._lowered is not None
            else ""
        )
        again = f"; {refused} refused since the last such line" if refused > 1 else ""
        return (
            f"HTTP: {self.connections} connections are open, the limit{lowered}: a new one was"
            f" closed without a response, as Kestrel does past MaxConcurrentConnections{again}."
            " Raise the limit with --max-connections (EmulatorOptions.max_connections)."
        )

    async def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        for listener in listeners:
            # Bounded: on 3.12+ this also waits for the connections to close.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), 1.0)

    async def stop(self) -> None:
        """Stop listening; requests in progress are given a few seconds."""
        for listener in self._listeners:
            listener.close()  # no new connections while the others wind down
        if self._runner is not None:
            runner, self._runner = self._runner, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.cleanup(), 10.0)
        await self._close_listeners()
        await self._proxy.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        queue = self._queue
        if queue is None or _is_admin(request):
            return await self._answer(request)
        response = await queue.run(request, self._answer)
        if response is not None:
            return response
        self._rejections(
            lambda held: (
                f"Http request queue limit of {queue.outstanding_limit} has been"
                f" exceeded (host.json extensions.http.maxOutstandingRequests): answered 429"
                + (f"; {held} times since the last such line." if held > 1 else ".")
            )
        )
        return await self._send(request, web.Response(status=429, headers={SCALE_OUT_HEADER: "1"}))

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            response = await self._dispatch(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.emulator.console.error(
                f"emulator error while handling {request.method} {request.path}: {exc!r}"
            )
            response = _text(500, "the emulator failed to handle this request (see its log)\n")
        if response.prepared:  # relayed from a worker's HttpUri as it came (`_proxy`)
            return response
        return await self._send(request, response)

    async def _send(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Write `response` within the minimum data rate; abort the connection if the client
        reads it more slowly."""
        budget = self.data_rate_grace + (response.content_length or 0) / self.min_data_rate
        try:
            async with asyncio.timeout(budget):
                await response.prepare(request)
                await response.write_eof()
        except TimeoutError:
            self.emulator.console.warning(
                f"{request.method} {request.path}: the client read the response slower than"
                f" {self.min_data_rate:g} bytes/s; the connection was aborted."
            )
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # the client went away; aiohttp notices too
        return response

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse a body over the limit before the client sends it."""
        length = request.content_length
        if length is not None and length > self.max_body_size:
            return self._too_large(length)
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _text(417, f"unknown expectation {request.headers.get('Expect')!r}\n")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        emulator = self.emulator
        if emulator.stopping:
            return _text(503, "the host is shutting down\n")
        if request.version < (1, 0):  # a request line without a version: Kestrel's 400
            response = _text(400, "a request line needs a version: HTTP/1.0 or HTTP/1.1\n")
            response.force_close()
            return response
        size = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
        if size > MAX_HEADERS_TOTAL:
            response = _text(
                431,
                f"the request headers take {size} bytes, over the limit of {MAX_HEADERS_TOTAL}\n",
            )
            response.force_close()
            return response
        segments, path = normalize_path(request.rel_url.raw_path)
        if segments and segments[0].lower() == "admin":
            return await answer_admin(emulator, request, segments[1:], self._read_body)
        settings = emulator.host_settings
        prefix = [p for p in (settings.route_prefix if settings else "api").split("/") if p]
        found = None
        if [s.lower() for s in segments[: len(prefix)]] == [p.lower() for p in prefix]:
            found = emulator.router.match(request.method, segments[len(prefix) :])
        if isinstance(found, frozenset):  # the route's method constraint fails: no match
            emulator.console.warning(
                f"{request.method} {unquote(path)}: the route takes"
                f" {', '.join(sorted(found))} only; answered 404, as the host does."
            )
        if found is None or isinstance(found, frozenset):
            if path == "/":  # the host's HomepageMiddleware, after the function routes
                return home_page(emulator.dispatcher.environment)
            return web.Response(status=404)
        length = request.content_length
        if length is not None and length > self.max_body_size:
            return self._too_large(length)
        query = request.rel_url.raw_query_string
        protocol = request.transport.get_protocol() if request.transport is not None else None
        proxy = ProxiedRequest(
            self._proxy,
            request,
            path + (f"?{query}" if query else ""),
            read_body=lambda: self._rpc_http_body(request),
            lost=protocol.lost if isinstance(protocol, Counted) else None,
        )
        incoming = IncomingRequest(  # its body, read or not, is the proxy's
            method=request.method,
            url=f"{request.scheme}://{request.host}{path}" + (f"?{query}" if query else ""),
            headers=list(request.headers.items()),
            query=list(request.query.items()),
            params=found.params,
        )
        try:
            if not emulator.dispatcher.proxying:  # read ahead, as before any worker is picked
                await proxy.read()
            output = await emulator.invoke_http(found.entry.target, incoming, proxy)
        except Rejected as exc:
            return exc.response
        return proxy.answer if proxy.answer is not None else _response(output)

    async def _rpc_http_body(self, request: web.Request) -> bytes | web.Response | None:
        """The body as an RpcHttp gets it (a worker without ``HttpUri``)."""
        body = await self._read_body(request)
        if isinstance(body, bytes) and request.content_length is None:
            self.emulator.console.warning(
                f"{request.method} {request.path}: the body came without Content-Length"
                " (chunked); the real host passes no body then, so neither does the emulator."
            )
            return None
        return body

    async def _read_body(self, request: web.Request) -> bytes | web.Response | None:
        limit = self.max_body_size
        length = request.content_length
        if length is not None and length > limit:
            return self._too_large(length)
        if not request.body_exists:
            return None
        data = bytearray()
        started = asyncio.get_running_loop().time()
        while True:
            # By any time t the body must have come at min_data_rate since the grace period.
            deadline = started + self.data_rate_grace + len(data) / self.min_data_rate
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await request.content.read(_CHUNK)
            except TimeoutError:
                return await self._too_slow(request, len(data))
            except (ConnectionError, web.RequestPayloadError, HttpProcessingError) as exc:
                self.emulator.console.warning(
                    f"{request.method} {request.path}: the request body broke off after"
                    f" {len(data)} bytes ({exc}); the function was not called."
                )
                response = _text(400, f"the request body broke off: {exc}\n")
                response.force_close()
                return response
            if not chunk:
                break
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

    async def _too_slow(self, request: web.Request, received: int) -> web.Response:
        """408, then close the connection (no lingering for the rest of a trickled body)."""
        self.emulator.console.warning(
            f"{request.method} {request.path}: the request body came slower than"
            f" {self.min_data_rate:g} bytes/s ({received} bytes); answered 408."
        )
        response = _text(
            408,
            f"the request body came slower than {self.min_data_rate:g} bytes/s after"
            f" {self.data_rate_grace:g} s ({received} bytes received)\n",
        )
        response.force_close()
        await self._send(request, response)
        if request.protocol is not None:
            request.protocol.force_close()
        return response


def _is_admin(request: web.Request) -> bool:
    segments, _ = normalize_path(request.rel_url.raw_path)
    return bool(segments) and segments[0].lower() == "admin"


async def _resolve(host: str) -> list[str]:
    """The addresses `host` names (a literal address names itself), without duplicates."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _response(output: HttpOutput) -> web.Response:
    response = web.Response(status=output.status, body=output.body)
    response.headers.popall("Content-Type", None)  # only the function's (or the host's default)
    for name, value in output.headers:
        response.headers.add(name, value)
    return response
