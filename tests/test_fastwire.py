"""The hand-written hot path (workerkit._wire.messages and .values) must agree with the
general code: betterproto2 for the wire and workerkit.convert for values, on arbitrary input."""

from __future__ import annotations

import math
from typing import Any

from google_pb2 import PACKAGE, Pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pb_strategies import pb_messages

from workerkit import convert
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime.logs import LogEntry
from workerkit._types import FunctionInfo, InitRequest, MetadataRequest
from workerkit._wire.messages import (
    function_load_response,
    function_metadata_response,
    invocation_response,
    read_function_load,
    read_init,
    read_invocation,
    read_metadata_request,
    read_trace,
    rpc_function_metadata,
    rpc_log,
    start_stream,
    status_result,
    worker_init_response,
)
from workerkit._wire.schema import ONEOF_STREAMING_MESSAGE_CONTENT
from workerkit._wire.values import decode_value, encode_chunks, encode_value, typed_data
from workerkit.convert import ConversionError, HttpCookie, HttpResponse
from workerkit.errors import CANCELLED, FAILURE, SUCCESS, ErrorDetails, error_details, failure

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
        assert read_trace(fast.trace)[:3] == (
            trace.trace_parent,
            trace.trace_state,
            trace.attributes,
        )
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


ERROR_DETAILS = st.builds(
    ErrorDetails,
    message=TEXT,
    type=TEXT,
    stack_trace=TEXT,
    source=TEXT,
    is_user_exception=st.booleans(),
)


def sendable(text: str) -> str:
    """What a str with lone surrogates becomes on the wire: escaped, not an error."""
    return text.encode("utf-8", "backslashreplace").decode()


def expected_exception(details: ErrorDetails) -> pb.RpcException:
    return pb.RpcException(
        message=sendable(details.message),
        type=sendable(details.type),
        stack_trace=sendable(details.stack_trace),
        source=sendable(details.source),
        is_user_exception=details.is_user_exception,
    )


@PROPERTY
@given(
    entry=st.builds(
        LogEntry,
        message=TEXT,
        invocation_id=TEXT,
        category=TEXT,
        level=st.integers(0, 6),
        log_category=st.integers(0, 2),
        exception=st.none() | ERROR_DETAILS,
    )
)
def test_rpc_log_matches_the_message(entry: LogEntry) -> None:
    expected = pb.RpcLog(
        invocation_id=sendable(entry.invocation_id),
        category=sendable(entry.category),
        level=pb.RpcLogLevel(entry.level),
        message=sendable(entry.message),
        log_category=pb.RpcLogRpcLogCategory(entry.log_category),
        exception=None if entry.exception is None else expected_exception(entry.exception),
    )
    assert pb.StreamingMessage.parse(rpc_log(entry)) == pb.StreamingMessage(rpc_log=expected)


@PROPERTY
@given(status=st.sampled_from([FAILURE, SUCCESS, CANCELLED]), details=st.none() | ERROR_DETAILS)
def test_status_result_matches_the_message(status: int, details: ErrorDetails | None) -> None:
    expected = pb.StatusResult(
        status=pb.StatusResultStatus(status),
        exception=None if details is None else expected_exception(details),
    )
    assert pb.StatusResult.parse(status_result(status, details)) == expected


def test_status_result_of_a_real_failure_is_what_errors_failure_builds() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        error = exc
    details = error_details(error, user=True, source="on_init")
    assert pb.StatusResult.parse(status_result(FAILURE, details)) == failure(
        error, user=True, source="on_init"
    )


@PROPERTY
@given(data=st.data())
def test_read_init_agrees_with_betterproto2(pb2: Pb2, data: st.DataObject) -> None:
    raw = data.draw(pb_messages(pb2.descriptor(f"{PACKAGE}.WorkerInitRequest")))
    general = pb.WorkerInitRequest.parse(raw.SerializeToString())
    assert read_init(raw.SerializeToString()) == InitRequest(
        host_version=general.host_version,
        worker_directory=general.worker_directory,
        function_app_directory=general.function_app_directory,
        capabilities=general.capabilities,
        log_categories={k: int(v) for k, v in general.log_categories.items()},
    )


@PROPERTY
@given(data=st.data())
def test_read_function_load_agrees_with_from_rpc(pb2: Pb2, data: st.DataObject) -> None:
    raw = data.draw(pb_messages(pb2.descriptor(f"{PACKAGE}.FunctionLoadRequest")))
    general = pb.FunctionLoadRequest.parse(raw.SerializeToString())
    expected = FunctionInfo.from_rpc(
        general.function_id, general.metadata or pb.RpcFunctionMetadata()
    )
    assert read_function_load(raw.SerializeToString()) == expected


