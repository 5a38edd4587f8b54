"""The messages read and written by hand: invocations, logs and the start-up conversation.

betterproto2 spends most of a worker's CPU on the one message that matters for throughput:
parsing an `InvocationRequest` shaped like the host's (an HTTP request with headers, trigger
metadata, trace context) costs ~170 µs, encoding the response ~60 µs. So:

- `read_invocation` splits an `InvocationRequest` into its parts without building messages;
  the values in it are decoded later, by `values.decode_value`, when they are needed;
- `invocation_response`, `status_result` and `rpc_log` write the bytes betterproto2 would;
- the start-up conversation (StartStream, init, worker indexing, function loads) is read and
  written here too, so a worker reaches "ready" without importing betterproto2 at all
  (`workerkit._wire.pb`).

Every message is checked against betterproto2 by property tests (tests/test_fastwire.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .._runtime.logs import LogEntry
from .._types import _DATA_TYPES, _DIRECTIONS, Binding, FunctionInfo, InitRequest, MetadataRequest
from ..errors import ErrorDetails
from .primitives import (
    Buffer,
    Chunks,
    field,
    fields,
    int32,
    read_entry,
    read_string_entry,
    read_text,
    string_field,
    string_map,
    text_field,
    utf8,
    varint_bytes,
    wrapped,
)
from .schema import (
    BINDING_INFO_DATA_TYPE,
    BINDING_INFO_DIRECTION,
    BINDING_INFO_TYPE,
    FUNCTION_LOAD_REQUEST_FUNCTION_ID,
    FUNCTION_LOAD_REQUEST_METADATA,
    FUNCTIONS_METADATA_REQUEST_FUNCTION_APP_DIRECTORY,
    INVOCATION_REQUEST_FUNCTION_ID,
    INVOCATION_REQUEST_INPUT_DATA,
    INVOCATION_REQUEST_INVOCATION_ID,
    INVOCATION_REQUEST_RETRY_CONTEXT,
    INVOCATION_REQUEST_TRACE_CONTEXT,
    INVOCATION_REQUEST_TRIGGER_METADATA,
    MAP_ENTRY_KEY,
    MAP_ENTRY_VALUE,
    PARAMETER_BINDING_DATA,
    PARAMETER_BINDING_NAME,
    PARAMETER_BINDING_RPC_SHARED_MEMORY,
    RPC_FUNCTION_METADATA_BINDINGS,
    RPC_FUNCTION_METADATA_DIRECTORY,
    RPC_FUNCTION_METADATA_ENTRY_POINT,
    RPC_FUNCTION_METADATA_NAME,
    RPC_FUNCTION_METADATA_PROPERTIES,
    RPC_FUNCTION_METADATA_SCRIPT_FILE,
    RPC_TRACE_CONTEXT_ATTRIBUTES,
    RPC_TRACE_CONTEXT_BAGGAGE,
    RPC_TRACE_CONTEXT_TRACE_PARENT,
    RPC_TRACE_CONTEXT_TRACE_STATE,
    STATUS_RESULT_STATUS_SUCCESS,
    TAG_FUNCTION_LOAD_RESPONSE_FUNCTION_ID,
    TAG_FUNCTION_LOAD_RESPONSE_RESULT,
    TAG_FUNCTION_METADATA_RESPONSE_FUNCTION_METADATA_RESULTS,
    TAG_FUNCTION_METADATA_RESPONSE_RESULT,
    TAG_FUNCTION_METADATA_RESPONSE_USE_DEFAULT_METADATA_INDEXING,
    TAG_INVOCATION_RESPONSE_INVOCATION_ID,
    TAG_INVOCATION_RESPONSE_OUTPUT_DATA,
    TAG_INVOCATION_RESPONSE_RESULT,
    TAG_INVOCATION_RESPONSE_RETURN_VALUE,
    TAG_PARAMETER_BINDING_DATA,
    TAG_PARAMETER_BINDING_NAME,
    TAG_PARAMETER_BINDING_RPC_SHARED_MEMORY,
    TAG_RPC_EXCEPTION_IS_USER_EXCEPTION,
    TAG_RPC_EXCEPTION_MESSAGE,
    TAG_RPC_EXCEPTION_SOURCE,
    TAG_RPC_EXCEPTION_STACK_TRACE,
    TAG_RPC_EXCEPTION_TYPE,
    TAG_RPC_FUNCTION_METADATA_DIRECTORY,
    TAG_RPC_FUNCTION_METADATA_ENTRY_POINT,
    TAG_RPC_FUNCTION_METADATA_FUNCTION_ID,
    TAG_RPC_FUNCTION_METADATA_NAME,
    TAG_RPC_FUNCTION_METADATA_PROPERTIES,
    TAG_RPC_FUNCTION_METADATA_RAW_BINDINGS,
    TAG_RPC_FUNCTION_METADATA_SCRIPT_FILE,
    TAG_RPC_FUNCTION_METADATA_STATUS,
    TAG_RPC_LOG_CATEGORY,
    TAG_RPC_LOG_EXCEPTION,
    TAG_RPC_LOG_INVOCATION_ID,
    TAG_RPC_LOG_LEVEL,
    TAG_RPC_LOG_LOG_CATEGORY,
    TAG_RPC_LOG_MESSAGE,
    TAG_START_STREAM_WORKER_ID,
    TAG_STATUS_RESULT_EXCEPTION,
    TAG_STATUS_RESULT_STATUS,
    TAG_STREAMING_MESSAGE_FUNCTION_LOAD_RESPONSE,
    TAG_STREAMING_MESSAGE_FUNCTION_METADATA_RESPONSE,
    TAG_STREAMING_MESSAGE_INVOCATION_RESPONSE,
    TAG_STREAMING_MESSAGE_REQUEST_ID,
    TAG_STREAMING_MESSAGE_RPC_LOG,
    TAG_STREAMING_MESSAGE_START_STREAM,
    TAG_STREAMING_MESSAGE_WORKER_INIT_RESPONSE,
    TAG_WORKER_INIT_RESPONSE_CAPABILITIES,
    TAG_WORKER_INIT_RESPONSE_RESULT,
    TAG_WORKER_INIT_RESPONSE_WORKER_METADATA,
    TAG_WORKER_INIT_RESPONSE_WORKER_VERSION,
    TAG_WORKER_METADATA_CUSTOM_PROPERTIES,
    TAG_WORKER_METADATA_RUNTIME_NAME,
    TAG_WORKER_METADATA_RUNTIME_VERSION,
    TAG_WORKER_METADATA_WORKER_BITNESS,
    TAG_WORKER_METADATA_WORKER_VERSION,
    WORKER_INIT_REQUEST_CAPABILITIES,
    WORKER_INIT_REQUEST_FUNCTION_APP_DIRECTORY,
    WORKER_INIT_REQUEST_HOST_VERSION,
    WORKER_INIT_REQUEST_LOG_CATEGORIES,
    WORKER_INIT_REQUEST_WORKER_DIRECTORY,
)

__all__ = [
    "HostRequest",
    "RawInvocation",
    "function_load_response",
    "function_metadata_response",
    "invocation_response",
    "read_function_load",
    "read_init",
    "read_invocation",
    "read_metadata_request",
    "read_trace",
    "rpc_function_metadata",
    "rpc_log",
    "start_stream",
    "status_result",
    "worker_init_response",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
#: Bool fields set to true (false ones are left out).
_USER_EXCEPTION = TAG_RPC_EXCEPTION_IS_USER_EXCEPTION + b"\x01"
_USE_DEFAULT_INDEXING = TAG_FUNCTION_METADATA_RESPONSE_USE_DEFAULT_METADATA_INDEXING + b"\x01"


# -- invocations -------------------------------------------------------------------------------
@dataclass(slots=True)
class RawInvocation:
    """An `InvocationRequest` taken apart but not decoded."""

    request_id: str
    invocation_id: str = ""
    function_id: str = ""
    #: (binding name, raw TypedData or None, came through shared memory)
    inputs: list[tuple[str, memoryview | None, bool]] | None = None
    metadata: dict[str, memoryview] | None = None
    trace: memoryview | None = None
    retry: memoryview | None = None
    #: The raw `RpcSharedMemory` of each input that came through shared memory, by its
    #: position in `inputs` (None: none did).
    shared: dict[int, memoryview] | None = None


def read_invocation(request_id: str, data: Buffer) -> RawInvocation:
    """Take an `InvocationRequest`'s bytes apart; raises ValueError if they are malformed."""
    raw = RawInvocation(request_id, inputs=[], metadata={})
    assert raw.inputs is not None and raw.metadata is not None
    for number, wire_type, value in fields(data):
        if wire_type != 2:
            continue
        if number == INVOCATION_REQUEST_INVOCATION_ID:
            raw.invocation_id = read_text(value)
        elif number == INVOCATION_REQUEST_FUNCTION_ID:
            raw.function_id = read_text(value)
        elif number == INVOCATION_REQUEST_INPUT_DATA:
            name, typed, reference = "", None, None
            for inner, inner_type, item in fields(value):
                if inner_type != 2:
                    continue
                if inner == PARAMETER_BINDING_NAME:
                    name = read_text(item)
                elif inner == PARAMETER_BINDING_DATA:
                    typed, reference = item, None  # a oneof: the last member wins
                elif inner == PARAMETER_BINDING_RPC_SHARED_MEMORY:
                    typed, reference = None, item
            if reference is not None:
                raw.shared = raw.shared or {}
                raw.shared[len(raw.inputs)] = reference
            raw.inputs.append((name, typed, reference is not None))
        elif number == INVOCATION_REQUEST_TRIGGER_METADATA:
            key, typed = read_entry(value)
            raw.metadata[key] = typed if typed is not None else memoryview(b"")
        elif number == INVOCATION_REQUEST_TRACE_CONTEXT:
            raw.trace = value
        elif number == INVOCATION_REQUEST_RETRY_CONTEXT:
            raw.retry = value
    return raw


