"""Shared-memory data transfer, the host's side: large inputs through map files the emulator
creates, large outputs read from the worker's map files. The file layout and the map-file
I/O are `workerkit._sharedmap`'s; this module follows what the host does with them
(repository Azure/azure-functions-host):

- **When** (``ResolveSharedTransferEnablementState`` in
  src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs): the setting
  ``FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED`` parses as .NET's ``true`` (any
  case) or as the integer 1, and the worker reported ``SharedMemoryDataTransfer`` (non-empty).
  The setting is read from the host's environment, ``local.settings.json`` ``Values``
  included, as ``func start`` puts them there.
- **Which inputs** (``ToRpcInvocationRequest`` in
  src/WebJobs.Script.Grpc/Extensions/ScriptInvocationContextExtensions.cs,
  ``ToRpcSharedMemoryAsync`` in src/WebJobs.Script.Grpc/Extensions/
  RpcSharedMemoryDataExtensions.cs, ``IsSupported`` in src/WebJobs.Script/Workers/
  SharedMemoryDataTransfer/SharedMemoryManager.cs): a byte array or a string of at least
  1 MiB and at most 2 GiB - 1, a string's size counted as UTF-16 code units times two; the
  map holds the bytes, or the string as UTF-8. Its ``type`` follows the binding's data type
  (the trigger's and every input's default is ``string``): ``bytes`` for ``binary`` and
  ``stream``, ``string`` otherwise. A null input is an empty reference (no name, count 0).
  Anything else (HTTP requests, JSON, numbers, collections) goes inline, so an HTTP body,
  which sits inside the request's ``RpcHttp``, never goes through a map. A value no map can
  be written for goes inline too (the host logs an error and falls back).
- **Input maps** are deleted once the response is processed (``TryCloseSharedMemoryResources``
  in GrpcWorkerChannel.cs, after ``CreateScriptInvocationResult``), and also when the
  invocation ends without one: a worker that died, a send that failed. One that timed out
  keeps its maps until the worker answers or its stream ends, as the worker may still read
  them.
- **Outputs** (``GetBindingDataAsync`` in GrpcWorkerChannel.cs, ``ToObjectAsync`` in
  RpcSharedMemoryDataExtensions.cs): an ``output_data`` entry with ``rpc_shared_memory`` is
  read from the worker's map when the invocation succeeded (``bytes`` as bytes, ``string``
  as UTF-8 text; another type, or a map that cannot be read, fails the invocation). Then the
  emulator sends ``CloseSharedMemoryResourcesRequest`` with the names of every such map in
  the response, and the worker deletes them (this host never offers ``FunctionDataCache``).

Cleaning up. At start the host deletes and recreates ``<dir>/AzureFunctions``
(``GetValidDirectories`` in src/WebJobs.Script/Workers/SharedMemoryDataTransfer/
MemoryMappedFileAccessorUnix.cs). The emulator does not: several emulators (or a real host,
or test runs) may share ``/dev/shm/AzureFunctions`` on one machine, and deleting it would
pull maps from under their invocations. It creates the folder when missing and deletes only
what it created: its own input maps; the worker maps it asked to close and whose closing the
worker did not confirm, once that worker's stream has ended (they have no other owner left);
and, on stopping, the ``AzureFunctions`` folders it created, if they are empty. Stopping
(normally, on Ctrl-C or SIGTERM, or after an error) deletes every map still left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import betterproto2

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._sharedmap import (
    MAX_TRANSFER_BYTES,
    MIN_TRANSFER_BYTES,
    CreatedMap,
    SharedMapError,
    delete_map,
    directories,
    read_bytes,
    write_map,
)
from workerkit.testing import HostConnection, PendingInvocation

from ._console import Console
from ._validation import data_type_of

__all__ = ["CAPABILITY", "SETTING", "HostSharedMemory", "setting_enabled"]

SETTING: Final = "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED"
CAPABILITY: Final = "SharedMemoryDataTransfer"
#: How long a ``CloseSharedMemoryResourcesResponse`` is awaited (the host does not wait).
CLOSE_TIMEOUT: Final = 10.0
_INTEGER: Final = re.compile(r"\s*[+-]?[0-9]+\s*")

#: An input as `workerkit.testing.HostConnection.start_invocation` takes it.
InputValue = pb.TypedData | pb.RpcSharedMemory


def setting_enabled(value: str | None) -> bool:
    """Whether the setting's `value` turns the feature on: .NET's ``bool.TryParse`` gives
    true, or ``int.TryParse`` gives 1 (``ResolveSharedTransferEnablementState``)."""
    if value is None:
        return False
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return bool(_INTEGER.fullmatch(text)) and int(text) == 1


def _delete(created: CreatedMap) -> None:
    with contextlib.suppress(OSError, SharedMapError, BufferError):
        created.delete()


class _Batch:
    """The input maps of one invocation being written. The writing threads add to it; once
    abandoned (the invocation was cancelled while they wrote, or the emulator stops), a
    map added is deleted at once, so none outlives its thread whatever the event loop does."""

    def __init__(self) -> None:
        self.maps: list[CreatedMap] = []
        self._lock = threading.Lock()
        self._abandoned = False

    def add(self, created: CreatedMap) -> None:
        with self._lock:
            if not self._abandoned:
                self.maps.append(created)
                return
        _delete(created)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            maps, self.maps = self.maps, []
        for created in maps:
            _delete(created)


def _utf16_bytes(text: str) -> int:
    """The size the host gives a string: UTF-16 code units times two."""
    if text.isascii():
        return 2 * len(text)
    return len(text.encode("utf-16-le", "surrogatepass"))


class HostSharedMemory:
    """The maps of one emulator (module docstring).

    Args:
        environment: the host's environment (app settings merged in): the setting and
            ``FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES``.
        console: where to report what went through maps, and what could not.
    """

    def __init__(self, environment: Mapping[str, str], console: Console) -> None:
        self.setting = setting_enabled(environment.get(SETTING))
        self.folders: list[Path] = directories(environment)
        self.console = console
        self._inputs: dict[str, list[CreatedMap]] = {}  # by invocation id
        self._writing: set[_Batch] = set()  # inputs being written
        self._unconfirmed: set[str] = set()  # worker maps asked to close, not confirmed yet
        self._created_folders: list[Path] = []
        self._warned = False
        self._tasks: set[asyncio.Task[None]] = set()

    def enabled(self, capabilities: Mapping[str, str]) -> bool:
        """Whether a worker with `capabilities` gets large inputs through maps."""
        return self.setting and bool(capabilities.get(CAPABILITY))

    def start(self) -> None:
        """Create the ``AzureFunctions`` folders that are missing (when the setting is on),
        remembering which, to remove them again when they are left empty."""
        if not self.setting:
            return
        for folder in self.folders:
            if folder.is_dir():
                continue
            try:
                folder.mkdir()
            except OSError as exc:
                self.console.warning(f"Cannot create the shared memory folder {folder}: {exc}")
                continue
            self._created_folders.append(folder)

    # -- inputs ------------------------------------------------------------------------------
    async def put_inputs(
        self,
        invocation_id: str,
        bindings: Sequence[Mapping[str, object]],
        inputs: Sequence[tuple[str, pb.TypedData]],
    ) -> dict[str, InputValue]:
        """The invocation's inputs with the large ones written to maps (owned until
        `free_inputs`) and nulls as empty references. Maps are written off the event loop.

        Cancelled or failing part way, it deletes the maps it wrote (one being written in a
        thread as soon as that thread is done) before it propagates."""
        batch = _Batch()
        self._writing.add(batch)
        try:
            values = await self._put_inputs(batch, bindings, inputs)
        except BaseException:
            batch.abandon()
            raise
        finally:
            self._writing.discard(batch)
        if batch.maps:
            self._inputs.setdefault(invocation_id, []).extend(batch.maps)
        return values

    async def _put_inputs(
        self,
        batch: _Batch,
        bindings: Sequence[Mapping[str, object]],
        inputs: Sequence[tuple[str, pb.TypedData]],
    ) -> dict[str, InputValue]:
        types = {str(b.get("name", "")).lower(): data_type_of(b) for b in bindings}
        values: dict[str, InputValue] = {}
        for name, data in inputs:
            kind, _ = betterproto2.which_one_of(data, "data")
            if not kind:
                values[name] = pb.RpcSharedMemory()  # null (``new RpcSharedMemory()``)
                continue
            if kind == "bytes":
                size = len(data.bytes or b"")
            elif kind == "string":
                size = _utf16_bytes(data.string or "")
            else:
                values[name] = data
                continue
            if not MIN_TRANSFER_BYTES <= size <= MAX_TRANSFER_BYTES:
                values[name] = data
                continue
            as_bytes = types.get(name.lower(), "undefined") in ("binary", "stream")
            try:
                created = await asyncio.to_thread(self._write, data, batch)
            except UnicodeEncodeError:  # a lone surrogate: not UTF-8, left to the inline path
                values[name] = data
                continue
            except SharedMapError as exc:
                if not self._warned:
                    self._warned = True
                    self.console.warning(
                        f"Cannot write input {name!r} to shared memory ({exc}); it is sent"
                        " inline. (Shown once.)"
                    )
                values[name] = data
                continue
            values[name] = pb.RpcSharedMemory(
                name=created.name,
                offset=0,
                count=created.length,
                type=pb.RpcDataType.bytes if as_bytes else pb.RpcDataType.string,
            )
            self.console.info(
                f"  input {name!r} sent through shared memory: {created.length} bytes"
                f" (map {created.name})"
            )
        return values

    def _write(self, data: pb.TypedData, batch: _Batch) -> CreatedMap:
        content = data.bytes if data.bytes is not None else (data.string or "").encode()
        created = write_map(content, self.folders)
        batch.add(created)  # here, in the thread: a cancel cannot come between
        return created

    def free_inputs(self, invocation_id: str) -> None:
        """Delete the invocation's input maps; never raises."""
        for created in self._inputs.pop(invocation_id, []):
            _delete(created)

    def free_when_answered(
        self,
        invocation_id: str,
        sending: asyncio.Future[PendingInvocation],
        connection: HostConnection,
    ) -> None:
        """For an invocation given up on (timed out): free its inputs once the worker
        answers it or its stream ends, and close the output maps of a late answer."""

        def answered(future: asyncio.Future[pb.InvocationResponse]) -> None:
            self.free_inputs(invocation_id)
            if not future.cancelled() and future.exception() is None:
                self.close_outputs(future.result(), connection)

        def sent(future: asyncio.Future[PendingInvocation]) -> None:
            if future.cancelled() or future.exception() is not None:
                self.free_inputs(invocation_id)
            else:
                future.result().future.add_done_callback(answered)

        sending.add_done_callback(sent)

    # -- outputs -----------------------------------------------------------------------------
    async def read_outputs(self, response: pb.InvocationResponse) -> pb.InvocationResponse:
        """`response` with every ``rpc_shared_memory`` output replaced by the value read
        from its map (off the event loop); `response` itself when it has none.

        Raises:
            SharedMapError: a map cannot be read, or its type is neither bytes nor string.
        """
        if not any(b.rpc_shared_memory is not None for b in response.output_data):
            return response
        outputs = [await self._read_binding(binding) for binding in response.output_data]
        return pb.InvocationResponse(
            invocation_id=response.invocation_id,
            output_data=outputs,
            return_value=response.return_value,
            result=response.result,
        )

    async def _read_binding(self, binding: pb.ParameterBinding) -> pb.ParameterBinding:
        reference = binding.rpc_shared_memory
        if reference is None:
            return binding
        if reference.type not in (pb.RpcDataType.bytes, pb.RpcDataType.string):
            raise SharedMapError(
                f"output {binding.name!r}: shared memory data type {reference.type.name} is not"
                " supported (only bytes and string)"
            )
        content, digest = await asyncio.to_thread(self._read, reference)
        self.console.info(
            f"  output {binding.name!r} read from shared memory: {len(content)} bytes,"
            f" SHA-256 {digest} (map {reference.name})"
        )
        if reference.type == pb.RpcDataType.bytes:
            return pb.ParameterBinding(name=binding.name, data=pb.TypedData(bytes=content))
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SharedMapError(f"output {binding.name!r} is not UTF-8 text: {exc}") from None
        return pb.ParameterBinding(name=binding.name, data=pb.TypedData(string=text))

    def _read(self, reference: pb.RpcSharedMemory) -> tuple[bytes, str]:
        # The host reads offset and count as 32-bit integers (ToObjectAsync).
        if not (0 <= reference.offset <= MAX_TRANSFER_BYTES):
            raise SharedMapError(f"offset {reference.offset} is out of range")
        if not (0 <= reference.count <= MAX_TRANSFER_BYTES):
            raise SharedMapError(f"count {reference.count} is out of range")
        # Read, not mapped: a worker that cuts its map short meanwhile is an error here,
        # where a mapping would kill the emulator with SIGBUS.
        content = read_bytes(reference.name, reference.offset, reference.count, self.folders)
        return content, hashlib.sha256(content).hexdigest()

    def close_outputs(self, response: pb.InvocationResponse, connection: HostConnection) -> None:
        """Send ``CloseSharedMemoryResourcesRequest`` for the worker's maps in `response`
        (without waiting, as the host does); the worker's reply confirms which it closed."""
        names = [
            b.rpc_shared_memory.name
            for b in response.output_data
            if b.rpc_shared_memory is not None and b.rpc_shared_memory.name
        ]
        if not names:
            return
        self._unconfirmed.update(names)
        task = asyncio.ensure_future(self._close(names, connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, names: list[str], connection: HostConnection) -> None:
        try:
            reply = await connection.close_shared_memory(names, timeout=CLOSE_TIMEOUT)
        except (ConnectionError, OSError):
            # The stream is over: nobody else will delete them.
            self._delete_worker_maps(names)
            return
        except TimeoutError:
            self.console.warning(
                f"The worker did not confirm closing shared memory maps {', '.join(names)}"
            )
            return
        for name in names:
            if reply.close_map_results.get(name):
                self._unconfirmed.discard(name)

    def _delete_worker_maps(self, names: Sequence[str]) -> None:
        for name in names:
            self._unconfirmed.discard(name)
            with contextlib.suppress(OSError, SharedMapError):
                delete_map(name, self.folders)

    # -- the end -----------------------------------------------------------------------------
    def sweep(self) -> None:
        """Delete every map still left (the workers are gone): this emulator's inputs, the
        worker maps it asked to close without confirmation; then the folders it created, if
        empty. Never raises."""
        for task in list(self._tasks):
            task.cancel()
        for batch in list(self._writing):
            batch.abandon()  # and what their threads still write
        for invocation_id in list(self._inputs):
            self.free_inputs(invocation_id)
        self._delete_worker_maps(sorted(self._unconfirmed))
        for folder in self._created_folders:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: another process may be using it
        self._created_folders.clear()

    def owned(self) -> list[str]:
        """The names of the maps this emulator holds for invocations (for tests)."""
        return [created.name for maps in self._inputs.values() for created in maps]
