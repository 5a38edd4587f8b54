"""The writer's batched sends (`workerkit._runtime.transport`): several queued messages in one
HTTP/2 write, against a host written at the HTTP/2 level with h2 over a real socket on
127.0.0.1, so the tests see every DATA frame, choose the flow-control window and decide when
the host reads. h2 on the host's side refuses a frame over the window or over the maximum
frame size (FlowControlError, FrameTooLargeError): a violation ends the test's connection and
is recorded.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.protocol
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from conftest import arun, until
from grpclib.client import Channel
from grpclib.const import Cardinality
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime.h2write import READ_SIZE, batch_sender, read_in_heap_sized_pieces, room_now
from workerkit._runtime.logs import INFORMATION, LogEntry
from workerkit._runtime.transport import (
    BATCH_BYTES,
    EVENT_STREAM_PATH,
    Codec,
    Transport,
)
from workerkit.cli import HostArgs

MAX_FRAME = 16_384  # HTTP/2's smallest maximum frame size, the host's setting here


class H2Host(asyncio.Protocol):
    """One connection of a host at the HTTP/2 level: answers the call's headers, reads the
    gRPC messages of the worker's stream one at a time (while `reading` is set), and gives
    flow-control credit back only for the messages it has read."""

    def __init__(self, window: int, pause: float = 0.0) -> None:
        self.window = window
        self.pause = pause  # seconds the host takes per message read
        self.frames: list[int] = []  # DATA frame sizes, in arrival order
        self.messages: list[bytes] = []  # gRPC messages read, in order
        self.errors: list[BaseException] = []
        self.buffer = bytearray()
        self.reading = asyncio.Event()
        self.reading.set()
        self.arrived = asyncio.Event()
        self.stream_id = 0
        self.reader: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            },
        )
        self.conn.initiate_connection()
        self.flush()
        self.reader = asyncio.get_running_loop().create_task(self.read_messages())

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # a window or frame size violation
            self.errors.append(exc)
            self.flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.stream_id = event.stream_id
                headers = [(b":status", b"200"), (b"content-type", b"application/grpc+proto")]
                self.conn.send_headers(event.stream_id, headers)
            elif isinstance(event, h2.events.DataReceived):
                self.frames.append(event.flow_controlled_length)
                self.buffer += event.data
                self.arrived.set()
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == self.stream_id:
                trailers = [(b"grpc-status", b"0")]
                self.conn.send_headers(event.stream_id, trailers, end_stream=True)
            elif isinstance(event, h2.events.StreamReset):
                self.stream_id = 0
        self.flush()

    async def read_messages(self) -> None:
        """Read the stream as a gRPC server does: prefix, then message, giving the window
        back for the bytes taken from the buffer (so a message bigger than the window
        still gets through); `pause` after each whole message."""
        message, need, prefix = bytearray(), 5, True
        while True:
            await self.reading.wait()
            if need:
                if not self.buffer:
                    self.arrived.clear()
                    await self.arrived.wait()
                    continue
                take = min(need, len(self.buffer))
                message += self.buffer[:take]
                del self.buffer[:take]
                need -= take
                if not self.transport.is_closing():
                    self.conn.acknowledge_received_data(take, self.stream_id)
                    self.flush()
                if need:
                    continue
            if prefix:
                assert message[0] == 0, "a compressed flag"
                need, prefix = int.from_bytes(message[1:5], "big"), False
                message = bytearray()
                if need:
                    continue
            self.messages.append(bytes(message))
            message, need, prefix = bytearray(), 5, True
            if self.pause:
                await asyncio.sleep(self.pause)

    def received(self) -> int:
        return sum(self.frames)


async def serve(window: int, pause: float = 0.0) -> tuple[asyncio.Server, list[H2Host]]:
    hosts: list[H2Host] = []

    def accept() -> H2Host:
        hosts.append(H2Host(window, pause))
        return hosts[-1]

    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    return server, hosts


async def with_transport(
    window: int,
    body: Callable[[Transport, H2Host], Awaitable[None]],
    *,
    pause: float = 0.0,
    queue_size: int = 1024,
) -> H2Host:
    """Run a real `Transport` against an `H2Host`; `body` sends, then the call is ended."""
    server, hosts = await serve(window, pause)
    port = server.sockets[0].getsockname()[1]
    transport = Transport(HostArgs("127.0.0.1", port, "w", "r"), queue_size=queue_size)
    stop = asyncio.Event()
    transport.finish_by = asyncio.get_running_loop().time() + 30
    run = asyncio.create_task(transport.run(b"first", lambda message: None, no_stand_in, stop))
    try:
        await until(lambda: hosts and hosts[0].messages, 10)
        await body(transport, hosts[0])
    finally:
        stop.set()
        reason = await run
        for host in hosts:
            if host.reader is not None:
                host.reader.cancel()
        server.close()
    assert reason == "stopped", reason
    assert hosts[0].messages[0] == b"first"
    assert not hosts[0].errors, hosts[0].errors
    assert max(hosts[0].frames) <= MAX_FRAME
    return hosts[0]


def no_stand_in(message: Any, problem: Exception) -> None:
    raise AssertionError(f"nothing here needs a stand-in: {problem}")


def log_text(data: bytes) -> str:
    return pb.StreamingMessage.parse(data).rpc_log.message


def entry(text: str) -> LogEntry:
    return LogEntry(text, category="test", level=INFORMATION, invocation_id="i")


# -- grpclib's parts --------------------------------------------------------------------------


def test_grpclib_still_has_the_parts_batched_writes_use() -> None:
    """If grpclib moves `Stream._stream.send_data` or `Stream._wrapper`, the writer falls
    back to one message per write: this test fails instead of the worker getting slower."""
    parameters = inspect.signature(grpclib.protocol.Stream.send_data).parameters
    assert list(parameters)[:3] == ["self", "data", "end_stream"]

    async def check(stream: Any, host: H2Host) -> None:
        send_many = batch_sender(stream)
        assert send_many is not None, "grpclib changed: batched writes are off"
        room = room_now(stream)
        assert room is not None, "grpclib changed: replies are never written directly"
        assert room(100) and not room(10**9)
        await send_many([b"one", b"", b"three"])
        await until(lambda: len(host.messages) == 3, 10)
        assert host.messages == [b"one", b"", b"three"]
        assert host.frames == [5 + 3 + 5 + 0 + 5 + 5]  # one DATA frame

    arun(on_a_raw_stream(check), timeout=30)


async def on_a_raw_stream(check: Callable[[Any, H2Host], Awaitable[None]]) -> None:
    """`check` a grpclib client stream opened on the test's host, then end the call."""
    server, hosts = await serve(65_535)
    port = server.sockets[0].getsockname()[1]
    channel = Channel("127.0.0.1", port, codec=Codec(1 << 20))
    try:
        async with channel.request(
            EVENT_STREAM_PATH, Cardinality.STREAM_STREAM, bytes, object
        ) as stream:
            await stream.send_request()
            await check(stream, hosts[0])
            await stream.end()
            await stream.recv_initial_metadata()
            await stream.recv_trailing_metadata()
    finally:
        channel.close()
        hosts[0].reader and hosts[0].reader.cancel()
        server.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_connection_is_read_in_pieces_below_the_mmap_threshold(loop: str) -> None:
    """asyncio's socket transport reads 256 KiB at a time unless told otherwise (each read of
    a small message then maps and unmaps fresh pages): the worker tells it READ_SIZE, through
    the grpclib internals this finds. uvloop's transport reads into its own buffer: left as
    it is. If grpclib moves its transport, this fails instead of the worker getting slower."""
    assert READ_SIZE < 128 * 1024  # glibc's default mmap threshold

    async def check(stream: Any, host: H2Host) -> None:
        transport = stream._stream.connection._transport
        if loop == "asyncio":
            assert transport.max_size == 256 * 1024  # asyncio's, before
            assert read_in_heap_sized_pieces(stream)
            assert transport.max_size == READ_SIZE
        else:
            assert not hasattr(transport, "max_size")
            assert not read_in_heap_sized_pieces(stream)
        await stream.send_message(b"after")  # the connection works on
        await until(lambda: host.messages == [b"after"], 10)

    if loop == "asyncio":
        arun(on_a_raw_stream(check), timeout=30)
    else:
        uvloop = pytest.importorskip("uvloop")  # workerkit[speed], in the dev extras
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(asyncio.wait_for(on_a_raw_stream(check), 30))


