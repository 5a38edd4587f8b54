"""Route templates, RpcHttp building, response mapping and trigger data (pure functions)."""

from __future__ import annotations

import codecs
import datetime
import json
import re
import string
from typing import Any

import betterproto2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._generated import NullableBool, NullableDouble, NullableString, NullableTimestamp
from workerkit.emulator._http import RateLimited
from workerkit.emulator._routes import Route, RouteError
from workerkit.emulator._rpchttp import (
    IncomingRequest,
    ResponseError,
    build_rpc_http,
    host_text,
    http_trigger_metadata,
    response_from_output,
)
from workerkit.emulator._triggers import TriggerInputError, timer_payload, trigger_data

PROPERTY = settings(max_examples=200, deadline=None)
WORKERKIT = {
    "RpcHttpBodyOnly": "true",
    "RawHttpBodyBytes": "true",
    "RpcHttpTriggerMetadataRemoved": "true",
    "UseNullableValueDictionaryForHttp": "true",
    "TypedDataCollection": "true",
}


def kind(data: pb.TypedData | None) -> str:
    return betterproto2.which_one_of(data, "data")[0] if data is not None else "absent"


# -- routes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("hello", "hello", {}),
        ("hello", "HELLO", {}),
        ("hello", "hello/", {}),
        ("hello", "hello/x", None),
        ("sum/{a}/{b}", "sum/3/4", {"a": "3", "b": "4"}),
        ("sum/{a}/{b}", "sum/3", None),
        ("items/{id:int}", "items/-12", {"id": "-12"}),
        ("items/{id:int}", "items/99999999999", None),
        ("items/{id:long:min(10)}", "items/9", None),
        ("items/{id:range(1,5)}", "items/5", {"id": "5"}),
        ("v/{x:bool}", "v/True", {"x": "True"}),
        (
            "v/{x:guid}",
            "v/6f1c8a3e-1111-4a44-9b55-5a5a5a5a5a5a",
            {"x": "6f1c8a3e-1111-4a44-9b55-5a5a5a5a5a5a"},
        ),
        ("v/{x:alpha}", "v/abc1", None),
        ("v/{x:length(2,3)}", "v/abcd", None),
        ("v/{x:regex(^a+$)}", "v/AAA", {"x": "AAA"}),
        ("v/{x:double}", "v/1.5e3", {"x": "1.5e3"}),
        ("opt/{name?}", "opt", {"name": None}),
        ("opt/{name?}", "opt/ada", {"name": "ada"}),
        ("def/{name=world}", "def", {"name": "world"}),
        ("files/{*path}", "files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("files/{*path}", "files", {"path": None}),
        ("files/{**path:file}", "files/a/noext", None),
        ("img/{name}.{ext}", "img/cat.tar.gz", {"name": "cat.tar", "ext": "gz"}),  # right to left
        ("", "", {}),
        ("/lead", "lead", {}),
    ],
)
def test_route_matching(template: str, path: str, expected: dict[str, Any] | None) -> None:
    assert Route.parse(template).match(path.split("/") if path else []) == expected


@pytest.mark.parametrize(
    "template",
    [
        "a/{x:nosuch}",
        "a/{x",
        "a/x}",
        "a//b",
        "{x}/{x}",
        "{X}/{x}",
        "{*rest}/b",
        "{a}{b}",
        "a?b",
        "{x:min(a)}",
        "{x:length}",
        "{x:int(3)}",
        "{x:regex(()}",
        "pre{x?}",
        "{*x?}",
    ],
)
def test_invalid_route_templates(template: str) -> None:
    with pytest.raises(RouteError):
        Route.parse(template)


segment = st.text(alphabet=string.ascii_letters + string.digits + "-._~ %", min_size=1, max_size=12)


@PROPERTY
@given(st.lists(segment, min_size=1, max_size=5))
def test_parameters_capture_any_segments(values: list[str]) -> None:
    route = Route.parse("/".join(f"{{p{i}}}" for i in range(len(values))))
    assert route.match(values) == {f"p{i}": v for i, v in enumerate(values)}
    assert route.match([*values, "extra"]) is None