@PROPERTY
@given(request_id=TEXT, worker_id=TEXT)
def test_start_stream_matches_the_message(request_id: str, worker_id: str) -> None:
    expected = pb.StreamingMessage(
        request_id=sendable(request_id), start_stream=pb.StartStream(worker_id=sendable(worker_id))
    )
    assert pb.StreamingMessage.parse(start_stream(request_id, worker_id)) == expected


@PROPERTY
@given(
    request_id=TEXT,
    texts=st.lists(TEXT, min_size=5, max_size=5),
    capabilities=st.dictionaries(TEXT, TEXT, max_size=3),
    custom=st.dictionaries(TEXT, TEXT, max_size=3),
    details=st.none() | ERROR_DETAILS,
)
def test_worker_init_response_matches_the_message(
    request_id: str,
    texts: list[str],
    capabilities: dict[str, str],
    custom: dict[str, str],
    details: ErrorDetails | None,
) -> None:
    status = SUCCESS if details is None else FAILURE
    version, name, runtime_version, bitness, _ = texts
    encoded = worker_init_response(
        request_id,
        worker_version=version,
        capabilities=capabilities,
        result=status_result(status, details),
        runtime_name=name,
        runtime_version=runtime_version,
        worker_bitness=bitness,
        custom_properties=custom,
    )

    def escaped(mapping: dict[str, str]) -> dict[str, str]:
        return {sendable(k): sendable(v) for k, v in mapping.items()}

    expected = pb.StreamingMessage(
        request_id=sendable(request_id),
        worker_init_response=pb.WorkerInitResponse(
            worker_version=sendable(version),
            capabilities=escaped(capabilities),
            result=pb.StatusResult.parse(status_result(status, details)),
            worker_metadata=pb.WorkerMetadata(
                runtime_name=sendable(name),
                runtime_version=sendable(runtime_version),
                worker_version=sendable(version),
                worker_bitness=sendable(bitness),
                custom_properties=escaped(custom),
            ),
        ),
    )
    assert pb.StreamingMessage.parse(encoded) == expected


@PROPERTY
@given(request_id=TEXT, function_id=TEXT, details=st.none() | ERROR_DETAILS)
def test_function_load_response_matches_the_message(
    request_id: str, function_id: str, details: ErrorDetails | None
) -> None:
    result = status_result(SUCCESS if details is None else FAILURE, details)
    expected = pb.StreamingMessage(
        request_id=sendable(request_id),
        function_load_response=pb.FunctionLoadResponse(
            function_id=sendable(function_id), result=pb.StatusResult.parse(result)
        ),
    )
    assert pb.StreamingMessage.parse(function_load_response(request_id, function_id, result)) == (
        expected
    )


@PROPERTY
@given(data=st.data())
def test_read_metadata_request_agrees_with_betterproto2(pb2: Pb2, data: st.DataObject) -> None:
    raw = data.draw(pb_messages(pb2.descriptor(f"{PACKAGE}.FunctionsMetadataRequest")))
    general = pb.FunctionsMetadataRequest.parse(raw.SerializeToString())
    assert read_metadata_request(raw.SerializeToString()) == MetadataRequest(
        general.function_app_directory
    )


METADATA = st.fixed_dictionaries(
    {
        "name": TEXT,
        "function_id": TEXT,
        "directory": TEXT,
        "script_file": TEXT,
        "entry_point": TEXT,
        "raw_bindings": st.lists(TEXT, max_size=3),
        "properties": st.dictionaries(TEXT, TEXT, max_size=3),
        "status": st.none() | st.builds(status_result, st.just(FAILURE), ERROR_DETAILS),
    }
)


@PROPERTY
@given(
    request_id=TEXT,
    entries=st.lists(METADATA, max_size=3),
    details=st.none() | ERROR_DETAILS,
    use_default=st.booleans(),
)
def test_function_metadata_response_matches_the_message(
    request_id: str,
    entries: list[dict[str, Any]],
    details: ErrorDetails | None,
    use_default: bool,
) -> None:
    result = status_result(SUCCESS if details is None else FAILURE, details)
    encoded = function_metadata_response(
        request_id,
        [rpc_function_metadata(**entry) for entry in entries],
        result,
        use_default_indexing=use_default,
    )
    expected = pb.StreamingMessage(
        request_id=sendable(request_id),
        function_metadata_response=pb.FunctionMetadataResponse(
            function_metadata_results=[
                pb.RpcFunctionMetadata(
                    name=sendable(e["name"]),
                    function_id=sendable(e["function_id"]),
                    directory=sendable(e["directory"]),
                    script_file=sendable(e["script_file"]),
                    entry_point=sendable(e["entry_point"]),
                    raw_bindings=[sendable(b) for b in e["raw_bindings"]],
                    properties={sendable(k): sendable(v) for k, v in e["properties"].items()},
                    status=None if e["status"] is None else pb.StatusResult.parse(e["status"]),
                )
                for e in entries
            ],
            result=pb.StatusResult.parse(result),
            use_default_metadata_indexing=use_default,
        ),
    )
    assert pb.StreamingMessage.parse(encoded) == expected