def read_trace(
    view: memoryview,
) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """An `RpcTraceContext`: trace parent, trace state, attributes and baggage (sent by newer
    hosts only: empty otherwise)."""
    parent = state = ""
    attributes: dict[str, str] = {}
    baggage: dict[str, str] = {}
    for number, wire_type, value in fields(view):
        if wire_type != 2:
            continue
        if number == RPC_TRACE_CONTEXT_TRACE_PARENT:
            parent = read_text(value)
        elif number == RPC_TRACE_CONTEXT_TRACE_STATE:
            state = read_text(value)
        elif number == RPC_TRACE_CONTEXT_ATTRIBUTES:
            key, text = read_string_entry(value)
            attributes[key] = text
        elif number == RPC_TRACE_CONTEXT_BAGGAGE:
            key, text = read_string_entry(value)
            baggage[key] = text
    return parent, state, attributes, baggage


#: `InvocationResponse.result = {status: Success}`
_SUCCESS_RESULT = field(
    TAG_INVOCATION_RESPONSE_RESULT,
    TAG_STATUS_RESULT_STATUS + varint_bytes(STATUS_RESULT_STATUS_SUCCESS),
)


def invocation_response(
    request_id: str,
    invocation_id: str,
    return_value: Chunks | None,
    outputs: list[tuple[str, Chunks]],
    shared_outputs: list[tuple[str, bytes]] | None = None,
) -> bytes:
    """A successful `StreamingMessage{invocation_response}`, from encoded values;
    `shared_outputs` are outputs passed in shared memory, each an encoded `RpcSharedMemory`."""
    parts: Chunks = [text_field(TAG_INVOCATION_RESPONSE_INVOCATION_ID, invocation_id)]
    for name, data in outputs:
        parts += wrapped(
            TAG_INVOCATION_RESPONSE_OUTPUT_DATA,
            [
                text_field(TAG_PARAMETER_BINDING_NAME, name),
                *wrapped(TAG_PARAMETER_BINDING_DATA, data),
            ],
        )
    for name, reference in shared_outputs or ():
        parts.append(
            field(
                TAG_INVOCATION_RESPONSE_OUTPUT_DATA,
                text_field(TAG_PARAMETER_BINDING_NAME, name)
                + field(TAG_PARAMETER_BINDING_RPC_SHARED_MEMORY, reference),
            )
        )
    parts.append(_SUCCESS_RESULT)
    if return_value is not None:
        parts += wrapped(TAG_INVOCATION_RESPONSE_RETURN_VALUE, return_value)
    message = wrapped(TAG_STREAMING_MESSAGE_INVOCATION_RESPONSE, parts)
    if request_id:
        message.insert(0, text_field(TAG_STREAMING_MESSAGE_REQUEST_ID, request_id))
    return b"".join(message)


