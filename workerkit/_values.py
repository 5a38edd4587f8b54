"""The Python values hooks see and return for HTTP and special bindings (`HttpRequest`,
`HttpResponse`, `HttpCookie`, identities, `ModelBindingData`), and `ConversionError`.
Public through `workerkit` and `workerkit.convert`, which converts them to and from
`TypedData`.

With HTTP streaming on (``WORKERKIT_HTTP_STREAMING=true``), an `HttpRequest` may carry a
body that is still arriving (`HttpRequest.stream`, `HttpRequest.read`, `BodyChunks`), and an
`HttpResponse` body may be an iterator of chunks, written as they come."""

import asyncio
import codecs
import concurrent.futures
import datetime
import json
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, Self, TypeAlias, overload


class ConversionError(ValueError):
    """A value could not be converted to or from `TypedData`.

    Raised for host input the worker cannot read (the other side misbehaved) and for
    function outputs the host would not accept (fix your code); the message says which.
    """


#: JSON as the host reads it: compact, UTF-8 kept, no NaN or Infinity.
_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dump_json(value: Any) -> str:
    try:
        text: str = _JSON_ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConversionError(
            f"cannot encode value of type {type(value).__name__!r} as TypedData.json: {exc}"
        ) from exc
    return text


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim of a `ClaimsIdentity` (`RpcClaim`)."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class ClaimsIdentity:
    """An identity on the request's principal (`RpcClaimsIdentity`); None means unset."""

    authentication_type: str | None
    name_claim_type: str | None
    role_claim_type: str | None
    claims: tuple[Claim, ...]


class _Body:
    """`HttpRequest.body`: the bytes given, or for a streamed request the body once read
    (`_StreamedBody.sync_body` says what happens before)."""

    @overload
    def __get__(self, request: None, owner: type | None = None) -> bytes: ...
    @overload
    def __get__(self, request: object, owner: type | None = None) -> bytes: ...
    def __get__(self, request: object | None, owner: type | None = None) -> bytes:
        if request is None:
            return b""  # the field's default
        streamed: _StreamedBody | None = request.__dict__.get("_streamed")
        if streamed is None:
            data: bytes = request.__dict__["_body"]
            return data
        return streamed.sync_body()

    def __set__(self, request: object, value: bytes) -> None:
        request.__dict__["_body"] = value


