"""An encoder for AWS event-stream messages (`application/vnd.amazon.eventstream`), for the mock
Bedrock server and for tests of the native decoder (`tollway._native.EventStreamDecoder`).

A message, all integers big-endian:

    total length (u32) | headers length (u32) | prelude CRC32 (u32, of the 8 bytes before)
    headers | payload | message CRC32 (u32, of every byte before it)

A header is `name length (u8) | name (UTF-8) | type (u8) | value`, the value by type: 0 true and
1 false (no bytes), 2 byte (i8), 3 short (i16), 4 integer (i32), 5 long (i64), 6 byte array and
7 string (u16 length, then the bytes), 8 timestamp (i64, milliseconds since the epoch),
9 UUID (16 bytes).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson


@dataclass(frozen=True, slots=True)
class Typed:
    """A header value whose wire type is not the default for its Python type."""

    kind: Literal["byte", "short", "int", "long", "timestamp", "uuid"]
    value: int | bytes


HeaderValue = bool | int | str | bytes | Typed

_INT_TYPES = {"byte": (2, ">b"), "short": (3, ">h"), "int": (4, ">i"), "long": (5, ">q"), "timestamp": (8, ">q")}


def encode_header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode()
    head = struct.pack(">B", len(raw_name)) + raw_name
    if isinstance(value, bool):
        return head + (b"\x00" if value else b"\x01")
    if isinstance(value, int):
        value = Typed("int" if -(2**31) <= value < 2**31 else "long", value)
    if isinstance(value, str):
        data = value.encode()
        return head + b"\x07" + struct.pack(">H", len(data)) + data
    if isinstance(value, bytes):
        return head + b"\x06" + struct.pack(">H", len(value)) + value
    if value.kind == "uuid":
        assert isinstance(value.value, bytes) and len(value.value) == 16
        return head + b"\x09" + value.value
    code, fmt = _INT_TYPES[value.kind]
    return head + bytes([code]) + struct.pack(fmt, value.value)


def encode_message(headers: dict[str, HeaderValue], payload: bytes) -> bytes:
    raw_headers = b"".join(encode_header(name, value) for name, value in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + raw_headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event_message(event_type: str, payload: dict[str, Any]) -> bytes:
    """An event of a Bedrock `ConverseStream` answer (`messageStart`, `contentBlockDelta`, ...)."""
    headers: dict[str, HeaderValue] = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, orjson.dumps(payload))


def exception_message(exception_type: str, message: str) -> bytes:
    """An exception inside a stream (`throttlingException`, `modelStreamErrorException`, ...)."""
    headers: dict[str, HeaderValue] = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, orjson.dumps({"message": message}))
