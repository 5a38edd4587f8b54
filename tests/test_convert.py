"""Tests for workerkit.convert: round-trip properties plus one example per documented rule."""

import copy
import datetime
import pickle
from typing import Any

import betterproto2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._generated import (
    NullableBool,
    NullableDouble,
    NullableString,
    NullableTimestamp,
    RpcClaim,
    RpcClaimsIdentity,
)
from workerkit.convert import (
    Claim,
    ClaimsIdentity,
    ConversionError,
    HttpCookie,
    HttpRequest,
    HttpResponse,
    ModelBindingData,
    decode,
    decode_output,
    encode,
    encode_input,
)

UTC = datetime.UTC
PROPERTY = settings(max_examples=200, deadline=None)


def wire(td: pb.TypedData) -> pb.TypedData:
    return pb.TypedData.parse(bytes(td))


def kind(td: pb.TypedData) -> str:
    return betterproto2.which_one_of(td, "data")[0]


# --- strategies ---------------------------------------------------------------------------------

short_text = st.text(max_size=12)
str_maps = st.dictionaries(short_text, short_text, max_size=4)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)

json_leaves = st.none() | st.booleans() | st.integers() | finite_floats | short_text
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(short_text, inner, max_size=4),
    max_leaves=12,
)
json_containers = st.lists(json_values, max_size=4) | st.dictionaries(
    short_text, json_values, max_size=4
)
scalars = (
    st.none()
    | st.text()
    | st.binary(max_size=64)
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
)

offsets = st.timedeltas(
    min_value=-datetime.timedelta(hours=23, minutes=59),
    max_value=datetime.timedelta(hours=23, minutes=59),
).map(datetime.timezone)
aware_datetimes = st.datetimes(
    min_value=datetime.datetime(2, 1, 1),
    max_value=datetime.datetime(9998, 12, 31),
    timezones=offsets,
)
cookies = st.builds(
    HttpCookie,
    name=short_text,
    value=short_text,
    domain=st.none() | short_text,
    path=st.none() | short_text,
    expires=st.none() | aware_datetimes,
    secure=st.none() | st.booleans(),
    http_only=st.none() | st.booleans(),
    max_age=st.none() | finite_floats,
    same_site=st.sampled_from([None, "lax", "strict", "none"]),
)
responses = st.builds(
    HttpResponse,
    status_code=st.integers(200, 599),
    body=st.binary(max_size=64) | st.text(max_size=64),
    headers=str_maps,
    cookies=st.lists(cookies, max_size=3),
    enable_content_negotiation=st.booleans(),
)

identities = st.builds(
    ClaimsIdentity,
    authentication_type=st.none() | short_text,
    name_claim_type=st.none() | short_text,
    role_claim_type=st.none() | short_text,
    claims=st.lists(st.builds(Claim, type=short_text, value=short_text), max_size=3).map(tuple),
)
requests = st.builds(
    HttpRequest,
    method=short_text,
    url=short_text,
    headers=str_maps,
    query=str_maps,
    params=str_maps,
    body=st.binary(max_size=64),
    identities=st.lists(identities, max_size=2).map(tuple),
)
model_binding_data = st.builds(
    ModelBindingData,
    version=short_text,
    source=short_text,
    content_type=short_text,
    content=st.binary(max_size=32),
)

worker_outputs = scalars | json_containers | responses
host_inputs = (
    scalars
    | json_containers
    | requests
    | model_binding_data
    | st.lists(model_binding_data, min_size=1, max_size=3)
    | st.lists(st.binary(max_size=8), min_size=1, max_size=4)
    | st.lists(short_text, min_size=1, max_size=4)
    | st.lists(st.integers(), min_size=1, max_size=4)
    | st.lists(st.floats(allow_nan=False), min_size=1, max_size=4)
)


# --- round-trip properties ----------------------------------------------------------------------


@PROPERTY
@given(worker_outputs)
def test_worker_output_round_trip(value: Any) -> None:
    td = encode(value)
    assert kind(td) in {"", "string", "json", "bytes", "int", "double", "http"}
    assert decode_output(td) == value
    assert decode_output(wire(td)) == value