def test_the_content_fields_are_the_contracts_oneof(pb2: Pb2) -> None:
    streaming = pb2.descriptor(f"{PACKAGE}.StreamingMessage")
    content = {f.number for f in streaming.oneofs_by_name["content"].fields}
    assert content == ONEOF_STREAMING_MESSAGE_CONTENT


def test_an_empty_result_is_still_sent() -> None:
    """A Failure with no exception encodes to no bytes; the `result` field must still be
    present, or the host would see no result at all."""
    message = pb.StreamingMessage.parse(function_load_response("", "f", status_result(FAILURE)))
    assert message.function_load_response is not None
    assert message.function_load_response.result == pb.StatusResult()


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


# -- the one-byte shortcuts of the field reader (issue 18) -------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError past the end
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("overlong varint")


def reference_fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Protobuf's wire format read the plain way: every varint through `_varint`."""
    found: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("past the end")
            found.append((key >> 3, 2, data[pos : pos + length]))
            pos += length
        elif wire_type == 0:
            value, pos = _varint(data, pos)
            found.append((key >> 3, 0, value))
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            if pos + width > len(data):
                raise ValueError("truncated")
            found.append((key >> 3, wire_type, int.from_bytes(data[pos : pos + width], "little")))
            pos += width
        else:
            raise ValueError("wire type")
    return found


def reference_entry(data: bytes) -> tuple[str, bytes | None]:
    key, value = "", None
    for number, wire_type, item in reference_fields(data):
        if wire_type == 2 and number == 1:
            key = item.decode()
        elif wire_type == 2 and number == 2:
            value = item
    return key, value


def result(function: Any, data: bytes) -> Any:
    try:
        found = function(data)
    except (ValueError, IndexError):
        return "error"
    if isinstance(found, list):
        return [(n, w, bytes(v) if isinstance(v, memoryview) else v) for n, w, v in found]
    key, value = found
    return key, None if value is None else bytes(value)


def _entry(key: bytes, value: bytes | None) -> bytes:
    out = b"\x0a" + pb_varint(len(key)) + key
    return out if value is None else out + b"\x12" + pb_varint(len(value)) + value


def pb_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


ENTRY_PARTS = st.binary(max_size=200) | st.text(max_size=150).map(str.encode)
#: Map entries as encoders write them (lengths on both sides of 128), then cut, extended or
#: with a byte changed, and arbitrary bytes.
ENTRIES = st.one_of(
    st.builds(_entry, ENTRY_PARTS, st.none() | ENTRY_PARTS),
    st.tuples(
        st.builds(_entry, ENTRY_PARTS, ENTRY_PARTS), st.integers(0, 400), st.binary(max_size=3)
    ).map(lambda t: (t[0][: t[1]] + t[2]) if t[1] < len(t[0]) else t[0] + t[2]),
    st.tuples(
        st.builds(_entry, ENTRY_PARTS, ENTRY_PARTS), st.integers(0, 400), st.integers(0, 255)
    ).map(lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1 :]),
    st.binary(max_size=40),
)


@PROPERTY
@given(data=ENTRIES)
# a value of 129 bytes, one missing: its length's first byte (0x81) would fit the rest
@example(data=_entry(b"k", bytes(129))[:-1])
@example(data=_entry(bytes(200), b"v"))
def test_fields_and_read_entry_agree_with_the_plain_reader(data: bytes) -> None:
    from workerkit._wire.primitives import fields, read_entry

    assert result(lambda d: list(fields(d)), data) == result(reference_fields, data)
    assert result(lambda d: read_entry(memoryview(d)), data) == result(reference_entry, data)


@given(value=st.integers(0, 2**64 - 1))
def test_varint_bytes_agrees_with_the_plain_writer(value: int) -> None:
    from workerkit._wire.primitives import varint_bytes

    assert varint_bytes(value) == pb_varint(value)
