"""The long-connection frame codec against bytes made by the official pbbp2_pb2 (protobuf 7.36.2)."""
import pytest

from bot.channels.feishu.frame import CONTROL, DATA, Frame, FrameError

# Frame(SeqID=7, LogID=300, service=42, method=1, headers type/message_id/sum/seq/trace_id,
#       payload_type="json", payload='{"schema":"2.0","中":1}') serialised by lark_oapi.ws.pb.pbbp2_pb2.
OFFICIAL = bytes.fromhex(
    "080710ac02182a20012a0d0a047479706512056576656e742a110a0a6d6573736167655f696412036d2d312a080a0373756d1201"
    "312a080a037365711201302a0e0a0874726163655f6964120274723a046a736f6e42187b22736368656d61223a22322e30222c22"
    "e4b8ad223a317d")
# Frame(SeqID=0, LogID=0, service=-3, method=0): a negative int32 is a ten-byte varint.
OFFICIAL_NEGATIVE = bytes.fromhex("0800100018fdffffffffffffffff012000")


def test_encodes_and_decodes_like_the_official_protobuf():
    frame = Frame(seq_id=7, log_id=300, service=42, method=DATA, payload_type="json",
                  payload='{"schema":"2.0","中":1}'.encode(),
                  headers=[("type", "event"), ("message_id", "m-1"), ("sum", "1"), ("seq", "0"), ("trace_id", "tr")])
    assert frame.encode() == OFFICIAL
    assert Frame.decode(OFFICIAL) == frame
    assert frame.header("message_id") == "m-1" and frame.header("missing", "x") == "x"
    negative = Frame(service=-3, method=CONTROL)
    assert negative.encode() == OFFICIAL_NEGATIVE and Frame.decode(OFFICIAL_NEGATIVE).service == -3


def test_unknown_fields_are_skipped():
    extra = OFFICIAL + bytes([0x50, 0x05]) + bytes([0x5A, 0x02]) + b"hi"  # field 10 varint, field 11 bytes
    assert Frame.decode(extra).payload == Frame.decode(OFFICIAL).payload


@pytest.mark.parametrize("bad", [b"\x08", b"\x42\x05ab", b"\x0b", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"])
def test_broken_bytes_are_a_frame_error(bad):
    with pytest.raises(FrameError):
        Frame.decode(bad)
