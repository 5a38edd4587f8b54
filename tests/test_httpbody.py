"""Streamed request bodies (`HttpRequest.stream`/`read`/`body`) and responses the worker
writes itself (`workerkit._runtime.httpbody`), without a socket: the body's chunks come
from a queue on a real event loop; headers and cookies from hypothesis."""

from __future__ import annotations

import asyncio
import datetime
import re
import threading
import urllib.parse
from typing import Any

import pytest
from conftest import arun
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit import ConversionError, HttpCookie, HttpRequest, HttpResponse
from workerkit._runtime.httpbody import chunks, gather, set_cookie, shape
from workerkit._values import _StreamedBody


def streamed(parts: list[bytes], prefetched: bytes | None = None) -> HttpRequest:
    """A request whose body arrives as `parts` (then the end) on the running loop."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for part in [*parts, b""]:
        queue.put_nowait(part)
    body = _StreamedBody(
        asyncio.get_running_loop(), queue.get, why_streamed="test", prefetched=prefetched
    )
    return HttpRequest._streaming("POST", "http://h/p", {}, {}, {}, body)


PARTS = st.lists(st.binary(min_size=1, max_size=50), max_size=20)


@settings(max_examples=60, deadline=None)
@given(PARTS)
def test_a_streamed_body_comes_in_order_once(parts: list[bytes]) -> None:
    async def scenario() -> None:
        request = streamed(parts)
        assert "<streamed>" in repr(request)
        assert [chunk async for chunk in request.stream()] == parts
        with pytest.raises(RuntimeError, match=r"consumed by request\.stream"):
            await request.read()
        with pytest.raises(RuntimeError, match=r"consumed by request\.stream"):
            request.body  # noqa: B018
        assert request != streamed(parts)  # a streamed body equals only itself
        assert request == request

    arun(scenario())


@settings(max_examples=60, deadline=None)
@given(PARTS)
def test_a_body_read_whole_is_kept(parts: list[bytes]) -> None:
    async def scenario() -> None:
        request = streamed(parts)
        with pytest.raises(RuntimeError, match=r"await request\.read\(\)"):
            request.body  # noqa: B018 - not read yet, and this is the event loop
        assert await request.read() == b"".join(parts)
        assert request.body == b"".join(parts)
        assert [chunk async for chunk in request.stream()] == ([b"".join(parts)] if parts else [])
        assert request == HttpRequest("POST", "http://h/p", body=b"".join(parts))

    arun(scenario())


def test_a_plain_def_thread_reads_through_the_loop() -> None:
    """From a pool thread `body` and `for ... in stream()` wait for the loop to read; on the
    loop, sync iteration is refused rather than blocking it."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        request = streamed([b"ab", b"cd"])
        with pytest.raises(RuntimeError, match="would block the event loop"):
            next(iter(request.stream()))
        assert await loop.run_in_executor(None, lambda: request.body) == b"abcd"
        request = streamed([b"ab", b"cd"])
        got = await loop.run_in_executor(None, lambda: list(request.stream()))
        assert got == [b"ab", b"cd"]

    arun(scenario())


def test_reading_after_the_invocation_ended_says_so() -> None:
    async def scenario() -> None:
        request = streamed([b"x"])
        request.__dict__["_streamed"].close("the invocation is over")
        with pytest.raises(RuntimeError, match="the invocation is over"):
            await request.read()

    arun(scenario())


def test_another_event_loop_cannot_read_it() -> None:
    async def scenario() -> HttpRequest:
        return streamed([b"x"])

    request = arun(scenario())
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            asyncio.run(request.read())
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(30)
    assert "event loop of the worker that serves it" in str(errors[0])


def test_a_request_that_is_not_streamed_reads_and_streams_too() -> None:
    async def scenario() -> None:
        request = HttpRequest("GET", "http://h/", body=b"whole")
        assert await request.read() == b"whole"
        assert [chunk async for chunk in request.stream()] == [b"whole"]
        assert list(request.stream()) == [b"whole"]
        assert list(HttpRequest("GET", "http://h/").stream()) == []

    arun(scenario())