@dataclass(frozen=True, eq=False, repr=False)
class HttpRequest:
    """An HTTP trigger input (`RpcHttp` sent by the host, or the request the host's proxy
    forwarded with HTTP streaming on).

    The mappings are read-only copies made at construction; header names are lower-cased
    (the host lower-cases them too). Query values with several occurrences arrive comma-joined.

    The body: `body` holds it as bytes. With HTTP streaming on (``WORKERKIT_HTTP_STREAMING``)
    a body with a Content-Length up to `WorkerOptions.http_body_prefetch` (1 MiB) is read
    before the hook runs, so `body` works as without streaming; a larger or chunked one is
    *streamed*: it is still arriving when the hook starts. Then, in an ``async def`` hook,
    ``await request.read()`` returns it whole (and `body` works from then on), or
    ``async for chunk in request.stream()`` reads it piece by piece without holding it all;
    `body` before either raises `RuntimeError` saying so. A plain ``def`` hook (in the
    thread pool) can use `body` directly (it waits there while the event loop reads the
    body) or ``for chunk in request.stream()``. A body can be streamed once; `read` keeps
    it. Both also work on every other request (one chunk, the whole body), so a hook written
    with them runs with streaming on or off. `stream` and `read` raise `RuntimeError` once
    the invocation is over or the client has gone.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    """Route parameters."""
    body: bytes = _Body()  # type: ignore[assignment]
    identities: tuple[ClaimsIdentity, ...] = ()

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "headers", MappingProxyType({k.lower(): v for k, v in self.headers.items()}))
        put(self, "query", MappingProxyType(dict(self.query)))
        put(self, "params", MappingProxyType(dict(self.params)))
        body = self.__dict__["_body"]
        if not isinstance(body, bytes):
            if isinstance(body, str):
                raise TypeError("HttpRequest.body must be bytes, not str: encode it first")
            self.__dict__["_body"] = bytes(body)
        if not isinstance(self.identities, tuple):
            put(self, "identities", tuple(self.identities))

    @classmethod
    def _streaming(
        cls,
        method: str,
        url: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        params: Mapping[str, str],
        body: "_StreamedBody",
    ) -> Self:
        """A request whose body arrives through `body` (the runtime's HTTP proxy)."""
        request = cls(method, url, headers, query, params)
        request.__dict__["_streamed"] = body
        return request

    def _complete_body(self) -> bytes | None:
        """The body if it is all here (never waits), else None."""
        streamed: _StreamedBody | None = self.__dict__.get("_streamed")
        if streamed is None:
            data: bytes = self.__dict__["_body"]
            return data
        return streamed.complete

    async def read(self) -> bytes:
        """Return the whole body, reading what has not arrived yet; `body` holds it then.

        Raises:
            RuntimeError: the body was already consumed by `stream`, the invocation is over,
                or this is not the event loop of the worker serving the request.
            ConnectionError: the connection closed before the whole body arrived.
        """
        streamed: _StreamedBody | None = self.__dict__.get("_streamed")
        if streamed is None:
            data: bytes = self.__dict__["_body"]
            return data
        return await streamed.read()

    def stream(self) -> "BodyChunks":
        """The body's chunks as they arrive, none held once handed over: ``async for chunk
        in request.stream()`` in an ``async def`` hook, ``for chunk in request.stream()`` in
        a plain ``def`` hook. A body already read (or not streamed) comes as one chunk."""
        return BodyChunks(self.__dict__.get("_streamed"), self._complete_body())

    def __repr__(self) -> str:
        body = self._complete_body()
        shown = "<streamed>" if body is None else repr(body)
        return (
            f"{type(self).__name__}(method={self.method!r}, url={self.url!r},"
            f" headers={dict(self.headers)!r}, query={dict(self.query)!r},"
            f" params={dict(self.params)!r}, body={shown}, identities={self.identities!r})"
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, HttpRequest)
        mine, theirs = self._complete_body(), other._complete_body()
        if mine is None or theirs is None:  # a body still arriving equals only itself
            return self is other
        return (
            self.method == other.method
            and self.url == other.url
            and self.headers == other.headers
            and self.query == other.query
            and self.params == other.params
            and mine == theirs
            and self.identities == other.identities
        )

    __hash__ = None  # type: ignore[assignment]  # mutable mappings inside, as before

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType cannot be pickled or deep-copied; rebuild from plain dicts. A
        # streamed body must have been read (`read`): a copy cannot share the connection.
        body = self._complete_body()
        if body is None:
            raise TypeError("cannot copy an HttpRequest whose body is still streaming: read it")
        return (
            type(self),
            (
                self.method,
                self.url,
                dict(self.headers),
                dict(self.query),
                dict(self.params),
                body,
                self.identities,
            ),
        )

    def text(self, encoding: str | None = None) -> str:
        """Return the body as text.

        Args:
            encoding: codec to use; by default the `charset` of the `content-type` header,
                or UTF-8 when it is missing or unknown. Undecodable bytes become U+FFFD.
        """
        return self.body.decode(encoding or _charset(self.headers.get("content-type")), "replace")

    def json(self) -> Any:
        """Parse the body as JSON.

        Raises:
            ValueError: the body is not valid JSON.
        """
        return _parse_json_body(self.body, "request")

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies from the `cookie` header; the first of duplicate names wins."""
        return _parse_cookie_header(self.headers.get("cookie", ""))


class _StreamedBody:
    """The body of a proxied request, read from its connection on the event loop that owns
    it (`receive` returns the next chunk, b"" at the end); created by the runtime's HTTP
    proxy. The states: unread, then either read whole (`complete`) or streamed chunk by
    chunk (nothing kept), or `close`d when the invocation ends."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        receive: Callable[[], Awaitable[bytes]],
        *,
        why_streamed: str,
        prefetched: bytes | None = None,
    ) -> None:
        """`why_streamed` completes "the body ... is streamed" in messages (its size)."""
        self._loop = loop
        self._receive = receive
        self._why = why_streamed
        self.complete: bytes | None = prefetched
        #: Set once something began consuming the body: "read" or "stream".
        self._taken_by: str | None = None
        self._closed: str | None = None

    def close(self, reason: str) -> None:
        """The invocation is over (or the client has gone): reading now fails with `reason`."""
        if self._closed is None:
            self._closed = reason

    def _check_loop(self, how: str) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise RuntimeError(
                f"{how}: this request's body is read by the event loop of the worker that"
                " serves it; in a plain def hook (a pool thread) use `request.body` or"
                " `for chunk in request.stream()`"
            )

    def _take(self, how: str) -> None:
        if self._closed is not None:
            raise RuntimeError(f"the request body can no longer be read: {self._closed}")
        if self._taken_by == "stream":
            raise RuntimeError(
                "the request body was consumed by request.stream() and not kept: stream it"
                " once, or use `await request.read()` (which keeps it) instead"
            )
        if self._taken_by is not None:
            raise RuntimeError(f"the request body is already being read; {how} cannot start")
        self._taken_by = how

    async def _next(self) -> bytes:
        if self._closed is not None:
            raise RuntimeError(f"the request body can no longer be read: {self._closed}")
        return await self._receive()

    async def read(self) -> bytes:
        self._check_loop("HttpRequest.read()")
        if self.complete is not None:
            return self.complete
        self._take("read")
        chunks: list[bytes] = []
        try:
            while chunk := await self._next():
                chunks.append(chunk)
        except BaseException as exc:
            self.close(f"reading it failed: {exc!r}")
            raise
        self.complete = b"".join(chunks)
        return self.complete

    def sync_body(self) -> bytes:
        """`HttpRequest.body`: the body if read; in a pool thread it is read now (the thread
        waits); on the event loop it cannot wait, so that is an error saying what to do."""
        if self.complete is not None:
            return self.complete
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            if self._taken_by == "stream":
                self._take("body")  # raises: consumed by stream()
            raise RuntimeError(
                f"the body of this request is streamed ({self._why}) and has not been read:"
                " `await request.read()` returns it and makes request.body work, or read it"
                " piece by piece with `async for chunk in request.stream()`; a plain def"
                " hook can use request.body directly"
            )
        return self.wait_for(self.read())

    def wait_for(self, read: Coroutine[Any, Any, bytes]) -> bytes:
        """Run `read` on the event loop and wait for it in this (pool) thread."""
        try:
            return asyncio.run_coroutine_threadsafe(read, self._loop).result()
        except concurrent.futures.CancelledError:
            reason = self._closed or "the read was cancelled"
            raise RuntimeError(f"the request body can no longer be read: {reason}") from None

    async def next_chunk(self, first: bool) -> bytes:
        self._check_loop("async iteration of request.stream()")
        if first:
            self._take("stream")
        return await self._next()


