"""Hypothesis strategies for protobuf messages built from their descriptors (any message of
proto/, with every field, oneof and map filled at random). Used by interop and fuzz tests."""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message as PbMessage
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

# --- shared values ------------------------------------------------------------------------------

SIZE = 3
MAX_DEPTH = 4
TEXT = st.text(max_size=8)
BLOB = st.binary(max_size=8)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLE = st.floats(allow_nan=False)
US = 10**6
# betterproto2 maps Duration to timedelta and Timestamp to datetime: microsecond precision.
# Durations stay within [0, 10**9 s] (~31 years): betterproto2 0.10.0 mis-encodes negative
# fractional durations and, through float arithmetic, very long ones (see the test at the end).
DURATION_MAX_S = 10**9
TIMESTAMP_MIN_S, TIMESTAMP_MAX_S = -62_135_596_800, 253_402_300_799


# --- protobuf-first: messages built from the protobuf descriptors -------------------------------


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and bool(
        field.message_type.GetOptions().map_entry
    )


def _allowed(field: FieldDescriptor, depth: int) -> bool:
    if _is_map(field):
        value = field.message_type.fields_by_name["value"]
        return value.type != FieldDescriptor.TYPE_MESSAGE or depth < MAX_DEPTH
    return field.type != FieldDescriptor.TYPE_MESSAGE or depth < MAX_DEPTH


def _scalars(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kinds: dict[int, st.SearchStrategy[Any]] = {
        FieldDescriptor.TYPE_STRING: TEXT,
        FieldDescriptor.TYPE_BYTES: BLOB,
        FieldDescriptor.TYPE_BOOL: st.booleans(),
        FieldDescriptor.TYPE_INT32: INT32,
        FieldDescriptor.TYPE_INT64: INT64,
        FieldDescriptor.TYPE_SINT64: INT64,
        FieldDescriptor.TYPE_DOUBLE: DOUBLE,
    }
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    return kinds[field.type]


def _values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return pb_messages(field.message_type, depth + 1)
    return _scalars(field)


def _set(msg: PbMessage, field: FieldDescriptor, value: Any) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        target = getattr(msg, field.name)
        target.SetInParent()
        target.CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def _duration(cls: type[PbMessage], micros: int) -> PbMessage:
    sign = -1 if micros < 0 else 1
    seconds, rest = divmod(abs(micros), US)
    return cls(seconds=sign * seconds, nanos=sign * rest * 1000)


def _timestamp(cls: type[PbMessage], micros: int) -> PbMessage:
    seconds, rest = divmod(micros, US)
    return cls(seconds=seconds, nanos=rest * 1000)


@functools.cache
def pb_messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[PbMessage]:
    cls = GetMessageClass(desc)
    if desc.full_name == "google.protobuf.Duration":
        return st.integers(0, DURATION_MAX_S * US).map(functools.partial(_duration, cls))
    if desc.full_name == "google.protobuf.Timestamp":
        lowest, highest = TIMESTAMP_MIN_S * US, TIMESTAMP_MAX_S * US + US - 1
        return st.integers(lowest, highest).map(functools.partial(_timestamp, cls))

    @st.composite
    def build(draw: st.DrawFn) -> PbMessage:
        msg = cls()
        for oneof in desc.oneofs:
            members = [f for f in oneof.fields if _allowed(f, depth)]
            chosen = draw(st.none() | st.sampled_from(members)) if members else None
            if chosen is not None:
                _set(msg, chosen, draw(_values(chosen, depth)))
        for field in desc.fields:
            if field.containing_oneof is not None or not _allowed(field, depth):
                continue
            if _is_map(field):
                key = field.message_type.fields_by_name["key"]
                value = field.message_type.fields_by_name["value"]
                entries = draw(st.dictionaries(_scalars(key), _values(value, depth), max_size=SIZE))
                for k, v in entries.items():
                    if value.type == FieldDescriptor.TYPE_MESSAGE:
                        getattr(msg, field.name)[k].CopyFrom(v)
                    else:
                        getattr(msg, field.name)[k] = v
            elif field.is_repeated:
                getattr(msg, field.name).extend(
                    draw(st.lists(_values(field, depth), max_size=SIZE))
                )
            elif field.type != FieldDescriptor.TYPE_MESSAGE or draw(st.booleans()):
                _set(msg, field, draw(_values(field, depth)))
        return msg

    return build()
