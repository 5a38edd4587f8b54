"""Two-way mapping between `TypedData` and Python values. Pure functions, no I/O.

Four entry points, two per side of the stream:

- worker side: `decode` (host → worker inputs) and `encode` (worker → host outputs);
- host side (test hosts, the emulator): `encode_input` and `decode_output`.

Host → worker (`decode`; `encode_input` is the inverse)::

    TypedData kind                 Python value
    -----------------------------  -------------------------------------------------------------
    (no oneof set)                 None
    string                         str
    json                           parsed value: dict, list, str, int, float, bool or None
    bytes, stream                  bytes
    int                            int
    double                         float
    collection_string              list[str]
    collection_bytes               list[bytes]
    collection_double              list[float]
    collection_sint64              list[int]
    http                           HttpRequest (plain and nullable_* maps merged, nullable wins)
    model_binding_data             ModelBindingData
    collection_model_binding_data  list[ModelBindingData]

    HttpRequest.body comes from `body`: bytes/stream as is, string/json text encoded as UTF-8;
    when `body` is absent or unset, from `rawBody` by the same rules; otherwise b"". Header
    names are lower-cased; a null NullableString value becomes "".

    `encode_input` picks a `collection_*` kind only for a non-empty `list` whose items all have
    one type (str, bytes, float, int within 64 bits, ModelBindingData); other lists and tuples
    become json. It rejects HttpResponse. An HttpRequest is sent with the nullable_* maps
    (`nullable=True`, the default) or with the plain maps (`nullable=False`), never both.

Worker → host (`encode`; `decode_output` is the inverse)::

    Python value                   TypedData kind
    -----------------------------  -------------------------------------------------------------
    None                           (no oneof set): the host skips the output binding
    HttpResponse                   http: status_code as a string, body always set (bytes or
                                   string), headers, cookies, enable_content_negotiation
    str                            string
    bytes, bytearray, memoryview   bytes
    bool                           json "true" / "false" (checked before int)
    int                            int; json when outside the signed 64-bit range
    float                          double (NaN and infinities allowed here; not inside json)
    dict, list, tuple              json: compact, ensure_ascii=False, strict (no NaN/Infinity);
                                   non-str dict keys are stringified by `json`, tuples come
                                   back as lists
    anything else                  ConversionError (incl. HttpRequest and ModelBindingData)

What the host accepts back: string, json, bytes, stream, http, int,
double, or no value. It fails the invocation on `collection_*`, `model_binding_data` and
`collection_model_binding_data`, so `encode` never produces them and `decode_output` rejects
them as the host would. `decode_output` reads `http` back as HttpResponse: an empty or
unparsable status code means 200, a json body is returned as its text.

Every failure is a `ConversionError` (a `ValueError`) naming what could not be converted and why.
"""

import datetime
import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from workerkit._wire.pb import pb, shared

if TYPE_CHECKING:
    from workerkit._generated import (
        NullableBool,
        NullableString,
        RpcClaimsIdentity,
    )

from workerkit._values import (
    Claim,
    ClaimsIdentity,
    ConversionError,
    HttpCookie,
    HttpRequest,
    HttpResponse,
    ModelBindingData,
    _dump_json,
    _SameSite,
)

__all__ = [
    "Claim",
    "ClaimsIdentity",
    "ConversionError",
    "HttpCookie",
    "HttpRequest",
    "HttpResponse",
    "ModelBindingData",
    "decode",
    "decode_output",
    "encode",
    "encode_input",
]


# ---------------------------------------------------------------------------------------------
# Worker side


def decode(data: "pb.TypedData") -> Any:
    """Convert a `TypedData` sent by the host into a Python value (see the module table).

    Raises:
        ConversionError: the data is malformed or of a kind this module does not know.
    """
    return _guarded_decode(data, output=False)


def encode(value: Any) -> "pb.TypedData":
    """Convert a function output into a `TypedData` the host accepts (see the module table).

    Raises:
        ConversionError: the value's type is not supported or its content cannot be sent.
    """
    return _guarded_encode(value, host=False, nullable=False)


# ---------------------------------------------------------------------------------------------
# Host side


