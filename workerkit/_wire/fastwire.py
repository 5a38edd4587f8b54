"""Hand-written protobuf for the invocation hot path: requests in, responses and logs out.

betterproto2 spends most of a worker's CPU on the one message that matters for throughput:
parsing an `InvocationRequest` shaped like the host's (an HTTP request with headers, trigger
metadata, trace context) costs ~170 µs, encoding the response ~60 µs. This module reads and
writes those few messages directly:

- `read_invocation` splits an `InvocationRequest` into its parts without building messages;
  inputs are decoded straight to Python values (`decode_value`), trigger metadata and the
  raw `TypedData` of inputs only when a hook asks for them (`LazyValues`);
- `encode_value`, `invocation_response` and `rpc_log` write the bytes betterproto2 would;
- the start-up conversation (StartStream, init, function loads) is read and written here too,
  so a worker reaches "ready" without importing betterproto2 at all (`workerkit._wire.pb`).

Anything off the beaten path (cookies, collections, shared memory, ...) falls back
to betterproto2 and `workerkit.convert`, so the results are always those of the general code:
tests check both paths agree on arbitrary messages and values.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .._runtime.logs import LogEntry
from .._types import _DATA_TYPES, _DIRECTIONS, Binding, FunctionInfo, InitRequest, MetadataRequest
from ..convert import (
    Claim,
    ClaimsIdentity,
    ConversionError,
    HttpRequest,
    HttpResponse,
    _dump_json,
    decode,
    encode,
)
from ..errors import ErrorDetails
from .pb import pb

__all__ = [
    "HostRequest",
    "LazyValues",
    "RawInvocation",
    "decode_value",
    "encode_chunks",
    "encode_value",
    "function_load_response",
    "function_metadata_response",
    "invocation_response",
    "read_function_load",
    "read_init",
    "read_invocation",
    "read_metadata_request",
    "rpc_function_metadata",
    "rpc_log",
    "start_stream",
    "status_result",
    "worker_init_response",
]

Buffer = bytes | memoryview
_DOUBLE = struct.Struct("<d")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EMPTY: Mapping[str, Any] = MappingProxyType({})


# -- reading -----------------------------------------------------------------------------------
def _varint(data: Buffer, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("overlong varint")


def fields(data: Buffer) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field: an int for varints and fixed-size
    fields, a zero-copy memoryview for length-delimited ones."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    pos, size = 0, len(view)
    while pos < size:
        key, pos = _varint(view, pos)
        wire_type = key & 7
        if wire_type == 2:
            length, pos = _varint(view, pos)
            end = pos + length
            if end > size:
                raise ValueError("a field runs past the end of its message")
            yield key >> 3, 2, view[pos:end]
            pos = end
        elif wire_type == 0:
            value, pos = _varint(view, pos)
            yield key >> 3, 0, value
        elif wire_type == 1:
            if pos + 8 > size:
                raise ValueError("truncated fixed64")
            yield key >> 3, 1, int.from_bytes(view[pos : pos + 8], "little")
            pos += 8
        elif wire_type == 5:
            if pos + 4 > size:
                raise ValueError("truncated fixed32")
            yield key >> 3, 5, int.from_bytes(view[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"invalid wire type {wire_type}")


def _text(view: memoryview) -> str:
    return str(view, "utf-8")


def _entry(view: memoryview) -> tuple[str, memoryview | None]:
    """A map entry's key and its raw value (None when the value is absent)."""
    key, value = "", None
    for number, wire_type, item in fields(view):
        if wire_type == 2:
            if number == 1:
                key = _text(item)
            elif number == 2:
                value = item
    return key, value


class LazyValues(Mapping[str, Any]):
    """A read-only mapping that decodes each raw value the first time it is read."""

    __slots__ = ("_decode", "_done", "_raw")

    def __init__(self, raw: dict[str, memoryview], decode: Callable[[memoryview], Any]) -> None:
        self._raw = raw
        self._decode = decode
        self._done: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._done[key]
        except KeyError:
            value = self._done[key] = self._decode(self._raw[key])
            return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: {self[k]!r}' for k in self._raw)}}}"


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