def _rpc_exception(details: ErrorDetails) -> bytes:
    return b"".join(
        (
            string_field(TAG_RPC_EXCEPTION_STACK_TRACE, details.stack_trace),
            string_field(TAG_RPC_EXCEPTION_MESSAGE, details.message),
            string_field(TAG_RPC_EXCEPTION_SOURCE, details.source),
            _USER_EXCEPTION if details.is_user_exception else b"",
            string_field(TAG_RPC_EXCEPTION_TYPE, details.type),
        )
    )


def status_result(status: int, exception: ErrorDetails | None = None) -> bytes:
    """A `StatusResult` (`errors.SUCCESS`, `FAILURE` or `CANCELLED`)."""
    parts = (
        field(TAG_STATUS_RESULT_EXCEPTION, _rpc_exception(exception))
        if exception is not None
        else b""
    )
    return parts + (TAG_STATUS_RESULT_STATUS + varint_bytes(status) if status else b"")


def rpc_log(entry: LogEntry) -> bytes:
    """`StreamingMessage{rpc_log=entry}`."""
    parts = [
        string_field(TAG_RPC_LOG_INVOCATION_ID, entry.invocation_id),
        string_field(TAG_RPC_LOG_CATEGORY, entry.category),
        TAG_RPC_LOG_LEVEL + varint_bytes(entry.level) if entry.level else b"",
        string_field(TAG_RPC_LOG_MESSAGE, entry.message),
    ]
    if entry.exception is not None:
        parts.append(field(TAG_RPC_LOG_EXCEPTION, _rpc_exception(entry.exception)))
    if entry.log_category:
        parts.append(TAG_RPC_LOG_LOG_CATEGORY + varint_bytes(entry.log_category))
    return field(TAG_STREAMING_MESSAGE_RPC_LOG, b"".join(parts))


