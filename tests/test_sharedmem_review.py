"""Shared-memory data transfer, reviewed: map names from the other side, maps written by a
hook after its invocation was answered, the host's measure of text, the emulator's inputs
when an invocation is cancelled while they are written, and maps cut short.

Real files in temporary folders, real workers over real sockets (`TestHost`); map files the
host's way are written with `struct`, as the host's SharedMemoryMap.cs lays them out.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import arun, until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workerkit
from workerkit import FunctionInfo, Invocation, InvocationResult, WorkerOptions
from workerkit import _sharedmap as sm
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime import sharedmem
from workerkit.emulator._console import Console
from workerkit.emulator._sharedmem import HostSharedMemory
from workerkit.testing import TestHost, binding

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="map files are a Linux feature")

MIB = 1024 * 1024
SUCCESS, FAILURE, CANCELLED = (pb.StatusResultStatus(n) for n in (1, 0, 2))
SETTING = "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED"
DIRECTORIES = "FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES"


def host_map(path: Path, content: bytes) -> None:
    """A map file as the host writes one (flag, little-endian int64 length, content)."""
    path.write_bytes(struct.pack("<Bq", 1, len(content)) + content)


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


# -- names ------------------------------------------------------------------------------------
NAMES = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["..", ".", "../outside", "../../outside", "/outside", "a/../../outside"]),
    st.lists(st.sampled_from(["..", "/", "outside", ".", "%2F", "\0"]), max_size=12).map("".join),
    st.integers(200, 400).map(lambda n: "x" * n),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=NAMES)
def test_a_map_name_never_reaches_a_file_outside_the_folder(tmp_path: Path, name: str) -> None:
    """Whatever name the other side sends (``..``, ``/``, NUL, 300 characters), reading,
    deleting and creating stay inside the folder or fail with a `SharedMapError`, never an
    `OSError` (which the worker reported as an internal error, and which escaped the
    emulator's invocation)."""
    folder = tmp_path / "AzureFunctions"
    folder.mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    host_map(outside, b"secret")
    for read in (
        lambda: sm.read_bytes(name, 0, 6, [folder]),
        lambda: sm.open_map(name, [folder]).close(),
    ):
        with pytest.raises(sm.SharedMapError):
            read()
    try:
        assert sm.delete_map(name, [folder]) is False
    except sm.SharedMapError:
        pass
    try:
        created = sm.write_map(b"mine", [folder], name=name)
    except sm.SharedMapError:
        pass
    else:
        assert created.path.parent == folder
        assert sm.read_bytes(name, 0, 4, [folder]) == b"mine"
        assert created.delete()
    assert outside.read_bytes()[9:] == b"secret"
    assert files(folder) == set()
    assert files(tmp_path) == {"AzureFunctions", "outside"}


def test_a_symbolic_link_in_the_folder_is_no_map(tmp_path: Path) -> None:
    folder = tmp_path / "AzureFunctions"
    folder.mkdir()
    outside = tmp_path / "outside"
    host_map(outside, b"secret")
    name = str(uuid.uuid4())
    (folder / name).symlink_to(outside)
    with pytest.raises(sm.MapNotFoundError):
        sm.read_bytes(name, 0, 6, [folder])
    with pytest.raises(sm.MapNotFoundError):
        sm.open_map(name, [folder])
    assert sm.delete_map(name, [folder]) is False
    assert outside.read_bytes()[9:] == b"secret"


def test_a_map_cut_short_is_an_error_never_other_bytes(tmp_path: Path) -> None:
    """The content ends before the count the header and reference promise (the file was cut
    short after its header was checked): an error naming where it ended."""
    folder = tmp_path / "AzureFunctions"
    folder.mkdir()
    path = folder / "cut"
    host_map(path, b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sm._pread_exact("cut", fd, 10, 9) == b"0123456789"
        os.truncate(path, 9 + 4)
        with pytest.raises(sm.MapFormatError, match="ended after 4 bytes"):
            sm._pread_exact("cut", fd, 10, 9)
    finally:
        os.close(fd)


# -- the worker -------------------------------------------------------------------------------
class Late(workerkit.Worker):
    """``late``: a plain def hook that returns a 2 MiB output after it was answered Cancelled;
    ``text``/``bytes``: the output its trigger input names; ``echo``: its input back."""

    def __init__(self) -> None:
        super().__init__(options=WorkerOptions(threads=1))  # one thread: calls run in order
        self.waiting = threading.Event()
        self.release = threading.Event()

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    def on_invocation(self, invocation: Invocation) -> Any:
        name = invocation.function.name
        if name == "late":
            self.waiting.set()
            assert invocation.wait_cancelled(30)
            assert self.release.wait(30)
            return InvocationResult(outputs={"out": b"L" * (2 * MIB)})
        if name == "output":
            return InvocationResult(outputs={"out": OUTPUTS[invocation.inputs["trigger"]]})
        if name == "echo":
            return InvocationResult(outputs={"out": invocation.inputs["trigger"]})
        raise AssertionError(name)


OUTPUTS: dict[str, str | bytes] = {
    # the host's measure of text: UTF-16 code units times two, at least 1 MiB
    "ascii at 1 MiB as UTF-16": "a" * (512 * 1024),
    "ascii under it": "a" * (512 * 1024 - 1),
    "astral at 1 MiB as UTF-16": "\U0001f600" * (256 * 1024),
    "astral under it": "\U0001f600" * (256 * 1024 - 1),
    "bytes at 1 MiB": b"b" * MIB,
    "bytes under it": b"b" * (MIB - 1),
}
IN_MAPS = {"ascii at 1 MiB as UTF-16", "astral at 1 MiB as UTF-16", "bytes at 1 MiB"}
BINDINGS = {"trigger": binding("queueTrigger"), "out": binding("blob", "out", "binary")}


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(DIRECTORIES, str(tmp_path))
    monkeypatch.setenv(SETTING, "1")
    yield tmp_path / "AzureFunctions"


async def serve(host: TestHost, worker: Late) -> Any:
    started = await host.start_worker(worker)
    conn = started.connection
    await conn.init()
    for name in ("late", "output", "echo"):
        await conn.load(name, name, bindings=BINDINGS)
    return conn


def test_a_plain_def_hook_answered_cancelled_leaves_no_map(shm: Path) -> None:
    """A plain def hook runs on after its invocation was answered Cancelled; the map it
    writes for its output then must go at once (before: it stayed until the worker ended)."""

    async def scenario() -> None:
        async with TestHost() as host:
            worker = Late()
            conn = await serve(host, worker)
            pending = await conn.start_invocation("late", {"trigger": "go"})
            await until(worker.waiting.is_set)
            await conn.cancel(pending.invocation_id)
            assert (await pending.result(10)).result.status == CANCELLED
            worker.release.set()
            # one hook thread: this call runs after the late one has encoded its output
            reply = await conn.invoke("output", {"trigger": "bytes under it"})
            assert reply.result.status == SUCCESS
            assert files(shm) == set()

    arun(scenario())


def test_text_outputs_go_to_maps_by_the_host_measure(shm: Path) -> None:
    """Text is measured as the host measures a string (``str.Length * sizeof(char)``, so a
    character beyond U+FFFF counts twice), bytes by their length; at exactly 1 MiB both go
    through a map (``>=``, SharedMemoryManager.IsSupported)."""

    async def scenario() -> None:
        async with TestHost() as host:
            conn = await serve(host, Late())
            for what, value in OUTPUTS.items():
                reply = await conn.invoke("output", {"trigger": what})
                assert reply.result.status == SUCCESS, (what, reply.result)
                (out,) = reply.output_data
                reference = out.rpc_shared_memory
                assert (reference is not None) == (what in IN_MAPS), what
                if reference is None:
                    continue
                raw = (shm / reference.name).read_bytes()[9:]
                expected = value.encode() if isinstance(value, str) else value
                assert raw == expected and reference.count == len(expected), what
                kind = pb.RpcDataType.string if isinstance(value, str) else pb.RpcDataType.bytes
                assert reference.type == kind, what
                await conn.close_shared_memory([reference.name])
            assert files(shm) == set()

    arun(scenario())


@pytest.mark.parametrize(
    "name",
    ["x" * 300, "../outside", "a/b", ".."],
)
def test_an_input_map_name_that_is_no_file_name_fails_the_invocation_clearly(
    shm: Path, name: str
) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            conn = await serve(host, Late())
            shm.mkdir(exist_ok=True)  # as the host makes it
            host_map(shm.parent / "outside", b"secret")
            reference = pb.RpcSharedMemory(name=name, count=6, type=pb.RpcDataType.bytes)
            reply = await conn.invoke("echo", {"trigger": reference})
            assert reply.result.status == FAILURE
            message = reply.result.exception.message
            assert "cannot read input 'trigger'" in message, message
            assert "internal error" not in message, message
            # still serving
            reply = await conn.invoke("output", {"trigger": "bytes under it"})
            assert reply.result.status == SUCCESS

    arun(scenario())


def test_closing_a_map_the_worker_did_not_create_deletes_nothing(shm: Path) -> None:
    """The host's own input maps, names with ``..``: answered False, no file touched."""

    async def scenario() -> None:
        async with TestHost() as host:
            conn = await serve(host, Late())
            shm.mkdir(exist_ok=True)
            hosts = str(uuid.uuid4())
            host_map(shm / hosts, b"input")
            host_map(shm.parent / "outside", b"secret")
            names = [hosts, "../outside", "x" * 300, ""]
            reply = await conn.close_shared_memory(names)
            assert reply.close_map_results == dict.fromkeys(names, False)
            assert files(shm) == {hosts}
            assert (shm.parent / "outside").exists()

    arun(scenario())


def test_utf16_size_counts_code_units() -> None:
    for text in ["", "a", "é", "\U0001f600", "a\U0001f600é\U0010ffff", "\ud800"]:
        assert sharedmem.utf16_size(text) == len(text.encode("utf-16-le", "surrogatepass"))


# -- the emulator -----------------------------------------------------------------------------
def emulator_maps(tmp_path: Path) -> HostSharedMemory:
    shared = HostSharedMemory({SETTING: "1", DIRECTORIES: str(tmp_path)}, Console(io.StringIO()))
    shared.start()
    return shared


def test_the_emulator_cancelled_while_writing_inputs_leaves_no_map(tmp_path: Path) -> None:
    """An invocation cancelled while its 3 MiB input is written (in a thread, which goes
    on): the map is deleted when the thread is done (before: it was left for good)."""

    async def scenario() -> None:
        shared = emulator_maps(tmp_path)
        inputs = [("blob", pb.TypedData(bytes=b"i" * (3 * MIB)))]
        bindings = [{"name": "blob", "type": "blobTrigger", "dataType": "binary"}]
        task = asyncio.ensure_future(shared.put_inputs("id", bindings, inputs))
        await asyncio.sleep(0)  # it is waiting for the writing thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.get_running_loop().shutdown_default_executor()  # the thread is done
        assert files(tmp_path / "AzureFunctions") == set()
        assert shared.owned() == []
        shared.sweep()

    arun(scenario())


def test_the_emulator_reads_an_output_with_a_bad_name_as_a_map_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        shared = emulator_maps(tmp_path)
        for name in ("x" * 300, "../outside", ""):
            response = pb.InvocationResponse(
                invocation_id="id",
                output_data=[
                    pb.ParameterBinding(
                        name="out",
                        rpc_shared_memory=pb.RpcSharedMemory(
                            name=name, count=3, type=pb.RpcDataType.bytes
                        ),
                    )
                ],
                result=pb.StatusResult(status=SUCCESS),
            )
            with pytest.raises(sm.SharedMapError):
                await shared.read_outputs(response)
        shared.sweep()

    arun(scenario())


def test_the_emulator_reads_the_output_range_it_is_given(tmp_path: Path) -> None:
    """Output maps are now read with pread, not mapped: the range read is exactly the
    reference's (offset and count within the content)."""

    async def scenario() -> None:
        shared = emulator_maps(tmp_path)
        folder = tmp_path / "AzureFunctions"
        name = str(uuid.uuid4())
        content = os.urandom(2 * MIB)
        host_map(folder / name, content)
        reference = pb.RpcSharedMemory(name=name, offset=5, count=MIB, type=pb.RpcDataType.bytes)
        response = pb.InvocationResponse(
            invocation_id="id",
            output_data=[pb.ParameterBinding(name="out", rpc_shared_memory=reference)],
            result=pb.StatusResult(status=SUCCESS),
        )
        read = await shared.read_outputs(response)
        assert read.output_data[0].data == pb.TypedData(bytes=content[5 : 5 + MIB])
        (folder / name).unlink()
        shared.sweep()

    arun(scenario())