def read_invocation(request_id: str, data: Buffer) -> RawInvocation:
    """Take an `InvocationRequest`'s bytes apart; raises ValueError if they are malformed."""
    raw = RawInvocation(request_id, inputs=[], metadata={})
    assert raw.inputs is not None and raw.metadata is not None
    for number, wire_type, value in fields(data):
        if wire_type != 2:
            continue
        if number == 1:
            raw.invocation_id = _text(value)
        elif number == 2:
            raw.function_id = _text(value)
        elif number == 3:
            name, typed, shared = "", None, False
            for inner, inner_type, item in fields(value):
                if inner_type != 2:
                    continue
                if inner == 1:
                    name = _text(item)
                elif inner == 2:
                    typed = item
                elif inner == 3:
                    shared = True
            raw.inputs.append((name, typed, shared))
        elif number == 4:
            key, typed = _entry(value)
            raw.metadata[key] = typed if typed is not None else memoryview(b"")
        elif number == 5:
            raw.trace = value
        elif number == 6:
            raw.retry = value
    return raw


def read_trace(view: memoryview) -> tuple[str, str, dict[str, str]]:
    parent = state = ""
    attributes: dict[str, str] = {}
    for number, wire_type, value in fields(view):
        if wire_type != 2:
            continue
        if number == 1:
            parent = _text(value)
        elif number == 2:
            state = _text(value)
        elif number == 3:
            key, item = _entry(value)
            attributes[key] = _text(item) if item is not None else ""
    return parent, state, attributes


def typed_data(view: memoryview | None) -> pb.TypedData:
    """The general (betterproto2) form of raw TypedData bytes."""
    return pb.TypedData() if view is None else pb.TypedData.parse(bytes(view))


def decode_value(view: memoryview | None) -> Any:
    """`convert.decode` of raw TypedData bytes, without building the message when the kind
    is a common one; raises `ConversionError` like `decode`."""
    if view is None:
        return None
    try:
        kind, wire_type, value = _last_field(view)
        if kind == 0:
            return None
        if kind == 1 and wire_type == 2:
            return _text(value)
        if kind in (3, 4) and wire_type == 2:
            return bytes(value)
        if kind == 5 and wire_type == 2:
            return _http_request(value)
        if kind == 2 and wire_type == 2:
            text = _text(value)
        elif kind == 6 and wire_type == 0:
            return (value >> 1) ^ -(value & 1)  # zigzag (sint64)
        elif kind == 7 and wire_type == 1:
            return _DOUBLE.unpack(value.to_bytes(8, "little"))[0]
        else:
            return decode(typed_data(view))
    except ConversionError:
        raise
    except Exception as exc:  # malformed bytes, invalid UTF-8, ...
        return _fallback(view, exc)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ConversionError(f"cannot decode TypedData.json: {exc}") from None


def _fallback(view: memoryview, exc: Exception) -> Any:
    """Let the general decoder decide (and word the error) for bytes we could not read."""
    try:
        data = typed_data(view)
    except Exception:
        raise ConversionError(f"cannot decode TypedData: {exc}") from None
    return decode(data)


def _http_request(view: memoryview) -> HttpRequest:
    method = url = ""
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    params: dict[str, str] = {}
    nullable: tuple[dict[str, str], dict[str, str], dict[str, str]] = ({}, {}, {})
    body: memoryview | None = None
    raw_body: memoryview | None = None
    identities: list[memoryview] = []
    for number, wire_type, value in fields(view):
        if wire_type != 2:
            continue
        if number == 1:
            method = _text(value)
        elif number == 2:
            url = _text(value)
        elif number in (3, 10, 15):
            key, item = _entry(value)
            target = headers if number == 3 else params if number == 10 else query
            target[key] = _text(item) if item is not None else ""
        elif number in (20, 21, 22):
            key, item = _entry(value)
            text = ""
            if item is not None:
                for inner, inner_type, wrapped in fields(item):
                    if inner == 1 and inner_type == 2:
                        text = _text(wrapped)
            nullable[number - 20][key] = text
        elif number == 4:
            body = value
        elif number == 17:
            raw_body = value
        elif number == 18:
            identities.append(value)
    for plain, extra in zip((headers, params, query), nullable, strict=True):
        plain.update(extra)  # the nullable maps win, as in convert
    return HttpRequest(
        method=method,
        url=url,
        headers=headers,
        query=query,
        params=params,
        body=_http_body(body, raw_body),
        identities=tuple(map(_identity, identities)) if identities else (),
    )


def _identity(view: memoryview) -> ClaimsIdentity:
    """An `RpcClaimsIdentity` (what `convert` makes of it): the three `NullableString`s are
    None when null, claims keep their order."""
    wrapped: list[str | None] = [None, None, None, None]  # by field number 1-3
    claims: list[Claim] = []
    for number, wire_type, value in fields(view):
        if wire_type != 2:
            continue
        if number in (1, 2, 3):
            text = None  # a wrapper with its value unset is a null, like no wrapper
            for inner, inner_type, item in fields(value):
                if inner == 1 and inner_type == 2:
                    text = _text(item)
            wrapped[number] = text
        elif number == 4:
            claim = ["", "", ""]  # by field number: value 1, type 2
            for inner, inner_type, item in fields(value):
                if inner in (1, 2) and inner_type == 2:
                    claim[inner] = _text(item)
            claims.append(Claim(type=claim[2], value=claim[1]))
    return ClaimsIdentity(
        authentication_type=wrapped[1],
        name_claim_type=wrapped[2],
        role_claim_type=wrapped[3],
        claims=tuple(claims),
    )


def _http_body(body: memoryview | None, raw_body: memoryview | None) -> bytes:
    where = "TypedData.http.body"
    kind, value = _last_member(body)
    if kind == 0 and raw_body is not None:
        where = "TypedData.http.raw_body"
        kind, value = _last_member(raw_body)
    if kind == 0:
        return b""
    if kind in (1, 2, 3, 4) and isinstance(value, memoryview):
        if kind in (1, 2):
            _text(value)  # must be valid UTF-8, as a str field
        return bytes(value)
    name = _KIND_NAMES.get(kind, str(kind))
    raise ConversionError(f"cannot decode {where}: unsupported kind {name!r}")


_KIND_NAMES = {
    5: "http",
    6: "int",
    7: "double",
    8: "collection_bytes",
    9: "collection_string",
    10: "collection_double",
    11: "collection_sint64",
    12: "model_binding_data",
    13: "collection_model_binding_data",
}


def _last_member(view: memoryview | None) -> tuple[int, Any]:
    if view is None:
        return 0, None
    kind, _, value = _last_field(view)
    return kind, value


def _last_field(view: memoryview) -> tuple[int, int, Any]:
    """The last field of a message: the member a oneof-only message (TypedData) holds."""
    found: tuple[int, int, Any] = (0, 0, None)
    for found in fields(view):  # noqa: B007 - the loop is for its last value
        pass
    return found


# -- writing -----------------------------------------------------------------------------------
def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(key: bytes, payload: bytes) -> bytes:
    return key + _varint_bytes(len(payload)) + payload


def _text_field(key: bytes, text: str) -> bytes:
    return _field(key, text.encode())


_STRING, _JSON, _BYTES, _HTTP = b"\x0a", b"\x12", b"\x1a", b"\x2a"
_INT, _DOUBLE_KEY = b"\x30", b"\x39"
_TRUE, _FALSE = _field(_JSON, b"true"), _field(_JSON, b"false")


#: An encoding as a list of pieces whose concatenation is the bytes: big bodies are referenced,
#: not copied, until the one ``b"".join`` that makes the message.
Chunks = list[bytes]


def _wrapped(key: bytes, chunks: Chunks) -> Chunks:
    """A length-delimited field whose payload is `chunks` (not copied)."""
    return [key, _varint_bytes(sum(map(len, chunks))), *chunks]


def encode_value(value: Any) -> bytes:
    """The bytes of `convert.encode(value)`; raises `ConversionError` like `encode`."""
    return b"".join(encode_chunks(value))


def encode_chunks(value: Any) -> Chunks:
    """`encode_value` as pieces, so a large body is copied once, into the final message."""
    kind = type(value)
    try:
        if kind is str:
            return [_text_field(_STRING, value)]
        if kind is bytes:
            return [_BYTES, _varint_bytes(len(value)), value]
        if kind is bool:
            return [_TRUE if value else _FALSE]
        if kind is int and _INT64_MIN <= value <= _INT64_MAX:
            return [_INT, _varint_bytes((value << 1) ^ (value >> 63))]
        if kind is float:
            return [_DOUBLE_KEY, _DOUBLE.pack(value)]
        if kind is dict or kind is list or kind is tuple:
            return [_text_field(_JSON, _dump_json(value))]
        if kind is HttpResponse and not value.cookies:
            return _http_response(value)
    except UnicodeEncodeError as exc:
        raise ConversionError(f"cannot encode text as UTF-8: {exc}") from None
    return [_serialise(encode(value))]


def _serialise(data: pb.TypedData) -> bytes:
    try:
        return bytes(data)
    except Exception as exc:
        raise ConversionError(f"cannot serialise {data.__class__.__name__}: {exc}") from None


def _http_response(response: HttpResponse) -> Chunks:
    status = response.status_code
    body = response.body
    if type(status) is not int or not 200 <= status <= 599 or type(body) not in (bytes, str):
        return [_serialise(encode(response))]  # let convert word the error
    parts: Chunks = []
    for name, text in response.headers.items():
        if type(name) is not str or type(text) is not str:
            return [_serialise(encode(response))]
        parts.append(_field(b"\x1a", _text_field(b"\x0a", name) + _text_field(b"\x12", text)))
    if isinstance(body, str):
        parts += _wrapped(b"\x22", [_text_field(_STRING, body)])
    else:
        parts += _wrapped(b"\x22", [_BYTES, _varint_bytes(len(body)), body])
    parts.append(_text_field(b"\x62", str(status)))
    if response.enable_content_negotiation:
        parts.append(b"\x80\x01\x01")
    return _wrapped(_HTTP, parts)


_SUCCESS_RESULT = _field(b"\x1a", b"\x20\x01")  # InvocationResponse.result = {status: Success}


def invocation_response(
    request_id: str,
    invocation_id: str,
    return_value: Chunks | None,
    outputs: list[tuple[str, Chunks]],
) -> bytes:
    """A successful `StreamingMessage{invocation_response}`, from encoded values."""
    parts: Chunks = [_text_field(b"\x0a", invocation_id)]
    for name, data in outputs:
        parts += _wrapped(b"\x12", [_text_field(b"\x0a", name), *_wrapped(b"\x12", data)])
    parts.append(_SUCCESS_RESULT)
    if return_value is not None:
        parts += _wrapped(b"\x22", return_value)
    message = _wrapped(b"\x2a", parts)
    if request_id:
        message.insert(0, _text_field(b"\x0a", request_id))
    return b"".join(message)


