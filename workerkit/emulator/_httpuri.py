"""Where and how the host forwards an HTTP request to a worker that reports ``HttpUri``: the
worker's address, checked, and the request and response headers of a forwarded call. Pure
functions (no I/O); the forwarding itself is `_proxy`'s.

The host's side (Azure/azure-functions-host): ``GrpcWorkerChannel.ApplyCapabilities`` reads
``HttpUri`` with ``new Uri(...)``, and a value that is not an absolute URI is a worker error
(src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs). ``DefaultHttpProxyService``
(src/WebJobs.Script.Grpc/Server/DefaultHttpProxyService.cs) forwards with YARP's
``HttpForwarder`` and its default transformer (microsoft/reverse-proxy 2.0,
src/ReverseProxy/Forwarder/HttpTransformer.cs, RequestUtilities.cs,
src/ReverseProxy/Transforms/ForwardedTransformExtensions.cs):

- the request line: the method, the worker's URI (its path too) joined with the request's
  path and query;
- the client's headers, except the hop-by-hop ones (`HOP_BY_HOP`), ``Host`` (the worker's
  authority instead), ``Forwarded`` and any ``X-Forwarded-*`` the client sent, which the
  host replaces: ``X-Forwarded-For`` (the client's address), ``X-Forwarded-Host`` (the
  ``Host`` the client sent), ``X-Forwarded-Proto`` (its scheme); ``X-Forwarded-Prefix``
  only with a path base, which the host has not;
- ``x-ms-invocation-id`` (``ScriptConstants.HttpProxyCorrelationHeader``), set to the
  invocation's id, replacing one the client sent (``httpRequest.Headers[...] = ...``,
  "override existing header if present", in src/WebJobs.Script/Http/DefaultHttpProxyService.cs
  since commit 1057af80; host 4.1037 used ``Headers.TryAdd`` and kept the client's, so such a
  request could never be paired with its invocation);
- the response: the worker's status and headers, hop-by-hop ones left out.

workerkit host connects only to this machine's loopback addresses: an ``HttpUri`` naming
another host is refused (`HttpUriError`), and so is one that is not ``http``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "HOP_BY_HOP",
    "HTTP_URI",
    "INVOCATION_ID_HEADER",
    "REQUIRES_ROUTE_PARAMETERS",
    "ForwardRefused",
    "HttpTarget",
    "HttpUriError",
    "forwarded_headers",
    "parse_http_uri",
    "response_headers",
]

#: The capability naming the address the worker wants HTTP requests forwarded to
#: (RpcWorkerConstants.HttpUri).
HTTP_URI: Final = "HttpUri"
#: With it, a forwarded invocation's RpcHttp carries the route parameters.
REQUIRES_ROUTE_PARAMETERS: Final = "RequiresRouteParameters"
#: ScriptConstants.HttpProxyCorrelationHeader.
INVOCATION_ID_HEADER: Final = "x-ms-invocation-id"
#: YARP's RequestUtilities._headersToExclude: never copied, either way.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
        "proxy-features",
        "proxy-instruction",
        "security-scheme",
        "alpn",
        "close",
        "http2-settings",
        "upgrade-insecure-requests",
        "te",
        "alt-svc",
        "strict-transport-security",
    }
)
#: Replaced by the host's X-Forwarded transforms (ForwardedTransformActions.Set), or removed.
_REPLACED: Final = frozenset(
    {"host", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
    | {"x-forwarded-prefix"}
)
#: Loopback names workerkit host connects to, and the address each stands for.
_LOOPBACK: Final = {"127.0.0.1": "127.0.0.1", "::1": "::1", "localhost": "127.0.0.1"}


class HttpUriError(ValueError):
    """An ``HttpUri`` the emulator does not forward to (the message says why).

    `invalid`: the value is not an absolute URI at all, which the host counts as a worker
    error; otherwise it is one the emulator refuses (another host, another scheme).
    """

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid


class ForwardRefused(Exception):
    """An HTTP request that is not forwarded to its worker, which does not see it; the
    message says why (for the console)."""


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """A worker's HTTP address, as the emulator connects to it.

    Attributes:
        uri: the ``HttpUri`` as the worker reported it.
        address: the loopback address connected to (``localhost`` is 127.0.0.1).
        port: the port (80 when the URI has none).
        authority: the ``Host`` header of a forwarded request: the URI's host and port
            (none for 80), as .NET's ``Uri.Authority``.
        prefix: the URI's path without its trailing ``/`` (usually empty).
    """

    uri: str
    address: str
    port: int
    authority: str
    prefix: str

    def url(self, path_and_query: str) -> str:
        """The URL a request for `path_and_query` (``/api/x?y=1``) is forwarded to."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{self.prefix}{path_and_query}"


