"""Judging what a worker answered against a case's ``expect``: values (plain or typed), the
HTTP response the host would write for an HTTP output, and what the host would reject in a
response. The format is documented in `workerkit.conformance`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import betterproto2

from .._generated import AzureFunctionsRpcMessages as pb
from ..convert import ConversionError, decode_output
from ._cases import (
    MISSING,
    HttpExpectation,
    parse_http_expectation,
    typed_body,
    typed_kind,
    typed_value,
)

if TYPE_CHECKING:
    from ._httpclient import HttpAnswer


def kind_of(data: pb.TypedData | None) -> str:
    if data is None:
        return ""
    return betterproto2.which_one_of(data, "data")[0]


_FORBIDDEN_KINDS: Final = frozenset(
    {
        "collection_string",
        "collection_bytes",
        "collection_double",
        "collection_sint64",
        "model_binding_data",
        "collection_model_binding_data",
    }
)


def output_problems(response: pb.InvocationResponse) -> list[str]:
    """What the host would reject or misread in a response's values: collection and
    model-binding values (it fails the invocation), and an http response without body."""
    problems = []
    values = [("$return", response.return_value)] + [
        (binding.name, binding.data) for binding in response.output_data
    ]
    for name, data in values:
        kind = kind_of(data)
        if kind in _FORBIDDEN_KINDS:
            problems.append(f"{name} is {kind}, which the host rejects")
        elif (
            kind == "http" and data is not None and data.http is not None and data.http.body is None
        ):
            problems.append(
                f"{name} is an http response without body: the host then ignores its status "
                "and headers and returns it as JSON with 200"
            )
    return problems


def _equal(actual: Any, expected: Any) -> bool:
    """JSON-ish equality that keeps booleans apart from numbers."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(_equal(actual[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(_equal(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, str) and isinstance(actual, bytes):
        return actual == expected.encode()
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return actual == expected
    return bool(type(actual) is type(expected) and actual == expected)


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def value_problem(data: pb.TypedData | None, expected: Any, where: str) -> str | None:
    """None when `data` matches the case's expected value, else why not."""
    kind = kind_of(data)
    typed = typed_kind(expected, where)
    if typed == "$http":
        return http_problem(data, parse_http_expectation(expected["$http"], where), where)[0]
    if typed is not None:
        want = typed_value(typed, expected[typed], where)
        want_kind = kind_of(want)
        if kind != want_kind and not {kind, want_kind} <= {"bytes", "stream"}:
            return f"{where}: expected {want_kind}, got {kind or 'no value'}"
        if kind == "json" and data is not None:
            same = _equal(json.loads(data.json or "null"), json.loads(want.json or "null"))
        else:
            actual = decode_output(data) if data is not None else None
            same = _equal(actual, decode_output(want))
        return None if same else f"{where}: expected {short(expected[typed])}, got {describe(data)}"
    if expected is None:
        return None if kind == "" else f"{where}: expected no value, got {describe(data)}"
    if kind == "":
        return f"{where}: expected {short(expected)}, got no value"
    try:
        actual = decode_output(data) if data is not None else None
    except ConversionError as exc:
        return f"{where}: {exc}"
    if kind == "http":
        return f'{where}: expected {short(expected)}, got an http response (use "http")'
    return (
        None
        if _equal(actual, expected)
        else f"{where}: expected {short(expected)}, got {short(actual)}"
    )


def describe(data: pb.TypedData | None) -> str:
    """A short account of an output value for the report."""
    kind = kind_of(data)
    if not kind or data is None:
        return "no value"
    try:
        value = decode_output(data)
    except ConversionError:
        return kind
    if kind == "http":
        body = value.body if isinstance(value.body, bytes) else value.body.encode()
        return f"http {value.status_code} {_shown(body, 60)}"
    return f"{kind} {short(value)}"


def http_problem(
    data: pb.TypedData | None, expected: HttpExpectation, where: str
) -> tuple[str | None, list[str]]:
    """Compare the HTTP response the host would write for `data` with `expected`.

    Returns:
        Why it differs (None when it matches), and what the host would do silently.
    """
    from ..emulator._rpchttp import ResponseError, response_from_output

    try:
        response = response_from_output(data)
    except ResponseError as exc:
        return f"{where}: the host would answer 500: {exc}", []
    problems = []
    if expected.status is not None and response.status != expected.status:
        problems.append(f"status {response.status}, expected {expected.status}")
    if expected.body is not MISSING:
        problem = body_problem(response.body, expected.body, where)
        problems += [problem] if problem else []
    contains = expected.body_contains
    if contains is not None and contains.encode() not in response.body:
        problems.append(f"body {_shown(response.body)} lacks {contains!r}")
    headers: dict[str, str] = {}
    for name, value in response.headers:
        headers.setdefault(name.lower(), value)
    for name, value in expected.headers.items():
        got = headers.get(name.lower())
        if got != value:
            shown = "missing" if got is None else repr(got)
            problems.append(f"header {name} {shown}, expected {value!r}")
    return (f"{where}: " + "; ".join(problems) if problems else None), list(response.notes)


def body_problem(body: bytes, expected: Any, where: str) -> str | None:
    """None when the HTTP `body` is what the case expects (`typed_body` says how to compare:
    bytes exactly, text as strict UTF-8, JSON parsed), else what differs."""
    how, want = typed_body(expected, where)
    if how == "bytes":
        return None if body == want else f"body {short(body)}, expected {short(want)}"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f'body {short(body)} is not UTF-8 text (expect {{"$bytes": ...}} for bytes)'
    if how == "text":
        return None if text == want else f"body {short(text)}, expected {short(want)}"
    try:
        parsed = json.loads(text)
    except ValueError:
        return f"body {short(text)} is not JSON"
    return None if _equal(parsed, want) else f"body {short(parsed)}, expected {short(want)}"


def _shown(body: bytes, limit: int = 80) -> str:
    """`body` for a message: its text when it is UTF-8, else its bytes."""
    try:
        return short(body.decode("utf-8"), limit)
    except UnicodeDecodeError:
        return short(body, limit)


def answer_problem(answer: HttpAnswer, expected: HttpExpectation, where: str) -> str | None:
    """Compare the worker's own HTTP answer to a forwarded request (``HttpUri``) with
    `expected`: None when it matches, else what differs."""
    problems = []
    if expected.status is not None and answer.status != expected.status:
        problems.append(f"status {answer.status}, expected {expected.status}")
    if expected.body is not MISSING:
        problem = body_problem(answer.body, expected.body, where)
        problems += [problem] if problem else []
    contains = expected.body_contains
    if contains is not None and contains.encode() not in answer.body:
        problems.append(f"body {_shown(answer.body)} lacks {contains!r}")
    for name, value in expected.headers.items():
        got = answer.header(name)
        if got != value:
            shown = "missing" if got is None else repr(got)
            problems.append(f"header {name} {shown}, expected {value!r}")
    if expected.streamed and not answer.early:
        problems.append(
            f"the body came whole with the end of the response ({answer.pieces} piece(s)),"
            " not streamed"
        )
    return f"{where}: " + "; ".join(problems) if problems else None
