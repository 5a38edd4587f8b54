"""Shared-memory data transfer, the worker's side, against an independent host.

The Python example (examples/python) runs as a real subprocess under `TestHost`, over a
real socket, with echo functions in a temporary app. The test plays the host: it writes its
input maps with `struct` exactly as the host's SharedMemoryMap/MemoryMappedFileAccessor do
(not with workerkit._sharedmap, so a layout mistake there cannot pass here), in a temporary
directory given as FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES, sends InvocationRequests whose
inputs are `rpc_shared_memory` references, reads the worker's output maps the same way and
closes them with CloseSharedMemoryResourcesRequest (GrpcWorkerChannel.cs,
``TryCloseSharedMemoryResources``)."""

from __future__ import annotations

import json
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import arun
from example_apps import FAILURE, SUCCESS, function_id, load_app, log_messages, start

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import TestHost

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="map files are a Linux feature")

MIB = 1024 * 1024
BYTES, STRING = pb.RpcDataType.bytes, pb.RpcDataType.string
STORAGE = {"connection": "AzureWebJobsStorage"}

FUNCTIONS: dict[str, tuple[list[dict[str, Any]], str]] = {
    # a blob in (bytes), the same bytes out to a blob
    "blobecho": (
        [
            {
                "type": "blobTrigger",
                "direction": "in",
                "name": "blob",
                "path": "in/{name}",
                "dataType": "binary",
                **STORAGE,
            },
            {
                "type": "blob",
                "direction": "out",
                "name": "copy",
                "path": "out/{name}",
                "dataType": "binary",
                **STORAGE,
            },
        ],
        "from pyfunc import Out\n\n"
        "def main(blob: bytes, copy: Out[bytes]) -> None:\n"
        "    assert type(blob) is bytes, type(blob)\n"
        "    copy.set(blob)\n",
    ),
    # a queue message (text) in, the same text out to a queue, and a small receipt
    "textecho": (
        [
            {
                "type": "queueTrigger",
                "direction": "in",
                "name": "msg",
                "queueName": "in",
                **STORAGE,
            },
            {"type": "queue", "direction": "out", "name": "copy", "queueName": "out", **STORAGE},
            {"type": "queue", "direction": "out", "name": "receipt", "queueName": "r", **STORAGE},
        ],
        "from pyfunc import Out\n\n"
        "def main(msg: str, copy: Out[str], receipt: Out[str]) -> None:\n"
        "    assert type(msg) is str, type(msg)\n"
        "    copy.set(msg)\n"
        "    receipt.set(f'{len(msg)} characters')\n",
    ),
    # a trigger and a second input that may be null; says what it got
    "nullin": (
        [
            {
                "type": "queueTrigger",
                "direction": "in",
                "name": "msg",
                "queueName": "in",
                **STORAGE,
            },
            {
                "type": "blob",
                "direction": "in",
                "name": "extra",
                "path": "in/x",
                "dataType": "binary",
                **STORAGE,
            },
        ],
        "import logging\n\n"
        "def main(msg: str, extra: bytes) -> None:\n"
        "    logging.info('extra=%r msg=%d', extra, len(msg))\n",
    ),
    # a large value returned: $return never goes through a map
    "bigreturn": (
        [
            {
                "type": "queueTrigger",
                "direction": "in",
                "name": "msg",
                "queueName": "in",
                **STORAGE,
            },
            {
                "type": "blob",
                "direction": "out",
                "name": "$return",
                "path": "o/x",
                "dataType": "binary",
                **STORAGE,
            },
        ],
        "def main(msg: str) -> bytes:\n    return msg.encode()\n",
    ),
}


def make_app(root: Path) -> Path:
    app = root / "app"
    app.mkdir()
    (app / "host.json").write_text(json.dumps({"version": "2.0"}))
    for name, (bindings, code) in FUNCTIONS.items():
        folder = app / name
        folder.mkdir()
        spec = {"scriptFile": "__init__.py", "bindings": bindings}
        (folder / "function.json").write_text(json.dumps(spec))
        (folder / "__init__.py").write_text(code)
    return app


