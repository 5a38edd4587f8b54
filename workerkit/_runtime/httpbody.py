"""HTTP responses as the worker writes them itself (HTTP streaming), and streamed bodies.

`shape` turns what a function returned for its HTTP output into a status, headers and a
body, as the host would have written it; `chunks` walks a streamed body (an async iterator,
or a plain iterator advanced in the thread pool); `gather` collects one for the gRPC path,
where the host takes a whole body. No I/O of its own: the proxy (`httpproxy.py`) writes
what these return.
"""

from __future__ import annotations

import datetime
import json
import re
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from .._values import ConversionError, HttpCookie, HttpResponse, ResponseBody
from ..convert import _encode_cookie, _parse_status

__all__ = ["Shaped", "chunks", "gather", "is_streamed", "set_cookie", "shape"]

#: Headers the server sets from the body it writes: a function's own would break framing.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
#: A header or cookie name: an HTTP token (RFC 9110).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Runs a blocking call in the worker's thread pool (for plain iterators).
InPool = Callable[[Callable[[], Any]], Awaitable[Any]]


def is_streamed(body: object) -> bool:
    """Whether an `HttpResponse.body` is an iterator of chunks (an async iterator or an
    iterator). Anything else is sent whole, or refused there with a message naming its type
    (None, a list, a number: mistakes, not streams)."""
    return hasattr(body, "__aiter__") or hasattr(body, "__next__")


