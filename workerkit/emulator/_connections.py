"""The front door's connections and request queue: a count of open connections and the cap
on it, the ``maxConcurrentRequests``/``maxOutstandingRequests`` queue, and console lines
limited in rate (`_http` has the whole story)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

__all__ = ["Counted", "RateLimited", "Refused", "RequestQueue", "fit_open_files"]

#: File descriptors kept for everything but client connections: the worker's pipes and
#: stream, the listening sockets, the console, the event loop.
_RESERVED_FDS: Final = 64
#: Seconds between two console lines about the same limit.
_WARNING_INTERVAL: Final = 10.0


class RateLimited:
    """Writes a line at most once every `interval` seconds, saying how many occurrences it
    stood for since the last line."""

    def __init__(
        self,
        write: Callable[[str], None],
        interval: float = _WARNING_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def __call__(self, line: Callable[[int], str]) -> None:
        """One occurrence; `line` builds the text from how many there were since the last."""
        self._held += 1
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        held, self._held = self._held, 0
        self._write(line(held))


class Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted while the connection is open; `lost`
    is set once it is closed (a forwarded request is then cancelled, `_proxy`)."""

    def __init__(self, inner: asyncio.Protocol, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        release, self._release = self._release, None
        self.lost.set()
        try:
            self._inner.connection_lost(exc)
        finally:
            if release is not None:
                release()


class Refused(asyncio.Protocol):
    """A connection past the cap: closed as soon as it is made, nothing written."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class RequestQueue:
    """``maxConcurrentRequests`` running, ``maxOutstandingRequests`` running or waiting (None:
    no limit); as the host's HttpRequestQueue, a dataflow block whose bounded capacity
    counts the requests it runs."""

    def __init__(self, concurrent: int | None, outstanding: int | None) -> None:
        self._running = asyncio.Semaphore(concurrent) if concurrent is not None else None
        self.outstanding_limit = outstanding
        self.outstanding = 0

    async def run(
        self, request: web.Request, answer: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse | None:
        """`answer` the request when its turn comes; None, at once, when the queue is full."""
        if self.outstanding_limit is not None and self.outstanding >= self.outstanding_limit:
            return None
        self.outstanding += 1
        try:
            if self._running is None:
                return await answer(request)
            async with self._running:
                return await answer(request)
        finally:
            self.outstanding -= 1


def fit_open_files(wanted: int) -> tuple[int, tuple[int, int] | None]:
    """The connection cap, lowered when the open-file limit could not hold that many
    connections besides what else the emulator keeps open; (cap, (wanted, the limit) when
    lowered, else None). Past the limit accept() would fail and asyncio log tracebacks."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no such limit here (Windows)
        return wanted, None
    if soft == resource.RLIM_INFINITY or soft - _RESERVED_FDS >= wanted:
        return wanted, None
    return max(soft - _RESERVED_FDS, 1), (wanted, soft)
