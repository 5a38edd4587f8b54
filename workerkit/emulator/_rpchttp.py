"""HTTP requests into `RpcHttp` and HTTP outputs back into responses, as the host does.

Pure functions (no I/O). The host's code for the request is ``ToRpcHttp`` in
src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageConversionExtensions.cs; for the
response, src/WebJobs.Script/Binding/Http/HttpBinding.cs and RawScriptResult.cs (paths in
Azure/azure-functions-host).

Request (`build_rpc_http`), depending on the capabilities the worker declared:

- ``url`` as received; header names lower-cased, repeated headers and query keys comma-joined;
- ``UseNullableValueDictionaryForHttp``: ``nullable_headers``/``nullable_query``/
  ``nullable_params`` (empty values kept) *instead of* ``headers``/``query``/``params``
  (empty query values dropped; empty headers dropped only with
  ``IgnoreEmptyValuedRpcHttpHeaders``); route parameters without a value are left out;
- a body only when the request has one (the host: ``Content-Length`` > 0), per this matrix:

  ==============================  ==============================  ==========  ==================
  capabilities                    content type                    body        rawBody
  ==============================  ==============================  ==========  ==================
  RpcHttpBodyOnly + RawHttpBody…  any                             bytes       unset
  RpcHttpBodyOnly                 octet-stream, multipart/*       bytes       unset
  RpcHttpBodyOnly                 anything else                   string      unset
  legacy                          application/json, valid JSON    json        string (bytes¹)
  legacy                          application/json, invalid       string      string (bytes¹)
  legacy                          octet-stream, multipart/*       bytes       string (bytes¹)
  legacy                          other or none                   string      string (bytes¹)
  ==============================  ==============================  ==========  ==================

  ¹ with ``RawHttpBodyBytes``. Text is read the way the host reads it (`host_text`): UTF-8,
  or the UTF-16/UTF-32 a byte order mark names, undecodable bytes replaced; the content
  type's charset plays no part. The legacy octet-stream/multipart ``rawBody`` string is
  plain UTF-8 (a byte order mark stays in it).

Response (`response_from_output`): no value (none sent, or an empty one) is 204 without a
body, as the host answers when no HTTP output was bound (``HttpBinding.SetResponse`` stores
``ObjectResult(null)``, which ASP.NET Core's ``HttpNoContentOutputFormatter`` writes as 204);
an ``http`` value gives status (a string; empty or unparsable means 200), headers
(``content-type`` sets the content type), cookies (ignored with
``enable_content_negotiation``) and body (bytes verbatim, string as text, json re-serialized
indented, numbers as text). Without ``body`` the host ignores the rest and answers 200 with the
response object as JSON. Other kinds are "sniffed": a string that parses as JSON is treated as
JSON; a JSON object with a ``body`` key describes the response (``body``, ``statusCode`` or
``status``, ``headers``; its other keys are ignored; `HttpOutput.response_object` says which
keys were read, so the emulator can tell the author); other JSON is re-serialized indented;
other text is written as is. `ResponseError` means the host would fail the request (answered
500).
"""

from __future__ import annotations

import codecs
import datetime
import email.utils
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import betterproto2

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._generated import NullableString
from workerkit.convert import _parse_status

__all__ = [
    "HttpOutput",
    "IncomingRequest",
    "ResponseError",
    "ResponseObject",
    "build_rpc_http",
    "host_text",
    "http_trigger_metadata",
    "response_from_output",
]

_BINARY_TYPES: Final = ("application/octet-stream", "multipart/")
_DROPPED_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})
_SAME_SITE: Final = {
    pb.RpcHttpCookieSameSite.Lax: "Lax",
    pb.RpcHttpCookieSameSite.Strict: "Strict",
    pb.RpcHttpCookieSameSite.ExplicitNone: "None",
}
#: Byte order marks a .NET StreamReader recognises, UTF-32 LE before the UTF-16 LE mark it
#: begins with.
_BYTE_ORDER_MARKS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


class ResponseError(Exception):
    """The worker's HTTP output cannot be turned into a response (the host answers 500)."""