class Shaped:
    """A response ready to write: `status`, `headers` (a list: Set-Cookie may repeat) and
    `body` (bytes, or a streamed body for `chunks`)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def shape(value: Any) -> Shaped:
    """The response for an HTTP output value, as the host writes it from the gRPC path (so
    a hook answers the same with streaming on or off): an `HttpResponse` as given (a str
    body as UTF-8, ``text/plain`` unless it names a content type; bytes as
    ``application/octet-stream``); None (no value) 204; bytes as octet-stream; a number as
    text; a str as text unless it parses as JSON, then as that JSON; JSON as described in
    `_from_json`.

    Raises:
        ConversionError: an invalid status, header or cookie, or a value that is not JSON.
    """
    if value is None:
        return Shaped(204, [], b"")
    if isinstance(value, HttpResponse):
        return _from_response(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return Shaped(200, [("Content-Type", "application/octet-stream")], bytes(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Shaped(200, [("Content-Type", "text/plain; charset=utf-8")], str(value).encode())
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return Shaped(200, [("Content-Type", "text/plain; charset=utf-8")], value.encode())
        return _from_json(parsed)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConversionError(
            f"cannot send a {type(value).__name__} as the HTTP response: {exc}; return an"
            " HttpResponse"
        ) from None
    return _from_json(value)


def _from_json(value: Any) -> Shaped:
    """A JSON value, as the host writes one (``HttpBinding.cs`` in Azure/azure-functions-host,
    ``CreateResult`` and ``ParseResponseObject``): an object with a ``body`` key (any case)
    describes the response (``statusCode``, else ``status``; ``headers``; a str body as
    text, another as JSON); anything else is written as indented JSON."""
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        if "body" in lowered:
            raw = lowered.get("statuscode", lowered.get("status"))
            status = 200
            if isinstance(raw, int) and not isinstance(raw, bool):
                status = raw
            elif isinstance(raw, str):
                status = _parse_status(raw)
            given = lowered.get("headers")
            headers = {
                str(k): "" if v is None else str(v)
                for k, v in (given.items() if isinstance(given, dict) else ())
                if v or str(k).lower() != "content-type"  # an empty one: the default
            }
            body = lowered["body"]
            if not isinstance(body, str):
                body = _indented(body)
                if not any(k.lower() == "content-type" for k in headers):
                    headers["Content-Type"] = "application/json; charset=utf-8"
            return _from_response(HttpResponse(status_code=status, body=body, headers=headers))
    return Shaped(200, [("Content-Type", "application/json; charset=utf-8")], _indented(value))


def _indented(value: Any) -> bytes:
    """JSON as the host re-serializes it (Newtonsoft's indented form, two spaces)."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode()


def _from_response(response: HttpResponse) -> Shaped:
    status = response.status_code
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ConversionError(
            "cannot send HttpResponse: status_code must be an int in 200..599 (a 1xx status"
            f" is not a final response: the client would wait for another), got {status!r}"
        )
    body: Any = response.body
    if isinstance(body, str):
        body, default = body.encode(), "text/plain; charset=utf-8"
    elif isinstance(body, bytes | bytearray | memoryview):
        body, default = bytes(body), "application/octet-stream"
    elif hasattr(body, "__aiter__") or hasattr(body, "__next__"):
        default = "application/octet-stream"
    else:
        raise ConversionError(
            f"cannot send HttpResponse.body of type {type(body).__name__!r}: use bytes, str,"
            " or an async iterator or iterator of bytes or str chunks"
        )
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, text in response.headers.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise ConversionError(f"HttpResponse.headers must map str to str: {name!r}: {text!r}")
        # A name must be an HTTP token: the host's HTTP client cannot parse a response with
        # another (it answers 502 and fails the invocation), and its own server refuses one.
        if not _TOKEN.fullmatch(name) or any(c in text for c in "\r\n\0"):
            raise ConversionError(f"HttpResponse header {name!r} has an invalid name or value")
        lowered = name.lower()
        if lowered in _FRAMING or lowered in seen:
            continue  # framing is the server's; the first of duplicates wins, as in the host
        seen.add(lowered)
        headers.append((name, text))
    if "content-type" not in seen:
        headers.insert(0, ("Content-Type", default))
    headers += [("Set-Cookie", set_cookie(cookie)) for cookie in response.cookies]
    return Shaped(status, headers, body)


def set_cookie(cookie: HttpCookie) -> str:
    """A ``Set-Cookie`` value for `cookie`, laid out as ASP.NET Core writes one (the value
    percent-escaped, ``path=/`` unless given).

    Raises:
        ConversionError: a cookie the host would not send either (see `convert.encode`).
    """
    if not isinstance(cookie, HttpCookie):
        raise ConversionError(f"HttpResponse.cookies items must be HttpCookie, not {cookie!r}")
    _encode_cookie(cookie)  # what the gRPC path refuses (max_age, same_site, ...) is refused here
    name, value = cookie.name, cookie.value
    if not isinstance(name, str) or not _TOKEN.fullmatch(name) or not isinstance(value, str):
        raise ConversionError(
            f"cookie {name!r}: the name must be a non-empty token (letters, digits and"
            " !#$%&'*+-.^_`|~) and the value a str"
        )
    for what, text in (("domain", cookie.domain), ("path", cookie.path)):
        if text is not None and (not isinstance(text, str) or any(c in text for c in ";\r\n\0")):
            raise ConversionError(f"cookie {name!r}: {what} {text!r} must be a str without ';'")
    parts = [f"{name}={urllib.parse.quote(value, safe='-_.~')}"]
    if cookie.expires is not None:
        import email.utils  # here, not at start-up: it imports email, calendar, random

        if not isinstance(cookie.expires, datetime.datetime) or cookie.expires.tzinfo is None:
            raise ConversionError(f"cookie {name!r}: expires must be a timezone-aware datetime")
        when = cookie.expires.astimezone(datetime.UTC)
        parts.append(f"expires={email.utils.format_datetime(when, usegmt=True)}")
    if cookie.max_age is not None:
        parts.append(f"max-age={int(cookie.max_age)}")
    if cookie.domain is not None:
        parts.append(f"domain={cookie.domain}")
    parts.append(f"path={cookie.path if cookie.path is not None else '/'}")
    if cookie.secure:
        parts.append("secure")
    if cookie.same_site is not None:
        parts.append(f"samesite={cookie.same_site}")
    if cookie.http_only:
        parts.append("httponly")
    text = "; ".join(parts)
    if any(c in text for c in "\r\n\0"):
        raise ConversionError(f"cookie {name!r} has a line break or NUL in it")
    return text


async def chunks(body: ResponseBody, in_pool: InPool) -> AsyncGenerator[bytes, None]:
    """The chunks of a streamed body as bytes (str as UTF-8; empty ones skipped). A plain
    iterator is advanced with `in_pool`, so its blocking work stays off the event loop; an
    async iterator is closed (``aclose``) when the caller stops early.

    Raises:
        ConversionError: a chunk that is neither bytes nor str.
    """
    if hasattr(body, "__aiter__"):
        iterator: Any = body.__aiter__()
        try:
            async for chunk in iterator:
                if data := _chunk_bytes(chunk):
                    yield data
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
        return
    assert hasattr(body, "__next__")  # `is_streamed`
    done = object()
    while True:
        chunk = await in_pool(lambda: next(body, done))
        if chunk is done:
            return
        if data := _chunk_bytes(chunk):
            yield data


def _chunk_bytes(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode()
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise ConversionError(
        f"a streamed HttpResponse body yielded a {type(chunk).__name__}: chunks must be bytes"
        " or str"
    )


async def gather(response: HttpResponse, limit: int, in_pool: InPool) -> HttpResponse:
    """`response` with its streamed body collected into bytes (for the gRPC path, where the
    host takes the body whole).

    Raises:
        ConversionError: the body grew past `limit` bytes (the host's message size), or a
            chunk is not bytes or str.
    """
    parts: list[bytes] = []
    size = 0
    stream = chunks(response.body, in_pool)
    try:
        async for data in stream:
            size += len(data)
            if size > limit:
                raise ConversionError(
                    f"the streamed HttpResponse body grew past {limit} bytes, more than the"
                    " host takes in one message; with HTTP streaming on"
                    " (WORKERKIT_HTTP_STREAMING=true) it is written as it comes"
                )
            parts.append(data)
    finally:
        await stream.aclose()
    return replace(response, body=b"".join(parts))