def encode_input(value: Any, nullable: bool = True) -> "pb.TypedData":
    """Convert a Python value into a `TypedData` as the host sends it to a worker.

    Args:
        value: the input value (see the module table).
        nullable: for an HttpRequest, fill only the `nullable_*` maps (as the host does for a
            worker advertising `UseNullableValueDictionaryForHttp`) or only the plain maps.

    Raises:
        ConversionError: the value's type is not supported or its content cannot be sent.
    """
    return _guarded_encode(value, host=True, nullable=nullable)


def decode_output(data: "pb.TypedData") -> Any:
    """Convert a `TypedData` produced by a worker back into a Python value, as the host reads it.

    Raises:
        ConversionError: the data is malformed, or of a kind the host rejects in outputs.
    """
    return _guarded_decode(data, output=True)


# ---------------------------------------------------------------------------------------------
# Decoding

_COLLECTION_FIELDS: Final = {
    "collection_string": "string",
    "collection_bytes": "bytes",
    "collection_double": "double",
    "collection_sint64": "sint64",
}
_REJECTED_OUTPUTS: Final = frozenset(
    [*_COLLECTION_FIELDS, "model_binding_data", "collection_model_binding_data"]
)


def _guarded_decode(data: "pb.TypedData", output: bool) -> Any:
    if not isinstance(data, pb.TypedData):
        raise ConversionError(f"cannot decode value of type {type(data).__name__!r}: not TypedData")
    try:
        return _decode(data, output)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"cannot decode TypedData: {type(exc).__name__}: {exc}") from exc


def _which(data: "pb.TypedData | None") -> tuple[str, Any]:
    """Name and value of the set `data` member; ("", None) when unset or absent."""
    if data is None:
        return "", None
    import betterproto2  # loaded with the messages

    return betterproto2.which_one_of(data, "data")


def _decode(data: "pb.TypedData", output: bool) -> Any:
    kind, value = _which(data)
    if output and kind in _REJECTED_OUTPUTS:
        raise ConversionError(
            f"cannot decode TypedData.{kind} as a worker output: "
            "the host rejects collection and model binding kinds (send a json array instead)"
        )
    match kind:
        case "":
            return None
        case "string" | "bytes" | "stream" | "int" | "double":
            return value
        case "json":
            return _loads(value, "TypedData.json")
        case "http":
            return _decode_response(value) if output else _decode_request(value)
        case "collection_string" | "collection_bytes" | "collection_double" | "collection_sint64":
            return list(getattr(value, _COLLECTION_FIELDS[kind]))
        case "model_binding_data":
            return _decode_model_binding_data(value)
        case "collection_model_binding_data":
            return [_decode_model_binding_data(m) for m in value.model_binding_data]
        case _:
            raise ConversionError(f"cannot decode TypedData.{kind}: unsupported kind")