def test_the_worker_transport_reads_its_connection_in_pieces() -> None:
    """`Transport.run` itself applies READ_SIZE once the call is open: the worker's end of the
    connection (found as the socket whose address the host sees as its peer) reads at most
    READ_SIZE per `recv`, and the call works on."""

    async def body(transport: Transport, host: H2Host) -> None:
        peer = host.transport.get_extra_info("peername")
        ours = [
            candidate
            for candidate in gc.get_objects()
            if isinstance(candidate, asyncio.Transport)
            and hasattr(candidate, "max_size")
            and not candidate.is_closing()
            and candidate.get_extra_info("sockname") == peer
        ]
        assert len(ours) == 1, ours
        assert ours[0].max_size == READ_SIZE
        await transport.send(b"after")
        await until(lambda: host.messages[-1:] == [b"after"], 10)

    host = arun(with_transport(65_535, body), timeout=60)
    assert host.messages == [b"first", b"after"]


# -- order, integrity, fewer writes --------------------------------------------------------------


def test_a_burst_of_logs_and_replies_arrives_whole_in_order_in_fewer_frames() -> None:
    """Logs offered before each reply arrive before it, every message intact, and a burst
    queued at once shares DATA frames (the host reads one message at a time)."""
    count = 200

    async def body(transport: Transport, host: H2Host) -> None:
        waits = []
        for i in range(count):
            for j in range(3):
                transport.offer_log(entry(f"{i}.{j}"))
            reply = b"reply %d " % i + bytes(range(256)) * (i % 5)
            if i % 2:
                waits.append(asyncio.create_task(transport.send_and_wait(reply)))
                await asyncio.sleep(0)  # the task queues its reply, then waits
            else:
                await transport.send(reply)
        await asyncio.gather(*waits)
        await until(lambda: len(host.messages) == 1 + 4 * count, 20)

    host = arun(with_transport(65_535, body), timeout=60)
    expected: list[str | bytes] = []
    for i in range(count):
        expected += [f"{i}.{j}" for j in range(3)]
        expected.append(b"reply %d " % i + bytes(range(256)) * (i % 5))
    got = [m if m.startswith(b"reply") else log_text(m) for m in host.messages[1:]]
    assert got == expected
    assert len(host.frames) < len(host.messages) / 2  # batched: not one frame per message