@PROPERTY
@given(host_inputs, st.booleans())
def test_host_input_round_trip(value: Any, nullable: bool) -> None:
    td = encode_input(value, nullable=nullable)
    assert decode(td) == value
    assert decode(wire(td)) == value


@PROPERTY
@given(requests, st.booleans())
def test_request_round_trip_either_map_mode(request_: HttpRequest, nullable: bool) -> None:
    http = wire(encode_input(request_, nullable=nullable)).http
    assert http is not None
    nullable_maps = [http.nullable_headers, http.nullable_query, http.nullable_params]
    plain_maps = [http.headers, http.query, http.params]
    assert not any(plain_maps if nullable else nullable_maps)
    assert decode(pb.TypedData(http=http)) == request_


# --- decode: every kind -------------------------------------------------------------------------

MBD = ModelBindingData(
    version="1.0", source="AzureStorageBlobs", content_type="json", content=b"{}"
)
PB_MBD = pb.ModelBindingData(
    version="1.0", source="AzureStorageBlobs", content_type="json", content=b"{}"
)


@pytest.mark.parametrize(
    ("td", "expected"),
    [
        (pb.TypedData(), None),
        (pb.TypedData(string=""), ""),
        (pb.TypedData(string="héllo"), "héllo"),
        (pb.TypedData(json='{"a":[1,2.5,null,true]}'), {"a": [1, 2.5, None, True]}),
        (pb.TypedData(json='"2024-05-01T10:00:00+00:00"'), "2024-05-01T10:00:00+00:00"),
        (pb.TypedData(json="3"), 3),
        (pb.TypedData(bytes=b"\x00\xff"), b"\x00\xff"),
        (pb.TypedData(stream=b"abc"), b"abc"),
        (pb.TypedData(int=0), 0),
        (pb.TypedData(int=-(2**63)), -(2**63)),
        (pb.TypedData(double=0.0), 0.0),
        (pb.TypedData(double=2.5), 2.5),
        (pb.TypedData(collection_bytes=pb.CollectionBytes(bytes=[b"a", b""])), [b"a", b""]),
        (pb.TypedData(collection_string=pb.CollectionString(string=["a", ""])), ["a", ""]),
        (pb.TypedData(collection_double=pb.CollectionDouble(double=[1.5])), [1.5]),
        (pb.TypedData(collection_sint64=pb.CollectionSInt64(sint64=[-1, 2])), [-1, 2]),
        (pb.TypedData(collection_string=pb.CollectionString()), []),
        (pb.TypedData(model_binding_data=PB_MBD), MBD),
        (
            pb.TypedData(
                collection_model_binding_data=pb.CollectionModelBindingData(
                    model_binding_data=[PB_MBD, PB_MBD]
                )
            ),
            [MBD, MBD],
        ),
        (
            pb.TypedData(http=pb.RpcHttp(method="GET", url="http://h/p")),
            HttpRequest(method="GET", url="http://h/p"),
        ),
    ],
    ids=lambda v: kind(v) or "unset" if isinstance(v, pb.TypedData) else "",
)
def test_decode_every_kind(td: pb.TypedData, expected: Any) -> None:
    assert decode(td) == expected
    assert decode(wire(td)) == expected
    assert type(decode(wire(td))) is type(expected)


def test_decode_invalid_json_names_kind_and_reason() -> None:
    with pytest.raises(ConversionError) as info:
        decode(pb.TypedData(json="not json"))
    assert (
        str(info.value) == "cannot decode TypedData.json: Expecting value: line 1 column 1 (char 0)"
    )


def test_decode_wraps_unexpected_errors() -> None:
    both = pb.TypedData(string="a", int=1)  # only possible when built locally
    with pytest.raises(ConversionError, match="more than one field set"):
        decode(both)
    with pytest.raises(ConversionError, match="not TypedData"):
        decode("text")  # type: ignore[arg-type]
    bad_text = pb.TypedData(http=pb.RpcHttp(body=pb.TypedData(string="\ud800")))
    with pytest.raises(ConversionError, match="UnicodeEncodeError"):
        decode(bad_text)


def test_decode_request_body_of_unsupported_kind() -> None:
    td = pb.TypedData(http=pb.RpcHttp(body=pb.TypedData(int=3)))
    with pytest.raises(ConversionError, match=r"TypedData\.http\.body: unsupported kind 'int'"):
        decode(td)