def parse_http_uri(uri: str) -> HttpTarget:
    """The address in a worker's ``HttpUri``.

    Raises:
        HttpUriError: not an absolute URI (`HttpUriError.invalid`), not ``http``, or a host
            other than 127.0.0.1, ::1 or localhost.
    """
    text = uri.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise HttpUriError(f"HttpUri {uri!r} is not a valid URI ({exc})", invalid=True) from None
    if not parts.scheme or not parts.netloc:
        raise HttpUriError(f"HttpUri {uri!r} is not an absolute URI", invalid=True)
    if parts.scheme.lower() != "http":
        raise HttpUriError(
            f"HttpUri {uri!r} is not an http:// address: workerkit host forwards over plain"
            " HTTP to this machine only"
        )
    host = (parts.hostname or "").lower()
    address = _LOOPBACK.get(host)
    if address is None:
        with_port = f"{host}:{port}" if port is not None else host
        raise HttpUriError(
            f"HttpUri {uri!r} names {with_port}: workerkit host forwards HTTP requests only to"
            " 127.0.0.1, ::1 or localhost (this machine), never to another host; serve the"
            " worker's HTTP on 127.0.0.1"
        )
    port = 80 if port is None else port
    shown = f"[{host}]" if _is_ipv6(host) else host
    authority = shown if port == 80 else f"{shown}:{port}"
    return HttpTarget(text, address, port, authority, parts.path.rstrip("/"))


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


#: Not passed on: the front door has answered ``Expect`` itself, and the invocation id is
#: the host's own.
_SET_BY_THE_HOST: Final = frozenset({"expect", INVOCATION_ID_HEADER})


def forwarded_headers(
    client: Sequence[tuple[str, str]],
    *,
    invocation_id: str,
    target: HttpTarget,
    client_address: str | None,
    scheme: str,
) -> tuple[list[tuple[str, str]], str | None]:
    """The headers of a forwarded request (module docstring), in the client's order, then the
    host's; and the client's own ``x-ms-invocation-id`` when it sent one (replaced by the
    invocation's, as the host replaces it), else None.

    ``Expect`` is not forwarded: the front door has answered ``100-continue`` itself. (The
    host's client would wait a second for the worker's ``100 Continue`` and send the body
    anyway.)
    """
    headers: list[tuple[str, str]] = []
    original_host: str | None = None
    own_id: str | None = None
    for name, value in client:
        folded = name.lower()
        if folded == "host" and original_host is None:
            original_host = value
        if folded == INVOCATION_ID_HEADER and own_id is None:
            own_id = value
        if folded in HOP_BY_HOP or folded in _REPLACED or folded in _SET_BY_THE_HOST:
            continue
        headers.append((name, value))
    headers.insert(0, ("Host", target.authority))
    headers.append((INVOCATION_ID_HEADER, invocation_id))
    if client_address:
        headers.append(("X-Forwarded-For", client_address))
    if original_host:
        headers.append(("X-Forwarded-Host", original_host))
    headers.append(("X-Forwarded-Proto", scheme))
    return headers, own_id


def response_headers(worker: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The worker's response headers the client gets: all but the hop-by-hop ones, and no
    ``Content-Length`` beside a ``Transfer-Encoding`` (YARP's ``TransformResponseAsync``)."""
    pairs = list(worker)
    chunked = any(name.lower() == "transfer-encoding" for name, _ in pairs)
    return [
        (name, value)
        for name, value in pairs
        if name.lower() not in HOP_BY_HOP and not (chunked and name.lower() == "content-length")
    ]
