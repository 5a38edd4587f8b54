"""workerkit/_wire/schema.py against Google's protobuf: every number, tag, oneof and enum value.

The drift test (test_proto_contract.py) proves the file is what proto/generate.py writes;
this proves what it writes is right, with protobuf's own encoder as the judge of each tag.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from google_pb2 import PACKAGE, Pb2

from workerkit._wire import schema

GENERATE = Path(__file__).resolve().parent.parent / "proto" / "generate.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("workerkit_proto_generate_schema", GENERATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
MESSAGES: tuple[str, ...] = GENERATOR.SCHEMA_MESSAGES


def _name(*parts: str) -> str:
    return "_".join(GENERATOR._upper_snake(part) for part in parts)


def _descriptor(pb2: Pb2, message: str) -> Descriptor:
    for package in (f"{PACKAGE}.", ""):  # the identity and nullable types have no package
        try:
            return pb2.descriptor(package + message)
        except KeyError:
            continue
    raise KeyError(message)


def _sample(field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_STRING:
        return "x"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"x"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5
    return 1  # the integer kinds and enums


def _repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf 6 and later
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _serialised_with(descriptor: Descriptor, field: FieldDescriptor) -> bytes:
    """A message of `descriptor` with only `field` set, serialised by protobuf."""
    message: Any = GetMessageClass(descriptor)()
    member = getattr(message, field.name) if field.type == FieldDescriptor.TYPE_MESSAGE else None
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value = entry.fields_by_name["value"]
        if value.type == FieldDescriptor.TYPE_MESSAGE:
            member["k"].SetInParent()
        else:
            member["k"] = _sample(value)
    elif _repeated(field):
        if member is not None:
            member.add()
        else:
            getattr(message, field.name).append(_sample(field))
    elif member is not None:
        member.SetInParent()
    else:
        setattr(message, field.name, _sample(field))
    data: bytes = message.SerializeToString()
    return data


def test_every_message_is_in_the_schema(pb2: Pb2) -> None:
    for message in MESSAGES:
        descriptor = _descriptor(pb2, message)
        generated = {n for n in vars(schema) if n.startswith(_name(message) + "_")}
        expected = {_name(message, f.name) for f in descriptor.fields}
        assert expected <= generated, message


@pytest.mark.parametrize("message", MESSAGES)
def test_numbers_and_tags_are_protobufs(pb2: Pb2, message: str) -> None:
    descriptor = _descriptor(pb2, message)
    for field in descriptor.fields:
        name = _name(message, field.name)
        assert getattr(schema, name) == field.number, name
        tag = getattr(schema, f"TAG_{name}")
        data = _serialised_with(descriptor, field)
        assert data.startswith(tag), (name, tag, data)
    for oneof in descriptor.oneofs:
        if oneof.name.startswith("_"):
            continue  # the synthetic oneof of a proto3 `optional` field
        members = {f.number for f in oneof.fields}
        assert getattr(schema, "ONEOF_" + _name(message, oneof.name)) == members
    for enum in descriptor.enum_types:
        for value in enum.values:
            assert getattr(schema, _name(message, enum.name, value.name)) == value.number


def test_map_entries_are_key_1_value_2() -> None:
    assert (schema.MAP_ENTRY_KEY, schema.MAP_ENTRY_VALUE) == (1, 2)
    assert (schema.TAG_MAP_ENTRY_KEY, schema.TAG_MAP_ENTRY_VALUE) == (b"\x0a", b"\x12")


def test_a_hand_picked_few() -> None:
    """Spelled out, so a reader can see what the names stand for."""
    assert schema.STREAMING_MESSAGE_INVOCATION_REQUEST == 4
    assert schema.TAG_STREAMING_MESSAGE_START_STREAM == b"\xa2\x01"
    assert schema.TAG_TYPED_DATA_DOUBLE == b"\x39"  # fixed64
    assert schema.TAG_TYPED_DATA_INT == b"\x30"  # varint (sint64)
    assert schema.TAG_RPC_HTTP_ENABLE_CONTENT_NEGOTIATION == b"\x80\x01"
    assert schema.STATUS_RESULT_STATUS_SUCCESS == 1