# -- the start-up conversation -------------------------------------------------------------------
@dataclass(slots=True)
class HostRequest:
    """A start-up request read by hand: `kind` is the `StreamingMessage.content` member's name,
    `body` an `InitRequest` (worker_init_request) or `FunctionInfo` (function_load_request)."""

    request_id: str
    kind: str
    body: Any


def _message(request_id: str, tag: bytes, content: bytes) -> bytes:
    """`StreamingMessage{request_id, <content member>}`; the member is sent even if empty."""
    return string_field(TAG_STREAMING_MESSAGE_REQUEST_ID, request_id) + field(tag, content)


def start_stream(request_id: str, worker_id: str) -> bytes:
    """`StreamingMessage{start_stream={worker_id}}`."""
    return _message(
        request_id,
        TAG_STREAMING_MESSAGE_START_STREAM,
        string_field(TAG_START_STREAM_WORKER_ID, worker_id),
    )


def worker_init_response(
    request_id: str,
    *,
    worker_version: str,
    capabilities: Mapping[str, str],
    result: bytes,
    runtime_name: str,
    runtime_version: str,
    worker_bitness: str,
    custom_properties: Mapping[str, str],
) -> bytes:
    """`StreamingMessage{worker_init_response}`; `result` is a `status_result`."""
    metadata = b"".join(
        (
            string_field(TAG_WORKER_METADATA_RUNTIME_NAME, runtime_name),
            string_field(TAG_WORKER_METADATA_RUNTIME_VERSION, runtime_version),
            string_field(TAG_WORKER_METADATA_WORKER_VERSION, worker_version),
            string_field(TAG_WORKER_METADATA_WORKER_BITNESS, worker_bitness),
            string_map(TAG_WORKER_METADATA_CUSTOM_PROPERTIES, custom_properties),
        )
    )
    content = b"".join(
        (
            string_field(TAG_WORKER_INIT_RESPONSE_WORKER_VERSION, worker_version),
            string_map(TAG_WORKER_INIT_RESPONSE_CAPABILITIES, capabilities),
            field(TAG_WORKER_INIT_RESPONSE_RESULT, result),
            field(TAG_WORKER_INIT_RESPONSE_WORKER_METADATA, metadata),
        )
    )
    return _message(request_id, TAG_STREAMING_MESSAGE_WORKER_INIT_RESPONSE, content)


