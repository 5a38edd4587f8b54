"""What `workerkit host` relays of a worker's HTTP response, byte for byte where the host's
proxy copies it (YARP's HttpTransformer.TransformResponseAsync copies the worker's status,
reason and headers; Kestrel adds only Date and Server, never a Content-Type). The worker here
is a raw asyncio server, so nothing in between adds headers of its own."""

from __future__ import annotations

import asyncio

from conftest import arun
from test_emulator_proxy import _Front, _serve


async def _raw_worker(answer: bytes) -> tuple[asyncio.Server, int]:
    """A worker HTTP server that answers every request with `answer`, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _relayed(answer: bytes) -> tuple[bytes, list[str | None]]:
    """What a client of the proxy gets when the worker answers `answer` (the whole reply, read
    to the end of the connection), and the forwarding's outcome."""
    server, port = await _raw_worker(answer)
    front = _Front(f"http://127.0.0.1:{port}/")
    runner, front_port = await _serve(front.handle)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front_port)
        writer.write(b"GET /api/x HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        reply = await reader.read()
        writer.close()
        return reply, front.errors
    finally:
        server.close()
        await runner.cleanup()
        await front.proxy.close()


def _head(reply: bytes) -> dict[str, list[str]]:
    head, _, _ = reply.partition(b"\r\n\r\n")
    headers: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return headers


def test_a_response_without_content_type_is_relayed_without_one() -> None:
    """aiohttp gives a response with a body and no Content-Type one of its own
    (application/octet-stream, which makes browsers download a page); the host's proxy adds
    none (YARP HttpTransformer.TransformResponseAsync, Kestrel)."""

    async def scenario() -> None:
        reply, errors = await _relayed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\nhello")
        assert "content-type" not in _head(reply), reply
        assert errors == [None]
        # streamed (no length: chunked to the client), still none added
        reply, errors = await _relayed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")
        assert "content-type" not in _head(reply), reply
        assert _head(reply)["transfer-encoding"] == ["chunked"]
        assert reply.endswith(b"\r\nb\r\nuntil close\r\n0\r\n\r\n")

    arun(scenario())


def test_the_workers_content_type_and_repeated_headers_are_relayed_as_sent() -> None:
    async def scenario() -> None:
        reply, _ = await _relayed(
            b"HTTP/1.1 201 Made\r\nContent-Type: text/x-custom\r\nSet-Cookie: a=1\r\n"
            b"Set-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok"
        )
        headers = _head(reply)
        assert reply.startswith(b"HTTP/1.1 201 Made\r\n")
        assert headers["content-type"] == ["text/x-custom"]
        assert headers["set-cookie"] == ["a=1", "b=2"]

    arun(scenario())