def _utf8(text: str) -> bytes:
    """`text` as UTF-8; lone surrogates (possible in user strings) escaped, not fatal.

    For text about the worker (logs, metadata, errors), where escaping beats losing the
    message. A function's output values go through `_text_field` instead, which raises:
    their bytes must be exactly what the function returned, or the invocation fails."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def _string(key: bytes, text: str) -> bytes:
    """A string field, left out when empty (the proto3 default)."""
    return _field(key, _utf8(text)) if text else b""


def _string_map(key: bytes, mapping: Mapping[str, str]) -> bytes:
    return b"".join(
        _field(key, _field(b"\x0a", _utf8(name)) + _field(b"\x12", _utf8(value)))
        for name, value in mapping.items()
    )


def _rpc_exception(details: ErrorDetails) -> bytes:
    return b"".join(
        (
            _string(b"\x0a", details.stack_trace),
            _string(b"\x12", details.message),
            _string(b"\x1a", details.source),
            b"\x20\x01" if details.is_user_exception else b"",
            _string(b"\x2a", details.type),
        )
    )


def status_result(status: int, exception: ErrorDetails | None = None) -> bytes:
    """A `StatusResult` (`errors.SUCCESS`, `FAILURE` or `CANCELLED`)."""
    parts = _field(b"\x12", _rpc_exception(exception)) if exception is not None else b""
    return parts + (b"\x20" + _varint_bytes(status) if status else b"")


def rpc_log(entry: LogEntry) -> bytes:
    """`StreamingMessage{rpc_log=entry}`."""
    parts = [
        _string(b"\x0a", entry.invocation_id),
        _string(b"\x12", entry.category),
        b"\x18" + _varint_bytes(entry.level) if entry.level else b"",
        _string(b"\x22", entry.message),
    ]
    if entry.exception is not None:
        parts.append(_field(b"\x32", _rpc_exception(entry.exception)))
    if entry.log_category:
        parts.append(b"\x40" + _varint_bytes(entry.log_category))
    return _field(b"\x12", b"".join(parts))


# -- the start-up conversation -------------------------------------------------------------------
@dataclass(slots=True)
class HostRequest:
    """A start-up request read by hand: `kind` is the `StreamingMessage.content` member's name,
    `body` an `InitRequest` (worker_init_request) or `FunctionInfo` (function_load_request)."""

    request_id: str
    kind: str
    body: Any


def _message(request_id: str, key: bytes, content: bytes) -> bytes:
    """`StreamingMessage{request_id, <content member>}`; the member is sent even if empty."""
    return _string(b"\x0a", request_id) + _field(key, content)


def start_stream(request_id: str, worker_id: str) -> bytes:
    """`StreamingMessage{start_stream={worker_id}}` (content field 20)."""
    return _message(request_id, b"\xa2\x01", _string(b"\x12", worker_id))


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
    """`StreamingMessage{worker_init_response}` (content field 16); `result` is a
    `status_result`."""
    metadata = b"".join(
        (
            _string(b"\x0a", runtime_name),
            _string(b"\x12", runtime_version),
            _string(b"\x1a", worker_version),
            _string(b"\x22", worker_bitness),
            _string_map(b"\x2a", custom_properties),
        )
    )
    content = b"".join(
        (
            _string(b"\x0a", worker_version),
            _string_map(b"\x12", capabilities),
            _field(b"\x1a", result),
            _field(b"\x22", metadata),
        )
    )
    return _message(request_id, b"\x82\x01", content)


def function_load_response(request_id: str, function_id: str, result: bytes) -> bytes:
    """`StreamingMessage{function_load_response}` (content field 9)."""
    return _message(request_id, b"\x4a", _string(b"\x0a", function_id) + _field(b"\x12", result))


def _string_entry(view: memoryview) -> tuple[str, str]:
    key, value = _entry(view)
    return key, _text(value) if value is not None else ""


def read_init(data: Buffer) -> InitRequest:
    """A `WorkerInitRequest`; raises ValueError if it is malformed."""
    texts = ["", "", "", "", "", ""]  # by field number: host_version 1, directories 4 and 5
    capabilities: dict[str, str] = {}
    levels: dict[str, int] = {}
    for number, wire_type, value in fields(data):
        if wire_type != 2:
            continue
        if number in (1, 4, 5):
            texts[number] = _text(value)
        elif number == 2:
            key, text = _string_entry(value)
            capabilities[key] = text
        elif number == 3:
            key, level = "", 0
            for inner, inner_type, item in fields(value):
                if inner == 1 and inner_type == 2:
                    key = _text(item)
                elif inner == 2 and inner_type == 0:
                    level = _int32(item)
            levels[key] = level
    return InitRequest(
        host_version=texts[1],
        worker_directory=texts[4],
        function_app_directory=texts[5],
        capabilities=capabilities,
        log_categories=levels,
    )


def _int32(value: int) -> int:
    """An enum or int32 varint (negative values arrive as 64-bit two's complement)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def read_function_load(data: Buffer) -> FunctionInfo:
    """A `FunctionLoadRequest` as the `FunctionInfo` `on_function_load` receives (what
    `FunctionInfo.from_rpc` makes of the same message); raises ValueError if malformed."""
    # function_id 1 (string) and metadata 2 (message): the shape of a map entry
    function_id, metadata = _entry(data if isinstance(data, memoryview) else memoryview(data))
    texts = ["", "", "", "", ""]  # by field number: directory 1, script 2, entry 3, name 4
    bindings: dict[str, Binding] = {}
    properties: dict[str, str] = {}
    for number, wire_type, value in fields(metadata if metadata is not None else b""):
        if wire_type != 2:
            continue
        if number <= 4:
            texts[number] = _text(value)
        elif number == 6:
            name, info = _entry(value)
            bindings[name] = _binding(name, info)
        elif number == 16:
            key, text = _string_entry(value)
            properties[key] = text
    return FunctionInfo(
        function_id=function_id,
        name=texts[4],
        directory=texts[1],
        script_file=texts[2],
        entry_point=texts[3],
        bindings=MappingProxyType(bindings),
        properties=MappingProxyType(properties) if properties else _EMPTY,
    )


def _binding(name: str, info: memoryview | None) -> Binding:
    kind, direction, data_type = "", 0, 0
    for number, wire_type, value in fields(info if info is not None else b""):
        if number == 2 and wire_type == 2:
            kind = _text(value)
        elif number == 3 and wire_type == 0:
            direction = _int32(value)
        elif number == 4 and wire_type == 0:
            data_type = _int32(value)
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
        if number == 1 and wire_type == 2:
            directory = _text(value)
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
            _string(b"\x0a", directory),
            _string(b"\x12", script_file),
            _string(b"\x1a", entry_point),
            _string(b"\x22", name),
            _field(b"\x42", status) if status is not None else b"",
            *(_field(b"\x52", _utf8(binding)) for binding in raw_bindings),
            _string(b"\x6a", function_id),
            _string_map(b"\x82\x01", properties),
        )
    )


def function_metadata_response(
    request_id: str, results: list[bytes], result: bytes, *, use_default_indexing: bool = False
) -> bytes:
    """`StreamingMessage{function_metadata_response}` (content field 30): `results` are
    `rpc_function_metadata`s, `result` a `status_result`."""
    content = b"".join(
        (
            *(_field(b"\x0a", metadata) for metadata in results),
            _field(b"\x12", result),
            b"\x18\x01" if use_default_indexing else b"",
        )
    )
    return _message(request_id, b"\xf2\x01", content)
