"""HTTP streaming (issue 15), what a review found: each test drives the worker's own HTTP
server with real HTTP on 127.0.0.1 (a raw socket where the exact bytes matter) and a real
gRPC TestHost that plays the host's proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import arun
from hypothesis import given, settings
from hypothesis import strategies as st
from test_http_streaming import FAILURE, SUCCESS, Streaming, echo, serving

import workerkit
from workerkit import HttpCookie, HttpRequest, HttpResponse, WorkerOptions, convert
from workerkit._runtime.httpbody import shape
from workerkit.convert import ConversionError
from workerkit.emulator._rpchttp import response_from_output
from workerkit.testing import TestHost, http_bindings


# -- a raw HTTP/1.1 client: the exact bytes on the wire -----------------------------------------
class Raw:
    """One connection to the worker's server, written and read byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, uri: str) -> Raw:
        host, port = uri.removeprefix("http://").rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def head(self) -> tuple[int, dict[str, str]]:
        """The next response head: status and headers (names lower-cased)."""
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def chunked_body(self) -> bytes:
        """A chunked body, decoded, up to its last chunk."""
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])

    def close(self) -> None:
        self.writer.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- Expect: 100-continue ----------------------------------------------------------------------
def test_100_continue_is_not_written_into_a_response_under_way() -> None:
    """A streamed response that echoes a streamed request body: the response head goes out
    before the body is read. The interim ``100 Continue`` belongs before the final response;
    once that began it must not be sent at all (it would land inside the chunked body)."""

    async def echo(invocation: workerkit.Invocation) -> HttpResponse:
        request: HttpRequest = invocation.inputs["req"]

        async def body() -> AsyncIterator[bytes]:
            yield b"echo:"
            async for part in request.stream():
                yield part

        return HttpResponse(body=body(), headers={"content-type": "text/plain"})

    async def scenario() -> None:
        async with serving(Streaming({"echo": echo})) as served:
            await served.load("echo")
            pending = await served.invoke("echo")
            raw = await Raw.open(served.proxy.http_uri)
            raw.writer.write(
                b"POST /api/echo HTTP/1.1\r\nHost: localhost\r\n"
                b"x-ms-invocation-id: " + pending.invocation_id.encode() + b"\r\n"
                b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            status, headers = await raw.head()
            assert status == 200, (status, headers)
            raw.writer.write(chunk(b"hello") + b"0\r\n\r\n")
            assert await raw.chunked_body() == b"echo:hello"
            raw.close()
            assert (await pending.result(30)).result.status == SUCCESS

    arun(scenario())


def test_100_continue_comes_before_the_response_when_the_body_is_read_first() -> None:
    """The usual case still works: a hook that reads the body first gets it after the
    interim response, and the final response follows."""

    async def length(invocation: workerkit.Invocation) -> HttpResponse:
        request: HttpRequest = invocation.inputs["req"]
        return HttpResponse(body=str(len(await request.read())))

    async def scenario() -> None:
        async with serving(Streaming({"length": length})) as served:
            await served.load("length")
            pending = await served.invoke("length")
            raw = await Raw.open(served.proxy.http_uri)
            raw.writer.write(
                b"POST /api/length HTTP/1.1\r\nHost: localhost\r\n"
                b"x-ms-invocation-id: " + pending.invocation_id.encode() + b"\r\n"
                b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            status, _ = await raw.head()
            assert status == 100
            raw.writer.write(chunk(b"x" * 1000) + b"0\r\n\r\n")
            status, headers = await raw.head()
            assert status == 200
            assert await raw.reader.readexactly(int(headers["content-length"])) == b"1000"
            raw.close()
            assert (await pending.result(30)).result.status == SUCCESS

    arun(scenario())


# -- bodies that are neither bytes, str nor a stream ----------------------------------------------
def test_a_body_of_the_wrong_type_fails_with_a_message_saying_so() -> None:
    """None, a list or an int as `HttpResponse.body` is a mistake: the invocation fails with
    a message naming the type and what to use, with streaming off (the gRPC path) as with it
    on (the proxy), where the request is answered 500."""

    async def wrong(invocation: workerkit.Invocation) -> HttpResponse:
        return HttpResponse(body=BODIES[invocation.inputs["req"].query.get("kind", "none")])

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Off({"wrong": wrong}))
            conn = started.connection
            assert (await conn.init()).result.status == SUCCESS
            loaded = await conn.load_function("wrong", bindings=http_bindings())
            for kind, type_name in (("none", "NoneType"), ("list", "list"), ("int", "int")):
                request = HttpRequest("GET", f"http://localhost/api/wrong?kind={kind}")
                result = await conn.call(loaded, {"req": HttpRequest(
                    request.method, request.url, query={"kind": kind})})  # fmt: skip
                assert result.status == "failure"
                assert f"HttpResponse.body of type {type_name!r}" in (result.error or ""), (
                    result.error
                )
        async with serving(Streaming({"wrong": wrong})) as served:
            await served.load("wrong")
            for kind, type_name in (("none", "NoneType"), ("list", "list"), ("int", "int")):
                pending = await served.invoke("wrong")
                response = await served.proxy.forward(
                    pending.invocation_id, "GET", f"/api/wrong?kind={kind}"
                )
                assert response.status == 500
                result = await pending.result(30)
                assert result.result.status == FAILURE
                assert f"HttpResponse.body of type {type_name!r}" in result.result.exception.message

    arun(scenario())


BODIES: dict[str, Any] = {"none": None, "list": [b"a", b"b"], "int": 7}


class Off(Streaming):
    """`Streaming` with HTTP streaming off (the gRPC path)."""

    def __init__(self, hooks: dict[str, Any]) -> None:
        workerkit.Worker.__init__(self, options=WorkerOptions(http_streaming=False))
        self.hooks = hooks


# -- what the proxy writes is checked as the host checks it ---------------------------------------
@pytest.mark.parametrize("name", ["X Bad", "X(Bad)", "Caf\u00e9", "a/b", "x@y"])
def test_a_header_name_that_is_not_a_token_is_refused(name: str) -> None:
    """Written as is, ``X Bad: v`` makes a response the host's HTTP client cannot parse (it
    answers 502 and fails the invocation); refused here, the function fails with the reason
    and the request is answered 500, as the host answers a response it cannot write."""
    with pytest.raises(ConversionError, match="invalid name"):
        shape(HttpResponse(headers={name: "v"}))


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (HttpResponse(cookies=[HttpCookie("a", "b", max_age=float("inf"))]), "max_age"),
        (HttpResponse(cookies=[HttpCookie("a", "b", max_age=float("nan"))]), "max_age"),
        (HttpResponse(cookies=[HttpCookie("a", "b", same_site="sometimes")]), "same_site"),  # type: ignore[arg-type]
        (HttpResponse(cookies=[HttpCookie("a", "b", secure="no")]), "secure"),  # type: ignore[arg-type]
    ],
)
def test_a_response_the_gRPC_path_refuses_is_refused_by_the_proxy_too(
    response: HttpResponse, problem: str
) -> None:
    """The same `HttpResponse` must not be a ConversionError on one path and a response
    written differently (or an unclear error) on the other: cookies are checked as
    `convert` checks them for the host."""
    with pytest.raises(ConversionError, match=problem):
        convert.encode(response)
    with pytest.raises(ConversionError, match=problem):
        shape(response)