@dataclass(frozen=True)
class IncomingRequest:
    """An HTTP request as received by the front door.

    Attributes:
        headers: (name, value) pairs in arrival order, names as sent.
        query: decoded (key, value) pairs in order.
        params: route parameter values; None for an absent optional parameter.
        body: the body bytes; None when the request had none.
    """

    method: str
    url: str
    headers: Sequence[tuple[str, str]] = ()
    query: Sequence[tuple[str, str]] = ()
    params: Mapping[str, str | None] = field(default_factory=dict)
    body: bytes | None = None

    def header(self, name: str) -> str | None:
        """The comma-joined value of header `name` (any case), or None."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None


@dataclass(frozen=True)
class ResponseObject:
    """A JSON object output the host read as a response description (it has a ``body`` key).

    Attributes:
        read: the keys it took, as spelled (``body``; ``statusCode`` or else ``status``;
            ``headers`` when an object; ``cookies``, ``enableContentNegotiation``).
        ignored: the other keys, as spelled.
    """

    read: tuple[str, ...]
    ignored: tuple[str, ...]


@dataclass
class HttpOutput:
    """A response to write: status, header pairs (repeatable, e.g. Set-Cookie) and body.

    `notes` are things the host does silently that the author should know (logged);
    `response_object` is set when the output was a JSON object read as a response description.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    notes: list[str] = field(default_factory=list)
    response_object: ResponseObject | None = None


def _joined(pairs: Sequence[tuple[str, str]], lower: bool) -> dict[str, str]:
    joined: dict[str, list[str]] = {}
    spelled: dict[str, str] = {}
    for key, value in pairs:
        folded = key.lower()
        name = folded if lower else spelled.setdefault(folded, key)
        joined.setdefault(name, []).append(value)
    return {key: ",".join(values) for key, values in joined.items()}


def host_text(data: bytes) -> str:
    """A request body as the host reads it into a string: UTF-8, unless a byte order mark
    names UTF-16 or UTF-32 (the mark is dropped); undecodable bytes become U+FFFD.

    The Content-Type charset is ignored: the host reads the body with the HTTP extension's
    ``ReadAsStringAsync``, a StreamReader on UTF-8 that detects byte order marks
    (Azure/azure-webjobs-sdk-extensions
    src/WebJobs.Extensions.Http/Extensions/HttpRequestExtensions.cs), both for the RpcHttp
    body (``PopulateBody``/``PopulateBodyAndRawBody`` in the host's
    GrpcMessageConversionExtensions.cs) and for the binding data of a JSON body.
    """
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return data[len(mark) :].decode(encoding, "replace")
    return data.decode("utf-8", "replace")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def build_rpc_http(request: IncomingRequest, capabilities: Mapping[str, str]) -> pb.RpcHttp:
    """The `RpcHttp` the host sends for `request` to a worker with `capabilities`.

    To a worker that reported ``HttpUri`` the request itself is forwarded (`_proxy`): the
    `RpcHttp` is empty, but for the route parameters with ``RequiresRouteParameters``
    (``ToRpcHttp``'s first two branches).
    """
    nullable = bool(capabilities.get("UseNullableValueDictionaryForHttp"))
    params = {k: v for k, v in request.params.items() if v is not None}
    if capabilities.get("HttpUri"):
        proxied = pb.RpcHttp()
        if capabilities.get("RequiresRouteParameters"):
            if nullable:
                proxied.nullable_params = {k: NullableString(value=v) for k, v in params.items()}
            else:
                proxied.params = params
        return proxied
    headers = _joined(request.headers, lower=True)
    query = _joined(request.query, lower=False)
    http = pb.RpcHttp(method=request.method, url=request.url)
    if nullable:
        http.nullable_headers = {k: NullableString(value=v) for k, v in headers.items()}
        http.nullable_query = {k: NullableString(value=v) for k, v in query.items()}
        http.nullable_params = {k: NullableString(value=v) for k, v in params.items()}
    else:
        if capabilities.get("IgnoreEmptyValuedRpcHttpHeaders"):
            headers = {k: v for k, v in headers.items() if v}
        http.headers = headers
        http.query = {k: v for k, v in query.items() if v}
        http.params = params
    if request.body:
        body, raw = _bodies(request.body, request.header("content-type"), capabilities)
        http.body = body
        if raw is not None:
            http.raw_body = raw
    return http


def _bodies(
    data: bytes, content_type: str | None, capabilities: Mapping[str, str]
) -> tuple[pb.TypedData, pb.TypedData | None]:
    media = _media_type(content_type)
    binary = media.startswith(_BINARY_TYPES)
    raw_bytes = bool(capabilities.get("RawHttpBodyBytes"))
    if capabilities.get("RpcHttpBodyOnly"):
        if raw_bytes or binary:
            return pb.TypedData(bytes=data), None
        return pb.TypedData(string=host_text(data)), None
    if binary:  # here the host turns the bytes into text itself: Encoding.UTF8.GetString
        raw_text = data.decode("utf-8", "replace")
        raw = pb.TypedData(bytes=data) if raw_bytes else pb.TypedData(string=raw_text)
        return pb.TypedData(bytes=data), raw
    text = host_text(data)
    raw = pb.TypedData(bytes=data) if raw_bytes else pb.TypedData(string=text)
    if media == "application/json":
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return pb.TypedData(string=text), raw
        return pb.TypedData(json=json.dumps(parsed, separators=(",", ":"))), raw
    return pb.TypedData(string=text), raw