# --- HTTP request decoding ----------------------------------------------------------------------


def http_input(**fields: Any) -> pb.TypedData:
    return wire(pb.TypedData(http=pb.RpcHttp(method="POST", url="http://h/api/f?x=1", **fields)))


def test_request_headers_are_lower_cased() -> None:
    req = decode(http_input(headers={"Content-Type": "text/plain", "X-Id": "7"}))
    assert req.headers == {"content-type": "text/plain", "x-id": "7"}
    assert HttpRequest("GET", "/", headers={"A-B": "1"}).headers == {"a-b": "1"}


def test_request_nullable_maps_null_becomes_empty_string() -> None:
    req = decode(
        http_input(
            nullable_headers={"x-empty": NullableString(), "x-set": NullableString(value="v")},
            nullable_query={"q": NullableString(value="")},
            nullable_params={"id": NullableString(value="42")},
        )
    )
    assert req.headers == {"x-empty": "", "x-set": "v"}
    assert req.query == {"q": ""}
    assert req.params == {"id": "42"}


def test_request_nullable_maps_win_over_plain_maps() -> None:
    req = decode(
        http_input(
            headers={"a": "plain", "b": "plain"},
            nullable_headers={"A": NullableString(value="nullable")},
            query={"q": "1"},
        )
    )
    assert req.headers == {"a": "nullable", "b": "plain"}
    assert req.query == {"q": "1"}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"body": pb.TypedData(bytes=b"\x00\x01")}, b"\x00\x01"),
        ({"body": pb.TypedData(string="héllo")}, "héllo".encode()),
        (
            {"body": pb.TypedData(json='{"a":1}'), "raw_body": pb.TypedData(string='{ "a": 1 }')},
            b'{"a":1}',
        ),
        ({"body": pb.TypedData(string=""), "raw_body": pb.TypedData(string="raw")}, b""),
        ({"raw_body": pb.TypedData(bytes=b"raw")}, b"raw"),
        ({"body": pb.TypedData(), "raw_body": pb.TypedData(string="raw")}, b"raw"),
        ({}, b""),
    ],
    ids=["bytes", "string", "json", "empty-string", "raw-only", "unset-body", "absent"],
)
def test_request_body_matrix(fields: dict[str, Any], expected: bytes) -> None:
    assert decode(http_input(**fields)).body == expected


def test_request_identities() -> None:
    identity = RpcClaimsIdentity(
        authentication_type=NullableString(value="WebJobsAuthLevel"),
        role_claim_type=NullableString(value=""),
        claims=[RpcClaim(type="http://schemas/authlevel", value="Function")],
    )
    req = decode(http_input(identities=[identity]))
    assert req.identities == (
        ClaimsIdentity(
            authentication_type="WebJobsAuthLevel",
            name_claim_type=None,
            role_claim_type="",
            claims=(Claim(type="http://schemas/authlevel", value="Function"),),
        ),
    )


def test_request_text_uses_content_type_charset() -> None:
    body = "café".encode("latin-1")
    req = HttpRequest(
        "POST", "/", headers={"Content-Type": 'text/plain; charset="ISO-8859-1"'}, body=body
    )
    assert req.text() == "café"
    assert HttpRequest("POST", "/", body="café".encode()).text() == "café"
    assert HttpRequest("POST", "/", body=body).text(encoding="latin-1") == "café"
    unknown = HttpRequest(
        "POST", "/", headers={"content-type": "text/plain; charset=nope"}, body=b"ok"
    )
    assert unknown.text() == "ok"


@pytest.mark.parametrize(
    "codec",
    ["base64", "hex", "rot13", "zlib", "idna", "punycode", "undefined", "unicode_escape"],
)
def test_text_falls_back_to_utf8_for_a_charset_python_cannot_decode_text_with(codec: str) -> None:
    """Python knows these codec names, but bytes.decode refuses them (not text encodings) or
    fails despite "replace": like an unknown charset they mean UTF-8, not an exception."""
    content_type = f"text/plain; charset={codec}"
    body = "café\n".encode()
    request = HttpRequest("POST", "/", headers={"content-type": content_type}, body=body)
    assert request.text() == "café\n"
    assert HttpResponse(body=body, headers={"Content-Type": content_type}).text() == "café\n"


