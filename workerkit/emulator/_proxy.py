"""HTTP proxying: an HTTP request for a worker that reported ``HttpUri`` is forwarded to that
address, and the worker's response is relayed to the client as it comes, as the host's proxy
does (Azure/azure-functions-host, src/WebJobs.Script.Grpc/Server/DefaultHttpProxyService.cs,
RetryProxyHandler.cs, and the invocation's side in
src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs; the forwarder is YARP's
``HttpForwarder``, microsoft/reverse-proxy 2.0 src/ReverseProxy/Forwarder/HttpForwarder.cs).
Which headers go where is `_httpuri`'s part.

One call, in the order the host takes (``GrpcWorkerChannel.SendInvocationRequest``): the
forwarding starts (`ProxiedRequest.start`), then the ``InvocationRequest`` goes out with an
empty `RpcHttp` (`_rpchttp.build_rpc_http`), so the worker may see either first. Then:

- **connecting**: a refused connection is retried, 10 attempts in all, 50 ms apart doubling
  to at most 250 ms (``RetryProxyHandler``); nothing else is retried;
- **streaming**: the request body goes to the worker as the client sends it, and the
  response body to the client as the worker sends it: the response starts with the first
  body bytes (YARP sends the headers with them), each chunk is written at once;
- **activity timeout**: 240 s without progress, while connecting, waiting for the response
  or between body chunks, gives the call up (``ForwarderRequestConfig.ActivityTimeout``);
- **the end**: the response to the client is completed only once the ``InvocationResponse``
  has come and the forwarding has ended (``InvokeResponse`` awaits the forwarding,
  ``EnsureSuccessfulForwardingAsync``; the HTTP pipeline ends after the invocation). The
  invocation fails when the worker answered Failure or Cancelled, or when the forwarding
  failed ("Failed to proxy request with ForwarderError: ..."); its HTTP answer to the
  client is then a 500 when no body has been sent yet (``ExceptionMiddleware``), else the
  connection is cut, so the client does not take a truncated body for a whole one. A
  response that broke off, or a client reading it too slowly, cuts it at once;
- **cancel**: a client that goes away cancels the call: ``InvocationCancel`` goes to a worker
  that handles it (the function's token is the request's ``RequestAborted``, in
  src/WebJobs.Script.WebHost/Middleware/FunctionInvocationMiddleware.cs) and the forwarded
  request is aborted (YARP's token is linked to it); the function timeout aborts it too.

Differences from the host: the trigger metadata of a forwarded request lacks the
properties of a JSON body (the host reads the body for them before forwarding it; here it
is streamed, never held); the request body of a retried connection is never replayed
(only refused connections are retried, before a byte of it is read).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from ._httpuri import (
    HTTP_URI,
    ForwardRefused,
    HttpTarget,
    HttpUriError,
    forwarded_headers,
    parse_http_uri,
    response_headers,
)

if TYPE_CHECKING:
    from ._console import Console

__all__ = ["ACTIVITY_TIMEOUT", "CONNECT_ATTEMPTS", "HttpProxy", "ProxiedRequest", "Rejected"]

#: RetryProxyHandler: MaxRetries, InitialDelay and MaximumDelay (seconds here).
CONNECT_ATTEMPTS: Final = 10
FIRST_DELAY: Final = 0.05
MAX_DELAY: Final = 0.25
#: DefaultHttpProxyService: ForwarderRequestConfig.ActivityTimeout.
ACTIVITY_TIMEOUT: Final = 240.0
#: The longest response header line accepted from a worker (Kestrel's total header limit).
_MAX_FIELD: Final = 32768
#: What a client went away from: the host's ForwarderError names.
_CANCELED: Final = "RequestCanceled: the client closed its connection"

#: Reads the request body as the front door does for an RpcHttp: the bytes (None: none), or
#: the response that refuses it (413, 408, 400).
BodyReader = Callable[[], Awaitable[bytes | web.StreamResponse | None]]


class Rejected(Exception):
    """The request was answered before it reached a worker: `response` is the answer (a body
    too large, too slow or broken off, read for a worker without ``HttpUri``)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