def http_trigger_metadata(
    request: IncomingRequest,
    http: pb.RpcHttp,
    trigger_name: str,
    capabilities: Mapping[str, str],
) -> dict[str, pb.TypedData]:
    """The ``trigger_metadata`` of an HTTP invocation, from the HTTP trigger's binding data
    (``GetRequestBindingData`` in Azure/azure-webjobs-sdk-extensions
    src/WebJobs.Extensions.Http/HttpTriggerAttributeBindingProvider.cs).

    ``Query`` and ``Headers`` (json objects), each query parameter but ``code``, the
    top-level properties of a JSON object body and the route parameters (strings win over
    query values of the same name); plus ``$request`` and the trigger's name carrying the
    `RpcHttp` unless the worker declared ``RpcHttpTriggerMetadataRemoved``.
    """
    headers = _joined(request.headers, lower=True)
    query = _joined(request.query, lower=False)
    metadata: dict[str, pb.TypedData] = {
        "Query": pb.TypedData(json=json.dumps(query, separators=(",", ":"))),
        "Headers": pb.TypedData(json=json.dumps(headers, separators=(",", ":"))),
    }
    for key, value in query.items():
        if key.lower() != "code":
            metadata[key] = pb.TypedData(string=value)
    if request.body and _media_type(request.header("content-type")) == "application/json":
        try:
            document = json.loads(host_text(request.body))
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict):
            for key, value in document.items():
                if isinstance(value, str):
                    metadata[key] = pb.TypedData(string=value)
                elif value is not None:
                    metadata[key] = pb.TypedData(json=json.dumps(value, separators=(",", ":")))
    for key, param in request.params.items():
        if param is not None:
            metadata[key] = pb.TypedData(string=param)
    if not capabilities.get("RpcHttpTriggerMetadataRemoved"):
        metadata["$request"] = pb.TypedData(http=http)
        metadata[trigger_name] = pb.TypedData(http=http)
    return metadata


# ---------------------------------------------------------------------------------------------
# Responses


def response_from_output(data: pb.TypedData | None) -> HttpOutput:
    """The HTTP response the host writes for an HTTP output value (module docstring).

    None or an empty `TypedData` is an empty 204 (module docstring).

    Raises:
        ResponseError: a kind the host rejects, an invalid status code or header.
    """
    kind, value = _which(data)
    match kind:
        case "":
            return HttpOutput(204)
        case "http":
            return _from_rpc_http(value)
        case "string":
            return _sniff(value)
        case "json":
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise ResponseError(f"the http output is invalid JSON: {exc}") from None
            return _sniff_value(parsed)
        case "bytes" | "stream":
            return _finish(200, [], value, "application/octet-stream", [])
        case "int" | "double":
            return _finish(200, [], str(value).encode(), "text/plain; charset=utf-8", [])
        case _:
            raise ResponseError(
                f"the http output is TypedData.{kind}, which the host cannot write as a response"
            )


def _from_rpc_http(http: pb.RpcHttp) -> HttpOutput:
    notes: list[str] = []
    status = _parse_status(http.status_code)
    if http.body is None:
        notes.append(
            "the response has no body: the host then ignores status, headers and cookies and"
            " answers 200 with the response object as JSON (always set body)"
        )
        expando = {
            "method": http.method,
            "query": dict(http.query),
            "statusCode": http.status_code,
            "headers": dict(http.headers),
            "enableContentNegotiation": http.enable_content_negotiation,
            "cookies": [],
        }
        return _finish(
            200, [], json.dumps(expando).encode(), "application/json; charset=utf-8", notes
        )
    headers = list(http.headers.items())
    if http.cookies:
        if http.enable_content_negotiation:
            notes.append("cookies are ignored with enable_content_negotiation")
        else:
            headers += [("Set-Cookie", _cookie(c)) for c in http.cookies]
    kind, value = _which(http.body)
    match kind:
        case "bytes" | "stream":
            body, default = value, "application/octet-stream"
        case "string":
            body, default = value.encode(), "text/plain; charset=utf-8"
        case "json":
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise ResponseError(f"the response body is invalid JSON: {exc}") from None
            body, default = _indented(parsed), "application/json; charset=utf-8"
        case "int" | "double":
            body, default = str(value).encode(), "text/plain; charset=utf-8"
        case "":
            body, default = b"", ""
        case _:
            raise ResponseError(f"the response body is TypedData.{kind}; use bytes or string")
    return _finish(status, headers, body, default, notes)