# -- the host's side of the map files, written independently of workerkit._sharedmap ----------
class HostMaps:
    """`<base>/AzureFunctions/<guid>` files laid out as the host writes them: byte 0 = 1
    (initialized), bytes 1-8 the content length as little-endian int64, then the content."""

    def __init__(self, base: Path) -> None:
        self.folder = base / "AzureFunctions"
        self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, content: bytes, *, flag: int = 1, length: int | None = None) -> str:
        name = str(uuid.uuid4())
        header = struct.pack("<Bq", flag, len(content) if length is None else length)
        (self.folder / name).write_bytes(header + content)
        return name

    def ref(self, content: bytes, kind: pb.RpcDataType = BYTES, **how: Any) -> pb.RpcSharedMemory:
        return pb.RpcSharedMemory(name=self.put(content, **how), offset=0, count=len(content),
                                  type=kind)  # fmt: skip

    def read(self, reference: pb.RpcSharedMemory) -> bytes:
        raw = (self.folder / reference.name).read_bytes()
        assert raw[0] == 1
        (length,) = struct.unpack_from("<q", raw, 1)
        assert len(raw) == 9 + length
        return raw[9 + reference.offset : 9 + reference.offset + reference.count]

    def files(self) -> set[str]:
        return {p.name for p in self.folder.iterdir()}