class BodyChunks:
    """A request body's chunks, as `HttpRequest.stream` hands them over: an async iterator
    (``async for`` on the event loop) and an iterator (``for`` in a plain ``def`` hook's
    thread, which waits for each chunk while the event loop reads it)."""

    def __init__(self, streamed: _StreamedBody | None, whole: bytes | None) -> None:
        self._streamed = streamed
        self._whole = whole
        self._first = True
        self._done = False

    def __aiter__(self) -> Self:
        return self

    def __iter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._pull() if self._whole is None else self._from_whole()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def __next__(self) -> bytes:
        if self._whole is not None:
            chunk = self._from_whole()
        else:
            streamed = self._streamed
            assert streamed is not None
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is streamed._loop:
                raise RuntimeError(
                    "`for chunk in request.stream()` would block the event loop: use"
                    " `async for chunk in request.stream()` in an async def hook"
                )
            chunk = streamed.wait_for(self._pull())
        if not chunk:
            raise StopIteration
        return chunk

    def _from_whole(self) -> bytes:
        whole, self._whole = self._whole or b"", b""
        return whole

    async def _pull(self) -> bytes:
        if self._done:
            return b""
        streamed = self._streamed
        assert streamed is not None
        first, self._first = self._first, False
        chunk = await streamed.next_chunk(first)
        if not chunk:
            self._done = True
        return chunk


_SameSite = Literal["lax", "strict", "none"]


@dataclass(slots=True)
class HttpCookie:
    """A `Set-Cookie` on an `HttpResponse` (`RpcHttpCookie`); None leaves an attribute out.

    `expires` must be timezone-aware; `max_age` is in seconds and must be finite.
    """

    name: str
    value: str
    domain: str | None = None
    path: str | None = None
    expires: datetime.datetime | None = None
    secure: bool | None = None
    http_only: bool | None = None
    max_age: float | None = None
    same_site: _SameSite | None = None