@PROPERTY
@given(st.integers(-(2**40), 2**40), segment)
def test_int_constraint_is_the_32_bit_range(number: int, other: str) -> None:
    route = Route.parse("n/{x:int}")
    assert (route.match(["n", str(number)]) is not None) == (-(2**31) <= number < 2**31)
    if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", other):  # int.TryParse allows spaces and a sign
        assert route.match(["n", other]) is None


@PROPERTY
@given(st.lists(segment, max_size=6))
def test_catch_all_takes_the_rest(rest: list[str]) -> None:
    assert Route.parse("base/{*rest}").match(["base", *rest]) == {"rest": "/".join(rest) or None}


@PROPERTY
@given(st.text(max_size=20))
def test_any_template_parses_or_is_a_route_error(template: str) -> None:
    try:
        route = Route.parse(template)
    except RouteError:
        return
    route.match(["a", "b"])


# -- RpcHttp built per capabilities (the host's ToRpcHttp) ----------------------------------------
REQUEST = IncomingRequest(
    method="POST",
    url="http://127.0.0.1:7071/api/f?a=1&a=2&e=",
    headers=[
        ("Content-Type", "application/json"),
        ("X-Multi", "1"),
        ("x-multi", "2"),
        ("X-Empty", ""),
    ],
    query=[("a", "1"), ("a", "2"), ("e", "")],
    params={"id": "7", "opt": None},
    body=b'{"k": [1, 2], "s": "v"}',
)


def test_workerkit_capabilities_fill_nullable_maps_and_bytes() -> None:
    http = build_rpc_http(REQUEST, WORKERKIT)
    assert (http.method, http.url) == ("POST", REQUEST.url)
    assert http.headers == {} and http.query == {} and http.params == {}
    assert http.nullable_headers == {
        "content-type": NullableString("application/json"),
        "x-multi": NullableString("1,2"),
        "x-empty": NullableString(""),
    }
    assert http.nullable_query == {"a": NullableString("1,2"), "e": NullableString("")}
    assert http.nullable_params == {"id": NullableString("7")}
    assert http.body == pb.TypedData(bytes=REQUEST.body) and http.raw_body is None


def test_legacy_capabilities_fill_plain_maps_and_json() -> None:
    http = build_rpc_http(REQUEST, {})
    assert http.headers == {"content-type": "application/json", "x-multi": "1,2", "x-empty": ""}
    assert http.query == {"a": "1,2"}  # empty values dropped
    assert http.params == {"id": "7"}
    assert http.body == pb.TypedData(json='{"k":[1,2],"s":"v"}')
    assert http.raw_body == pb.TypedData(string=REQUEST.body.decode())  # type: ignore[union-attr]
    assert (
        build_rpc_http(REQUEST, {"IgnoreEmptyValuedRpcHttpHeaders": "1"}).headers.get("x-empty")
        is None
    )


@pytest.mark.parametrize(
    ("capabilities", "content_type", "body", "raw"),
    [
        ({"RpcHttpBodyOnly": "1", "RawHttpBodyBytes": "1"}, "text/plain", "bytes", "absent"),
        ({"RpcHttpBodyOnly": "1"}, "application/octet-stream", "bytes", "absent"),
        ({"RpcHttpBodyOnly": "1"}, "multipart/form-data; boundary=x", "bytes", "absent"),
        ({"RpcHttpBodyOnly": "1"}, "application/json", "string", "absent"),
        ({}, "application/json", "json", "string"),
        ({}, "application/json; charset=utf-8", "json", "string"),
        ({"RawHttpBodyBytes": "1"}, "application/json", "json", "bytes"),
        ({}, "application/octet-stream", "bytes", "string"),
        ({}, "text/plain", "string", "string"),
        ({}, None, "string", "string"),
    ],
)
def test_the_body_matrix(
    capabilities: dict[str, str], content_type: str | None, body: str, raw: str
) -> None:
    headers = [("content-type", content_type)] if content_type else []
    http = build_rpc_http(
        IncomingRequest("POST", "u", headers=headers, body=b'{"a": 1}'), capabilities
    )
    assert (kind(http.body), kind(http.raw_body)) == (body, raw)