def test_a_message_bigger_than_the_window_waits_for_the_host_and_arrives_intact() -> None:
    """send_and_wait returns only once the whole message is written, which needs the host to
    read and give the window back: a 200 kB reply through a 1,000-byte window."""
    window = 1000
    big = bytes(range(256)) * 800

    async def body(transport: Transport, host: H2Host) -> None:
        host.reading.clear()
        transport.offer_log(entry("before"))
        sent = asyncio.create_task(transport.send_and_wait(big))
        await until(lambda: host.received() >= window, 10)  # the window is used up
        assert host.received() == window  # (h2 would refuse a frame over it)
        assert not sent.done()
        host.reading.set()
        await sent
        await until(lambda: len(host.messages) == 3, 10)

    host = arun(with_transport(window, body), timeout=60)
    assert log_text(host.messages[1]) == "before"
    assert host.messages[2] == big
    assert max(host.frames) <= window


def test_a_slow_host_with_a_tiny_window_gets_a_burst_of_logs_and_replies() -> None:
    """A host that reads slowly through a 300-byte window: replies wait for room, logs over
    the queue's room are dropped and counted, and the count is reported; what arrives is
    in order and whole."""
    offered, replies = 400, 40

    async def body(transport: Transport, host: H2Host) -> None:
        async def reply(i: int) -> None:
            await transport.send_and_wait(b"reply %03d" % i + b"." * 500)

        tasks = []
        for i in range(replies):
            for j in range(offered // replies):
                transport.offer_log(entry(f"line {i}.{j} " + "x" * 100))
            tasks.append(asyncio.create_task(reply(i)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await until(lambda: accounted(host.messages) == offered, 30)

    def accounted(messages: list[bytes]) -> int:
        logs = [log_text(m) for m in messages[1:] if not m.startswith(b"reply")]
        lines = sum(text.startswith("line ") for text in logs)
        return lines + sum(int(t.split()[1]) for t in logs if t.startswith("dropped "))

    host = arun(with_transport(300, body, pause=0.0005, queue_size=16), timeout=90)
    got = host.messages[1:]
    sent_replies = [m for m in got if m.startswith(b"reply")]
    assert sent_replies == [b"reply %03d" % i + b"." * 500 for i in range(replies)]
    logs = [log_text(m) for m in got if not m.startswith(b"reply")]
    lines = [text for text in logs if text.startswith("line ")]
    notes = [text for text in logs if text.startswith("dropped ")]
    assert lines == sorted(lines, key=lambda t: tuple(map(int, t.split()[1].split("."))))
    assert len(lines) + sum(int(n.split()[1]) for n in notes) == offered
    assert notes, "some records were dropped and reported"
    assert max(host.frames) <= 300


# -- message size mixes -------------------------------------------------------------------------


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(
        st.one_of(
            st.integers(0, 64),
            st.integers(65, 20_000),
            st.sampled_from([BATCH_BYTES - 5, BATCH_BYTES, BATCH_BYTES + 1, 300_000]),
        ),
        min_size=1,
        max_size=60,
    ),
    window=st.sampled_from([100, 16_384, 65_535, 1 << 20]),
    how=st.lists(st.sampled_from(["send", "wait", "alone"]), min_size=60, max_size=60),
)
def test_any_mix_of_message_sizes_arrives_intact_and_in_order(
    sizes: list[int], window: int, how: list[str]
) -> None:
    """Queued (`send`), queued and waited for, or `alone` (written directly when nothing is
    queued or being written): whatever the sizes and the window, in order and whole."""
    messages = [
        i.to_bytes(2, "big") * (size // 2) + b"!" * (size % 2) for i, size in enumerate(sizes)
    ]

    async def body(transport: Transport, host: H2Host) -> None:
        tasks = []
        for message, way in zip(messages, how, strict=False):
            if way == "send":
                await transport.send(message)
            else:
                sent = transport.send_and_wait(message, alone=way == "alone")
                tasks.append(asyncio.create_task(sent))
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await until(lambda: len(host.messages) == 1 + len(messages), 30)

    host = arun(with_transport(window, body), timeout=120)
    assert host.messages[1:] == messages
    assert max(host.frames) <= min(window, MAX_FRAME)


# -- a reply written directly (alone) ---------------------------------------------------------


def test_a_reply_alone_is_written_at_once_but_never_ahead_of_what_is_being_written() -> None:
    """With nothing queued or being written, `send_and_wait(alone=True)` writes the reply
    itself (the writer's queue is never used); while the writer is stuck on a message the
    host has no window for, a reply alone waits its turn behind it, and so does a log
    offered after it."""
    window = 1000
    big = bytes(range(256)) * 40  # 10 kB: ten windows

    async def body(transport: Transport, host: H2Host) -> None:
        queue = transport._queue
        puts = 0
        put_nowait = queue.put_nowait

        def counting(item: Any) -> None:
            nonlocal puts
            puts += 1
            put_nowait(item)

        queue.put_nowait = counting  # type: ignore[method-assign]
        await transport.send_and_wait(b"direct", alone=True)
        await until(lambda: len(host.messages) == 2, 10)
        assert host.messages[1] == b"direct" and puts == 0  # not through the queue

        host.reading.clear()
        await transport.send(big)
        await until(lambda: host.received() >= window, 10)  # the writer waits for window
        reply = asyncio.create_task(transport.send_and_wait(b"reply", alone=True))
        await asyncio.sleep(0.05)
        transport.offer_log(entry("after"))
        assert not reply.done()
        host.reading.set()
        await reply
        await until(lambda: len(host.messages) == 5, 10)

    host = arun(with_transport(window, body), timeout=60)
    assert host.messages[1:4] == [b"direct", big, b"reply"]
    assert log_text(host.messages[4]) == "after"


@pytest.mark.parametrize("alone", [False, True])
def test_a_caller_cancelled_while_its_reply_waits_for_window_leaves_whole_messages(
    alone: bool,
) -> None:
    """A reply bigger than the host's window, its caller cancelled meanwhile: the host still
    reads whole messages only (the reply, then what follows). Alone, it is not written
    directly: a direct write must never wait, or a cancel could cut it short."""
    window = 1000
    big = bytes(range(256)) * 40  # 10 kB: ten windows

    async def body(transport: Transport, host: H2Host) -> None:
        host.reading.clear()  # no window given back: the write stops after 1000 bytes
        reply = asyncio.create_task(transport.send_and_wait(big, alone=alone))
        await until(lambda: host.received() >= window, 10)
        assert not reply.done()
        reply.cancel()
        await asyncio.gather(reply, return_exceptions=True)
        host.reading.set()
        await transport.send_and_wait(b"after", alone=True)
        await until(lambda: host.messages[-1:] == [b"after"], 10)

    host = arun(with_transport(window, body), timeout=60)
    assert host.messages[1:] in ([big, b"after"], [b"after"])