# -- responses ---------------------------------------------------------------------------------
def test_shapes_of_what_a_function_returns() -> None:
    assert (shape(None).status, shape(None).body) == (204, b"")
    text = shape(HttpResponse(status_code=201, body="hé"))
    assert (text.status, text.body) == (201, "hé".encode())
    assert text.headers == [("Content-Type", "text/plain; charset=utf-8")]
    typed = shape(HttpResponse(body=b"{}", headers={"content-type": "application/json"}))
    assert typed.headers == [("content-type", "application/json")]
    framed = shape(HttpResponse(headers={"Content-Length": "9", "Transfer-Encoding": "x"}))
    assert [name for name, _ in framed.headers] == ["Content-Type"]  # framing is the server's
    assert shape({"a": [1]}).body == b'{\n  "a": [\n    1\n  ]\n}'  # indented, as the host
    with pytest.raises(ConversionError, match=r"status_code must be an int in 200\.\.599"):
        shape(HttpResponse(status_code=102))
    with pytest.raises(ConversionError, match="cannot send a set"):
        shape({1, 2})
    with pytest.raises(ConversionError, match="use bytes, str, or an async iterator"):
        shape(HttpResponse(body=42))  # type: ignore[arg-type]


HEADER_TEXT = st.text(st.characters(codec="latin-1"), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(HEADER_TEXT, HEADER_TEXT, max_size=4))
def test_headers_never_carry_a_line_break(headers: dict[str, str]) -> None:
    try:
        shaped = shape(HttpResponse(headers=headers))
    except ConversionError as exc:
        assert "invalid name or value" in str(exc)
        return
    for name, value in shaped.headers:
        assert not any(c in name + value for c in "\r\n\0")
        assert name.strip() and ":" not in name


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=10),
    st.text(max_size=20),
    st.none() | st.integers(-(10**6), 10**6),
    st.sampled_from([None, "lax", "strict", "none"]),
)
def test_a_cookie_value_is_escaped_and_comes_back(
    name: str, value: str, max_age: int | None, same_site: Any
) -> None:
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    cookie = HttpCookie(name, value, expires=expires, max_age=max_age, same_site=same_site)
    try:
        text = set_cookie(cookie)
    except ConversionError as exc:
        assert "must be a non-empty token" in str(exc)
        assert not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name)
        return
    first = text.split("; ")[0]
    assert first.partition("=")[2] == urllib.parse.quote(value, safe="-_.~")
    assert urllib.parse.unquote(first.partition("=")[2]) == value
    assert "expires=Wed, 02 Jan 2030 03:04:05 GMT" in text
    assert "path=/" in text
    assert not any(c in text for c in "\r\n\0")


def test_a_cookie_without_timezone_is_refused() -> None:
    with pytest.raises(ConversionError, match="timezone-aware"):
        set_cookie(HttpCookie("a", "b", expires=datetime.datetime(2030, 1, 1)))


def test_chunks_of_any_kind_and_gathering_stops_at_the_limit() -> None:
    async def in_pool(call: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def scenario() -> None:
        async def produce() -> Any:
            yield "a"
            yield b""
            yield bytearray(b"b")

        assert [c async for c in chunks(produce(), in_pool)] == [b"a", b"b"]
        assert [c async for c in chunks(iter(["x", b"y"]), in_pool)] == [b"x", b"y"]
        with pytest.raises(ConversionError, match="yielded a int"):
            [c async for c in chunks(iter([1]), in_pool)]  # type: ignore[list-item]
        gathered = await gather(HttpResponse(body=produce()), 10, in_pool)
        assert gathered.body == b"ab" and not gathered.streamed
        closed: list[bool] = []

        async def endless() -> Any:
            try:
                while True:
                    yield b"12345"
            finally:
                closed.append(True)

        with pytest.raises(ConversionError, match="grew past 8 bytes"):
            await gather(HttpResponse(body=endless()), 8, in_pool)
        assert closed == [True]  # the producer was closed, not left suspended

    arun(scenario())
