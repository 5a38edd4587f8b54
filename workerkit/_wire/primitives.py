"""Protobuf's encoding by hand: varints, a field iterator, and writers of tagged fields.

Nothing here knows a message. Field numbers and tags come from `schema` (generated from
proto/); the wire types of the encoding itself (0 varint, 1 fixed64, 2 length-delimited,
5 fixed32) stay literals in the readers' loops, where a constant is cheaper than a global.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .schema import MAP_ENTRY_KEY, MAP_ENTRY_VALUE, TAG_MAP_ENTRY_KEY, TAG_MAP_ENTRY_VALUE

__all__ = [
    "Buffer",
    "Chunks",
    "field",
    "fields",
    "int32",
    "last_field",
    "read_entry",
    "read_string_entry",
    "read_text",
    "read_varint",
    "string_field",
    "string_map",
    "text_field",
    "utf8",
    "varint_bytes",
    "wrapped",
]

Buffer = bytes | memoryview
#: An encoding as a list of pieces whose concatenation is the bytes: big bodies are referenced,
#: not copied, until the one ``b"".join`` that makes the message.
Chunks = list[bytes]


# -- reading -----------------------------------------------------------------------------------
def read_varint(data: Buffer, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("overlong varint")


def fields(data: Buffer) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field: an int for varints and fixed-size
    fields, a zero-copy memoryview for length-delimited ones."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    pos, size = 0, len(view)
    while pos < size:
        # Keys and lengths are mostly one byte: read those without a call.
        key = view[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(view, pos)
        wire_type = key & 7
        if wire_type == 2:
            length = view[pos] if pos < size else 0x80  # past the end: read_varint raises
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(view, pos)
            end = pos + length
            if end > size:
                raise ValueError("a field runs past the end of its message")
            yield key >> 3, 2, view[pos:end]
            pos = end
        elif wire_type == 0:
            value, pos = read_varint(view, pos)
            yield key >> 3, 0, value
        elif wire_type == 1:
            if pos + 8 > size:
                raise ValueError("truncated fixed64")
            yield key >> 3, 1, int.from_bytes(view[pos : pos + 8], "little")
            pos += 8
        elif wire_type == 5:
            if pos + 4 > size:
                raise ValueError("truncated fixed32")
            yield key >> 3, 5, int.from_bytes(view[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"invalid wire type {wire_type}")


def read_text(view: memoryview) -> str:
    """A string field's value; raises UnicodeDecodeError (a ValueError) if not UTF-8."""
    return str(view, "utf-8")


def read_entry(view: memoryview) -> tuple[str, memoryview | None]:
    """A map entry's key and its raw value (None when the value is absent)."""
    # What every encoder writes: the key, then the value, each shorter than 128 bytes.
    size = len(view)
    if size > 3 and view[0] == _KEY_TAG and (length := view[1]) < 0x80:
        end = 2 + length
        if end == size:
            return str(view[2:end], "utf-8"), None
        if (
            end + 2 <= size
            and view[end] == _VALUE_TAG
            and (value_length := view[end + 1]) < 0x80
            and end + 2 + value_length == size
        ):
            return str(view[2:end], "utf-8"), view[end + 2 :]
    key, value = "", None
    for number, wire_type, item in fields(view):
        if wire_type == 2:
            if number == MAP_ENTRY_KEY:
                key = read_text(item)
            elif number == MAP_ENTRY_VALUE:
                value = item
    return key, value


def read_string_entry(view: memoryview) -> tuple[str, str]:
    """An entry of a `map<string, string>`."""
    key, value = read_entry(view)
    return key, read_text(value) if value is not None else ""


def last_field(view: memoryview) -> tuple[int, int, Any]:
    """The last field of a message: the member a oneof-only message (TypedData) holds."""
    found: tuple[int, int, Any] = (0, 0, None)
    for found in fields(view):  # noqa: B007 - the loop is for its last value
        pass
    return found


def int32(value: int) -> int:
    """An enum or int32 varint (negative values arrive as 64-bit two's complement)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


#: The one-byte tags of a map entry's key (field 1) and value (field 2), length-delimited.
_KEY_TAG = TAG_MAP_ENTRY_KEY[0]
_VALUE_TAG = TAG_MAP_ENTRY_VALUE[0]


# -- writing -----------------------------------------------------------------------------------
#: The varints of 0-127: one byte each.
_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))


def varint_bytes(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + varint_bytes(len(payload)) + payload


def text_field(tag: bytes, text: str) -> bytes:
    """A string field, written even when empty; raises UnicodeEncodeError for text that is
    not valid Unicode (lone surrogates)."""
    return field(tag, text.encode())


def wrapped(tag: bytes, chunks: Chunks) -> Chunks:
    """A length-delimited field whose payload is `chunks` (not copied)."""
    return [tag, varint_bytes(sum(map(len, chunks))), *chunks]


def utf8(text: str) -> bytes:
    """`text` as UTF-8; lone surrogates (possible in user strings) escaped, not fatal.

    For text about the worker (logs, metadata, errors), where escaping beats losing the
    message. A function's output values go through `text_field` instead, which raises:
    their bytes must be exactly what the function returned, or the invocation fails."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def string_field(tag: bytes, text: str) -> bytes:
    """A string field, left out when empty (the proto3 default)."""
    return field(tag, utf8(text)) if text else b""


def string_map(tag: bytes, mapping: Mapping[str, str]) -> bytes:
    """A `map<string, string>` field: one entry per item."""
    return b"".join(
        field(tag, field(TAG_MAP_ENTRY_KEY, utf8(name)) + field(TAG_MAP_ENTRY_VALUE, utf8(value)))
        for name, value in mapping.items()
    )
