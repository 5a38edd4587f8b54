"""The cases file of ``workerkit conformance``: parsing it, and shaping its inputs as the host
does (`._expect` judges the answers). The format is documented in `workerkit.conformance`."""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit

from .._generated import AzureFunctionsRpcMessages as pb

if TYPE_CHECKING:
    from ..emulator._rpchttp import IncomingRequest

_LOCAL_ORIGIN: Final = "http://localhost:7071"


# ---------------------------------------------------------------------------------------------
# Cases


class CasesError(ValueError):
    """The cases file is not valid (fix the file); the message names the case and the key."""


_STATUSES: Final = ("Success", "Failure", "Cancelled")
_TYPED_KINDS: Final = (
    "$string",
    "$json",
    "$bytes",
    "$int",
    "$double",
    "$http",
    "$collection_string",
    "$collection_bytes",
    "$collection_double",
    "$collection_sint64",
)
MISSING: Final[Any] = object()
#: The key of a case's ``inputs`` that stands for the trigger binding, whatever its name
#: (workers that index themselves may generate it, e.g. ``httpTrigger624a61988c``).
TRIGGER_INPUT: Final = "$trigger"


@dataclass(frozen=True, slots=True)
class HttpExpectation:
    """What an HTTP output must look like; None fields are not checked."""

    status: int | None = None
    body: Any = MISSING
    body_contains: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The body must arrive in pieces, some before the end of the response (HttpUri only).
    streamed: bool = False


@dataclass(frozen=True, slots=True)
class Expectation:
    """The ``expect`` object of a case. `return_value` is `MISSING` when not checked."""

    status: str = "Success"
    error: str | None = None
    return_value: Any = MISSING
    outputs: Mapping[str, Any] = field(default_factory=dict)
    http: HttpExpectation | None = None


@dataclass(frozen=True, slots=True)
class Case:
    """One case of a cases file. Values are kept as validated JSON; they are turned into
    `TypedData` when the function's bindings and the worker's capabilities are known."""

    name: str
    function: str
    inputs: Mapping[str, Any]
    trigger_metadata: Mapping[str, Any]
    expect: Expectation
    timeout: float | None = None
    cancel_after: float | None = None


def load_cases(path: str | os.PathLike[str]) -> list[Case]:
    """Read and validate a cases file (format in the module docstring).

    Raises:
        CasesError: the file cannot be read, is not JSON, or breaks the format.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CasesError(f"cannot read cases file {os.fspath(path)!r}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CasesError(
            f"{os.fspath(path)}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    try:
        return parse_cases(document)
    except CasesError as exc:
        raise CasesError(f"{os.fspath(path)}: {exc}") from None


def parse_cases(document: Any) -> list[Case]:
    """Validate an already parsed cases document: ``{"cases": [...]}`` or a bare list.

    Raises:
        CasesError: naming the case and the key at fault.
    """
    if isinstance(document, dict):
        _only_keys(document, {"cases"}, "the top level")
        if "cases" not in document:
            raise CasesError('the top level needs a "cases" list')
        document = document["cases"]
    if not isinstance(document, list):
        raise CasesError('"cases" must be a list of case objects')
    cases: list[Case] = []
    seen: set[str] = set()
    for index, raw in enumerate(document):
        where = f"case #{index + 1}"
        if not isinstance(raw, dict):
            raise CasesError(f"{where} must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CasesError(f'{where} needs a "name" (a non-empty string)')
        where = f"case {name!r}"
        if name in seen:
            raise CasesError(f"{where}: the name is used twice")
        seen.add(name)
        cases.append(_parse_case(raw, name, where))
    return cases


def _parse_case(raw: dict[str, Any], name: str, where: str) -> Case:
    _only_keys(
        raw,
        {"name", "function", "inputs", "trigger_metadata", "expect", "timeout", "cancel_after"},
        where,
    )
    function = raw.get("function")
    if not isinstance(function, str) or not function:
        raise CasesError(f'{where} needs a "function" (the function\'s name in the app)')
    inputs = _object(raw.get("inputs", {}), f"{where}: inputs")
    metadata = _object(raw.get("trigger_metadata", {}), f"{where}: trigger_metadata")
    for key, value in inputs.items():
        _check_value(value, f"{where}: inputs.{key}")
        if key.startswith("$") and key != TRIGGER_INPUT:
            raise CasesError(
                f"{where}: inputs.{key}: binding names do not start with $ (use "
                f'"{TRIGGER_INPUT}" for the trigger, whatever its name)'
            )
    for key, value in metadata.items():
        _check_value(value, f"{where}: trigger_metadata.{key}")
    return Case(
        name=name,
        function=function,
        inputs=inputs,
        trigger_metadata=metadata,
        expect=_parse_expect(raw.get("expect", {}), f"{where}: expect"),
        timeout=_seconds(raw.get("timeout"), f"{where}: timeout"),
        cancel_after=_seconds(raw.get("cancel_after"), f"{where}: cancel_after", zero=True),
    )


def _parse_expect(raw: Any, where: str) -> Expectation:
    raw = _object(raw, where)
    _only_keys(raw, {"status", "error", "return_value", "outputs", "http"}, where)
    status = raw.get("status", "Success")
    if status not in _STATUSES:
        raise CasesError(f"{where}.status must be one of {', '.join(_STATUSES)}, not {status!r}")
    error = raw.get("error")
    if error is not None and not isinstance(error, str):
        raise CasesError(f"{where}.error must be a string (text the failure message contains)")
    outputs = _object(raw.get("outputs", {}), f"{where}.outputs")
    for key, value in outputs.items():
        _check_value(value, f"{where}.outputs.{key}", expected=True)
    if "return_value" in raw:
        _check_value(raw["return_value"], f"{where}.return_value", expected=True)
    http = raw.get("http")
    return Expectation(
        status=status,
        error=error,
        return_value=raw.get("return_value", MISSING),
        outputs=outputs,
        http=None if http is None else parse_http_expectation(http, f"{where}.http"),
    )


def parse_http_expectation(raw: Any, where: str) -> HttpExpectation:
    raw = _object(raw, where)
    _only_keys(raw, {"status", "body", "body_contains", "headers", "streamed"}, where)
    status = raw.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise CasesError(f"{where}.status must be a whole number such as 200")
    streamed = raw.get("streamed", False)
    if not isinstance(streamed, bool):
        raise CasesError(f"{where}.streamed must be true or false")
    contains = raw.get("body_contains")
    if contains is not None and not isinstance(contains, str):
        raise CasesError(f"{where}.body_contains must be a string")
    if "body" in raw:
        typed_body(raw["body"], f"{where}.body")  # validated now, compared later
    return HttpExpectation(
        status=status,
        body=raw.get("body", MISSING),
        body_contains=contains,
        headers=_strings(raw.get("headers", {}), f"{where}.headers"),
        streamed=streamed,
    )


def _check_value(value: Any, where: str, *, expected: bool = False) -> None:
    """Validate the typed forms now, so a typo is reported before anything is launched."""
    kind = typed_kind(value, where)
    if kind is None:
        return
    if kind == "$http":
        if expected:
            parse_http_expectation(value[kind], where)
        else:
            _parse_http_input(value[kind], where)
    elif expected and kind.startswith("$collection"):
        raise CasesError(
            f"{where}: the host takes no {kind[1:]} back from a worker (it fails the invocation)"
        )
    else:
        typed_value(kind, value[kind], where)


def typed_kind(value: Any, where: str) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        (key,) = value
        if isinstance(key, str) and key.startswith("$"):
            if key not in _TYPED_KINDS:
                raise CasesError(
                    f"{where}: unknown typed value {key!r} (known: {', '.join(_TYPED_KINDS)})"
                )
            return key
    return None


def typed_value(kind: str, value: Any, where: str) -> pb.TypedData:
    def fail(what: str) -> CasesError:
        return CasesError(f"{where}: {kind} needs {what}")

    if kind == "$string":
        if not isinstance(value, str):
            raise fail("a string")
        return pb.TypedData(string=value)
    if kind == "$json":
        return pb.TypedData(json=_dump(value))
    if kind == "$bytes":
        return pb.TypedData(bytes=_b64(value, where))
    if kind == "$int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("a whole number")
        return pb.TypedData(int=value)
    if kind == "$double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        return pb.TypedData(double=float(value))
    if not isinstance(value, list):
        raise fail("a list")
    if kind == "$collection_string":
        if not all(isinstance(item, str) for item in value):
            raise fail("a list of strings")
        return pb.TypedData(collection_string=pb.CollectionString(string=list(value)))
    if kind == "$collection_bytes":
        items = [_b64(item, where) for item in value]
        return pb.TypedData(collection_bytes=pb.CollectionBytes(bytes=items))
    if kind == "$collection_double":
        if not all(isinstance(i, int | float) and not isinstance(i, bool) for i in value):
            raise fail("a list of numbers")
        return pb.TypedData(collection_double=pb.CollectionDouble(double=[float(i) for i in value]))
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise fail("a list of whole numbers")
    return pb.TypedData(collection_sint64=pb.CollectionSInt64(sint64=list(value)))


def typed_body(expected: Any, where: str) -> tuple[str, Any]:
    """An expected HTTP body as ``(how, value)``: ``("bytes", bytes)`` for ``{"$bytes": ...}``
    (compared byte for byte), ``("text", str)`` for a string or ``{"$string": ...}`` (the body
    must be that UTF-8 text), ``("json", value)`` for ``{"$json": ...}`` or any other JSON
    value (the body parsed as JSON must equal it).

    Raises:
        CasesError: another typed value, or invalid base64.
    """
    kind = typed_kind(expected, where)
    if kind is None:
        return ("text", expected) if isinstance(expected, str) else ("json", expected)
    if kind == "$bytes":
        return "bytes", _b64(expected[kind], where)
    if kind == "$string":
        return "text", typed_value(kind, expected[kind], where).string
    if kind == "$json":
        return "json", expected[kind]
    raise CasesError(
        f'{where}: an HTTP body is a string, JSON, {{"$bytes": ...}}, {{"$string": ...}} '
        f'or {{"$json": ...}}, not {kind}'
    )


def http_request(raw: Any, where: str) -> IncomingRequest | None:
    """The HTTP request a case's trigger value describes (a plain value or ``{"$http":
    ...}``), or None when it is another kind of value.

    Raises:
        CasesError: it does not describe a valid request.
    """
    kind = typed_kind(raw, where)
    if kind == "$http":
        return _parse_http_input(raw[kind], where)
    if kind is None and isinstance(raw, str | dict):
        return _parse_http_input(raw, where)
    return None


def _parse_http_input(raw: Any, where: str) -> IncomingRequest:
    """An HTTP request description (string URL or object) as the front door receives it."""
    from ..emulator._rpchttp import IncomingRequest

    if isinstance(raw, str):
        raw = {"url": raw}
    raw = _object(raw, where)
    _only_keys(raw, {"method", "url", "headers", "query", "params", "body", "body_base64"}, where)
    method = raw.get("method", "GET")
    url = raw.get("url", "/")
    if not isinstance(method, str) or not method:
        raise CasesError(f"{where}.method must be a string such as GET")
    if not isinstance(url, str):
        raise CasesError(f"{where}.url must be a string")
    if url.startswith("/"):
        url = _LOCAL_ORIGIN + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CasesError(f"{where}.url must be a path (/api/...) or an http(s) URL, not {url!r}")
    headers = _strings(raw.get("headers", {}), f"{where}.headers")
    if not any(name.lower() == "host" for name in headers):
        headers["host"] = parts.netloc
    if "query" in raw:
        query = list(_strings(raw["query"], f"{where}.query").items())
    else:
        query = parse_qsl(parts.query, keep_blank_values=True)
    if "body" in raw and "body_base64" in raw:
        raise CasesError(f"{where}: give body or body_base64, not both")
    body = None
    if "body_base64" in raw:
        body = _b64(raw["body_base64"], f"{where}.body_base64")
    elif isinstance(raw.get("body"), str):
        body = raw["body"].encode()
    elif raw.get("body") is not None:
        body = _dump(raw["body"]).encode()
        if not any(name.lower() == "content-type" for name in headers):
            headers["content-type"] = "application/json"
    return IncomingRequest(
        method=method.upper(),
        url=url,
        headers=list(headers.items()),
        query=query,
        params=_strings(raw.get("params", {}), f"{where}.params"),
        body=body or None,
    )


def _only_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(k for k in raw if k not in allowed and not str(k).startswith("//"))
    if unknown:
        raise CasesError(
            f"{where}: unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(allowed))})"
        )


def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise CasesError(f"{where} must be an object")
    return {k: v for k, v in raw.items() if not k.startswith("//")}


def _strings(raw: Any, where: str) -> dict[str, str]:
    mapping = _object(raw, where)
    for key, value in mapping.items():
        if not isinstance(value, str):
            raise CasesError(f"{where}.{key} must be a string")
    return mapping


def _seconds(raw: Any, where: str, *, zero: bool = False) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise CasesError(f"{where} must be a number of seconds")
    if raw < 0 or (raw == 0 and not zero):
        raise CasesError(f"{where} must be {'>= 0' if zero else '> 0'}")
    return float(raw)


def _b64(raw: Any, where: str) -> bytes:
    if not isinstance(raw, str):
        raise CasesError(f"{where}: bytes are written as a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise CasesError(f"{where}: {raw[:40]!r} is not valid base64") from None


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Shaping inputs as the host does (its ToRpc and ToRpcHttp, in Azure/azure-functions-host
# src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageConversionExtensions.cs)


def has_capability(capabilities: Mapping[str, str], name: str) -> bool:
    """Whether the worker declared `name`: the host ignores a capability with an empty value
    (here a blank one counts as empty too)."""
    return bool(capabilities.get(name, "").strip())


def input_data(
    raw: Any,
    binding: pb.BindingInfo | None,
    capabilities: Mapping[str, str],
    where: str,
    *,
    trigger: str = "",
) -> tuple[pb.TypedData, dict[str, pb.TypedData]]:
    """A case value as `TypedData`, and the trigger metadata the host adds for it when it
    is the HTTP request of the trigger named `trigger` (otherwise empty).

    Raises:
        CasesError: the value does not describe a valid HTTP request.
    """
    from ..emulator._rpchttp import build_rpc_http, http_trigger_metadata

    kind = typed_kind(raw, where)
    is_http = binding is not None and binding.type.lower() == "httptrigger"
    if kind == "$http" or (kind is None and is_http and isinstance(raw, str | dict)):
        request = _parse_http_input(raw[kind] if kind else raw, where)
        http = build_rpc_http(request, capabilities)
        metadata = http_trigger_metadata(request, http, trigger, capabilities) if trigger else {}
        return pb.TypedData(http=http), metadata
    if kind is not None:
        return typed_value(kind, raw[kind], where), {}
    if raw is None:
        return pb.TypedData(), {}
    if isinstance(raw, str):
        binary = binding is not None and binding.data_type in (
            pb.BindingInfoDataType.binary,
            pb.BindingInfoDataType.stream,
        )
        return (pb.TypedData(bytes=raw.encode()) if binary else pb.TypedData(string=raw)), {}
    return pb.TypedData(json=_dump(raw)), {}