def test_invalid_json_is_a_string_and_no_body_is_absent() -> None:
    http = build_rpc_http(
        IncomingRequest("POST", "u", [("content-type", "application/json")], body=b"{"), {}
    )
    assert http.body == pb.TypedData(string="{")
    assert build_rpc_http(IncomingRequest("GET", "u"), {}).body is None


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"caf\xc3\xa9", "café"),
        (b"caf\xe9", "caf\ufffd"),  # undecodable bytes replaced
        (b"\xef\xbb\xbfcaf\xc3\xa9", "café"),  # a byte order mark names the encoding...
        ("café".encode("utf-16"), "café"),  # (Python writes UTF-16 with a mark)
        (codecs.BOM_UTF16_BE + "café".encode("utf-16-be"), "café"),
        ("café".encode("utf-32"), "café"),  # ...UTF-32 LE before the UTF-16 LE it starts like
        (codecs.BOM_UTF32_BE + "café".encode("utf-32-be"), "café"),
        (b"\xff", "\ufffd"),
    ],
)
def test_host_text_is_utf8_unless_a_byte_order_mark_says_otherwise(data: bytes, text: str) -> None:
    assert host_text(data) == text


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain; charset=iso-8859-1",
        "text/plain; charset=base64",  # where workerkit's two charset helpers used to disagree
        "application/json; charset=utf-16",
        "text/plain; charset=nope",
    ],
)
def test_the_host_ignores_the_charset_of_a_request_body(content_type: str) -> None:
    """The host reads the body with a UTF-8 StreamReader whatever Content-Type says
    (HttpRequestExtensions.ReadAsStringAsync in the webjobs HTTP extension)."""
    request = IncomingRequest(
        "POST", "u", headers=[("Content-Type", content_type)], body=b'{"k": "caf\xe9"}'
    )
    legacy = build_rpc_http(request, {})
    assert legacy.raw_body == pb.TypedData(string='{"k": "caf\ufffd"}')
    body_only = build_rpc_http(request, {"RpcHttpBodyOnly": "1"})
    assert body_only.body == pb.TypedData(string='{"k": "caf\ufffd"}')
    if content_type.startswith("application/json"):
        assert json.loads(legacy.body.json) == {"k": "caf\ufffd"}  # type: ignore[union-attr, arg-type]
        metadata = http_trigger_metadata(request, legacy, "req", {})
        assert metadata["k"] == pb.TypedData(string="caf\ufffd")


def test_the_legacy_raw_body_of_binary_content_is_plain_utf8() -> None:
    """For octet-stream and multipart the host decodes the raw body itself
    (Encoding.UTF8.GetString): a byte order mark is kept, not read."""
    data = b"\xef\xbb\xbfbin\xff"
    request = IncomingRequest(
        "POST", "u", headers=[("content-type", "application/octet-stream")], body=data
    )
    http = build_rpc_http(request, {})
    assert http.body == pb.TypedData(bytes=data)
    assert http.raw_body == pb.TypedData(string="\ufeffbin\ufffd")


def test_http_trigger_metadata() -> None:
    http = build_rpc_http(REQUEST, {})
    with_code = IncomingRequest(
        **{**REQUEST.__dict__, "query": [*REQUEST.query, ("code", "secret")]}
    )
    metadata = http_trigger_metadata(with_code, http, "req", {})
    assert set(metadata) == {"Query", "Headers", "a", "e", "k", "s", "id", "$request", "req"}
    assert json.loads(metadata["Query"].json) == {"a": "1,2", "e": "", "code": "secret"}  # type: ignore[arg-type]
    assert metadata["k"] == pb.TypedData(json="[1,2]") and metadata["s"] == pb.TypedData(string="v")
    assert metadata["$request"] == pb.TypedData(http=http)
    removed = http_trigger_metadata(REQUEST, http, "req", {"RpcHttpTriggerMetadataRemoved": "1"})
    assert "$request" not in removed and "req" not in removed