def test_request_json() -> None:
    assert HttpRequest("POST", "/", body=b'{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(ValueError, match=r"^request body is not valid JSON: Expecting value"):
        HttpRequest("POST", "/", body=b"<html>").json()
    with pytest.raises(ValueError, match="request body is not valid JSON"):
        HttpRequest("POST", "/", body=b"\xff\xfe\xfa").json()


def test_request_cookies_header_parsing() -> None:
    header = 'session=abc123; theme="dark"; empty=; =nameless; flag; session=second;  lang = en '
    req = HttpRequest("GET", "/", headers={"Cookie": header})
    assert req.cookies == {"session": "abc123", "theme": "dark", "empty": "", "lang": "en"}
    assert HttpRequest("GET", "/").cookies == {}


def test_request_is_read_only_and_copyable() -> None:
    source = {"a": "1"}
    req = HttpRequest("GET", "/", headers=source, body=bytearray(b"x"), identities=[])  # type: ignore[arg-type]
    source["b"] = "2"
    assert req.headers == {"a": "1"}
    assert req.body == b"x"
    assert type(req.body) is bytes
    assert req.identities == ()
    with pytest.raises(TypeError):
        req.headers["c"] = "3"  # type: ignore[index]
    assert pickle.loads(pickle.dumps(req)) == req
    assert copy.deepcopy(req) == req
    with pytest.raises(TypeError, match="must be bytes"):
        HttpRequest("GET", "/", body="text")  # type: ignore[arg-type]


# --- encode (worker side) -----------------------------------------------------------------------


def test_encode_kinds() -> None:
    assert kind(encode(None)) == ""
    assert encode("") == pb.TypedData(string="")
    assert kind(wire(encode(""))) == "string"
    assert wire(encode(0)).int == 0
    assert wire(encode(0.0)).double == 0.0
    assert wire(encode(b"")).bytes == b""
    assert encode(bytearray(b"ab")).bytes == b"ab"
    assert encode(memoryview(b"ab")).bytes == b"ab"
    assert encode({"é": [1, "ü"]}).json == '{"é":[1,"ü"]}'
    assert encode((1, 2)).json == "[1,2]"
    assert encode(["a", "b"]).json == '["a","b"]'  # never collection_* towards the host


def test_encode_bytes_are_not_copied() -> None:
    body = b"x" * 1000
    assert encode(body).bytes is body
    response = encode(HttpResponse(body=body)).http
    assert response is not None and response.body is not None
    assert response.body.bytes is body
    request = encode_input(HttpRequest("POST", "/", body=body)).http
    assert request is not None and request.body is not None
    assert request.body.bytes is body


@pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false")])
def test_encode_bool_is_json_not_int(value: bool, text: str) -> None:
    td = wire(encode(value))
    assert kind(td) == "json"
    assert td.json == text
    assert decode(td) is value


def test_encode_int_outside_64_bits_falls_back_to_json() -> None:
    assert kind(encode(2**63 - 1)) == "int"
    td = encode(2**63)
    assert td.json == str(2**63)
    assert decode(wire(td)) == 2**63


def test_encode_unsupported_type_names_it() -> None:
    with pytest.raises(ConversionError) as info:
        encode({1, 2})
    assert str(info.value) == (
        "cannot encode value of type 'set' as TypedData: "
        "use str, bytes, int, float, bool, dict, list, None or HttpResponse"
    )
    with pytest.raises(ConversionError, match=r"'ModelBindingData'.*does not accept"):
        encode(MBD)
    with pytest.raises(ConversionError, match="'HttpRequest'"):
        encode(HttpRequest("GET", "/"))
    with pytest.raises(ConversionError, match=r"TypedData\.json: Object of type set"):
        encode({"a": {1}})


@pytest.mark.parametrize("value", [[float("nan")], {"x": float("inf")}, [1, [-float("inf")]]])
def test_encode_nan_in_json_is_rejected(value: Any) -> None:
    with pytest.raises(ConversionError, match=r"TypedData\.json: Out of range float"):
        encode(value)


def test_encode_bare_float_nan_is_a_double() -> None:
    td = wire(encode(float("nan")))
    assert kind(td) == "double"
    assert decode(td) != decode(td)


# --- HTTP response encoding ---------------------------------------------------------------------


def test_response_body_always_set_even_when_empty() -> None:
    http = wire(encode(HttpResponse())).http
    assert http is not None
    assert http.body is not None
    assert betterproto2.which_one_of(http.body, "data") == ("bytes", b"")
    http = wire(encode(HttpResponse(body=""))).http
    assert http is not None and http.body is not None
    assert betterproto2.which_one_of(http.body, "data") == ("string", "")


def test_response_status_code_is_a_string() -> None:
    http = encode(HttpResponse(status_code=201, body="made")).http
    assert http is not None
    assert http.status_code == "201"
    assert http.body == pb.TypedData(string="made")


@pytest.mark.parametrize("status", [99, 100, 101, 199, 600, 0, True, "200", 200.0])
def test_response_status_code_validated(status: Any) -> None:
    """A final 1xx status would leave the client waiting for the real response."""
    with pytest.raises(ConversionError, match=r"status_code must be an int in 200\.\.599"):
        encode(HttpResponse(status_code=status))


def test_response_cookies_use_nullable_wrappers_and_same_site_mapping() -> None:
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    response = HttpResponse(
        cookies=[
            HttpCookie("a", "1"),
            HttpCookie("b", "2", domain="x.org", path="/", expires=expires, secure=True,
                       http_only=False, max_age=3600, same_site="none"),
            HttpCookie("c", "3", same_site="lax"),
            HttpCookie("d", "4", same_site="strict"),
        ]
    )  # fmt: skip
    http = wire(encode(response)).http
    assert http is not None
    plain, full, lax, strict = http.cookies
    assert plain == pb.RpcHttpCookie(name="a", value="1")
    assert plain.domain is None and plain.secure is None and plain.max_age is None
    assert plain.same_site == pb.RpcHttpCookieSameSite.None_
    assert full.domain == NullableString(value="x.org")
    assert full.path == NullableString(value="/")
    assert full.expires == NullableTimestamp(value=expires)
    assert full.secure == NullableBool(value=True)
    assert full.http_only == NullableBool(value=False)
    assert full.max_age == NullableDouble(value=3600.0)
    assert full.same_site == pb.RpcHttpCookieSameSite.ExplicitNone
    assert lax.same_site == pb.RpcHttpCookieSameSite.Lax
    assert strict.same_site == pb.RpcHttpCookieSameSite.Strict
    assert decode_output(pb.TypedData(http=http)) == response


@pytest.mark.parametrize(
    ("cookie", "message"),
    [
        (HttpCookie("n", "v", expires=datetime.datetime(2030, 1, 1)), "timezone-aware"),
        (
            HttpCookie(
                "n",
                "v",
                expires=datetime.datetime(
                    1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
                ),
            ),
            "out of range",
        ),
        (HttpCookie("n", "v", max_age=float("inf")), "max_age must be a finite"),
        (HttpCookie("n", "v", same_site="Lax"), "same_site must be"),  # type: ignore[arg-type]
        (HttpCookie("n", "v", secure=1), "secure must be bool"),  # type: ignore[arg-type]
        (HttpCookie("n", 1), "name and value must be str"),  # type: ignore[arg-type]
    ],
)
def test_response_cookie_validation(cookie: HttpCookie, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        encode(HttpResponse(cookies=[cookie]))


def test_response_rejects_bad_body_and_headers() -> None:
    with pytest.raises(ConversionError, match=r"HttpResponse\.body of type 'dict'"):
        encode(HttpResponse(body={"a": 1}))  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match=r"HttpResponse\.headers"):
        encode(HttpResponse(headers={"x": 1}))  # type: ignore[dict-item]


def test_response_from_json_and_helpers() -> None:
    response = HttpResponse.from_json({"é": [1, None]}, status_code=201)
    assert response.body == '{"é":[1,null]}'
    assert response.headers == {"content-type": "application/json"}
    assert response.json() == {"é": [1, None]}
    assert response.text() == '{"é":[1,null]}'
    kept = HttpResponse.from_json([], headers={"Content-Type": "application/problem+json"})
    assert kept.headers == {"Content-Type": "application/problem+json"}
    with pytest.raises(ConversionError, match="Out of range float"):
        HttpResponse.from_json(float("nan"))
    latin = HttpResponse(
        body="ü".encode("latin-1"), headers={"Content-Type": "text/plain; charset=latin-1"}
    )
    assert latin.text() == "ü"
    with pytest.raises(ValueError, match=r"^response body is not valid JSON"):
        HttpResponse(body="nope").json()


# --- host side ----------------------------------------------------------------------------------


def test_encode_input_collections() -> None:
    assert kind(encode_input(["a"])) == "collection_string"
    assert kind(encode_input([b"a"])) == "collection_bytes"
    assert kind(encode_input([1.5])) == "collection_double"
    assert kind(encode_input([1, -2])) == "collection_sint64"
    assert kind(encode_input([MBD])) == "collection_model_binding_data"
    assert kind(encode_input(MBD)) == "model_binding_data"
    for not_homogeneous in ([], [True], [1, 2.5], ["a", 1], [2**64], (1, 2)):
        assert kind(encode_input(not_homogeneous)) == "json"
    with pytest.raises(ConversionError, match="'HttpResponse'"):
        encode_input(HttpResponse())


def test_decode_output_status_code_parsing() -> None:
    def status(text: str) -> int:
        response = decode_output(pb.TypedData(http=pb.RpcHttp(status_code=text)))
        assert isinstance(response, HttpResponse)
        return response.status_code

    assert status("201") == 201
    assert status(" 404 ") == 404
    assert status("") == 200
    assert status("abc") == 200
    assert status("1_000") == 200
    assert status("99999999999") == 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\t\n\v\f\r 201 \r\n", 201),  # ASCII white space around the number
        ("\u00a0201", 200),  # but no other Unicode space (Python's strip() takes it)
        ("201\u2003", 200),
        ("+0000000000000404", 404),  # leading zeros do not count against the 10 digits
        ("-2147483648", -(2**31)),  # the signed 32-bit range, then validated by the caller
        ("2147483648", 200),
        ("404\0\0", 404),  # .NET tolerates NULs at the very end...
        ("404 \0", 404),
        ("404\0 ", 200),  # ...but nothing after them
        ("+-404", 200),
        ("- 404", 200),
        ("4\u0660\u0664", 200),  # ASCII digits only
        ("0" * 5000 + "201", 201),  # no int() digit limit to trip over
    ],
)
def test_status_code_strings_parse_like_dotnet_int_try_parse(text: str, expected: int) -> None:
    """The host reads RpcHttp.status_code with int.TryParse(NumberStyles.Integer, invariant
    culture) and falls back to 200 (HttpBinding.cs, TryParseStatusCode)."""
    response = decode_output(pb.TypedData(http=pb.RpcHttp(status_code=text)))
    assert isinstance(response, HttpResponse)
    assert response.status_code == expected


def test_decode_output_bodies() -> None:
    def body(td: pb.TypedData | None) -> bytes | str:
        response = decode_output(pb.TypedData(http=pb.RpcHttp(body=td)))
        assert isinstance(response, HttpResponse)
        return response.body

    assert body(pb.TypedData(json='{"a":1}')) == '{"a":1}'
    assert body(pb.TypedData(stream=b"s")) == b"s"
    assert body(None) == b""
    with pytest.raises(ConversionError, match="unsupported kind 'double'"):
        body(pb.TypedData(double=1.0))


@pytest.mark.parametrize(
    "td",
    [
        pb.TypedData(collection_string=pb.CollectionString(string=["a"])),
        pb.TypedData(collection_sint64=pb.CollectionSInt64(sint64=[1])),
        pb.TypedData(model_binding_data=PB_MBD),
        pb.TypedData(collection_model_binding_data=pb.CollectionModelBindingData()),
    ],
    ids=kind,
)
def test_decode_output_rejects_what_the_host_rejects(td: pb.TypedData) -> None:
    with pytest.raises(ConversionError, match="the host rejects"):
        decode_output(td)