def _loads(text: str | bytes, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConversionError(f"cannot decode {where}: {exc}") from exc


def _decode_model_binding_data(value: "pb.ModelBindingData") -> ModelBindingData:
    return ModelBindingData(
        version=value.version,
        source=value.source,
        content_type=value.content_type,
        content=value.content,
    )


def _merge_maps(plain: dict[str, str], nullable: "dict[str, NullableString]") -> dict[str, str]:
    if not nullable:
        return plain
    merged = dict(plain)
    for key, wrapped in nullable.items():
        value = wrapped.value if wrapped is not None else None
        merged[key] = value if value is not None else ""
    return merged


def _decode_request(http: "pb.RpcHttp") -> HttpRequest:
    return HttpRequest(
        method=http.method,
        url=http.url,
        headers=_merge_maps(http.headers, http.nullable_headers),
        query=_merge_maps(http.query, http.nullable_query),
        params=_merge_maps(http.params, http.nullable_params),
        body=_decode_request_body(http),
        identities=tuple(_decode_identity(i) for i in http.identities),
    )


def _decode_request_body(http: "pb.RpcHttp") -> bytes:
    where = "TypedData.http.body"
    kind, value = _which(http.body)
    if not kind and http.raw_body is not None:
        where = "TypedData.http.raw_body"
        kind, value = _which(http.raw_body)
    match kind:
        case "bytes" | "stream":
            body: bytes = value
            return body
        case "string" | "json":
            text: str = value
            return text.encode()
        case "":
            return b""
        case _:
            raise ConversionError(f"cannot decode {where}: unsupported kind {kind!r}")


def _unwrap(wrapped: "NullableString | None") -> str | None:
    return None if wrapped is None else wrapped.value


def _decode_identity(identity: "RpcClaimsIdentity") -> ClaimsIdentity:
    return ClaimsIdentity(
        authentication_type=_unwrap(identity.authentication_type),
        name_claim_type=_unwrap(identity.name_claim_type),
        role_claim_type=_unwrap(identity.role_claim_type),
        claims=tuple(Claim(type=c.type, value=c.value) for c in identity.claims),
    )


# A status code as the host reads it, also for the emulator: .NET's int.TryParse with
# NumberStyles.Integer (ASCII white space around a sign and ASCII digits, leading zeros
# free, NULs tolerated at the very end, signed 32-bit), else 200 (TryParseStatusCode in
# Azure/azure-functions-host src/WebJobs.Script/Binding/Http/HttpBinding.cs).
_DOTNET_INTEGER: Final = re.compile(r"[\t\n\v\f\r ]*([+-]?)([0-9]+)[\t\n\v\f\r ]*\0*")
_INT32_DIGITS: Final = 10


def _parse_status(text: str) -> int:
    match = _DOTNET_INTEGER.fullmatch(text)
    if match is not None:
        digits = match[2].lstrip("0") or "0"
        if len(digits) <= _INT32_DIGITS:
            status = int(match[1] + digits)
            if -(2**31) <= status < 2**31:
                return status
    return 200


def _decode_response(http: "pb.RpcHttp") -> HttpResponse:
    return HttpResponse(
        status_code=_parse_status(http.status_code),
        body=_decode_response_body(http.body),
        headers=dict(http.headers),
        cookies=[_decode_cookie(c) for c in http.cookies],
        enable_content_negotiation=http.enable_content_negotiation,
    )


def _decode_response_body(data: "pb.TypedData | None") -> bytes | str:
    kind, value = _which(data)
    match kind:
        case "bytes" | "stream" | "string" | "json":
            body: bytes | str = value
            return body
        case "":
            return b""
        case _:
            raise ConversionError(
                f"cannot decode TypedData.http.body: unsupported kind {kind!r}; use bytes or string"
            )


#: `RpcHttpCookie.SameSite` values: None_, Lax, Strict, ExplicitNone.
_SAME_SITE_TO_PB: Final[dict[_SameSite | None, int]] = {None: 0, "lax": 1, "strict": 2, "none": 3}
_SAME_SITE_FROM_PB: Final = {v: k for k, v in _SAME_SITE_TO_PB.items()}


def _decode_cookie(cookie: "pb.RpcHttpCookie") -> HttpCookie:
    try:
        same_site = _SAME_SITE_FROM_PB[cookie.same_site]
    except KeyError:
        raise ConversionError(
            f"cannot decode cookie {cookie.name!r}: unknown same_site value {int(cookie.same_site)}"
        ) from None
    return HttpCookie(
        name=cookie.name,
        value=cookie.value,
        domain=_unwrap(cookie.domain),
        path=_unwrap(cookie.path),
        expires=None if cookie.expires is None else cookie.expires.value,
        secure=None if cookie.secure is None else cookie.secure.value,
        http_only=None if cookie.http_only is None else cookie.http_only.value,
        max_age=None if cookie.max_age is None else cookie.max_age.value,
        same_site=same_site,
    )


# ---------------------------------------------------------------------------------------------
# Encoding

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_WORKER_TYPES: Final = "use str, bytes, int, float, bool, dict, list, None or HttpResponse"
_HOST_TYPES: Final = (
    "use str, bytes, int, float, bool, dict, list, None, HttpRequest or ModelBindingData"
)


def _guarded_encode(value: Any, host: bool, nullable: bool) -> "pb.TypedData":
    try:
        return _encode(value, host, nullable)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"cannot encode value of type {type(value).__name__!r} as TypedData: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _encode(value: Any, host: bool, nullable: bool) -> "pb.TypedData":
    if value is None:
        return pb.TypedData()
    if isinstance(value, str):
        return pb.TypedData(string=value)
    if isinstance(value, bytes):
        return pb.TypedData(bytes=value)
    if isinstance(value, bytearray | memoryview):
        return pb.TypedData(bytes=bytes(value))
    if isinstance(value, bool):
        return pb.TypedData(json="true" if value else "false")
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return pb.TypedData(int=int(value))
        return pb.TypedData(json=int.__repr__(value))
    if isinstance(value, float):
        return pb.TypedData(double=float(value))
    if isinstance(value, list):
        if host and value:
            collection = _encode_collection(value)
            if collection is not None:
                return collection
        return pb.TypedData(json=_dump_json(value))
    if isinstance(value, dict | tuple):
        return pb.TypedData(json=_dump_json(value))
    if host:
        if isinstance(value, HttpRequest):
            return pb.TypedData(http=_encode_request(value, nullable))
        if isinstance(value, ModelBindingData):
            return pb.TypedData(model_binding_data=_encode_model_binding_data(value))
        reason = (
            "the host sends HttpRequest, not HttpResponse"
            if isinstance(value, HttpResponse)
            else _HOST_TYPES
        )
    else:
        if isinstance(value, HttpResponse):
            return pb.TypedData(http=_encode_response(value))
        if isinstance(value, ModelBindingData):
            reason = "the host does not accept model binding data back"
        elif isinstance(value, HttpRequest):
            reason = "an HttpRequest is an input; return an HttpResponse"
        else:
            reason = _WORKER_TYPES
    raise ConversionError(
        f"cannot encode value of type {type(value).__name__!r} as TypedData: {reason}"
    )


def _is_int64(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and _INT64_MIN <= item <= _INT64_MAX


def _encode_collection(items: list[Any]) -> "pb.TypedData | None":
    first = items[0]
    if isinstance(first, str):
        if all(isinstance(item, str) for item in items):
            return pb.TypedData(collection_string=pb.CollectionString(string=list(items)))
    elif isinstance(first, bytes):
        if all(isinstance(item, bytes) for item in items):
            return pb.TypedData(collection_bytes=pb.CollectionBytes(bytes=list(items)))
    elif isinstance(first, float):
        if all(isinstance(item, float) for item in items):
            return pb.TypedData(collection_double=pb.CollectionDouble(double=list(items)))
    elif isinstance(first, ModelBindingData):
        if all(isinstance(item, ModelBindingData) for item in items):
            data = [_encode_model_binding_data(item) for item in items]
            return pb.TypedData(
                collection_model_binding_data=pb.CollectionModelBindingData(model_binding_data=data)
            )
    elif all(_is_int64(item) for item in items):
        return pb.TypedData(collection_sint64=pb.CollectionSInt64(sint64=list(items)))
    return None


def _encode_model_binding_data(value: ModelBindingData) -> "pb.ModelBindingData":
    return pb.ModelBindingData(
        version=value.version,
        source=value.source,
        content_type=value.content_type,
        content=value.content,
    )


def _str_map(mapping: Mapping[str, str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConversionError(
                f"cannot encode {where}: keys and values must be str, "
                f"got {type(key).__name__!r}: {type(value).__name__!r}"
            )
        out[key] = value
    return out


def _wrap(value: str | None) -> "NullableString | None":
    return None if value is None else shared.NullableString(value=value)


def _encode_request(request: HttpRequest, nullable: bool) -> "pb.RpcHttp":
    http = pb.RpcHttp(
        method=request.method,
        url=request.url,
        body=pb.TypedData(bytes=request.body),
        identities=[
            shared.RpcClaimsIdentity(
                authentication_type=_wrap(i.authentication_type),
                name_claim_type=_wrap(i.name_claim_type),
                role_claim_type=_wrap(i.role_claim_type),
                claims=[shared.RpcClaim(type=c.type, value=c.value) for c in i.claims],
            )
            for i in request.identities
        ],
    )
    headers = _str_map(request.headers, "HttpRequest.headers")
    query = _str_map(request.query, "HttpRequest.query")
    params = _str_map(request.params, "HttpRequest.params")
    if nullable:
        http.nullable_headers = {k: shared.NullableString(value=v) for k, v in headers.items()}
        http.nullable_query = {k: shared.NullableString(value=v) for k, v in query.items()}
        http.nullable_params = {k: shared.NullableString(value=v) for k, v in params.items()}
    else:
        http.headers = headers
        http.query = query
        http.params = params
    return http


def _encode_response(response: HttpResponse) -> "pb.RpcHttp":
    status = response.status_code
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ConversionError(
            "cannot encode HttpResponse: status_code must be an int in 200..599 (a 1xx status"
            f" is not a final response: the client would wait for another), got {status!r}"
        )
    body = response.body
    if isinstance(body, bytes):
        body_data = pb.TypedData(bytes=body)
    elif isinstance(body, str):
        body_data = pb.TypedData(string=body)
    elif isinstance(body, bytearray | memoryview):
        body_data = pb.TypedData(bytes=bytes(body))
    elif hasattr(body, "__aiter__") or hasattr(body, "__next__"):
        raise ConversionError(
            "cannot encode a streamed HttpResponse.body (an iterator of chunks) as TypedData:"
            " the worker writes it through the host's proxy (WORKERKIT_HTTP_STREAMING=true)"
            " or gathers it before encoding; give bytes or str here"
        )
    else:
        raise ConversionError(
            f"cannot encode HttpResponse.body of type {type(body).__name__!r}: "
            "use bytes or str (HttpResponse.from_json for JSON)"
        )
    return pb.RpcHttp(
        status_code=str(int(status)),
        body=body_data,
        headers=_str_map(response.headers, "HttpResponse.headers"),
        cookies=[_encode_cookie(c) for c in response.cookies],
        enable_content_negotiation=bool(response.enable_content_negotiation),
    )


def _cookie_error(cookie: HttpCookie, problem: str) -> ConversionError:
    return ConversionError(f"cannot encode cookie {cookie.name!r}: {problem}")


def _optional_str(cookie: HttpCookie, name: str, value: object) -> "NullableString | None":
    if value is None:
        return None
    if not isinstance(value, str):
        raise _cookie_error(cookie, f"{name} must be str or None, got {type(value).__name__!r}")
    return shared.NullableString(value=value)


def _optional_bool(cookie: HttpCookie, name: str, value: object) -> "NullableBool | None":
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _cookie_error(cookie, f"{name} must be bool or None, got {type(value).__name__!r}")
    return shared.NullableBool(value=value)


def _encode_cookie(cookie: HttpCookie) -> "pb.RpcHttpCookie":
    if not isinstance(cookie, HttpCookie):
        raise ConversionError(
            f"cannot encode HttpResponse.cookies item of type {type(cookie).__name__!r}: "
            "use HttpCookie"
        )
    if not isinstance(cookie.name, str) or not isinstance(cookie.value, str):
        raise _cookie_error(cookie, "name and value must be str")
    expires = cookie.expires
    if expires is not None and (
        not isinstance(expires, datetime.datetime) or expires.utcoffset() is None
    ):
        raise _cookie_error(cookie, f"expires must be a timezone-aware datetime, got {expires!r}")
    if expires is not None:
        try:
            expires = expires.astimezone(datetime.UTC)
        except OverflowError:
            raise _cookie_error(cookie, f"expires is out of range in UTC: {expires!r}") from None
    max_age = cookie.max_age
    if max_age is not None and (
        isinstance(max_age, bool)
        or not isinstance(max_age, int | float)
        or not math.isfinite(max_age)
    ):
        raise _cookie_error(cookie, f"max_age must be a finite number of seconds, got {max_age!r}")
    try:
        same_site = pb.RpcHttpCookieSameSite(_SAME_SITE_TO_PB[cookie.same_site])
    except (KeyError, TypeError):
        raise _cookie_error(
            cookie, f"same_site must be 'lax', 'strict', 'none' or None, got {cookie.same_site!r}"
        ) from None
    return pb.RpcHttpCookie(
        name=cookie.name,
        value=cookie.value,
        domain=_optional_str(cookie, "domain", cookie.domain),
        path=_optional_str(cookie, "path", cookie.path),
        expires=None if expires is None else shared.NullableTimestamp(value=expires),
        secure=_optional_bool(cookie, "secure", cookie.secure),
        http_only=_optional_bool(cookie, "http_only", cookie.http_only),
        max_age=None if max_age is None else shared.NullableDouble(value=float(max_age)),
        same_site=same_site,
    )