# -- values other than HttpResponse: as the host writes them -------------------------------------
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_descriptors = st.fixed_dictionaries(
    {"body": _json},
    optional={
        "statusCode": st.integers(200, 599) | st.integers(200, 599).map(str),
        "Status": st.integers(200, 599),
        "headers": st.dictionaries(
            st.sampled_from(["x-a", "X-B", "Content-Type"]),
            st.text("abc/;= ", max_size=10),
            max_size=3,
        ),
    },
)
_outputs = (
    _descriptors
    | _json
    | _json.map(lambda v: json.dumps(v))  # a str that parses as JSON
    | st.text(max_size=20)
    | st.binary(max_size=20)
)


@settings(max_examples=300, deadline=None)
@given(_outputs)
def test_an_output_that_is_not_an_http_response_is_written_as_the_host_writes_it(
    value: Any,
) -> None:
    """With streaming off the host writes the function's HTTP output (`convert.encode` of
    it) by its own rules (`emulator._rpchttp.response_from_output` follows them); with
    streaming on the worker writes it itself, and must write the same: a response object
    (``{"body": ..., "statusCode": 201}``) is a 201, a str holding JSON is that JSON, other
    JSON is indented, a number is text."""
    host = response_from_output(convert.encode(value))
    shaped = shape(value)
    assert shaped.status == host.status
    assert shaped.body == host.body
    if host.body:
        wanted = {k.lower(): v for k, v in host.headers}
        got = {k.lower(): v for k, v in shaped.headers}
        assert got.get("content-type") == wanted.get("content-type")


# -- the host's proxy (the test side) ------------------------------------------------------------
def test_the_proxy_replaces_what_the_client_sent_under_the_host_s_own_header_names() -> None:
    """The host sets ``x-ms-invocation-id`` (DefaultHttpProxyService.cs: the indexer, which
    replaces a value the client sent) and YARP sets ``X-Forwarded-*`` (its default action
    replaces them too): a client that sends its own cannot make the worker match another
    invocation or see another host."""

    async def scenario() -> None:
        # A small wait: without the replacement the worker would wait for "forged".
        async with serving(Streaming({"echo": echo}, http_match_timeout=1.0)) as served:
            await served.load("echo")
            pending = await served.invoke("echo")
            forged = {
                "x-ms-invocation-id": "forged",
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded-Proto": "gopher",
                "x-test": "kept",
            }
            response = await served.proxy.forward(
                pending.invocation_id, "GET", "/api/echo", headers=forged
            )
            assert response.status == 200, await response.read()
            seen = json.loads(await response.read())
            assert (await pending.result(30)).result.status == SUCCESS
            assert seen["invocation"] == pending.invocation_id
            assert seen["url"] == "http://localhost:7071/api/echo"
            assert seen["header"] == "kept"

    arun(scenario())
