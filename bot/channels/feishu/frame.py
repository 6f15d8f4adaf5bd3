"""Feishu's long-connection frame (`pbbp2.Frame`), encoded and decoded without a protobuf library.

The message, from the official SDKs' pbbp2.proto (proto2):

    message Header { required string key = 1; required string value = 2; }
    message Frame {
      required uint64 SeqID = 1;   required uint64 LogID = 2;
      required int32 service = 3;  required int32 method = 4;   // 0 control, 1 data
      repeated Header headers = 5;
      optional string payload_encoding = 6;  optional string payload_type = 7;
      optional bytes payload = 8;            optional string LogIDNew = 9;
    }

Only varints and length-delimited fields occur, so the wire format is a few
lines; unknown fields are skipped, as protobuf requires.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CONTROL, DATA = 0, 1
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class FrameError(ValueError):
    """Bytes that are not a well-formed Frame."""


@dataclass
class Frame:
    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = CONTROL
    headers: list[tuple[str, str]] = field(default_factory=list)
    payload_encoding: str = ""
    payload_type: str = ""
    payload: bytes = b""
    log_id_new: str = ""

    def header(self, key: str, default: str = "") -> str:
        return next((v for k, v in self.headers if k == key), default)

    def encode(self) -> bytes:
        out = bytearray()
        _varint_field(out, 1, self.seq_id)
        _varint_field(out, 2, self.log_id)
        _varint_field(out, 3, self.service & 0xFFFFFFFFFFFFFFFF)
        _varint_field(out, 4, self.method & 0xFFFFFFFFFFFFFFFF)
        for key, value in self.headers:
            inner = bytearray()
            _bytes_field(inner, 1, key.encode())
            _bytes_field(inner, 2, value.encode())
            _bytes_field(out, 5, bytes(inner))
        if self.payload_encoding:
            _bytes_field(out, 6, self.payload_encoding.encode())
        if self.payload_type:
            _bytes_field(out, 7, self.payload_type.encode())
        if self.payload:
            _bytes_field(out, 8, self.payload)
        if self.log_id_new:
            _bytes_field(out, 9, self.log_id_new.encode())
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        frame = cls()
        for number, value in _fields(data):
            if number == 1:
                frame.seq_id = _int(value)
            elif number == 2:
                frame.log_id = _int(value)
            elif number == 3:
                frame.service = _int32(value)
            elif number == 4:
                frame.method = _int32(value)
            elif number == 5:
                kv = dict(_fields(_blob(value)))
                frame.headers.append((_text(kv.get(1, b"")), _text(kv.get(2, b""))))
            elif number == 6:
                frame.payload_encoding = _text(value)
            elif number == 7:
                frame.payload_type = _text(value)
            elif number == 8:
                frame.payload = _blob(value)
            elif number == 9:
                frame.log_id_new = _text(value)
        return frame


def _varint(out: bytearray, n: int) -> None:
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _varint_field(out: bytearray, number: int, value: int) -> None:
    _varint(out, number << 3 | _VARINT)
    _varint(out, value)


def _bytes_field(out: bytearray, number: int, value: bytes) -> None:
    _varint(out, number << 3 | _LEN)
    _varint(out, len(value))
    out += value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise FrameError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    """(field number, int or bytes) for each field of a message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise FrameError("length-delimited field runs past the end")
            value, pos = data[pos:pos + length], pos + length
        elif wire == _I64:
            value, pos = int.from_bytes(data[pos:pos + 8], "little"), pos + 8
        elif wire == _I32:
            value, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
        else:
            raise FrameError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise FrameError("field runs past the end")
        yield number, value


def _int(value) -> int:
    if not isinstance(value, int):
        raise FrameError("expected a number")
    return value


def _int32(value) -> int:
    n = _int(value) & 0xFFFFFFFF
    return n - (1 << 32) if n & 0x80000000 else n


def _blob(value) -> bytes:
    if not isinstance(value, bytes):
        raise FrameError("expected bytes")
    return value


def _text(value) -> str:
    try:
        return _blob(value).decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("a string field is not UTF-8") from None
