"""The host's HTTP proxy, for workers that report ``HttpUri`` (HTTP streaming).

When a worker reports ``HttpUri``, the Functions host forwards each HTTP-trigger request to
that address instead of packing it into the `InvocationRequest`: it starts forwarding (the
request line with the original path and query, the client's headers plus
``x-ms-invocation-id`` and ``X-Forwarded-For/-Host/-Proto``, the body as it arrives),
then sends the `InvocationRequest` with an empty `RpcHttp` (only the route parameters, as
the worker asked with ``RequiresRouteParameters``), and the worker's HTTP response becomes
the client's. Its connects are retried (10 attempts, 50 ms doubling to 250 ms between
them); a response silent for 240 s is given up (YARP's activity timeout). Facts from
``src/WebJobs.Script.Grpc/Server/DefaultHttpProxyService.cs`` and ``RetryProxyHandler.cs``
and ``GrpcMessageConversionExtensions.cs`` (``ToRpcHttp``) in Azure/azure-functions-host.

This module plays that part for tests (`workerkit.testing.TestHost`), ``workerkit host``
and ``workerkit conformance``; it needs aiohttp (``workerkit[http]`` or ``[host]``) and is
imported only by those who use it. Private API: `HttpProxyClient`, `proxied_http_input`.

    proxy = HttpProxyClient(init.capabilities["HttpUri"])
    call = await conn.start_invocation(function_id, {"req": proxied_http_input({"id": "7"})})
    async with await proxy.forward(call.invocation_id, "GET", "/api/items/7") as response:
        async for chunk in response.chunks():
            ...
    response = await call  # the InvocationResponse: status, outputs, no HTTP output
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Self

import aiohttp
from multidict import CIMultiDict

from .._generated import AzureFunctionsRpcMessages as pb
from .._generated import NullableString

__all__ = [
    "CONNECT_ATTEMPTS",
    "INVOCATION_ID_HEADER",
    "HttpProxyClient",
    "ProxiedResponse",
    "proxied_http_input",
]

INVOCATION_ID_HEADER = "x-ms-invocation-id"
#: The host's connect attempts, and the delays between them (ms): 50, doubling, at most 250.
CONNECT_ATTEMPTS = 10
_FIRST_DELAY, _MAX_DELAY = 0.05, 0.25
#: Seconds without progress after which the host's proxy gives a request up.
ACTIVITY_TIMEOUT = 240.0
#: Client headers the proxy does not pass on (it sends its own under these names).
_REPLACED = frozenset(
    {"host", INVOCATION_ID_HEADER, "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
)


def proxied_http_input(params: Mapping[str, str] | None = None) -> pb.TypedData:
    """The HTTP trigger input the host sends a worker that reported ``HttpUri`` and
    ``RequiresRouteParameters``: an `RpcHttp` with nothing but the route parameters (in the
    nullable map, as for ``UseNullableValueDictionaryForHttp``)."""
    nullable = {k: NullableString(value=v) for k, v in (params or {}).items()}
    return pb.TypedData(http=pb.RpcHttp(nullable_params=nullable))


class ProxiedResponse:
    """The worker's response to one forwarded request, read as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        #: Header names and values as the worker sent them (names may repeat).
        self.headers: list[tuple[str, str]] = list(response.headers.items())

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        return self._response.headers.get(name)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (what one read of the socket gave)."""
        while chunk := await self._response.content.readany():
            yield chunk

    async def read_chunk(self) -> bytes:
        """The next piece of the body (b"" at its end)."""
        return await self._response.content.readany()

    async def readline(self) -> bytes:
        """The body up to and including the next line feed (b"" at its end)."""
        return await self._response.content.readline()

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        return await self._response.read()

    def close(self) -> None:
        """Drop the connection (a client that goes away mid-response)."""
        self._response.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._response.release()


class HttpProxyClient:
    """Forwards HTTP requests to one worker's ``HttpUri`` as the host's proxy does."""

    def __init__(
        self,
        http_uri: str,
        *,
        activity_timeout: float = ACTIVITY_TIMEOUT,
        connect_attempts: int = CONNECT_ATTEMPTS,
        connections: int = 100,
    ) -> None:
        """`http_uri`: what the worker reported; `connections`: at most that many open at
        once (the host's has no limit)."""
        self.http_uri = http_uri.rstrip("/")
        self.connect_attempts = connect_attempts
        self._timeout = aiohttp.ClientTimeout(total=None, sock_read=activity_timeout)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=self._timeout,
                auto_decompress=False,  # the body passes through as the worker wrote it
                cookie_jar=aiohttp.DummyCookieJar(),  # the host's proxy keeps no cookies
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        return self._session

    async def forward(
        self,
        invocation_id: str,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        body: bytes | AsyncIterable[bytes] = b"",
        client_host: str = "localhost:7071",
        client_address: str = "127.0.0.1",
        scheme: str = "http",
    ) -> ProxiedResponse:
        """Forward one request and return the worker's response once its headers came.

        Args:
            invocation_id: sent as ``x-ms-invocation-id``.
            method: the client's method.
            path: the client's path and query (``/api/items/7?x=1``).
            headers: the client's headers (its Host is sent as ``X-Forwarded-Host``).
            body: the client's body, whole or as chunks (sent chunked, as they come).
            client_host: the Host the client used, when `headers` has none.
            client_address: the client's address (``X-Forwarded-For``).
            scheme: the client's scheme (``X-Forwarded-Proto``).

        Raises:
            aiohttp.ClientError: the worker could not be reached after the host's retries,
                or the connection failed.
        """
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        # The host replaces the client's x-ms-invocation-id (DefaultHttpProxyService.cs sets
        # it with the indexer) and YARP its X-Forwarded-* (their default action is Set).
        sent = [(k, v) for k, v in items if k.lower() not in _REPLACED]
        host = next((v for k, v in items if k.lower() == "host"), client_host)
        sent += [
            (INVOCATION_ID_HEADER, invocation_id),
            ("X-Forwarded-For", client_address),
            ("X-Forwarded-Host", host),
            ("X-Forwarded-Proto", scheme),
        ]
        multidict = CIMultiDict(sent)  # names may repeat
        url = self.http_uri + (path if path.startswith("/") else "/" + path)
        delay = _FIRST_DELAY
        for attempt in range(1, self.connect_attempts + 1):
            try:
                response = await self._client().request(
                    method, url, headers=multidict, data=body, allow_redirects=False
                )
                return ProxiedResponse(response)
            except aiohttp.ClientConnectorError:
                if attempt == self.connect_attempts:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
