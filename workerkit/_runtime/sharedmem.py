"""Shared-memory data transfer, the worker's side: large inputs read from the host's map
files, large outputs written to the worker's own, and those closed when the host says so.

What the host does (repository Azure/azure-functions-host, commit 89dc438):

- It turns the transfer on for a worker when its environment has
  ``FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED`` set to a .NET ``bool`` ("true",
  any case, spaces around allowed) or to an ``int`` equal to 1, **and** the worker reports
  the ``SharedMemoryDataTransfer`` capability, at init or at an environment reload
  (`src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs`, ``ResolveSharedTransferEnablementState``
  in ``ApplyCapabilities``). The worker is started with the host's environment, so `enabled`
  reads the same variable in the worker's own.
- Inputs (`src/WebJobs.Script.Grpc/Extensions/ScriptInvocationContextExtensions.cs`,
  `RpcSharedMemoryDataExtensions.cs`): a ``byte[]`` or string of 1 MiB to 2 GiB - 1 comes as
  ``ParameterBinding.rpc_shared_memory`` {name, offset 0, count, type bytes or string
  (UTF-8)}; a null comes as an empty reference (name ""). The host deletes its input maps
  once it has processed the InvocationResponse (``TryCloseSharedMemoryResources``), so a
  worker reads them before it answers: here they are read, and every handle closed, before
  the hook is even called (`read_inputs`).
- Outputs (``GetBindingDataAsync``, ``RpcSharedMemoryDataExtensions.ToObjectAsync``): only in
  ``output_data``, type bytes or string, read with a 32-bit offset and count. The host copies
  the content (or, with its ``FunctionDataCache``, keeps the map and frees it later), then
  sends ``CloseSharedMemoryResourcesRequest`` naming the worker's maps; the worker deletes
  them, or with ``FunctionDataCache: "true"`` in the init request only drops its references
  (as the official Python worker does, `azure_functions_worker/dispatcher.py`).

Copies in the worker: an input is copied once, from the map into the `bytes` (or decoded
into the `str`) the hook receives; a `bytes` output once, into the map; a `str` output twice
(encoded to UTF-8, then into the map), as it is inline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _sharedmap
from .._wire.messages import RawInvocation
from .._wire.pb import pb
from .._wire.primitives import Chunks, fields, read_text, varint_bytes
from .._wire.schema import (
    RPC_SHARED_MEMORY_COUNT,
    RPC_SHARED_MEMORY_NAME,
    RPC_SHARED_MEMORY_OFFSET,
    RPC_SHARED_MEMORY_TYPE,
    TAG_RPC_SHARED_MEMORY_COUNT,
    TAG_RPC_SHARED_MEMORY_NAME,
    TAG_RPC_SHARED_MEMORY_TYPE,
)
from .._wire.values import encode_chunks, typed_data
from ..convert import ConversionError

if TYPE_CHECKING:
    from .._sharedmap import CreatedMap

__all__ = [
    "CAPABILITY",
    "SETTING",
    "Reference",
    "SharedInput",
    "SharedMemory",
    "capabilities",
    "enabled",
    "encode_outputs",
    "raw_input",
    "read_inputs",
    "read_reference",
    "rpc_shared_memory",
    "utf16_size",
]

log = logging.getLogger("workerkit")

#: The capability a worker reports to take part (RpcWorkerConstants.SharedMemoryDataTransfer).
CAPABILITY = "SharedMemoryDataTransfer"
#: The app setting that turns the transfer on at the host, and so here.
SETTING = "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED"
#: The host capability (init request) that says it caches the worker's output maps.
FUNCTION_DATA_CACHE = "FunctionDataCache"
#: `RpcDataType` values (a top-level enum of FunctionRpc.proto, not in `schema`).
RPC_DATA_TYPE_STRING = 1
RPC_DATA_TYPE_BYTES = 3

# .NET's bool.TryParse ("true", any case, white space around) and int.TryParse == 1
# (NumberStyles.Integer: white space around, a leading sign, leading zeros).
_DOTNET_SPACE = " \t\n\v\f\r"
_INT_ONE = re.compile(r"[ \t\n\v\f\r]*\+?0*1[ \t\n\v\f\r]*")


def enabled(environ: Mapping[str, str]) -> bool:
    """Whether `environ` turns shared-memory data transfer on, as the host reads it."""
    value = environ.get(SETTING, "")
    return value.strip(_DOTNET_SPACE + "\0").lower() == "true" or bool(_INT_ONE.fullmatch(value))


def capabilities(environ: Mapping[str, str]) -> dict[str, str]:
    """The capability to report at init or an environment reload: only when `enabled`."""
    return {CAPABILITY: "true"} if enabled(environ) else {}


# -- references ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reference:
    """An `RpcSharedMemory`: `count` bytes at `offset` of map `name`'s content."""

    name: str = ""
    offset: int = 0
    count: int = 0
    type: int = 0


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def read_reference(view: memoryview) -> Reference:
    """An `RpcSharedMemory` from its bytes; raises ValueError if they are malformed."""
    name, offset, count, kind = "", 0, 0, 0
    for number, wire_type, value in fields(view):
        if number == RPC_SHARED_MEMORY_NAME and wire_type == 2:
            name = read_text(value)
        elif number == RPC_SHARED_MEMORY_OFFSET and wire_type == 0:
            offset = _int64(value)
        elif number == RPC_SHARED_MEMORY_COUNT and wire_type == 0:
            count = _int64(value)
        elif number == RPC_SHARED_MEMORY_TYPE and wire_type == 0:
            kind = _int64(value)
    return Reference(name, offset, count, kind)