def function_load_response(request_id: str, function_id: str, result: bytes) -> bytes:
    """`StreamingMessage{function_load_response}`; `result` is a `status_result`."""
    content = string_field(TAG_FUNCTION_LOAD_RESPONSE_FUNCTION_ID, function_id) + field(
        TAG_FUNCTION_LOAD_RESPONSE_RESULT, result
    )
    return _message(request_id, TAG_STREAMING_MESSAGE_FUNCTION_LOAD_RESPONSE, content)


def read_init(data: Buffer) -> InitRequest:
    """A `WorkerInitRequest`; raises ValueError if it is malformed."""
    host_version = worker_directory = function_app_directory = ""
    capabilities: dict[str, str] = {}
    levels: dict[str, int] = {}
    for number, wire_type, value in fields(data):
        if wire_type != 2:
            continue
        if number == WORKER_INIT_REQUEST_HOST_VERSION:
            host_version = read_text(value)
        elif number == WORKER_INIT_REQUEST_WORKER_DIRECTORY:
            worker_directory = read_text(value)
        elif number == WORKER_INIT_REQUEST_FUNCTION_APP_DIRECTORY:
            function_app_directory = read_text(value)
        elif number == WORKER_INIT_REQUEST_CAPABILITIES:
            key, text = read_string_entry(value)
            capabilities[key] = text
        elif number == WORKER_INIT_REQUEST_LOG_CATEGORIES:
            key, level = "", 0
            for inner, inner_type, item in fields(value):
                if inner == MAP_ENTRY_KEY and inner_type == 2:
                    key = read_text(item)
                elif inner == MAP_ENTRY_VALUE and inner_type == 0:
                    level = int32(item)
            levels[key] = level
    return InitRequest(
        host_version=host_version,
        worker_directory=worker_directory,
        function_app_directory=function_app_directory,
        capabilities=capabilities,
        log_categories=levels,
    )