@PROPERTY
@given(
    st.lists(st.tuples(st.sampled_from(["a", "A", "b", "X-Y"]), st.text(max_size=5)), max_size=6),
    st.booleans(),
)
def test_headers_are_lower_cased_and_joined(pairs: list[tuple[str, str]], nullable: bool) -> None:
    capabilities = {"UseNullableValueDictionaryForHttp": "1"} if nullable else {}
    http = build_rpc_http(IncomingRequest("GET", "u", headers=pairs), capabilities)
    got = {k: v.value for k, v in http.nullable_headers.items()} if nullable else dict(http.headers)
    expected: dict[str, list[str]] = {}
    for key, value in pairs:
        expected.setdefault(key.lower(), []).append(value)
    assert got == {k: ",".join(v) for k, v in expected.items()}


# -- responses (the host's HttpBinding.cs) ---------------------------------------------------------
def test_an_rpc_http_response() -> None:
    output = response_from_output(
        pb.TypedData(
            http=pb.RpcHttp(
                status_code="201",
                headers={"Content-Type": "text/csv", "X-A": "1", "Content-Length": "999"},
                body=pb.TypedData(string="a,b"),
                cookies=[
                    pb.RpcHttpCookie(
                        name="s",
                        value="x y",
                        domain=NullableString("example.com"),
                        expires=NullableTimestamp(
                            datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
                        ),
                        max_age=NullableDouble(60),
                        secure=NullableBool(True),
                        same_site=pb.RpcHttpCookieSameSite.ExplicitNone,
                    )
                ],
            )
        )
    )
    assert (output.status, output.body) == (201, b"a,b")
    assert output.headers == [
        ("Content-Type", "text/csv"),
        ("X-A", "1"),
        (
            "Set-Cookie",
            "s=x%20y; expires=Wed, 02 Jan 2030 03:04:05 GMT; max-age=60; domain=example.com;"
            " path=/; secure; samesite=none",
        ),
    ]
    assert any("Content-Length" in note for note in output.notes)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("", 200),
        ("abc", 200),
        (" 404 ", 404),
        ("+202", 202),
        ("99999999999", 200),
        ("\u00a0404", 200),  # only ASCII white space around the number
        ("0000000000404", 404),  # leading zeros do not count against the digits
        ("404\0", 404),  # trailing NULs are tolerated
    ],
)
def test_status_strings_parse_like_int_try_parse(status: str, expected: int) -> None:
    http = pb.RpcHttp(status_code=status, body=pb.TypedData(string=""))
    assert response_from_output(pb.TypedData(http=http)).status == expected


def test_bodies_and_sniffing() -> None:
    json_body = pb.TypedData(http=pb.RpcHttp(status_code="200", body=pb.TypedData(json='{"a":1}')))
    output = response_from_output(json_body)
    assert output.body == b'{\n  "a": 1\n}' and output.headers[0][1].startswith("application/json")
    assert response_from_output(pb.TypedData(string="plain")).body == b"plain"
    assert response_from_output(pb.TypedData(string="[1]")).body == b"[\n  1\n]"
    described = response_from_output(
        pb.TypedData(json='{"body": "hi", "status": "418", "headers": {"x": 1}}')
    )
    assert (described.status, described.body, ("x", "1") in described.headers) == (418, b"hi", True)
    assert response_from_output(pb.TypedData(bytes=b"\x00")).body == b"\x00"
    # no value for the HTTP output: the host's ObjectResult(null), written as 204 (item 14)
    for nothing in (None, pb.TypedData()):
        empty = response_from_output(nothing)
        assert (empty.status, empty.body, empty.headers) == (204, b"", [])
    no_body = response_from_output(pb.TypedData(http=pb.RpcHttp(status_code="404")))
    assert no_body.status == 200 and json.loads(no_body.body)["statusCode"] == "404"
    assert "always set body" in no_body.notes[0]


@pytest.mark.parametrize(
    "data",
    [
        pb.TypedData(collection_string=pb.CollectionString(string=["a"])),
        pb.TypedData(http=pb.RpcHttp(status_code="42", body=pb.TypedData(string=""))),
        # a 1xx is not a final response: the client would wait for one that never comes
        pb.TypedData(http=pb.RpcHttp(status_code="103", body=pb.TypedData(string=""))),
        pb.TypedData(http=pb.RpcHttp(body=pb.TypedData(string=""), headers={"x": "a\r\nb"})),
        pb.TypedData(json="{"),
    ],
)
def test_responses_the_host_cannot_write(data: pb.TypedData) -> None:
    with pytest.raises(ResponseError):
        response_from_output(data)