def rpc_shared_memory(name: str, count: int, kind: int) -> bytes:
    """An `RpcSharedMemory` {name, offset 0, count, type}, encoded."""
    encoded = name.encode()
    return b"".join(
        (
            TAG_RPC_SHARED_MEMORY_NAME,
            varint_bytes(len(encoded)),
            encoded,
            TAG_RPC_SHARED_MEMORY_COUNT + varint_bytes(count) if count else b"",
            TAG_RPC_SHARED_MEMORY_TYPE + varint_bytes(kind),
        )
    )


# -- inputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SharedInput:
    """An input read from a map: its value, and the `TypedData` it stands for."""

    value: bytes | str

    def typed_data(self) -> pb.TypedData:
        """The inline `TypedData` the host would have sent instead (no copy)."""
        if isinstance(self.value, str):
            return pb.TypedData(string=self.value)
        return pb.TypedData(bytes=self.value)


def raw_input(item: Any) -> pb.TypedData:
    """`Invocation.raw_inputs`' value for an input: raw `TypedData` bytes, or a `SharedInput`."""
    return item.typed_data() if isinstance(item, SharedInput) else typed_data(item)


def _check_type(name: str, reference: Reference) -> None:
    if reference.name and reference.type not in (RPC_DATA_TYPE_BYTES, RPC_DATA_TYPE_STRING):
        raise ConversionError(
            f"cannot read input {name!r}: shared memory type {reference.type} is not bytes (3)"
            " or string (1)"
        )


def _read_one(name: str, reference: Reference) -> SharedInput | None:
    """Copy one input out of its map (closed on return); None for an empty reference."""
    if not reference.name:
        return None
    map_name, offset, count = reference.name, reference.offset, reference.count
    try:
        if reference.type == RPC_DATA_TYPE_BYTES:  # one copy, by pread: no mapping needed
            return SharedInput(_sharedmap.read_bytes(map_name, offset, count))
        with _sharedmap.read_map(map_name, offset, count) as view:  # decoded from the map
            return SharedInput(str(view, "utf-8"))
    except _sharedmap.SharedMapError as exc:
        raise ConversionError(f"cannot read input {name!r}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(
            f"cannot read input {name!r}: shared memory map {reference.name!r} is not valid"
            f" UTF-8 text: {exc}"
        ) from None


def _read_all(references: list[tuple[int, str, Reference]]) -> dict[int, SharedInput | None]:
    return {position: _read_one(name, reference) for position, name, reference in references}


async def read_inputs(
    request: RawInvocation, in_pool: Callable[[Callable[[], Any]], Any]
) -> dict[int, SharedInput | None]:
    """Read the invocation's shared-memory inputs, by position in `request.inputs`.

    Each map is opened, copied out of and closed before this returns, so no handle is
    open when the hook runs or the response goes. Maps are read in the hook thread pool
    (`in_pool`); a cancel waits for the reading to end before it propagates.

    Raises:
        ConversionError: a map is missing or malformed, a range is outside it, its type is
            neither bytes nor string, or a string is not UTF-8.
    """
    shared, inputs = request.shared, request.inputs
    if not shared or inputs is None:
        return {}
    references = []
    for position, view in shared.items():
        name = inputs[position][0]
        try:
            reference = read_reference(view)
        except ValueError as exc:
            raise ConversionError(f"cannot read input {name!r}: {exc}") from None
        _check_type(name, reference)  # at once, before any map is opened
        references.append((position, name, reference))
    if all(not reference.name for _, _, reference in references):
        return _read_all(references)  # nulls only: nothing to open
    future = in_pool(functools.partial(_read_all, references))
    try:
        result: dict[int, SharedInput | None] = await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])  # the maps are closed when the reading ends
        raise
    return result


# -- outputs --------------------------------------------------------------------------------------
def encode_outputs(
    outputs: Mapping[str, Any], put: Callable[[Any], bytes | None] | None
) -> tuple[list[tuple[str, Chunks]], list[tuple[str, bytes]]]:
    """The outputs, encoded: those `put` placed in maps as `RpcSharedMemory`, the rest inline.

    Raises:
        ConversionError: an output cannot be encoded (as `encode_chunks`).
    """
    inline: list[tuple[str, Chunks]] = []
    shared: list[tuple[str, bytes]] = []
    for name, value in outputs.items():
        reference = put(value) if put is not None else None
        if reference is None:
            inline.append((name, encode_chunks(value)))
        else:
            shared.append((name, reference))
    return inline, shared