def read_function_load(data: Buffer) -> FunctionInfo:
    """A `FunctionLoadRequest` as the `FunctionInfo` `on_function_load` receives (what
    `FunctionInfo.from_rpc` makes of the same message); raises ValueError if malformed."""
    function_id, metadata = "", None
    for number, wire_type, value in fields(data):
        if wire_type != 2:
            continue
        if number == FUNCTION_LOAD_REQUEST_FUNCTION_ID:
            function_id = read_text(value)
        elif number == FUNCTION_LOAD_REQUEST_METADATA:
            metadata = value
    name = directory = script_file = entry_point = ""
    bindings: dict[str, Binding] = {}
    properties: dict[str, str] = {}
    for number, wire_type, value in fields(metadata if metadata is not None else b""):
        if wire_type != 2:
            continue
        if number == RPC_FUNCTION_METADATA_NAME:
            name = read_text(value)
        elif number == RPC_FUNCTION_METADATA_DIRECTORY:
            directory = read_text(value)
        elif number == RPC_FUNCTION_METADATA_SCRIPT_FILE:
            script_file = read_text(value)
        elif number == RPC_FUNCTION_METADATA_ENTRY_POINT:
            entry_point = read_text(value)
        elif number == RPC_FUNCTION_METADATA_BINDINGS:
            binding_name, info = read_entry(value)
            bindings[binding_name] = _binding(binding_name, info)
        elif number == RPC_FUNCTION_METADATA_PROPERTIES:
            key, text = read_string_entry(value)
            properties[key] = text
    return FunctionInfo(
        function_id=function_id,
        name=name,
        directory=directory,
        script_file=script_file,
        entry_point=entry_point,
        bindings=MappingProxyType(bindings),
        properties=MappingProxyType(properties) if properties else _EMPTY,
    )


def _binding(name: str, info: memoryview | None) -> Binding:
    kind, direction, data_type = "", 0, 0
    for number, wire_type, value in fields(info if info is not None else b""):
        if number == BINDING_INFO_TYPE and wire_type == 2:
            kind = read_text(value)
        elif number == BINDING_INFO_DIRECTION and wire_type == 0:
            direction = int32(value)
        elif number == BINDING_INFO_DATA_TYPE and wire_type == 0:
            data_type = int32(value)
    return Binding(
        name=name,
        type=kind,
        direction=_DIRECTIONS.get(direction, "in"),
        data_type=_DATA_TYPES.get(data_type, "undefined"),
    )


def read_metadata_request(data: Buffer) -> MetadataRequest:
    """A `FunctionsMetadataRequest`; raises ValueError if it is malformed."""
    directory = ""
    for number, wire_type, value in fields(data):
        if number == FUNCTIONS_METADATA_REQUEST_FUNCTION_APP_DIRECTORY and wire_type == 2:
            directory = read_text(value)
    return MetadataRequest(directory)


def rpc_function_metadata(
    *,
    name: str,
    function_id: str,
    directory: str,
    script_file: str,
    entry_point: str,
    raw_bindings: list[str],
    properties: Mapping[str, str],
    status: bytes | None = None,
) -> bytes:
    """An `RpcFunctionMetadata` as worker indexing reports it; `status` is a `status_result`
    (None: no status, the function is valid)."""
    return b"".join(
        (
            string_field(TAG_RPC_FUNCTION_METADATA_DIRECTORY, directory),
            string_field(TAG_RPC_FUNCTION_METADATA_SCRIPT_FILE, script_file),
            string_field(TAG_RPC_FUNCTION_METADATA_ENTRY_POINT, entry_point),
            string_field(TAG_RPC_FUNCTION_METADATA_NAME, name),
            field(TAG_RPC_FUNCTION_METADATA_STATUS, status) if status is not None else b"",
            *(field(TAG_RPC_FUNCTION_METADATA_RAW_BINDINGS, utf8(b)) for b in raw_bindings),
            string_field(TAG_RPC_FUNCTION_METADATA_FUNCTION_ID, function_id),
            string_map(TAG_RPC_FUNCTION_METADATA_PROPERTIES, properties),
        )
    )


def function_metadata_response(
    request_id: str, results: list[bytes], result: bytes, *, use_default_indexing: bool = False
) -> bytes:
    """`StreamingMessage{function_metadata_response}`: `results` are `rpc_function_metadata`s,
    `result` a `status_result`."""
    content = b"".join(
        (
            *(field(TAG_FUNCTION_METADATA_RESPONSE_FUNCTION_METADATA_RESULTS, m) for m in results),
            field(TAG_FUNCTION_METADATA_RESPONSE_RESULT, result),
            _USE_DEFAULT_INDEXING if use_default_indexing else b"",
        )
    )
    return _message(request_id, TAG_STREAMING_MESSAGE_FUNCTION_METADATA_RESPONSE, content)
