"""Shared helpers: every scenario runs in a fresh event loop with an overall time limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google_pb2 import Pb2, compile_pb2

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
T = TypeVar("T")


def arun(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """Run `coro` to completion in a new loop; fail (not hang) after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def eventually(
    predicate: Callable[[], T], what: str | Callable[[], str], timeout: float = 60.0
) -> T:
    """Call `predicate` every 20 ms, outside any event loop, until it returns something true;
    return that. `timeout` only catches a hang: the failure says `what` never happened."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            told = what() if callable(what) else what
            raise AssertionError(f"not within {timeout:g} s (a hang?): {told}")
        time.sleep(0.02)
    return result


async def until(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll `predicate` until it is true; fail after `timeout` seconds (only there to catch a
    hang: no verdict may depend on how fast the machine is)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still false after {timeout} s: {predicate}")
        await asyncio.sleep(0.01)


async def running(connection: Any, invocation_id: str) -> None:
    """Wait until the invocation has logged, i.e. the worker is running it."""
    await until(lambda: connection.logs_for(invocation_id))


@pytest.fixture(scope="session")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> Pb2:
    """Google's protobuf classes for our proto/, compiled once per session."""
    return compile_pb2(tmp_path_factory)


async def open_stream_as(port: int, worker_id: str) -> list[Any]:
    """Play a local process that dials the host on `port` and sends StartStream naming
    `worker_id`, then ends its side; the messages the host sent before ending the call."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    from workerkit._generated import AzureFunctionsRpcMessages as pb
    from workerkit._runtime.transport import EVENT_STREAM_PATH, Codec

    message = pb.StreamingMessage
    channel = Channel("127.0.0.1", port, codec=Codec(4 * 1024 * 1024))
    received: list[Any] = []
    try:
        async with channel.request(
            EVENT_STREAM_PATH, Cardinality.STREAM_STREAM, message, message
        ) as stream:
            await stream.send_message(message(start_stream=pb.StartStream(worker_id=worker_id)))
            await stream.end()
            while (reply := await stream.recv_message()) is not None:
                received.append(reply)
    finally:
        channel.close()
    return received
