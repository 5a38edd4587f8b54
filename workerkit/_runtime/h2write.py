"""Writing to grpclib's client stream below its one-message-per-call API: several encoded
messages in one HTTP/2 write (`batch_sender`), and whether a write can go at once, without
waiting for the transport or the peer's flow-control window (`room_now`); and reading the
connection in pieces the C allocator serves from its heap (`read_in_heap_sized_pieces`). All
read grpclib internals; each does nothing (returns None or False) when they are not there,
and the transport then does without. tests/test_transport_batch.py checks they are there, so
a grpclib that moves them fails the tests instead of only making the worker slower."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["READ_SIZE", "SendMany", "batch_sender", "read_in_heap_sized_pieces", "room_now"]

#: A gRPC message's prefix: not compressed, then its length (big-endian, 4 bytes).
_PREFIX = struct.Struct(">?I").pack

#: The most an asyncio socket transport asks `recv` for at once, once set by
#: `read_in_heap_sized_pieces`: below glibc's default mmap threshold (128 KiB).
READ_SIZE = 64 * 1024

#: Sends several encoded messages on the call, in order.
SendMany = Callable[[list[bytes]], Awaitable[None]]


def batch_sender(stream: Any) -> SendMany | None:
    """A function that sends several encoded messages on grpclib's client `stream` in one
    HTTP/2 write (and empties the list it is given), or None if this grpclib lacks what it
    uses.

    grpclib sends one message per `send_message`; nothing public sends several. Under it
    is the HTTP/2 stream's `send_data` (`grpclib.protocol.Stream`), which `send_message`
    calls with the prefixed message: it waits for the transport to take data, splits the
    data to the peer's flow-control window and maximum frame size, and waits for window
    updates, so several prefixed messages joined go out as few DATA frames as the peer
    allows. `send_message` runs it inside the call's `Wrapper`, which wakes a waiting send
    with an error when the connection or the stream is lost; so does this. Left out: the
    call's message counters (statistics only) and grpclib's `SendMessage` event (a hook for
    listeners on the channel; workerkit registers none).
    """
    h2_stream = getattr(stream, "_stream", None)
    send_data = getattr(h2_stream, "send_data", None)
    wrapper: Any = getattr(stream, "_wrapper", None)
    if not (callable(send_data) and hasattr(wrapper, "__enter__") and hasattr(wrapper, "__exit__")):
        return None

    async def send_many(messages: list[bytes]) -> None:
        pieces: list[bytes] = []
        for data in messages:
            pieces += (_PREFIX(False, len(data)), data)
        data = b"".join(pieces)  # one copy, as grpclib's own prefixing makes
        del pieces
        messages.clear()  # a large reply is held once while it waits for the window
        with wrapper:
            await send_data(data)

    return send_many


def room_now(stream: Any) -> Callable[[int], bool] | None:
    """A test of whether `size` bytes can go on grpclib's client `stream` at once: the
    transport takes data and the peer's flow-control window holds them, so `send_data` will
    not wait (and so cannot be interrupted mid-message). None if this grpclib lacks what it
    reads (the same internals as `batch_sender`)."""
    h2_stream: Any = getattr(stream, "_stream", None)
    connection = getattr(h2_stream, "connection", None)
    h2_connection = getattr(h2_stream, "_h2_connection", None)
    write_ready: Any = getattr(connection, "write_ready", None)
    window = getattr(h2_connection, "local_flow_control_window", None)
    if not (callable(window) and hasattr(write_ready, "is_set")):
        return None

    def room(size: int) -> bool:
        try:
            return bool(write_ready.is_set()) and window(h2_stream.id) >= size
        except Exception:  # the stream is closed, or not open yet
            return False

    return room


def read_in_heap_sized_pieces(stream: Any) -> bool:
    """Make the transport under grpclib's client `stream` read at most `READ_SIZE` bytes per
    `recv`; True if it did, False if the transport is not asyncio's socket transport (uvloop's
    reads into a buffer of its own) or grpclib keeps it elsewhere.

    asyncio's selector transport calls ``recv(max_size)`` with a class-wide 256 KiB, and
    CPython allocates the whole size before it shrinks the result to what arrived. At 256 KiB
    glibc's malloc maps fresh pages for it (its default threshold is 128 KiB), so every read
    of a small message paid ``mmap``, a page fault, ``mremap`` and ``munmap``: about 15 µs
    beside the 3 µs of the read itself, on the machine of benchmarks/README.md. 64 KiB comes
    from the heap. A large body is read in more, smaller pieces, each copied once as before.
    """
    connection = getattr(getattr(stream, "_stream", None), "connection", None)
    transport: Any = getattr(connection, "_transport", None)
    if not isinstance(getattr(type(transport), "max_size", None), int):
        return False
    transport.max_size = READ_SIZE
    return True