class _BodyBroken(Exception):
    """The client's request body could not be forwarded (the message says why)."""


class _Relayed(web.StreamResponse):
    """The client's response to a forwarded request: the worker's status and headers as they
    are. aiohttp gives a response with a body and no ``Content-Type`` one of its own
    (``application/octet-stream``); the host's proxy adds none (YARP's
    ``HttpTransformer.TransformResponseAsync`` copies the worker's headers, Kestrel adds
    only ``Date`` and ``Server``), so a worker's page without one is not turned into a
    download."""

    async def _prepare_headers(self) -> None:
        typed = "Content-Type" in self.headers
        await super()._prepare_headers()
        if not typed:
            self.headers.popall("Content-Type", None)


class HttpProxy:
    """The emulator's HTTP client towards its workers (one connection pool) and the limits
    a forwarded call keeps to. Needs a running event loop from the first call on.

    Args:
        console: where retries (verbose) and refusals are reported.
        max_body_size: the largest request body forwarded (bytes).
        min_data_rate: bytes per second a request body must arrive at, and a response be read
            at, after `data_rate_grace` seconds (Kestrel's minimum data rates).
        data_rate_grace: see `min_data_rate`.
        activity_timeout: seconds without progress after which a call is given up.
    """

    def __init__(
        self,
        console: Console,
        *,
        max_body_size: int,
        min_data_rate: float,
        data_rate_grace: float,
        activity_timeout: float = ACTIVITY_TIMEOUT,
    ) -> None:
        self.console = console
        self.max_body_size = max_body_size
        self.min_data_rate = min_data_rate
        self.data_rate_grace = data_rate_grace
        self.activity_timeout = activity_timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The client session: no cookies, no redirects followed, bodies passed on as they are
        (no decompression), no headers of its own (``SocketsHttpHandler`` with
        ``UseCookies = false``, ``AllowAutoRedirect = false``)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
                max_field_size=_MAX_FIELD,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class ProxiedRequest:
    """One HTTP request for a function, from the front door to its answer.

    For a worker without ``HttpUri`` its body is read whole (`read`); for one with, it is
    forwarded (`prepare`, `start`), and `finish` ends the client's response once the
    invocation has ended. `answer` is then the response written (None: answer 500).

    Args:
        proxy: the client and its limits.
        request: the client's request (its body not read yet, unless `body` is given).
        path_and_query: its path (dot segments resolved) and raw query, as forwarded.
        read_body: reads the whole body for a worker without ``HttpUri``.
        lost: set when the client's connection is closed.
    """

    _UNREAD: Final = object()

    def __init__(
        self,
        proxy: HttpProxy,
        request: web.Request,
        path_and_query: str,
        *,
        read_body: BodyReader,
        lost: asyncio.Event | None = None,
    ) -> None:
        self.request = request
        self.answer: web.StreamResponse | None = None
        #: Sent to a worker (a retry cannot send it again).
        self.forwarded = False
        self._proxy = proxy
        self._path = path_and_query
        self._read_body = read_body
        self._lost = lost
        self._body: object = self._UNREAD
        self._response: web.StreamResponse | None = None
        self._task: asyncio.Task[str | None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._on_gone: Callable[[], None] | None = None
        self._gone = asyncio.Event()
        self._cut = False
        self._problem: str | None = None

    @property
    def body(self) -> bytes | None:
        """The body once read (`read`); None before, or when there is none."""
        return self._body if isinstance(self._body, bytes) else None

    async def read(self) -> bytes | None:
        """The whole body (None: none), read once.

        Raises:
            Rejected: the body is refused (too large, too slow, broken off).
        """
        if self._body is self._UNREAD:
            result = await self._read_body()
            if isinstance(result, web.StreamResponse):
                raise Rejected(result)
            self._body = result
        return self.body

    async def prepare(self, capabilities: Mapping[str, str]) -> HttpTarget | None:
        """Get ready for the worker with `capabilities`: its address when it reported
        ``HttpUri`` (the request is forwarded there), else None, the body read whole.

        Raises:
            ForwardRefused: an address the emulator does not connect to, or a request already
                forwarded (the function is not invoked).
            Rejected: the body is refused (for a worker without ``HttpUri``).
        """
        uri = capabilities.get(HTTP_URI)
        if not uri:
            await self.read()
            return None
        if self.forwarded:  # a retry: StartForwarding's Items.Add throws the second time
            raise ForwardRefused(
                "the request was forwarded to the worker already, and the host fails every"
                " further attempt of a forwarded request at once (retries do not repeat it)"
            )
        try:
            return parse_http_uri(uri)
        except HttpUriError as exc:
            raise ForwardRefused(f"{exc}. The function was not invoked.") from None

    def start(self, target: HttpTarget, invocation_id: str) -> asyncio.Task[str | None]:
        """Start forwarding the request to `target` for `invocation_id`; the task ends with
        None once the worker's response has been relayed (not yet completed: `finish`), or
        with what went wrong (the ForwarderError's name first)."""
        self.forwarded = True
        self._task = asyncio.create_task(self._forward(target, invocation_id))
        if self._lost is not None:  # the request's RequestAborted, until `finish`
            self._watch = asyncio.create_task(self._watch_client(self._lost))
        return self._task

    def when_gone(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the client goes away before the call is over (now, if it
        has)."""
        if self._gone.is_set():
            callback()
        else:
            self._on_gone = callback

    def abort(self) -> None:
        """Abort the forwarded request (the invocation timed out, its worker is gone)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def finish(self, succeeded: bool) -> None:
        """End the client's response now that the invocation has ended (module docstring):
        completed when it `succeeded`, else cut (or left to a 500 when nothing was sent)."""
        self.abort()
        if self._watch is not None:
            self._watch.cancel()
        if self._task is not None:
            await asyncio.wait({self._task})
        out = self._response
        if out is None:
            return
        if self._cut or self._gone.is_set() or not succeeded:
            if out.prepared:
                self._cut_client()
                self.answer = out
            return
        try:
            async with asyncio.timeout(self._proxy.data_rate_grace):
                if not out.prepared:
                    await out.prepare(self.request)
                await out.write_eof()
        except (TimeoutError, ConnectionError):
            self._cut_client()
        self.answer = out

    # -- forwarding ----------------------------------------------------------------------------
    async def _watch_client(self, lost: asyncio.Event) -> None:
        await lost.wait()
        self._client_gone()

    async def _forward(self, target: HttpTarget, invocation_id: str) -> str | None:
        exchange = asyncio.create_task(self._exchange(target, invocation_id))
        gone = asyncio.create_task(self._gone.wait())
        try:
            done, _ = await asyncio.wait({exchange, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not exchange.done():  # the client went away, or this call was aborted
                exchange.cancel()
                await asyncio.wait({exchange})
        if exchange in done:
            return exchange.result()
        return _CANCELED

    async def _exchange(self, target: HttpTarget, invocation_id: str) -> str | None:
        proxy = self._proxy
        request = self.request
        headers, _ = forwarded_headers(
            list(request.headers.items()),
            invocation_id=invocation_id,
            target=target,
            client_address=request.remote,
            scheme=request.scheme,
        )
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(proxy.activity_timeout) as activity:

                def touch() -> None:  # also from the task sending the body, maybe later
                    with contextlib.suppress(RuntimeError):  # the exchange is over
                        activity.reschedule(loop.time() + proxy.activity_timeout)

                response = await self._connect(target, headers, touch)
                if isinstance(response, str):
                    return response
                async with response:
                    touch()
                    return await self._relay(response, touch)
        except TimeoutError:
            started = self._response is not None and self._response.prepared
            if started:
                self._cut_client()
            what = "ResponseBodyCanceled" if started else "RequestTimedOut"
            return (
                f"{what}: no progress for {proxy.activity_timeout:g} s (the host's activity"
                " timeout)"
            )

    async def _connect(
        self, target: HttpTarget, headers: list[tuple[str, str]], touch: Callable[[], None]
    ) -> aiohttp.ClientResponse | str:
        """Send the request, retrying refused connections (``RetryProxyHandler``); the
        response (its head), or what went wrong."""
        proxy = self._proxy
        url = URL(target.url(self._path), encoded=True)
        delay = FIRST_DELAY
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                return await proxy.session().request(
                    self.request.method,
                    url,
                    headers=headers,
                    data=self._body_source(touch),
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError as exc:
                if attempt == CONNECT_ATTEMPTS:
                    return (
                        f"Request: could not connect to the worker's HttpUri {target.uri} in"
                        f" {CONNECT_ATTEMPTS} attempts ({exc.os_error.strerror or exc})"
                    )
                if proxy.console.verbose:
                    proxy.console.warning(
                        "Failed to proxy request to the worker. Retrying in"
                        f" {round(delay * 1000)}ms. Attempt {attempt} of {CONNECT_ATTEMPTS}."
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
            except (aiohttp.ClientError, _BodyBroken) as exc:
                return self._problem or f"Request: {type(exc).__name__}: {exc}"
        raise AssertionError("unreachable")  # pragma: no cover

    def _body_source(self, touch: Callable[[], None]) -> bytes | AsyncIterator[bytes] | None:
        if self._body is not self._UNREAD:
            return self.body
        if not self.request.body_exists:
            return None
        return self._stream(touch)

    async def _stream(self, touch: Callable[[], None]) -> AsyncIterator[bytes]:
        """The client's body as it comes, kept to the limits the front door applies."""
        proxy = self._proxy
        content = self.request.content
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = 0
        while True:
            deadline = started + proxy.data_rate_grace + received / proxy.min_data_rate
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await content.readany()
            except TimeoutError:
                raise self._broken(
                    f"the request body came slower than {proxy.min_data_rate:g} bytes/s"
                    f" ({received} bytes)"
                ) from None
            except (ConnectionError, web.RequestPayloadError, HttpProcessingError) as exc:
                why = f"the request body broke off after {received} bytes ({exc})"
                raise self._broken(why) from exc
            if not chunk:
                return
            received += len(chunk)
            if received > proxy.max_body_size:
                raise self._broken(f"the request body exceeds {proxy.max_body_size} bytes")
            touch()
            yield chunk

    def _broken(self, why: str) -> _BodyBroken:
        self._problem = f"RequestBodyClient: {why}"
        return _BodyBroken(why)

    async def _relay(
        self, response: aiohttp.ClientResponse, touch: Callable[[], None]
    ) -> str | None:
        """Copy the worker's response to the client: the head with the first body bytes, each
        chunk as it comes; the end is left to `finish`."""
        out = _Relayed(status=response.status, reason=response.reason)
        for name, value in response_headers(response.headers.items()):
            out.headers.add(name, value)
        self._response = out
        try:
            async for chunk in response.content.iter_any():
                touch()
                problem = await self._write(out, chunk)
                if problem is not None:
                    return problem
                touch()
        except aiohttp.ClientError as exc:
            if out.prepared:
                self._cut_client()
            return self._problem or f"ResponseBodyDestination: the response broke off ({exc})"
        return self._problem

    async def _write(self, out: web.StreamResponse, chunk: bytes) -> str | None:
        proxy = self._proxy
        try:
            async with asyncio.timeout(proxy.data_rate_grace + len(chunk) / proxy.min_data_rate):
                if not out.prepared:
                    await out.prepare(self.request)
                await out.write(chunk)
        except TimeoutError:
            proxy.console.warning(
                f"{self.request.method} {self.request.path}: the client read the response"
                f" slower than {proxy.min_data_rate:g} bytes/s; the connection was aborted."
            )
            self._cut_client()
            return "ResponseBodyClient: the client read the response too slowly"
        except ConnectionError:
            self._client_gone()
            return _CANCELED
        return None

    def _client_gone(self) -> None:
        if self._gone.is_set():
            return
        self._gone.set()
        callback, self._on_gone = self._on_gone, None
        if callback is not None:
            callback()

    def _cut_client(self) -> None:
        """Abort the client's connection: its response cannot be completed."""
        self._cut = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()
