"""The worker's own HTTP server for the host's proxy (HTTP streaming, ``HttpUri``).

With ``WORKERKIT_HTTP_STREAMING=true`` the worker serves HTTP on 127.0.0.1 (a free port)
and reports ``HttpUri``; the host then forwards every HTTP-trigger request there, with the
header ``x-ms-invocation-id``, and still sends the `InvocationRequest` (with an `RpcHttp`
holding only the route parameters) over the stream. `Proxy` pairs the two through the
I/O-free `proxymatch.Matcher`, hands the invocation an `HttpRequest` whose body arrives as
the hook reads it, and writes the hook's response, chunk by chunk for a streamed body. The
invocation itself stays `invoking.Invocations`': it waits for its request
(`Proxied.wait`), runs the hook, writes the response (`Proxied.respond`) and only then
sends its `InvocationResponse`; `Proxied.ended` makes sure the request is answered however
the invocation ends.

The server is aiohttp's low-level one (the ``workerkit[http]`` extra): its C parser, flow
control both ways (a request body is read only as fast as the hook takes it; each chunk
of a response waits for the socket), and handler cancellation when a client goes away.
This module is imported only when streaming is turned on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

try:
    from aiohttp import web, web_server
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "HTTP streaming (WORKERKIT_HTTP_STREAMING) needs aiohttp, which this environment"
        f" lacks ({exc}): install it with `pip install 'workerkit[http]'`"
    ) from exc

from .._values import HttpRequest, _StreamedBody
from .httpbody import InPool, chunks, shape
from .proxymatch import AnswerRequest, CancelInvocation, Effect, FailInvocation, Matched, Matcher
from .proxymatch import Refused as _Refused

if TYPE_CHECKING:
    from .._types import Invocation

__all__ = ["INVOCATION_ID_HEADER", "ClientGone", "Proxied", "Proxy"]

log = logging.getLogger("workerkit")

#: The header by which the host's proxy names the invocation of a forwarded request.
INVOCATION_ID_HEADER = "x-ms-invocation-id"
#: Request limits of the host's own server (Kestrel): a request the host accepted fits.
_MAX_LINE = 8192 + 1024
_MAX_FIELD = 32 * 1024


class ClientGone(ConnectionError):
    """The HTTP client went away while its response was being written."""


class _Pending:
    """One proxied request, from its arrival to its answer; `done` tells the request's
    handler how it ends: None when the invocation wrote the response, or (status, text) to
    answer now."""

    def __init__(self, request: web.BaseRequest, invocation_id: str, loop: Any) -> None:
        self.request = request
        self.invocation_id = invocation_id
        self.done: asyncio.Future[tuple[int, str] | None] = loop.create_future()
        self.response: web.StreamResponse | None = None
        self.body: _StreamedBody | None = None
        self.gone = False
        self._continued = False
        self._reader: asyncio.Task[Any] | None = None

    def answer(self, outcome: tuple[int, str] | None) -> None:
        if not self.done.done():
            self.done.set_result(outcome)

    async def receive(self) -> bytes:
        """The next chunk of the body (b"" at its end)."""
        if not self._continued:
            self._continued = True
            expect = self.request.headers.get("Expect", "")
            # The interim response only before the final one: once that began (a streamed
            # response that reads the body as it goes), it would land inside its body.
            if (
                expect.lower() == "100-continue"
                and self.request.version >= (1, 1)
                and self.response is None
            ):
                await self.request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._reader = asyncio.current_task()
        try:
            return await self.request.content.readany()
        finally:
            self._reader = None

    def stop_reading(self, reason: str) -> None:
        """No more reads of the body: a read still waiting (in a task that outlived the
        invocation, or for a plain def hook's thread) is cancelled, so the server can
        discard the rest of the body."""
        if self.body is not None:
            self.body.close(reason)
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()


class Proxied:
    """The invocation side of one proxied call."""

    def __init__(self, proxy: Proxy, invocation_id: str) -> None:
        self._proxy = proxy
        self.invocation_id = invocation_id
        self.pending: _Pending | None = None
        self._matched: asyncio.Future[None] = proxy.loop.create_future()
        #: Why the invocation cannot run (its request never came, ...), once known.
        self.failure: str | None = None
        self._ended = False

    def _match(self, pending: _Pending) -> None:
        self.pending = pending
        if not self._matched.done():
            self._matched.set_result(None)

    def _fail(self, reason: str) -> None:
        self.failure = reason
        if not self._matched.done():
            self._matched.set_result(None)

    async def wait(self) -> str | None:
        """Wait for the request; None once it is here, else why the invocation fails."""
        await self._matched
        return self.failure

    async def attach(self, invocation: Invocation) -> Invocation:
        """`invocation` with its HTTP trigger input replaced by the proxied request (route
        parameters from the host's `RpcHttp`); a small body is read first
        (`WorkerOptions.http_body_prefetch`)."""
        pending = self.pending
        assert pending is not None
        request = pending.request
        trigger = invocation.function.trigger
        assert trigger is not None
        sent = invocation.inputs.get(trigger.name)
        params = sent.params if isinstance(sent, HttpRequest) else {}
        length = request.content_length
        limit = self._proxy.prefetch
        prefetched: bytes | None = None
        if not request.body_exists:
            prefetched = b""
        elif length is not None and length <= limit:
            parts = []
            while chunk := await pending.receive():
                parts.append(chunk)
            prefetched = b"".join(parts)
        why = (
            f"Content-Length {length}, more than WorkerOptions.http_body_prefetch ({limit})"
            if length is not None
            else "sent in chunks, without a Content-Length"
        )
        pending.body = _StreamedBody(
            self._proxy.loop, pending.receive, why_streamed=why, prefetched=prefetched
        )
        http = HttpRequest._streaming(
            request.method, _url(request), _joined(request.headers.items(), lower=True),
            _joined(request.rel_url.query.items(), lower=False), params, pending.body,
        )  # fmt: skip
        inputs = dict(invocation.inputs)
        inputs[trigger.name] = http
        return dataclasses.replace(invocation, inputs=MappingProxyType(inputs))

    async def respond(self, value: Any, in_pool: InPool) -> str | None:
        """Write `value` (the function's HTTP output: `httpbody.shape`) as the response,
        chunk by chunk for a streamed body (a write waits while more than the transport's
        buffer is unsent); None when it is written, else why it could not be (the client
        went away).

        Raises:
            ConversionError: a value that cannot be sent; anything a streamed body raises.
        """
        try:
            await self._respond(value, in_pool)
        except ClientGone as exc:
            return str(exc)
        return None

    async def _respond(self, value: Any, in_pool: InPool) -> None:
        pending = self.pending
        assert pending is not None
        if pending.gone or pending.done.done():
            raise ClientGone("the HTTP client closed the connection before the response")
        shaped = shape(value)
        response = web.StreamResponse(status=shaped.status)
        for name, text in shaped.headers:
            response.headers.add(name, text)
        whole = isinstance(shaped.body, bytes)
        if whole:
            response.content_length = len(shaped.body)
        pending.response = response
        await _sent(response.prepare(pending.request))
        if pending.request.method == "HEAD" or shaped.status in (204, 304):
            await _discard(shaped.body)  # these responses have no body (RFC 9110)
        elif whole:
            if shaped.body:
                await _sent(response.write(shaped.body))
        else:
            stream = chunks(shaped.body, in_pool)
            try:
                async for data in stream:
                    await _sent(response.write(data))
            finally:
                await stream.aclose()
        await _sent(response.write_eof())
        pending.answer(None)

    def ended(self, reason: str) -> None:
        """The invocation is over (`reason`: how). Its request, unless the response was
        written, is answered now: 500 before a response began, or cut off (the connection
        aborted) when one was under way, so the client cannot take it for complete."""
        if self._ended:
            return
        self._ended = True
        proxy = self._proxy
        if proxy._invocations.get(self.invocation_id) is self:
            del proxy._invocations[self.invocation_id]
        self._fail(reason)  # nobody waits any more; a match now would be too late
        proxy._apply(proxy.matcher.invocation_gone(self.invocation_id, proxy.loop.time(), reason))
        pending = self.pending
        if pending is None:
            return
        pending.stop_reading("the invocation is over")
        if pending.done.done() or pending.gone:
            return
        if pending.response is None or not pending.response.prepared:
            pending.answer((500, ""))  # as the host answers a function that failed
            return
        transport = pending.request.transport
        if transport is not None:
            transport.abort()  # its handler is cancelled with the connection


async def _discard(body: Any) -> None:
    """Close a streamed body that will not be sent, so its generator's cleanup runs."""
    close = getattr(body, "aclose", None)
    if close is not None:
        await close()
    elif hasattr(body, "close") and not isinstance(body, bytes):
        body.close()


async def _sent(write: Any) -> None:
    try:
        await write
    except ConnectionError as exc:  # aiohttp: "Cannot write to closing transport"
        raise ClientGone(f"the HTTP client closed the connection: {exc}") from None


class Proxy:
    """The HTTP server of one session and the proxied calls under way."""

    def __init__(
        self, *, wait: float, prefetch: int, disconnected: Callable[[str, str], None]
    ) -> None:
        """`wait`: `WorkerOptions.http_match_timeout`; `prefetch`: its
        ``http_body_prefetch``; `disconnected(invocation_id, reason)` cancels an invocation
        whose client went away."""
        self.loop = asyncio.get_running_loop()
        self.matcher = Matcher(wait)
        self.prefetch = prefetch
        self._disconnected = disconnected
        self._requests: dict[str, _Pending] = {}
        self._invocations: dict[str, Proxied] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._server: web_server.Server | None = None
        self._listener: asyncio.Server | None = None
        self.uri = ""

    async def start(self) -> str:
        """Listen on 127.0.0.1, a free port; the URI to report as ``HttpUri``."""
        self._server = web_server.Server(
            self._handle,
            handler_cancellation=True,
            access_log=None,
            max_line_size=_MAX_LINE,
            max_field_size=_MAX_FIELD,
            auto_decompress=False,  # the function sees the body as the client sent it
        )
        self._listener = await self.loop.create_server(self._server, "127.0.0.1", 0)
        port = self._listener.sockets[0].getsockname()[1]
        self.uri = f"http://127.0.0.1:{port}"
        return self.uri

    async def close(self) -> None:
        """Stop serving: what still waits is answered (503, Failure); bounded."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in list(self._requests.values()):
            pending.answer((503, "the worker is shutting down"))
        for proxied in list(self._invocations.values()):
            proxied._fail("the worker is shutting down")
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.shutdown(0.5), 2.0)
            except (TimeoutError, Exception) as exc:  # closing anyway
                log.debug("HTTP server shutdown: %r", exc)

    # -- the invocation side -------------------------------------------------------------------
    def expect(self, invocation_id: str) -> Proxied:
        """Invocation `invocation_id` is a proxied call: find or await its request."""
        proxied = Proxied(self, invocation_id)
        outcome = self.matcher.invocation_arrived(invocation_id, self.loop.time())
        if isinstance(outcome, Matched):
            proxied._match(self._requests[invocation_id])
        elif isinstance(outcome, _Refused):
            proxied._fail(outcome.reason)
        else:
            self._invocations[invocation_id] = proxied
            self._arm()
        return proxied

    def refused(self, invocation_id: str, reason: str) -> None:
        """Invocation `invocation_id` was refused (the worker is stopping, ...): a request
        for it, waiting or to come, is answered 500 at once."""
        self._apply(self.matcher.invocation_gone(invocation_id, self.loop.time(), reason))
        self._arm()

    def reading(self, on: bool) -> None:
        """The session stopped (False) or resumed (True) reading from the host."""
        if on:
            self.matcher.resume(self.loop.time())
        else:
            self.matcher.pause(self.loop.time())
        self._arm()

    # -- the request side --------------------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        invocation_id = request.headers.get(INVOCATION_ID_HEADER, "")
        if not invocation_id:
            return _answer(
                400,
                f"this server takes only requests the Functions host forwards, which carry"
                f" the header {INVOCATION_ID_HEADER}",
            )
        pending = _Pending(request, invocation_id, self.loop)
        outcome = self.matcher.request_arrived(invocation_id, self.loop.time())
        if isinstance(outcome, _Refused):
            log.warning(
                "proxied request for invocation %s answered %d at once: %s",
                invocation_id,
                outcome.status,
                outcome.reason,
            )
            return _answer(outcome.status, outcome.reason)
        self._requests[invocation_id] = pending
        if isinstance(outcome, Matched):
            self._invocations.pop(invocation_id)._match(pending)
        else:
            self._arm()
        try:
            answer = await pending.done
        except asyncio.CancelledError:  # the connection closed (the host's client went away)
            pending.gone = True
            pending.stop_reading("the HTTP client closed the connection")
            self._apply(self.matcher.request_gone(invocation_id, self.loop.time()))
            raise
        finally:
            if self._requests.get(invocation_id) is pending:
                del self._requests[invocation_id]
        if answer is None:
            assert pending.response is not None
            return pending.response
        status, text = answer
        if status != 500:
            log.warning("proxied request for invocation %s answered %d: %s", invocation_id,
                        status, text)  # fmt: skip
        return _answer(status, text)

    # -- the matcher's effects and clock --------------------------------------------------------
    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, AnswerRequest):
                pending = self._requests.get(effect.invocation_id)
                if pending is not None:
                    pending.answer((effect.status, effect.reason))
            elif isinstance(effect, FailInvocation):
                proxied = self._invocations.pop(effect.invocation_id, None)
                if proxied is not None:
                    log.error("invocation %s: %s", effect.invocation_id, effect.reason)
                    proxied._fail(effect.reason)
            elif isinstance(effect, CancelInvocation):
                self._disconnected(effect.invocation_id, effect.reason)

    def _arm(self) -> None:
        deadline = self.matcher.next_deadline()
        if self._timer is not None:
            if deadline == self._timer_at:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._apply(self.matcher.expire(max(self.loop.time(), self._timer_at)))
        self._arm()


def _answer(status: int, text: str) -> web.Response:
    """An answer of the proxy's own: a function's failure is a bare 500, as from the host."""
    if status == 500 or not text:
        return web.Response(status=status)
    return web.Response(status=status, text=text + "\n")


def _url(request: web.BaseRequest) -> str:
    """The URL the client asked for: scheme and host from the host's ``X-Forwarded-*``
    headers (its proxy sets them; the Host header names this server), path and query as
    received."""
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() or "http"
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
    return f"{proto}://{host}{request.raw_path}"


def _joined(items: Any, *, lower: bool) -> dict[str, str]:
    """Names to values, repeated names comma-joined (as the host joins them)."""
    joined: dict[str, str] = {}
    for name, value in items:
        key = name.lower() if lower else name
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined
