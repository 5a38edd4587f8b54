"""Shared-memory data transfer inside the worker (workerkit/_runtime/sharedmem.py): when the
capability is reported, which outputs go to maps, FunctionDataCache, and that no map of the
worker's outlives an invocation whose response never reaches the host, or the session.

An in-process worker served over a real socket to `TestHost`; map files in a temporary
FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES, read back with `struct`, not workerkit._sharedmap.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import arun, until
from hypothesis import given, settings
from hypothesis import strategies as st

import workerkit
from workerkit import FunctionInfo, Invocation, InvocationResult
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime import sharedmem
from workerkit.testing import TestHost, binding

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="map files are a Linux feature")

MIB = 1024 * 1024
SUCCESS, FAILURE, CANCELLED = (pb.StatusResultStatus(n) for n in (1, 0, 2))
SETTING = "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED"
DIRECTORIES = "FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES"


class Outputs(workerkit.Worker):
    """Each function returns named outputs chosen by its name."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.sleeping = asyncio.Event()

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> Any:
        name = invocation.function.name
        big = b"b" * (2 * MIB)
        if name == "big":
            return InvocationResult(outputs={"out": big, "small": b"s" * (MIB - 1)})
        if name == "text":  # 600 Ki characters: 1.2 MB as UTF-16, the host's measure
            return InvocationResult(outputs={"out": "é" * (600 * 1024)})
        if name == "then-fails":  # the first output is written to a map, the second fails
            return InvocationResult(outputs={"out": big, "small": {1, 2}})
        if name == "swallows-cancel":
            try:
                self.sleeping.set()
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                await self.release.wait()  # answered Cancelled meanwhile
            return InvocationResult(outputs={"out": big})
        raise AssertionError(name)


BINDINGS = {
    "trigger": binding("queueTrigger"),
    "out": binding("blob", "out", "binary"),
    "small": binding("blob", "out", "binary"),
}


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "AzureFunctions"
    monkeypatch.setenv(DIRECTORIES, str(tmp_path))
    monkeypatch.setenv(SETTING, "1")
    saved = dict(os.environ)
    yield folder
    os.environ.clear()  # an environment reload replaces os.environ in this process
    os.environ.update(saved)


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def read_map(folder: Path, reference: pb.RpcSharedMemory) -> bytes:
    raw = (folder / reference.name).read_bytes()
    flag, length = struct.unpack_from("<Bq", raw)
    assert flag == 1 and len(raw) == 9 + length
    return raw[9 + reference.offset : 9 + reference.offset + reference.count]


async def serve(host: TestHost, worker: Outputs, capabilities: dict[str, str] | None = None):
    started = await host.start_worker(worker)
    conn = started.connection
    init = await conn.init(capabilities=capabilities)
    for name in ("big", "text", "then-fails", "swallows-cancel"):
        await conn.load(name, name, bindings=BINDINGS)
    return started, conn, init


def test_outputs_go_to_maps_and_close_deletes_them(shm: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            _, conn, init = await serve(host, Outputs())
            assert init.capabilities["SharedMemoryDataTransfer"] == "true"
            reply = await conn.invoke("big", {"trigger": "go"})
            assert reply.result.status == SUCCESS, reply.result
            outputs = {b.name: b for b in reply.output_data}
            out = outputs["out"].rpc_shared_memory
            assert out is not None and out.type == pb.RpcDataType.bytes
            assert (out.offset, out.count) == (0, 2 * MIB)
            assert read_map(shm, out) == b"b" * (2 * MIB)
            # under 1 MiB: inline
            assert outputs["small"].data == pb.TypedData(bytes=b"s" * (MIB - 1))

            reply = await conn.invoke("text", {"trigger": "go"})
            text = {b.name: b for b in reply.output_data}["out"].rpc_shared_memory
            assert text is not None and text.type == pb.RpcDataType.string
            assert read_map(shm, text).decode() == "é" * (600 * 1024)

            assert files(shm) == {out.name, text.name}
            closed = await conn.close_shared_memory([out.name, text.name, "other"])
            assert closed.close_map_results == {out.name: True, text.name: True, "other": False}
            assert files(shm) == set()

    arun(scenario())


def test_function_data_cache_keeps_the_files_for_the_host(shm: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            started, conn, _ = await serve(host, Outputs(), {"FunctionDataCache": "true"})
            reply = await conn.invoke("big", {"trigger": "go"})
            out = {b.name: b for b in reply.output_data}["out"].rpc_shared_memory
            assert out is not None
            closed = await conn.close_shared_memory([out.name])
            assert closed.close_map_results == {out.name: True}
            assert files(shm) == {out.name}  # the host's cache owns it now
            await conn.terminate(1.0)
            await started.wait()
            assert files(shm) == {out.name}  # not the worker's to delete, even at the end
            assert read_map(shm, out) == b"b" * (2 * MIB)

    arun(scenario())


def test_maps_never_closed_are_deleted_when_the_worker_stops(shm: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            started, conn, _ = await serve(host, Outputs())
            for _ in range(3):
                reply = await conn.invoke("big", {"trigger": "go"})
                assert reply.result.status == SUCCESS
            assert len(files(shm)) == 3
            await conn.terminate(1.0)
            await started.wait()
            assert files(shm) == set()

    arun(scenario())


def test_maps_are_deleted_when_the_stream_is_lost(shm: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            started, conn, _ = await serve(host, Outputs())
            reply = await conn.invoke("big", {"trigger": "go"})
            assert reply.result.status == SUCCESS
            assert len(files(shm)) == 1
            conn.close()  # the host ends the stream without closing anything
            await started.wait()
            assert files(shm) == set()

    arun(scenario())


def test_a_response_that_fails_or_is_dropped_leaves_no_map(shm: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker = Outputs()
            _, conn, _ = await serve(host, worker)
            reply = await conn.invoke("then-fails", {"trigger": "go"})
            assert reply.result.status == FAILURE
            assert "cannot send the result" in reply.result.exception.message
            assert files(shm) == set()

            # answered Cancelled while it runs; what it returns later is dropped, maps too
            pending = await conn.start_invocation("swallows-cancel", {"trigger": "go"})
            await until(worker.sleeping.is_set)
            await conn.cancel(pending.invocation_id)
            assert (await pending.result(10)).result.status == CANCELLED
            worker.release.set()
            reply = await conn.invoke("big", {"trigger": "after"})  # still serving
            assert reply.result.status == SUCCESS
            kept = {b.name: b for b in reply.output_data}["out"].rpc_shared_memory
            await until(lambda: files(shm) == {kept.name})

    arun(scenario())


def test_the_capability_needs_the_setting_and_then_outputs_stay_inline(
    shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SETTING)

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn, init = await serve(host, Outputs())
            assert "SharedMemoryDataTransfer" not in init.capabilities
            reply = await conn.invoke("big", {"trigger": "go"})
            out = {b.name: b for b in reply.output_data}["out"]
            assert out.rpc_shared_memory is None
            assert out.data == pb.TypedData(bytes=b"b" * (2 * MIB))
            assert files(shm) == set()
            # an environment reload (specialization) that sets it turns it on
            environment = {**os.environ, SETTING: "True"}
            reloaded = await conn.reload_environment(environment, str(shm.parent))
            assert reloaded.capabilities["SharedMemoryDataTransfer"] == "true"
            reply = await conn.invoke("big", {"trigger": "go"})
            out = {b.name: b for b in reply.output_data}["out"]
            assert out.rpc_shared_memory is not None
            await conn.close_shared_memory([out.rpc_shared_memory.name])
            assert files(shm) == set()

    arun(scenario())


# -- the setting, as the host parses it (GrpcWorkerChannel.ResolveSharedTransferEnablementState) --
@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("true", True), ("True", True), ("TRUE", True), (" true ", True), ("1", True),
        ("01", True), ("+1", True), (" 1\t", True), ("false", False), ("0", False),
        ("2", False), ("-1", False), ("yes", False), ("", False), ("t", False),
        ("1.0", False), ("0_1", False), ("\u0661", False),
    ],
)  # fmt: skip
def test_setting_parsed_as_dotnet_bool_or_int_one(value: str, on: bool) -> None:
    assert sharedmem.enabled({SETTING: value}) is on
    assert sharedmem.capabilities({SETTING: value}) == (
        {sharedmem.CAPABILITY: "true"} if on else {}
    )
    assert sharedmem.enabled({}) is False


def test_rpc_data_type_constants_match_the_proto() -> None:
    assert pb.RpcDataType.bytes == sharedmem.RPC_DATA_TYPE_BYTES
    assert pb.RpcDataType.string == sharedmem.RPC_DATA_TYPE_STRING


INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=40), offset=INT64, count=INT64, kind=st.integers(0, 11))
def test_references_are_read_as_betterproto2_writes_them(
    name: str, offset: int, count: int, kind: int
) -> None:
    message = pb.RpcSharedMemory(name=name, offset=offset, count=count, type=pb.RpcDataType(kind))
    assert sharedmem.read_reference(memoryview(bytes(message))) == sharedmem.Reference(
        name, offset, count, kind
    )


@settings(max_examples=200, deadline=None)
@given(
    name=st.uuids().map(str) | st.text(min_size=1, max_size=40),
    count=st.integers(0, 2**31 - 1),
    kind=st.sampled_from([1, 3]),
)
def test_references_are_written_as_betterproto2_reads_them(
    name: str, count: int, kind: int
) -> None:
    encoded = sharedmem.rpc_shared_memory(name, count, kind)
    expected = pb.RpcSharedMemory(name=name, offset=0, count=count, type=pb.RpcDataType(kind))
    assert encoded == bytes(expected)


class Declines(Outputs):
    def on_init(self, request: workerkit.InitRequest) -> workerkit.InitResult:
        return workerkit.InitResult(capabilities={"SharedMemoryDataTransfer": ""})


def test_on_init_can_decline_the_capability(shm: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            _, conn, init = await serve(host, Declines())
            assert not init.capabilities.get("SharedMemoryDataTransfer")
            reply = await conn.invoke("big", {"trigger": "go"})
            out = {b.name: b for b in reply.output_data}["out"]
            assert out.rpc_shared_memory is None and out.data is not None
            assert files(shm) == set()

    arun(scenario())