#: Characters beyond the Basic Multilingual Plane: two UTF-16 code units each.
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def utf16_size(text: str) -> int:
    """The size the host gives a string: UTF-16 code units times two (``sizeof(char)``)."""
    size = 2 * len(text)
    if text.isascii() or _ASTRAL.search(text) is None:
        return size
    return size + 2 * sum(1 for _ in _ASTRAL.finditer(text))


class SharedMemory:
    """The maps this worker created for its outputs, until the host closes them."""

    def __init__(self, active: Callable[[], bool], cache: Callable[[], bool]) -> None:
        """`active`: whether the worker reported the capability (outputs go to maps only
        then); `cache`: whether the host's init said ``FunctionDataCache``."""
        self._active = active
        self._cache = cache
        self._lock = threading.Lock()  # outputs are written in pool threads
        #: map name -> (invocation id, the map)
        self._maps: dict[str, tuple[str, CreatedMap]] = {}
        #: invocation id -> the token of its writer, until its response is decided
        self._live: dict[str, object] = {}
        self._closed = False  # the session is over: no new maps

    def writer(self, invocation_id: str) -> Callable[[Any], bytes | None] | None:
        """What puts invocation `invocation_id`'s large outputs into maps (until
        `finished`); None when off."""
        if not self._active():
            return None
        token = object()
        with self._lock:
            self._live[invocation_id] = token
        return functools.partial(self.put, invocation_id, token=token)

    def put(self, invocation_id: str, value: Any, *, token: object = None) -> bytes | None:
        """Write `value` to a new map if it is bytes or text of 1 MiB to 2 GiB - 1 (text
        measured as the host measures it, `utf16_size`); its `RpcSharedMemory`, or None to
        send it inline (small, another type, or no map could be made, which is logged).

        A map written after the invocation `finished` (by a plain ``def`` hook still running
        after it was answered Cancelled) or after `close_all` is deleted at once."""
        if isinstance(value, str):
            if not (
                _sharedmap.MIN_TRANSFER_BYTES <= utf16_size(value) <= _sharedmap.MAX_TRANSFER_BYTES
            ):
                return None
            try:
                data: bytes | memoryview = value.encode()
            except UnicodeEncodeError:
                return None  # inline encoding words the error
            kind = RPC_DATA_TYPE_STRING
            smallest = 0  # the host's threshold is met; its UTF-8 may be smaller
        elif isinstance(value, bytes | bytearray | memoryview):
            data = memoryview(value)
            if not data.c_contiguous:
                return None
            kind = RPC_DATA_TYPE_BYTES
            smallest = _sharedmap.MIN_TRANSFER_BYTES
        else:
            return None
        size = memoryview(data).nbytes
        # The host reads the count as a 32-bit integer (RpcSharedMemoryDataExtensions.cs).
        if not smallest <= size <= _sharedmap.MAX_TRANSFER_BYTES:
            return None
        try:
            created = _sharedmap.write_map(data)
        except _sharedmap.SharedMapError as exc:
            log.warning("an output of %d bytes goes inline: %s", size, exc)
            return None
        with self._lock:
            kept = not self._closed and (token is None or self._live.get(invocation_id) is token)
            if kept:
                self._maps[created.name] = (invocation_id, created)
        if not kept:  # its response is decided already, or the session is over
            self._delete(created)
            return None
        return rpc_shared_memory(created.name, size, kind)

    def close(self, names: Iterable[str]) -> pb.CloseSharedMemoryResourcesResponse:
        """The host read these maps: delete them (only forget them when the host caches
        them); True for each map this worker had."""
        keep = self._cache()
        results: dict[str, bool] = {}
        for name in names:
            with self._lock:
                entry = self._maps.pop(name, None)
            if entry is None:
                log.warning("CloseSharedMemoryResourcesRequest names unknown map %r", name)
                results[name] = False
                continue
            results[name] = True
            if not keep:
                self._delete(entry[1])
        return pb.CloseSharedMemoryResourcesResponse(close_map_results=results)

    def finished(self, invocation_id: str, *, answered: bool) -> None:
        """Invocation `invocation_id`'s response is decided: its maps go to the host with it
        (`answered`), or are deleted (it failed after its outputs were written, or was
        answered Cancelled first). Maps its hook writes from now on are deleted at once."""
        with self._lock:
            self._live.pop(invocation_id, None)
            if answered:
                return
            names = [n for n, (owner, _) in self._maps.items() if owner == invocation_id]
            entries = [self._maps.pop(name)[1] for name in names]
        for created in entries:
            self._delete(created)

    def close_all(self) -> None:
        """The session is over: delete every map the host did not close."""
        with self._lock:
            self._closed = True
            entries = [created for _, created in self._maps.values()]
            self._maps.clear()
            self._live.clear()
        for created in entries:
            self._delete(created)

    def __len__(self) -> int:
        with self._lock:
            return len(self._maps)

    @staticmethod
    def _delete(created: CreatedMap) -> None:
        try:
            created.delete()
        except OSError as exc:
            log.warning("cannot delete shared memory map %s: %s", created.path, exc)
