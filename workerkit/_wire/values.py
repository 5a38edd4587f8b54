"""The fast value path: `TypedData` bytes to Python values and back, without messages.

`decode_value` reads the common kinds (string, json, bytes, stream, int, double, and an HTTP
request with its identities) straight from the bytes; `encode_value`/`encode_chunks` write
the common Python values (str, bytes, bool, int, float, JSON containers, an `HttpResponse`
without cookies) as the bytes `convert.encode` would give. Anything else (collections,
cookies, model binding data, malformed bytes, ...) goes through betterproto2 and
`workerkit.convert`, so results and errors are always those of the general code: tests check
both paths agree on arbitrary values and messages.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._values import (
    Claim,
    ClaimsIdentity,
    ConversionError,
    HttpRequest,
    HttpResponse,
    _dump_json,
)
from ..convert import decode, encode
from .pb import pb
from .primitives import (
    Chunks,
    field,
    fields,
    last_field,
    read_entry,
    read_text,
    text_field,
    varint_bytes,
    wrapped,
)
from .schema import (
    NULLABLE_STRING_VALUE,
    RPC_CLAIM_TYPE,
    RPC_CLAIM_VALUE,
    RPC_CLAIMS_IDENTITY_AUTHENTICATION_TYPE,
    RPC_CLAIMS_IDENTITY_CLAIMS,
    RPC_CLAIMS_IDENTITY_NAME_CLAIM_TYPE,
    RPC_CLAIMS_IDENTITY_ROLE_CLAIM_TYPE,
    RPC_HTTP_BODY,
    RPC_HTTP_HEADERS,
    RPC_HTTP_IDENTITIES,
    RPC_HTTP_METHOD,
    RPC_HTTP_NULLABLE_HEADERS,
    RPC_HTTP_NULLABLE_PARAMS,
    RPC_HTTP_NULLABLE_QUERY,
    RPC_HTTP_PARAMS,
    RPC_HTTP_QUERY,
    RPC_HTTP_RAW_BODY,
    RPC_HTTP_URL,
    TAG_MAP_ENTRY_KEY,
    TAG_MAP_ENTRY_VALUE,
    TAG_RPC_HTTP_BODY,
    TAG_RPC_HTTP_ENABLE_CONTENT_NEGOTIATION,
    TAG_RPC_HTTP_HEADERS,
    TAG_RPC_HTTP_STATUS_CODE,
    TAG_TYPED_DATA_BYTES,
    TAG_TYPED_DATA_DOUBLE,
    TAG_TYPED_DATA_HTTP,
    TAG_TYPED_DATA_INT,
    TAG_TYPED_DATA_JSON,
    TAG_TYPED_DATA_STRING,
    TYPED_DATA_BYTES,
    TYPED_DATA_COLLECTION_BYTES,
    TYPED_DATA_COLLECTION_DOUBLE,
    TYPED_DATA_COLLECTION_MODEL_BINDING_DATA,
    TYPED_DATA_COLLECTION_SINT64,
    TYPED_DATA_COLLECTION_STRING,
    TYPED_DATA_DOUBLE,
    TYPED_DATA_HTTP,
    TYPED_DATA_INT,
    TYPED_DATA_JSON,
    TYPED_DATA_MODEL_BINDING_DATA,
    TYPED_DATA_STREAM,
    TYPED_DATA_STRING,
)

__all__ = ["LazyValues", "decode_value", "encode_chunks", "encode_value", "typed_data"]

_DOUBLE = struct.Struct("<d")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BINARY_KINDS = frozenset((TYPED_DATA_BYTES, TYPED_DATA_STREAM))


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


# -- decoding ----------------------------------------------------------------------------------
def typed_data(view: memoryview | None) -> pb.TypedData:
    """The general (betterproto2) form of raw TypedData bytes."""
    return pb.TypedData() if view is None else pb.TypedData.parse(bytes(view))


def decode_value(view: memoryview | None) -> Any:
    """`convert.decode` of raw TypedData bytes, without building the message when the kind
    is a common one; raises `ConversionError` like `decode`."""
    if view is None:
        return None
    try:
        kind, wire_type, value = last_field(view)
        if kind == 0:  # no member set: a null
            return None
        if kind == TYPED_DATA_STRING and wire_type == 2:
            return read_text(value)
        if kind in _BINARY_KINDS and wire_type == 2:
            return bytes(value)
        if kind == TYPED_DATA_HTTP and wire_type == 2:
            return _http_request(value)
        if kind == TYPED_DATA_JSON and wire_type == 2:
            text = read_text(value)
        elif kind == TYPED_DATA_INT and wire_type == 0:
            return (value >> 1) ^ -(value & 1)  # zigzag (sint64)
        elif kind == TYPED_DATA_DOUBLE and wire_type == 1:
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


#: The `RpcHttp` maps of plain strings, and those of `NullableString`s (which win, as in
#: `convert`, when a host sends both).
_PLAIN_MAPS = frozenset((RPC_HTTP_HEADERS, RPC_HTTP_PARAMS, RPC_HTTP_QUERY))
_NULLABLE_MAPS = frozenset(
    (RPC_HTTP_NULLABLE_HEADERS, RPC_HTTP_NULLABLE_PARAMS, RPC_HTTP_NULLABLE_QUERY)
)


def _http_request(view: memoryview) -> HttpRequest:
    method = url = ""
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    params: dict[str, str] = {}
    nullable_headers: dict[str, str] = {}
    nullable_query: dict[str, str] = {}
    nullable_params: dict[str, str] = {}
    body: memoryview | None = None
    raw_body: memoryview | None = None
    identities: list[memoryview] = []
    for number, wire_type, value in fields(view):
        if wire_type != 2:
            continue
        if number == RPC_HTTP_METHOD:
            method = read_text(value)
        elif number == RPC_HTTP_URL:
            url = read_text(value)
        elif number in _PLAIN_MAPS:
            key, item = read_entry(value)
            target = (
                headers
                if number == RPC_HTTP_HEADERS
                else params
                if number == RPC_HTTP_PARAMS
                else query
            )
            target[key] = read_text(item) if item is not None else ""
        elif number in _NULLABLE_MAPS:
            key, item = read_entry(value)
            text = ""
            if item is not None:
                for inner, inner_type, wrapper in fields(item):
                    if inner == NULLABLE_STRING_VALUE and inner_type == 2:
                        text = read_text(wrapper)
            target = (
                nullable_headers
                if number == RPC_HTTP_NULLABLE_HEADERS
                else nullable_params
                if number == RPC_HTTP_NULLABLE_PARAMS
                else nullable_query
            )
            target[key] = text
        elif number == RPC_HTTP_BODY:
            body = value
        elif number == RPC_HTTP_RAW_BODY:
            raw_body = value
        elif number == RPC_HTTP_IDENTITIES:
            identities.append(value)
    headers.update(nullable_headers)  # the nullable maps win, as in convert
    params.update(nullable_params)
    query.update(nullable_query)
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
    authentication_type = name_claim_type = role_claim_type = None
    claims: list[Claim] = []
    for number, wire_type, value in fields(view):
        if wire_type != 2:
            continue
        if number == RPC_CLAIMS_IDENTITY_CLAIMS:
            claim_value = claim_type = ""
            for inner, inner_type, item in fields(value):
                if inner_type == 2:
                    if inner == RPC_CLAIM_VALUE:
                        claim_value = read_text(item)
                    elif inner == RPC_CLAIM_TYPE:
                        claim_type = read_text(item)
            claims.append(Claim(type=claim_type, value=claim_value))
        elif number == RPC_CLAIMS_IDENTITY_AUTHENTICATION_TYPE:
            authentication_type = _nullable_string(value)
        elif number == RPC_CLAIMS_IDENTITY_NAME_CLAIM_TYPE:
            name_claim_type = _nullable_string(value)
        elif number == RPC_CLAIMS_IDENTITY_ROLE_CLAIM_TYPE:
            role_claim_type = _nullable_string(value)
    return ClaimsIdentity(
        authentication_type=authentication_type,
        name_claim_type=name_claim_type,
        role_claim_type=role_claim_type,
        claims=tuple(claims),
    )


def _nullable_string(view: memoryview) -> str | None:
    """A `NullableString`: a wrapper with its value unset is a null, like no wrapper."""
    text = None
    for number, wire_type, item in fields(view):
        if number == NULLABLE_STRING_VALUE and wire_type == 2:
            text = read_text(item)
    return text


#: Kinds an HTTP body may have, and those of them that must be valid UTF-8.
_BODY_KINDS = frozenset((TYPED_DATA_STRING, TYPED_DATA_JSON, TYPED_DATA_BYTES, TYPED_DATA_STREAM))
_TEXT_KINDS = frozenset((TYPED_DATA_STRING, TYPED_DATA_JSON))


def _http_body(body: memoryview | None, raw_body: memoryview | None) -> bytes:
    where = "TypedData.http.body"
    kind, value = _last_member(body)
    if kind == 0 and raw_body is not None:
        where = "TypedData.http.raw_body"
        kind, value = _last_member(raw_body)
    if kind == 0:
        return b""
    if kind in _BODY_KINDS and isinstance(value, memoryview):
        if kind in _TEXT_KINDS:
            read_text(value)  # must be valid UTF-8, as a str field
        return bytes(value)
    name = _KIND_NAMES.get(kind, str(kind))
    raise ConversionError(f"cannot decode {where}: unsupported kind {name!r}")


#: The names of the kinds an HTTP body cannot have, for the error.
_KIND_NAMES = {
    TYPED_DATA_HTTP: "http",
    TYPED_DATA_INT: "int",
    TYPED_DATA_DOUBLE: "double",
    TYPED_DATA_COLLECTION_BYTES: "collection_bytes",
    TYPED_DATA_COLLECTION_STRING: "collection_string",
    TYPED_DATA_COLLECTION_DOUBLE: "collection_double",
    TYPED_DATA_COLLECTION_SINT64: "collection_sint64",
    TYPED_DATA_MODEL_BINDING_DATA: "model_binding_data",
    TYPED_DATA_COLLECTION_MODEL_BINDING_DATA: "collection_model_binding_data",
}


def _last_member(view: memoryview | None) -> tuple[int, Any]:
    if view is None:
        return 0, None
    kind, _, value = last_field(view)
    return kind, value


# -- encoding ----------------------------------------------------------------------------------
_TRUE, _FALSE = field(TAG_TYPED_DATA_JSON, b"true"), field(TAG_TYPED_DATA_JSON, b"false")
#: `RpcHttp.enable_content_negotiation = true`
_NEGOTIATE = TAG_RPC_HTTP_ENABLE_CONTENT_NEGOTIATION + b"\x01"


def encode_value(value: Any) -> bytes:
    """The bytes of `convert.encode(value)`; raises `ConversionError` like `encode`."""
    return b"".join(encode_chunks(value))


def encode_chunks(value: Any) -> Chunks:
    """`encode_value` as pieces, so a large body is copied once, into the final message."""
    kind = type(value)
    try:
        if kind is str:
            return [text_field(TAG_TYPED_DATA_STRING, value)]
        if kind is bytes:
            return [TAG_TYPED_DATA_BYTES, varint_bytes(len(value)), value]
        if kind is bool:
            return [_TRUE if value else _FALSE]
        if kind is int and _INT64_MIN <= value <= _INT64_MAX:
            return [TAG_TYPED_DATA_INT, varint_bytes((value << 1) ^ (value >> 63))]
        if kind is float:
            return [TAG_TYPED_DATA_DOUBLE, _DOUBLE.pack(value)]
        if kind is dict or kind is list or kind is tuple:
            return [text_field(TAG_TYPED_DATA_JSON, _dump_json(value))]
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
        entry = text_field(TAG_MAP_ENTRY_KEY, name) + text_field(TAG_MAP_ENTRY_VALUE, text)
        parts.append(field(TAG_RPC_HTTP_HEADERS, entry))
    if isinstance(body, str):
        parts += wrapped(TAG_RPC_HTTP_BODY, [text_field(TAG_TYPED_DATA_STRING, body)])
    else:
        assert isinstance(body, bytes)  # by its type, checked above
        parts += wrapped(TAG_RPC_HTTP_BODY, [TAG_TYPED_DATA_BYTES, varint_bytes(len(body)), body])
    parts.append(text_field(TAG_RPC_HTTP_STATUS_CODE, str(status)))
    if response.enable_content_negotiation:
        parts.append(_NEGOTIATE)
    return wrapped(TAG_TYPED_DATA_HTTP, parts)