def _sniff(text: str) -> HttpOutput:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return _finish(200, [], text.encode(), "text/plain; charset=utf-8", [])
    return _sniff_value(parsed)


def _sniff_value(value: Any) -> HttpOutput:
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        if "body" in lowered:
            output = _described(lowered)
            output.response_object = _keys_read(value)
            return output
    return _finish(200, [], _indented(value), "application/json; charset=utf-8", [])


def _keys_read(value: dict[Any, Any]) -> ResponseObject:
    """Which keys of a response object the host reads (``ParseResponseObject`` in
    src/WebJobs.Script/Binding/Http/HttpBinding.cs: any case; ``status`` only without
    ``statusCode``; ``headers`` only as an object)."""
    names = {str(k).lower() for k in value}
    wanted = {"body", "cookies", "enablecontentnegotiation"}
    wanted.add("statuscode" if "statuscode" in names else "status")
    read: list[str] = []
    ignored: list[str] = []
    for key, item in value.items():
        name = str(key).lower()
        taken = name in wanted or (name == "headers" and isinstance(item, dict))
        (read if taken else ignored).append(str(key))
    return ResponseObject(tuple(read), tuple(ignored))


def _described(lowered: dict[str, Any]) -> HttpOutput:
    """The response a response object (lower-cased keys) describes."""
    status = 200
    raw_status = lowered.get("statuscode", lowered.get("status"))
    if isinstance(raw_status, int) and not isinstance(raw_status, bool):
        status = raw_status
    elif isinstance(raw_status, str):
        status = _parse_status(raw_status)
    headers_value = lowered.get("headers")
    headers = (
        [(str(k), "" if v is None else str(v)) for k, v in headers_value.items()]
        if isinstance(headers_value, dict)
        else []
    )
    body = lowered["body"]
    notes = ["cookies in a response object are not emulated"] if "cookies" in lowered else []
    if isinstance(body, str):
        return _finish(status, headers, body.encode(), "text/plain; charset=utf-8", notes)
    return _finish(status, headers, _indented(body), "application/json; charset=utf-8", notes)


def _finish(
    status: int, headers: list[tuple[str, str]], body: bytes, default_type: str, notes: list[str]
) -> HttpOutput:
    if not 100 <= status <= 999:
        raise ResponseError(f"status code {status} is not a valid HTTP status")
    if status < 200:  # the client would wait for a final response that never comes
        raise ResponseError(f"status code {status} is informational (1xx), not a final response")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    content_type = ""
    for name, value in headers:
        if any(c in name or c in value for c in "\r\n\0") or not name.strip():
            raise ResponseError(f"header {name!r} has an invalid name or value")
        lowered = name.lower()
        if lowered == "content-type":
            content_type = value
            continue
        if lowered in _DROPPED_HEADERS:
            notes.append(f"header {name!r} is set by the server and was dropped")
            continue
        if lowered != "set-cookie":
            if lowered in seen:
                notes.append(f"duplicate header {name!r} skipped")
                continue
            seen.add(lowered)
        out.append((name, value))
    if content_type or (default_type and body):
        out.insert(0, ("Content-Type", content_type or default_type))
    return HttpOutput(status, out, body, notes)


def _which(data: pb.TypedData | None) -> tuple[str, Any]:
    if data is None:
        return "", None
    found: tuple[str, Any] = betterproto2.which_one_of(data, "data")
    return found


def _indented(value: Any) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=False).encode()


def _cookie(cookie: pb.RpcHttpCookie) -> str:
    """A ``Set-Cookie`` value as ASP.NET Core writes it (value escaped, ``path=/`` by default)."""
    parts = [f"{cookie.name}={urllib.parse.quote(cookie.value, safe='-_.~')}"]
    if cookie.expires is not None and cookie.expires.value is not None:
        expires = cookie.expires.value
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=datetime.UTC)
        stamp = email.utils.format_datetime(expires.astimezone(datetime.UTC), usegmt=True)
        parts.append(f"expires={stamp}")
    if cookie.max_age is not None and cookie.max_age.value is not None:
        parts.append(f"max-age={int(cookie.max_age.value)}")
    if cookie.domain is not None:
        parts.append(f"domain={cookie.domain.value}")
    parts.append(f"path={cookie.path.value if cookie.path is not None else '/'}")
    if cookie.secure is not None and cookie.secure.value:
        parts.append("secure")
    same_site = _SAME_SITE.get(cookie.same_site)
    if same_site:
        parts.append(f"samesite={same_site.lower()}")
    if cookie.http_only is not None and cookie.http_only.value:
        parts.append("httponly")
    return "; ".join(parts)
