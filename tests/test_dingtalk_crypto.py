"""DingTalk protocol pieces against the published vectors (V6-V9) and the derived
regression values (V12, docs/PLATFORMS.md §4)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from dingtalk.crypto.base import BasePrpCrypto

from bot.channels.dingtalk.crypto import (
    BadPayload,
    BadSignature,
    EventCrypto,
    card_signature,
    fresh,
    robot_sign,
    timestamp_ms,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "vectors.json").read_text(encoding="utf-8"))

# V12 (derived from the documented inputs; regression checks only).
ROBOT_SIGN_V12 = ("1577262236757", "this is a secret", "DJrE6qdyVGCQz9z5r2MDuNcNAhwYnuAkyj13cx169CA=")
CARD_SIG_V12 = ("1700000000000", "mySecret", "t3jqwt0WBVsvNpgD+ncljxce56XsNOeEYafngX/BHjc=")


def crypto_for(v: dict) -> EventCrypto:
    return EventCrypto(v["token"], v["encoding_aes_key"], v["owner_key"])


@pytest.mark.parametrize("name", ["V6", "V7", "V8"])
def test_decrypt_published_vectors(name):
    v = VECTORS[name]
    assert crypto_for(v).decrypt(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"]) == v["expected_plain"]


def test_v8_negative_case_wrong_nonce_is_a_bad_signature():
    v = VECTORS["V8"]
    with pytest.raises(BadSignature):
        crypto_for(v).decrypt(v["msg_signature"], v["timestamp"], "xxxxx", v["encrypt"])


def test_wrong_owner_key_is_refused_like_a_bad_signature():
    v = VECTORS["V6"]
    other = EventCrypto(v["token"], v["encoding_aes_key"], "dingSOMEONEELSE")
    with pytest.raises(BadSignature):
        other.decrypt(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])


def test_signed_garbage_is_a_bad_payload():
    v = VECTORS["V8"]
    c = crypto_for(v)
    for garbage in ("not base64!!", "QUJD", "A" * 44):
        sig = c.signature(v["timestamp"], v["nonce"], garbage)
        with pytest.raises(BadPayload):
            c.decrypt(sig, v["timestamp"], v["nonce"], garbage)


def test_v9_deterministic_encryption(monkeypatch):
    v = VECTORS["V9"]
    monkeypatch.setattr(BasePrpCrypto, "get_random_string", lambda self: v["random"])
    reply = crypto_for(v).encrypt_reply(v["plaintext"], nonce=v["nonce"], timestamp=v["timestamp"])
    assert reply == {"msg_signature": v["expected_sig"], "encrypt": v["expected_encrypt"],
                     "timeStamp": v["timestamp"], "nonce": v["nonce"]}


def test_reply_round_trip():
    v = VECTORS["V6"]
    c = crypto_for(v)
    reply = c.encrypt_reply("success", nonce="abc123", timestamp="1700000000000")
    assert c.decrypt(reply["msg_signature"], reply["timeStamp"], reply["nonce"], reply["encrypt"]) == "success"


def test_aes_key_length_is_checked():
    with pytest.raises(ValueError):
        EventCrypto("t", "short", "ding")


def test_robot_sign_v12():
    ts, secret, expected = ROBOT_SIGN_V12
    assert robot_sign(ts, secret) == expected


def test_card_signature_v12():
    ts, secret, expected = CARD_SIG_V12
    assert card_signature(ts, secret) == expected


def test_timestamps():
    assert timestamp_ms("1577262236757") == 1577262236757
    assert timestamp_ms("1577262236") == 1577262236000  # seconds are accepted
    for bad in ("", None, "-1", "12a", "1" * 20):
        assert timestamp_ms(bad) is None
    assert fresh(1_000_000, 1_000_000 + 3_600_000, 3600)
    assert not fresh(1_000_000, 1_000_000 + 3_600_001, 3600)
    assert not fresh(1_000_000 + 3_600_001, 1_000_000, 3600)
