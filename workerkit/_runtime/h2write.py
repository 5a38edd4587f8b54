"""Writing to grpclib's client stream below its one-message-per-call API: several encoded
messages in one HTTP/2 write (`batch_sender`), and whether a write can go at once, without
waiting for the transport or the peer's flow-control window (`room_now`). Both read grpclib
internals; each returns None when they are not there, and the transport then does without.
tests/test_transport_batch.py checks they are there, so a grpclib that moves them fails the
tests instead of only making the worker slower."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["SendMany", "batch_sender", "room_now"]

#: A gRPC message's prefix: not compressed, then its length (big-endian, 4 bytes).
_PREFIX = struct.Struct(">?I").pack

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
