"""The hand-written hot path (workerkit._fastwire) must agree with the general code:
betterproto2 for the wire and workerkit.convert for values, on arbitrary input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google_pb2 import PACKAGE, Pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pb_strategies import pb_messages

from workerkit import convert
from workerkit._fastwire import (
    decode_value,
    encode_chunks,
    encode_value,
    invocation_response,
    read_invocation,
    read_trace,
    rpc_log,
    typed_data,
)
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.convert import ConversionError, HttpCookie, HttpResponse

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def outcome(function: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", function(*args)
    except ConversionError:
        return "error", None


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@PROPERTY
@given(data=st.data())
def test_decode_value_agrees_with_convert(pb2: Pb2, data: st.DataObject) -> None:
    message = data.draw(pb_messages(pb2.descriptor(f"{PACKAGE}.TypedData")))
    raw = message.SerializeToString()
    fast = outcome(decode_value, memoryview(raw))
    general = outcome(convert.decode, pb.TypedData.parse(raw))
    assert fast[0] == general[0]
    assert same(fast[1], general[1])


@PROPERTY
@given(data=st.data())
def test_read_invocation_agrees_with_betterproto2(pb2: Pb2, data: st.DataObject) -> None:
    message = data.draw(pb_messages(pb2.descriptor(f"{PACKAGE}.InvocationRequest")))
    raw = message.SerializeToString()
    general = pb.InvocationRequest.parse(raw)
    fast = read_invocation("r1", raw)
    assert (fast.invocation_id, fast.function_id) == (general.invocation_id, general.function_id)
    assert fast.inputs is not None and fast.metadata is not None
    assert [name for name, _, _ in fast.inputs] == [b.name for b in general.input_data]
    for (_, data_view, shared), binding in zip(fast.inputs, general.input_data, strict=True):
        assert shared == (binding.rpc_shared_memory is not None)
        expected = binding.data if binding.data is not None else pb.TypedData()
        assert typed_data(data_view) == expected
    assert {k: typed_data(v) for k, v in fast.metadata.items()} == general.trigger_metadata
    trace = general.trace_context
    if trace is None:
        assert fast.trace is None
    else:
        assert fast.trace is not None
        assert read_trace(fast.trace) == (trace.trace_parent, trace.trace_state, trace.attributes)
    assert (fast.retry is None) == (general.retry_context is None)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
TEXT = st.text(max_size=20)  # includes lone surrogates, which cannot be sent
HEADERS = st.dictionaries(TEXT, TEXT, max_size=4)
RESPONSES = st.builds(
    HttpResponse,
    status_code=st.integers(50, 650),
    body=st.binary(max_size=20) | TEXT,
    headers=HEADERS,
    enable_content_negotiation=st.booleans(),
    cookies=st.lists(st.builds(HttpCookie, name=st.text(max_size=5), value=TEXT), max_size=2),
)
VALUES = (
    st.none()
    | TEXT
    | st.binary(max_size=20)
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | JSON
    | st.tuples(st.integers(), TEXT)
    | st.sets(st.integers(), max_size=2)
    | RESPONSES
)


def general_encode(value: Any) -> bytes:
    data = convert.encode(value)
    try:
        return bytes(data)
    except Exception:  # e.g. lone surrogates: the writer would fail to serialise it
        raise ConversionError("not serialisable") from None


@PROPERTY
@given(value=VALUES)
def test_encode_value_agrees_with_convert(value: Any) -> None:
    fast = outcome(encode_value, value)
    general = outcome(general_encode, value)
    assert fast[0] == general[0]
    if fast[0] == "value":
        assert pb.TypedData.parse(fast[1]) == pb.TypedData.parse(general[1]) or (
            isinstance(value, float) and math.isnan(value)
        )


@PROPERTY
@given(
    request_id=st.text(max_size=5),
    invocation_id=st.text(max_size=36),
    value=st.none() | st.text(max_size=10) | st.integers(-100, 100),
    outputs=st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=3),
)
def test_invocation_response_matches_the_message(
    request_id: str, invocation_id: str, value: Any, outputs: dict[str, str]
) -> None:
    try:
        encoded = invocation_response(
            request_id,
            invocation_id,
            None if value is None else encode_chunks(value),
            [(k, encode_chunks(v)) for k, v in outputs.items()],
        )
    except (ConversionError, UnicodeEncodeError):
        return  # lone surrogates: refused before anything is sent
    expected = pb.StreamingMessage(
        request_id=request_id,
        invocation_response=pb.InvocationResponse(
            invocation_id=invocation_id,
            output_data=[
                pb.ParameterBinding(name=k, data=convert.encode(v)) for k, v in outputs.items()
            ],
            result=pb.StatusResult(status=pb.StatusResultStatus.Success),
            return_value=None if value is None else convert.encode(value),
        ),
    )
    assert pb.StreamingMessage.parse(encoded) == expected


@PROPERTY
@given(
    entry=st.builds(
        pb.RpcLog,
        invocation_id=st.text(max_size=10),
        category=st.text(max_size=10),
        level=st.sampled_from(list(pb.RpcLogLevel)),
        message=st.text(max_size=30),
        log_category=st.sampled_from(list(pb.RpcLogRpcLogCategory)),
        event_id=st.sampled_from(["", "e1"]),
    )
)
def test_rpc_log_matches_the_message(entry: pb.RpcLog) -> None:
    try:
        expected = bytes(pb.StreamingMessage(rpc_log=entry))
    except Exception:
        with pytest.raises(UnicodeEncodeError):
            rpc_log(entry)
        return
    assert pb.StreamingMessage.parse(rpc_log(entry)) == pb.StreamingMessage.parse(expected)


def test_a_16_mib_body_is_read_without_building_messages() -> None:
    body = b"x" * (16 * 1024 * 1024)
    request = convert.encode_input(convert.HttpRequest("POST", "http://h/api/e", body=body))
    raw = bytes(pb.InvocationRequest(
        invocation_id="i", function_id="f", input_data=[pb.ParameterBinding("req", request)]
    ))  # fmt: skip
    fast = read_invocation("", raw)
    assert fast.inputs is not None
    [(name, view, _)] = fast.inputs
    assert name == "req" and decode_value(view).body == body
