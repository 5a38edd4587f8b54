"""The one `EventStream` call to the host: a grpclib channel, one reader and one writer.

Everything the worker sends goes through one bounded queue drained by a single writer task,
so frames never interleave and a host that stops reading slows the worker down instead of
letting memory grow. Replies wait for room in the queue; log records never wait: when the
queue is full they are dropped and counted, and the count is reported once there is room.
The writer sends everything already queued when it wakes up in one HTTP/2 write (gRPC
messages may share DATA frames): a burst of log records and the reply after them cost one
socket write, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase

from .._wire.messages import (
    HostRequest,
    RawInvocation,
    read_function_load,
    read_init,
    read_invocation,
    read_metadata_request,
    rpc_log,
)
from .._wire.pb import pb
from .._wire.primitives import fields, read_varint
from .._wire.schema import (
    FUNCTION_LOAD_REQUEST_FUNCTION_ID,
    INVOCATION_REQUEST_INVOCATION_ID,
    ONEOF_STREAMING_MESSAGE_CONTENT,
    STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST,
    STREAMING_MESSAGE_FUNCTIONS_METADATA_REQUEST,
    STREAMING_MESSAGE_INVOCATION_REQUEST,
    STREAMING_MESSAGE_REQUEST_ID,
    STREAMING_MESSAGE_WORKER_INIT_REQUEST,
)
from ..cli import HostArgs
from ..errors import MessageTooLarge
from .h2write import SendMany, batch_sender, read_in_heap_sized_pieces, room_now
from .logs import WARNING, LogEntry

__all__ = ["EVENT_STREAM_PATH", "Codec", "Transport"]

EVENT_STREAM_PATH = "/AzureFunctionsRpcMessages.FunctionRpc/EventStream"
log = logging.getLogger("workerkit.transport")

if TYPE_CHECKING:
    from .._generated.AzureFunctionsRpcMessages import StreamingMessage as Message

    #: What the writer sends: a message, a log record, or bytes already encoded by
    #: `workerkit._wire.messages` (the hot path and the start-up conversation).
    Outgoing = Message | LogEntry | bytes
    #: Given a message that cannot be sent as it is (over the size limit, or not
    #: serialisable) and why, return a stand-in to send instead, or None to drop it.
    Replace = Callable[[Message, Exception], Message | None]


#: The writer stops adding queued messages to a write once it holds this many bytes ...
BATCH_BYTES = 256 * 1024
#: ... or this many messages; the rest go in the next write.
BATCH_MESSAGES = 256


class DecodeError(ValueError):
    """A frame from the peer is not a valid `StreamingMessage`."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A frame that cannot be decoded (malformed or over the size limit), with what could be
    salvaged from it: a request in it must still be answered.

    `content` is the field number of the `StreamingMessage` member it carries (0: unknown);
    `invocation_id` and `function_id` are read from an InvocationRequest or a
    FunctionLoadRequest in it."""

    reason: str
    request_id: str = ""
    invocation_id: str = ""
    content: int = 0
    function_id: str = ""


#: Content members with an id worth salvaging: member -> (the id's field, what it is).
_SALVAGED_IDS = {
    STREAMING_MESSAGE_INVOCATION_REQUEST: (INVOCATION_REQUEST_INVOCATION_ID, "invocation_id"),
    STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST: (FUNCTION_LOAD_REQUEST_FUNCTION_ID, "function_id"),
}


def salvage(data: bytes, reason: str) -> Unreadable:
    """What a broken frame is and whom it concerns, as far as it can be read: its request
    id, its content's kind and, for an invocation or a load, the id in it. A truncated last
    field is read as far as it goes."""
    found = {"request_id": "", "invocation_id": "", "function_id": ""}
    content = 0

    def walk(view: memoryview, wanted: dict[int, str], top: bool) -> None:
        nonlocal content
        pos, size = 0, len(view)
        try:
            while pos < size:
                key, pos = read_varint(view, pos)
                if key & 7 != 2:
                    return  # only length-delimited fields matter here
                length, pos = read_varint(view, pos)
                value = view[pos : min(pos + length, size)]
                pos += length
                number = key >> 3
                if number in wanted:
                    found[wanted[number]] = str(value, "utf-8", "replace")
                elif top and number in ONEOF_STREAMING_MESSAGE_CONTENT:
                    content = number
                    salvaged = _SALVAGED_IDS.get(number)
                    if salvaged is not None:
                        id_field, name = salvaged
                        walk(value, {id_field: name}, False)
        except (IndexError, ValueError):  # truncated or garbled: keep what was read
            return

    walk(memoryview(data), {STREAMING_MESSAGE_REQUEST_ID: "request_id"}, True)
    return Unreadable(reason, content=content, **found)


if TYPE_CHECKING:
    #: What the reader hands to the session.
    Incoming = Message | RawInvocation | HostRequest | Unreadable


#: Content members read by hand during start-up: (member name, reader).
_START_UP: dict[int, tuple[str, Callable[[memoryview], Any]]] = {
    STREAMING_MESSAGE_WORKER_INIT_REQUEST: ("worker_init_request", read_init),
    STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST: ("function_load_request", read_function_load),
    STREAMING_MESSAGE_FUNCTIONS_METADATA_REQUEST: (
        "functions_metadata_request",
        read_metadata_request,
    ),
}


class Codec(CodecBase):
    """Protobuf framing for betterproto2 messages, with the host's size limit applied on
    receipt. Already-serialised ``bytes`` pass through `encode` untouched, so the writer can
    measure a message before sending it.

    With `fast_invocations` (the worker's side) the messages read by hand
    (`workerkit._wire.messages`) are handed over as `RawInvocation` and `HostRequest`,
    everything else as a `StreamingMessage`."""

    __content_subtype__ = "proto"

    def __init__(self, max_message_length: int, *, fast_invocations: bool = False) -> None:
        self.max_message_length = max_message_length
        #: Hand invocation requests over as `RawInvocation`, and the start-up requests read
        #: by hand as `HostRequest`; a frame that cannot be read as `Unreadable`.
        self.fast_invocations = fast_invocations

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self.max_message_length:
            too_big = MessageTooLarge(len(data), self.max_message_length, "received message")
            if self.fast_invocations:
                return salvage(data, str(too_big))
            raise too_big
        try:
            request_id, content, payload = "", 0, None
            for number, wire_type, value in fields(data):  # also checks the framing
                if wire_type != 2:
                    continue  # every field of StreamingMessage is length-delimited
                if number == STREAMING_MESSAGE_REQUEST_ID:
                    request_id = str(value, "utf-8")
                elif number in ONEOF_STREAMING_MESSAGE_CONTENT:  # the last member wins
                    # (a field outside the oneof, e.g. one a newer host adds, is not content)
                    content, payload = number, value
            if self.fast_invocations:
                if payload is not None:
                    if content == STREAMING_MESSAGE_INVOCATION_REQUEST:
                        return read_invocation(request_id, payload)
                    reader = _START_UP.get(content)
                    if reader is not None:
                        return HostRequest(request_id, reader[0], reader[1](payload))
                return pb.StreamingMessage.parse(data)
            return message_type.parse(data)
        except Exception as exc:
            name = "StreamingMessage" if self.fast_invocations else message_type.__name__
            reason = f"malformed {name} ({len(data)} bytes): {exc}"
            if self.fast_invocations:
                return salvage(data, reason)
            raise DecodeError(reason) from None


class Transport:
    """Connects to the host and shuttles `StreamingMessage`s both ways."""

    def __init__(self, args: HostArgs, *, queue_size: int = 1024) -> None:
        self.args = args
        self.dropped_logs = 0
        # Each entry: a message and, for `send_and_wait`, the future told once it is sent.
        self._queue: asyncio.Queue[tuple[Outgoing, asyncio.Future[None] | None]] = asyncio.Queue(
            maxsize=queue_size
        )
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        #: When stopping (`run`'s `stop`), the loop time by which the call must be over.
        self.finish_by = 0.0
        #: Cleared by the session to stop reading from the host (its backlog is full).
        self.reading = asyncio.Event()
        self.reading.set()
        # Log records may fill the queue only so far, so replies waiting for room are not
        # overtaken by a flood of logs.
        self._log_room = max(1, queue_size * 3 // 4)
        # Records from other threads: appended there, taken by the loop (deque operations
        # are atomic, so the common path takes no lock).
        self._from_threads: deque[LogEntry] = deque()
        self._wakeup_pending = False
        self._lock = threading.Lock()  # for `_dropped_in_threads` only
        self._dropped_in_threads = 0
        #: Held while something is written to the stream: by the writer for each batch,
        #: and by `send_and_wait` writing a reply itself.
        self._writing = asyncio.Lock()
        #: How to write directly (the stream's `SendMany`, the writer's `Replace`, and
        #: `room_now`), set by the writer once the stream is open.
        self._direct: tuple[SendMany, Replace, Callable[[int], bool]] | None = None

    # -- sending ----------------------------------------------------------------------------
    async def send(self, message: Message | bytes) -> None:
        """Queue a reply; waits while the queue is full (backpressure from the host)."""
        await self._queue.put((message, None))

    async def send_and_wait(self, message: Message | bytes, *, alone: bool = False) -> None:
        """Queue a reply and return once it has been handed to HTTP/2 (or dropped). Callers
        that hold a resource until then bound the memory replies can pin.

        `alone`: the caller knows of no other reply on its way (one invocation in flight).
        Then, with nothing queued, nothing being written and room for the whole reply in
        the host's flow-control window, the reply is written here, without waking the
        writer task: one turn of the event loop sooner, and a write that never waits, so
        cancelling the caller cannot cut a message short. (With replies on their way, they
        wait for the writer, which sends them together.)"""
        direct = self._direct
        if (
            alone
            and direct is not None
            and not self._closing
            and self._queue.empty()
            and not self._writing.locked()
        ):
            send_many, replace, room = direct
            data = self._serialise(message, replace)
            del message
            if data is None:  # dropped, and said so
                return
            if room(len(data) + 5):
                async with self._writing:  # taken at once: it is free
                    try:
                        await send_many([data])
                    except Exception as exc:  # the stream broke: the reader ends the session
                        log.error("could not send a reply: %r", exc)
                return
            message = data  # already encoded: through the queue after all
        sent = self._loop.create_future()
        await self._queue.put((message, sent))
        await sent

    def offer_log(self, entry: LogEntry) -> None:
        """Queue a log record from any thread without ever blocking (dropped when full).

        Records from other threads gather in a deque that the loop empties in one go:
        waking the loop once per burst instead of once per record, and taking no lock, so
        threads that log a lot do not queue up behind each other. They still reach the
        queue before anything the thread hands over later (e.g. the hook's result): either
        the wake-up already scheduled has not run yet, or this call schedules a new one
        before the thread goes on.
        """
        if threading.get_ident() == self._loop_thread:
            self._offer(entry)
            return
        pending = self._from_threads
        if len(pending) >= self._queue.maxsize:
            with self._lock:
                self._dropped_in_threads += 1
            return
        pending.append(entry)
        if self._wakeup_pending:
            return
        self._wakeup_pending = True
        try:
            self._loop.call_soon_threadsafe(self._take_from_threads)
        except RuntimeError:  # the loop is closed: the stream is gone with it
            pass

    def _take_from_threads(self) -> None:
        # Cleared before taking: a record appended from now on schedules its own wake-up.
        self._wakeup_pending = False
        pending = self._from_threads
        for _ in range(len(pending)):
            self._offer(pending.popleft())
        if self._dropped_in_threads:
            with self._lock:
                self.dropped_logs += self._dropped_in_threads
                self._dropped_in_threads = 0

    def _offer(self, entry: LogEntry) -> None:
        if self._closing:
            return
        if self._queue.qsize() >= self._log_room:
            self.dropped_logs += 1
        else:
            self._queue.put_nowait((entry, None))

    # -- the call ---------------------------------------------------------------------------
    async def run(
        self,
        first: bytes,
        on_message: Callable[[Incoming], None],
        replace: Replace,
        stop: asyncio.Event,
    ) -> str:
        """Open the stream, send `first` (StartStream, encoded), feed each received message
        to `on_message` until the host ends the stream or `stop` is set. Returns why it
        ended."""
        limit = self.args.max_message_length
        window = min(max(limit, 65_535), 16 * 1024 * 1024)
        # Bigger HTTP/2 windows than grpclib's defaults help large bodies on loopback.
        config = Configuration(http2_connection_window_size=window, http2_stream_window_size=window)
        codec = Codec(limit, fast_invocations=True)
        channel = Channel(self.args.host, self.args.port, codec=codec, config=config)
        try:
            # The codec reads every message itself: no message class is needed here, and
            # none is imported before the host sends something not read by hand.
            async with channel.request(
                EVENT_STREAM_PATH, Cardinality.STREAM_STREAM, bytes, object
            ) as stream:
                await stream.send_request()
                read_in_heap_sized_pieces(stream)
                await stream.send_message(first)
                writer = asyncio.create_task(self._write(stream, replace), name="workerkit-writer")
                reader = asyncio.create_task(
                    self._read(stream, on_message), name="workerkit-reader"
                )
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait(
                    {writer, reader, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopper in done:
                    reason = "stopped"
                    if not await self._finish(stream, writer, reader):
                        # Not even a reset went out (the host reads nothing): without this,
                        # leaving the call would wait for the host's trailers for ever.
                        channel.close()
                elif reader in done:
                    reason = reader.result()
                else:
                    reason = f"writer failed: {writer.exception()!r}"
                self._closing = True
                for task in (writer, reader, stopper):
                    task.cancel()
                await asyncio.gather(writer, reader, stopper, return_exceptions=True)
                return reason
        except (TimeoutError, OSError) as exc:
            return f"cannot reach the host at {self.args.host}:{self.args.port}: {exc}"
        except Exception as exc:
            return f"stream broke: {exc!r}"
        finally:
            self._closing = True
            channel.close()

    def _serialise(self, outgoing: Outgoing, replace: Replace) -> bytes | None:
        limit = self.args.max_message_length
        if isinstance(outgoing, bytes):
            if len(outgoing) <= limit:
                return outgoing
            log.error(
                "dropped a message that could not be sent: %s",
                MessageTooLarge(len(outgoing), limit),
            )
            return None
        if isinstance(outgoing, LogEntry):
            return self._log_bytes(outgoing, limit)
        message = outgoing
        for _attempt in range(2):
            try:
                data = bytes(message)
            except Exception as exc:  # e.g. a str with lone surrogates from user code
                problem: Exception = ValueError(f"cannot serialise the message: {exc}")
            else:
                if len(data) <= limit:
                    return data
                problem = MessageTooLarge(len(data), limit)
            stand_in = replace(message, problem)
            if stand_in is None:
                return None
            message = stand_in
        log.error("dropped a message that could not be sent: %s", problem)
        return None

    @staticmethod
    def _log_bytes(entry: LogEntry, limit: int) -> bytes | None:
        """A log record, shortened when it is over the size limit; None (and an error on
        stderr) for a record that cannot be encoded at all."""
        try:
            data = rpc_log(entry)
            if len(data) <= limit:
                return data
            keep = max(limit // 2 - 1024, 0)  # bytes of the message; the rest has room
            message = entry.message.encode("utf-8", "backslashreplace")[:keep]
            shortened = LogEntry(
                message.decode("utf-8", "ignore") + " [truncated: over the message size limit]",
                category=entry.category,
                level=entry.level,
                log_category=entry.log_category,
                invocation_id=entry.invocation_id,
            )
            data = rpc_log(shortened)
            if len(data) <= limit:
                return data
            problem = f"{len(data)} bytes, over the limit even when shortened"
        except Exception as exc:  # e.g. a record whose logger name is not a str
            problem = f"cannot encode it: {exc!r}"
        # Not through `log`: a record about a record that cannot be sent could loop.
        sys.stderr.write(f"LanguageWorkerConsoleLogERROR: dropped a log record: {problem}\n")
        return None

    async def _finish(self, stream: Any, writer: asyncio.Task[None], reader: Any) -> bool:
        """Stopping: send what is queued, end our side, and let the host end the call, all
        by `finish_by`. A host (or a proxy) that never ends the call would keep the worker
        waiting for its trailers for ever: past the deadline the call is cancelled. False
        when even that could not be sent: the caller must drop the connection."""
        loop = self._loop

        def left(floor: float = 0.1) -> float:
            return max(self.finish_by - loop.time(), floor)

        if not writer.done():
            try:
                await asyncio.wait_for(self._queue.join(), min(left(), 2.0))
            except TimeoutError:
                log.warning("gave up flushing %d queued messages", self._queue.qsize())

        async def end() -> None:
            async with self._writing:  # after a reply being written directly
                await stream.end()

        try:
            await asyncio.wait_for(end(), min(left(), 1.0))
        except Exception:  # the host may already be gone
            pass
        if not reader.done():  # it returns when the host ends the stream
            await asyncio.wait({reader}, timeout=left())
        if not reader.done():
            log.warning("the host did not end the call in time; cancelling it")
            try:
                await asyncio.wait_for(stream.cancel(), 1.0)
            except Exception:  # the host reads nothing, not even a reset
                return False
        return True

    async def _read(self, stream: Any, on_message: Callable[[Incoming], None]) -> str:
        while True:
            try:
                message = await stream.recv_message()
            except (DecodeError, MessageTooLarge) as exc:
                log.error("ignored a message from the host: %s", exc)
                continue
            except Exception as exc:
                return f"stream broke: {exc!r}"
            if message is None:
                return "the host ended the stream"
            on_message(message)
            if not self.reading.is_set():
                await self.reading.wait()

    async def _write(self, stream: Any, replace: Replace) -> None:
        """Send what is queued, in order: each wake-up takes the messages already queued
        (up to `BATCH_BYTES` or `BATCH_MESSAGES`) and sends them in one HTTP/2 write. A
        `send_and_wait` caller is told once its message has been written."""
        queue = self._queue
        send_many = batch_sender(stream)
        if send_many is None:
            log.debug("this grpclib cannot send several messages at once; sending one by one")

            async def send_many(messages: list[bytes]) -> None:
                for data in messages:
                    await stream.send_message(data)
                messages.clear()

        room = room_now(stream)
        if room is not None:
            self._direct = (send_many, replace, room)
        writing = self._writing
        while True:
            item = await queue.get()
            taken = 1
            try:
                batch: list[bytes] = []
                told: list[asyncio.Future[None]] = []
                size = 0
                while True:
                    outgoing, sent = item
                    del item
                    data = self._serialise(outgoing, replace)
                    del outgoing  # let a large reply go as soon as it is serialised
                    if data is not None:
                        batch.append(data)
                        size += 5 + len(data)
                        del data
                    if sent is not None:
                        told.append(sent)
                    if size >= BATCH_BYTES or len(batch) >= BATCH_MESSAGES or queue.empty():
                        break
                    item = queue.get_nowait()
                    taken += 1
                if batch:
                    async with writing:
                        await send_many(batch)
                for sent in told:
                    if not sent.done():
                        sent.set_result(None)
                if self.dropped_logs and not queue.full():
                    count, self.dropped_logs = self.dropped_logs, 0
                    note = LogEntry(
                        f"dropped {count} log records: the send buffer was full",
                        category="workerkit",
                        level=WARNING,
                    )
                    async with writing:
                        await send_many([rpc_log(note)])
            finally:
                for _ in range(taken):
                    queue.task_done()