def handles_of(pid: int, folder: Path) -> list[str]:
    """Open descriptors and memory mappings of process `pid` on files in `folder`."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(folder)):
            found.append(target)
    maps = Path(f"/proc/{pid}/maps").read_text()
    found += [line for line in maps.splitlines() if str(folder) in line]
    return found


def outputs_of(reply: pb.InvocationResponse) -> dict[str, pb.ParameterBinding]:
    return {binding.name: binding for binding in reply.output_data}


def test_inputs_and_outputs_through_maps_with_the_python_example(tmp_path: Path) -> None:
    base = tmp_path / "shm"
    maps = HostMaps(base)
    app = make_app(tmp_path)
    env = {
        "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED": "1",
        "FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES": str(base),
    }

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "python", app=app, env=env)
            pid = worker.process.pid
            loads = await load_app(conn, app)
            assert all(r.result.status == SUCCESS for r in loads.values()), loads

            # 3 MiB of bytes (every byte value) in through a map, out through the worker's
            blob = bytes(range(256)) * (3 * MIB // 256)
            given = maps.ref(blob)
            reply = await conn.invoke(function_id("blobecho"), {"blob": given})
            assert reply.result.status == SUCCESS, reply.result
            # every handle on the maps was closed before the response came
            assert handles_of(pid, maps.folder) == []
            out = outputs_of(reply)["copy"].rpc_shared_memory
            assert out is not None and out.type == BYTES and out.count == len(blob)
            assert out.name != given.name and out.name in maps.files()
            assert maps.read(out) == blob
            assert reply.return_value is None
            closed = await conn.close_shared_memory([out.name])
            assert closed.close_map_results == {out.name: True}
            assert maps.files() == {given.name}  # the worker never deletes the host's maps
            (maps.folder / given.name).unlink()  # the host deletes its own after the reply

            # 2 MiB of UTF-8 text with non-ASCII characters; a small output stays inline
            text = "Grüße aus Köln — 東京 ✓ " * (2 * MIB // 28)
            encoded = text.encode()
            assert len(encoded) >= 2 * MIB
            given = maps.ref(encoded, STRING)
            reply = await conn.invoke(function_id("textecho"), {"msg": given})
            assert reply.result.status == SUCCESS, reply.result
            outputs = outputs_of(reply)
            out = outputs["copy"].rpc_shared_memory
            assert out is not None and out.type == STRING and out.count == len(encoded)
            assert maps.read(out).decode() == text
            assert outputs["receipt"].data == pb.TypedData(string=f"{len(text)} characters")
            assert (await conn.close_shared_memory([out.name])).close_map_results == {
                out.name: True
            }
            assert maps.files() == {given.name}
            (maps.folder / given.name).unlink()

            # the empty reference is a null input
            empty = pb.RpcSharedMemory(name="", offset=0, count=0, type=pb.RpcDataType.unknown)
            reply = await conn.invoke(
                function_id("nullin"), {"msg": maps.ref(b"x" * MIB, STRING), "extra": empty}
            )
            assert reply.result.status == SUCCESS, reply.result
            assert log_messages(conn, reply.invocation_id) == [f"extra=None msg={MIB}"]
            for name in maps.files():
                (maps.folder / name).unlink()

            # a large $return value goes inline: the host reads maps only in output_data
            reply = await conn.invoke(function_id("bigreturn"), {"msg": "y" * (2 * MIB)})
            assert reply.result.status == SUCCESS, reply.result
            assert reply.return_value == pb.TypedData(bytes=b"y" * (2 * MIB))
            assert maps.files() == set()

            # a map the worker does not have is answered False
            assert (await conn.close_shared_memory(["nope"])).close_map_results == {"nope": False}

    arun(scenario(), timeout=120)
    assert HostMaps(base).files() == set()


# Malformed inputs: (what, how to build the reference from the test's HostMaps)
MALFORMED = {
    "missing map": lambda m: pb.RpcSharedMemory(name=str(uuid.uuid4()), count=5, type=BYTES),
    "flag not set": lambda m: m.ref(b"hello", flag=0),
    "length beyond the file": lambda m: m.ref(b"hello", length=500),
    "negative length": lambda m: m.ref(b"hello", length=-1),
    "count beyond the content": lambda m: pb.RpcSharedMemory(
        name=m.put(b"hello"), count=6, type=BYTES
    ),
    "offset beyond the content": lambda m: pb.RpcSharedMemory(
        name=m.put(b"hello"), offset=3, count=3, type=BYTES
    ),
    "negative offset": lambda m: pb.RpcSharedMemory(
        name=m.put(b"hello"), offset=-1, count=1, type=BYTES
    ),
    "bad UTF-8 in a string map": lambda m: m.ref(b"ok \xff\xfe bad", STRING),
    "a type other than bytes or string": lambda m: m.ref(b"{}", pb.RpcDataType.json),
    "a file shorter than the header": lambda m: pb.RpcSharedMemory(
        name=_short(m), count=0, type=BYTES
    ),
}
EXPECTED = {
    "missing map": "not found",
    "flag not set": "not initialized",
    "length beyond the file": "claims 500 content bytes",
    "negative length": "claims -1 content bytes",
    "count beyond the content": "outside",
    "offset beyond the content": "outside",
    "negative offset": "outside",
    "bad UTF-8 in a string map": "not valid UTF-8",
    "a type other than bytes or string": "is not bytes (3) or string (1)",
    "a file shorter than the header": "shorter than its 9-byte header",
}


def _short(maps: HostMaps) -> str:
    name = str(uuid.uuid4())
    (maps.folder / name).write_bytes(b"\x01\x00")
    return name


def test_malformed_maps_fail_the_invocation_and_the_worker_keeps_serving(
    tmp_path: Path,
) -> None:
    base = tmp_path / "shm"
    maps = HostMaps(base)
    app = make_app(tmp_path)
    env = {
        "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED": "true",
        "FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES": str(base),
    }

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "python", app=app, env=env)
            await load_app(conn, app)
            for what, build in MALFORMED.items():
                reference = build(maps)
                before = maps.files()
                reply = await conn.invoke(function_id("blobecho"), {"blob": reference})
                assert reply.result.status == FAILURE, what
                message = reply.result.exception.message
                assert "cannot read input 'blob'" in message, (what, message)
                assert EXPECTED[what] in message, (what, message)
                assert maps.files() == before  # the worker created and deleted nothing
                assert not reply.output_data
                assert handles_of(worker.process.pid, maps.folder) == [], what
            # still serving: a good call after all of them
            good = maps.ref(b"z" * (2 * MIB))
            reply = await conn.invoke(function_id("blobecho"), {"blob": good})
            assert reply.result.status == SUCCESS, reply.result
            out = outputs_of(reply)["copy"].rpc_shared_memory
            assert out is not None and maps.read(out) == b"z" * (2 * MIB)
            await conn.close_shared_memory([out.name])
            assert out.name not in maps.files()
            for name in maps.files():  # the host's own maps
                (maps.folder / name).unlink()

    arun(scenario(), timeout=120)
    assert maps.files() == set()