#: What `HttpResponse.body` may be: the whole body, or its chunks as they are produced.
ResponseBody: TypeAlias = bytes | str | AsyncIterable[bytes | str] | Iterator[bytes | str]


@dataclass
class HttpResponse:
    """An HTTP output (`RpcHttp` returned to the host).

    `status_code` must be 200..599 (a 1xx status is not a final response: the client would
    wait for one that never comes). A str body is sent as text, bytes verbatim. With
    `enable_content_negotiation` the host runs content negotiation and ignores cookies.

    A *streamed* body is an async iterator (an ``async def`` generator, say) or an iterator
    of bytes or str chunks (str as UTF-8). With HTTP streaming on
    (``WORKERKIT_HTTP_STREAMING``) the status and headers go out first and each chunk is
    written as it is produced (chunked transfer encoding; ``text/event-stream`` arrives line
    by line), while the invocation still runs: a client that reads slowly holds the
    iterator back, cancel and the function timeout stop it, and an error while streaming
    cuts the response short (the connection is dropped, so it cannot pass for complete). A
    plain iterator is advanced in the thread pool. Without streaming the chunks are gathered
    first and sent as one body (up to the host's message size), so a body that never ends is
    never answered.
    `enable_content_negotiation` does not apply to a response sent through the host's proxy.
    """

    status_code: int = 200
    body: ResponseBody = b""
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[HttpCookie] = field(default_factory=list)
    enable_content_negotiation: bool = False

    @classmethod
    def from_json(
        cls, value: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> Self:
        """Build a response whose body is `value` as compact JSON text.

        `content-type: application/json` is added unless `headers` has a content type.

        Raises:
            ConversionError: `value` is not JSON-serialisable (NaN and Infinity included).
        """
        body = _dump_json(value)
        out = dict(headers) if headers is not None else {}
        if not any(k.lower() == "content-type" for k in out):
            out["content-type"] = "application/json"
        return cls(status_code=status_code, body=body, headers=out)

    @property
    def streamed(self) -> bool:
        """Whether the body is an iterator of chunks rather than bytes or str."""
        return not isinstance(self.body, bytes | str)

    def text(self, encoding: str | None = None) -> str:
        """Return the body as text (a str body as is; bytes decoded as `HttpRequest.text`).

        Raises:
            TypeError: the body is streamed (an iterator: there is no text until it is sent).
        """
        body = self._whole_body()
        if isinstance(body, str):
            return body
        return body.decode(encoding or _charset(self._header("content-type")), "replace")

    def json(self) -> Any:
        """Parse the body as JSON.

        Raises:
            ValueError: the body is not valid JSON.
            TypeError: the body is streamed.
        """
        return _parse_json_body(self._whole_body(), "response")

    def _whole_body(self) -> bytes | str:
        body = self.body
        if not isinstance(body, bytes | str):
            raise TypeError("this HttpResponse's body is streamed (an iterator of chunks)")
        return body

    def _header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ModelBindingData:
    """SDK-type binding data (`ModelBindingData`): the worker hydrates it into a client object."""

    version: str
    source: str
    content_type: str
    content: bytes


# ---------------------------------------------------------------------------------------------
# HTTP helpers


#: Python codecs that decode bytes to str but are not character sets: a Content-Type naming
#: one is a mistake, not a reason to turn a body into escapes or Punycode.
_NOT_CHARSETS = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape"})


def _charset(content_type: str | None) -> str:
    # For text(): the charset when it is a character set Python can decode any bytes with
    # (errors replaced), else UTF-8. Not one: "base64", "zlib" (not text encodings at all),
    # the codecs above, and whatever cannot decode one stray byte. The host ignores the
    # charset of a request body (`host_text` in emulator/_rpchttp.py).
    if content_type:
        for param in content_type.split(";")[1:]:
            name, sep, value = param.partition("=")
            if sep and name.strip().lower() == "charset":
                value = value.strip().strip("\"'").strip()
                try:
                    info = codecs.lookup(value)
                    b"\xff".decode(info.name, "replace")
                except (LookupError, UnicodeError):
                    break
                if info.name in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
                    break
                return info.name
    return "utf-8"


def _parse_json_body(body: bytes | str, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} body is not valid JSON: {exc}") from exc


def _parse_cookie_header(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name or name in cookies:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies[name] = value
    return cookies