# -- trigger data for other triggers ------------------------------------------------------------
def test_timer_payload() -> None:
    when = datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.UTC)
    payload = json.loads(timer_payload(when, when + datetime.timedelta(seconds=5)).json)  # type: ignore[arg-type]
    assert payload["Schedule"] == {"AdjustForDST": True} and payload["IsPastDue"] is False
    assert payload["ScheduleStatus"]["Last"].startswith("2024-05-01T10:00:00")
    assert set(payload["ScheduleStatus"]) == {"Last", "Next", "LastUpdated"}


def test_a_warmup_trigger_gets_the_hosts_warmup_context() -> None:
    """WarmupContext has no properties: the host sends it as the JSON ``{}``."""
    data, metadata = trigger_data({"type": "WarmupTrigger"}, "ignored", capabilities={})
    assert (kind(data), data.json, metadata) == ("json", "{}", {})


def test_queue_message() -> None:
    data, metadata = trigger_data({"type": "queueTrigger", "name": "m"}, "hi", capabilities={})
    assert data == pb.TypedData(string="hi")
    assert metadata["DequeueCount"] == pb.TypedData(json="1")
    assert kind(metadata["Id"]) == "string" and kind(metadata["InsertionTime"]) == "json"
    binary, _ = trigger_data({"type": "queueTrigger", "dataType": "binary"}, "hi", capabilities={})
    assert binary == pb.TypedData(bytes=b"hi")


def test_blob_event_hub_batch_and_extra_metadata() -> None:
    blob, metadata = trigger_data(
        {"type": "blobTrigger", "path": "c/{name}.{ext}"},
        "x",
        capabilities={},
        extra_metadata={"ext": "csv", "n": 2},
    )
    assert blob == pb.TypedData(bytes=b"x")
    assert metadata["BlobTrigger"] == pb.TypedData(string="c/emulated.emulated")
    assert metadata["ext"] == pb.TypedData(string="csv") and metadata["n"] == pb.TypedData(json="2")
    as_text, _ = trigger_data({"type": "blobTrigger", "dataType": "string"}, "x", capabilities={})
    assert as_text == pb.TypedData(string="x")
    many = {"type": "eventHubTrigger", "cardinality": "many"}
    batch, batch_metadata = trigger_data(
        many, '["a", {"b": 1}]', capabilities={"TypedDataCollection": "1"}
    )
    assert batch == pb.TypedData(collection_string=pb.CollectionString(string=["a", '{"b":1}']))
    assert "SystemPropertiesArray" in batch_metadata
    as_json, _ = trigger_data(many, "single", capabilities={})
    assert as_json == pb.TypedData(json='["single"]')


def test_json_triggers_validate_their_input() -> None:
    with pytest.raises(TriggerInputError):
        trigger_data({"type": "eventGridTrigger"}, "[1]", capabilities={})
    docs, _ = trigger_data({"type": "cosmosDBTrigger"}, '{"id": 1}', capabilities={})
    assert docs == pb.TypedData(json='[{"id":1}]')
    other, metadata = trigger_data({"type": "rabbitMQTrigger"}, "m", capabilities={})
    assert other == pb.TypedData(string="m") and metadata == {}


# -- console lines about limits ---------------------------------------------------------------
def test_a_rate_limited_line_is_written_at_most_once_per_interval_with_a_count() -> None:
    now = [100.0]
    lines: list[str] = []
    limited = RateLimited(lines.append, interval=10.0, clock=lambda: now[0])
    for _ in range(5):  # the first is written at once, the next four held back
        limited(lambda held: f"{held} refused")
    now[0] += 9.9
    limited(lambda held: f"{held} refused")
    assert lines == ["1 refused"]
    now[0] += 0.1
    limited(lambda held: f"{held} refused")  # ten seconds after the last line: all six
    now[0] += 60
    limited(lambda held: f"{held} refused")
    assert lines == ["1 refused", "6 refused", "1 refused"]
