"""A small HTTP/1.1 client for the kit's proxied calls (no dependency beyond asyncio): the
request written as the host's proxy writes it, its connection retried as the host retries it,
and the response read piece by piece, so that a body streamed by the worker can be told from
one sent whole with the end of the response."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..emulator._httpuri import HttpTarget

__all__ = ["HttpAnswer", "HttpAnswerError", "connect", "read_answer", "request_bytes"]

#: The host's connect attempts and the delays between them (RetryProxyHandler).
CONNECT_ATTEMPTS: Final = 10
_FIRST_DELAY: Final = 0.05
_MAX_DELAY: Final = 0.25
_READ: Final = 65536
_MAX_HEAD: Final = 64 * 1024


class HttpAnswerError(Exception):
    """The worker's HTTP answer is not valid HTTP/1.1 (the message says where)."""


class _Cut(Exception):
    """The connection ended before the response did."""


@dataclass
class HttpAnswer:
    """The worker's HTTP response to a forwarded request.

    Attributes:
        complete: the response ended as HTTP frames it (not cut off).
        early: some body bytes arrived before the end of the response did (in an earlier
            read of the socket): the body was streamed.
        pieces: how many reads of the socket brought body bytes.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    complete: bool = False
    early: bool = False
    pieces: int = 0
    _first_read: int | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def connect(target: HttpTarget) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to `target`, retrying a refused one as the host does (10 attempts,
    50 ms apart doubling to 250 ms).

    Raises:
        OSError: the last attempt's error, or any other.
    """
    delay = _FIRST_DELAY
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return await asyncio.open_connection(target.address, target.port)
        except OSError as exc:
            if exc.errno != errno.ECONNREFUSED or attempt == CONNECT_ATTEMPTS:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_DELAY)
    raise AssertionError("unreachable")  # pragma: no cover


def request_bytes(
    method: str, path_and_query: str, headers: Sequence[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request's head and body, with a ``Content-Length`` for a body that has none."""
    lines = [f"{method} {path_and_query} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body and not any(name.lower() == "content-length" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")


class _Wire:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.buffer = bytearray()
        self.reads = 0

    async def fill(self) -> None:
        try:
            data = await self._reader.read(_READ)
        except ConnectionError:
            data = b""
        if not data:
            raise _Cut
        self.buffer += data
        self.reads += 1

    async def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise HttpAnswerError("a line of the response is longer than 64 KiB")
            await self.fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def some(self, most: int) -> bytes:
        if not self.buffer:
            await self.fill()
        piece = bytes(self.buffer[:most])
        del self.buffer[: len(piece)]
        return piece


async def read_answer(reader: asyncio.StreamReader, *, head: bool = False) -> HttpAnswer:
    """Read the response to one request (`head`: to a HEAD request, so without a body).

    Raises:
        HttpAnswerError: not HTTP/1.1, or the connection ended before the status line did.
    """
    wire = _Wire(reader)
    try:
        while True:
            answer = await _head(wire)
            if not 100 <= answer.status < 200 or answer.status == 101:
                break
    except _Cut:
        raise HttpAnswerError("the connection ended before a response came") from None
    if head or answer.status in (204, 304) or 100 <= answer.status < 200:
        answer.complete = True
        return answer
    try:
        await _body(wire, answer)
    except _Cut:
        return answer
    answer.complete = True
    answer.early = answer._first_read is not None and answer._first_read < wire.reads
    return answer


async def _head(wire: _Wire) -> HttpAnswer:
    status_line = (await wire.line()).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpAnswerError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
    headers: list[tuple[str, str]] = []
    while line := await wire.line():
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise HttpAnswerError(f"not a header line: {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return HttpAnswer(int(parts[1]), headers)


async def _body(wire: _Wire, answer: HttpAnswer) -> None:
    def take(piece: bytes) -> None:
        if piece:
            answer.body += piece
            answer.pieces += 1
            if answer._first_read is None:
                answer._first_read = wire.reads

    encoding = (answer.header("transfer-encoding") or "").lower()
    length = answer.header("content-length")
    if "chunked" in encoding:
        while True:
            size_text = (await wire.line()).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpAnswerError(f"not a chunk size: {size_text[:40]!r}") from None
            if size == 0:
                while await wire.line():  # trailers
                    pass
                return
            left = size
            while left:
                piece = await wire.some(left)
                left -= len(piece)
                take(piece)
            if await wire.line():
                raise HttpAnswerError("a chunk does not end with CRLF")
    elif length is not None:
        if not length.isdigit():
            raise HttpAnswerError(f"not a Content-Length: {length!r}")
        left = int(length)
        while left:
            piece = await wire.some(left)
            left -= len(piece)
            take(piece)
    else:  # delimited by the end of the connection
        while True:
            try:
                take(await wire.some(_READ))
            except _Cut:
                return
