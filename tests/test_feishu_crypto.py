"""Feishu / Lark callback crypto against the published vectors (V10, V11) and V12."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from bot.channels.feishu import crypto as fc

VECTORS = json.loads((Path(__file__).parent / "data" / "vectors.json").read_text(encoding="utf-8"))

# V12 (docs/PLATFORMS.md §4): X-Lark-Signature of V11's plaintext body with timestamp
# "timestamp", nonce "nonce" and V11's encrypt key. Derived, not published: a regression value.
V12_SIGNATURE = "4dca085198cb3216defc5b65b0668c1328b038a22dbadf2bc6c4fdc3d32bbc45"


@pytest.mark.parametrize("name", ["V10", "V11"])
def test_published_vectors_decrypt(name):
    v = VECTORS[name]
    assert fc.decrypt(v["encrypt_key"], v["encrypt"]).decode("utf-8") == v["expected_plain"]


def test_v11_is_a_url_verification_with_header_token():
    payload = json.loads(VECTORS["V11"]["expected_plain"])
    assert payload["type"] == "url_verification" and payload["header"]["token"] == "v"


def test_v12_signature_over_raw_body():
    v = VECTORS["V11"]
    body = v["expected_plain"].encode("utf-8")
    assert fc.signature("timestamp", "nonce", v["encrypt_key"], body) == V12_SIGNATURE
    # One byte more (e.g. a re-serialised body with a newline) is a different signature.
    assert fc.signature("timestamp", "nonce", v["encrypt_key"], body + b"\n") != V12_SIGNATURE


def test_legacy_signature_is_sha1_with_the_verification_token():
    import hashlib

    assert fc.legacy_signature("1", "n", "tok", b"{}") == hashlib.sha1(b"1ntok{}").hexdigest()


def test_wrong_key_is_refused():
    v = VECTORS["V11"]
    with pytest.raises(fc.FeishuCryptoError):
        fc.decrypt("not the key", v["encrypt"])


def test_strict_padding():
    # A block whose last byte says 3 but whose other pad bytes differ must be refused
    # (the platform samples would strip it anyway).
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    import hashlib

    key = hashlib.sha256(b"k").digest()
    iv = bytes(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    blob = enc.update(b"hello world!!\x01\x02\x03") + enc.finalize()
    with pytest.raises(fc.FeishuCryptoError):
        fc.decrypt("k", base64.b64encode(iv + blob).decode())


@pytest.mark.parametrize("bad", ["", "not base64!!", base64.b64encode(b"short").decode(),
                                 base64.b64encode(bytes(16 * 2 + 3)).decode()])
def test_malformed_blobs(bad):
    with pytest.raises(fc.FeishuCryptoError):
        fc.decrypt("k", bad)


@given(st.binary(max_size=300), st.text(min_size=1, max_size=40))
def test_round_trip(data, key):
    assert fc.decrypt(key, fc.encrypt(key, data)) == data


def test_encrypt_with_fixed_iv_reproduces_v10():
    v = VECTORS["V10"]
    iv = base64.b64decode(v["encrypt"])[:16]
    assert fc.encrypt(v["encrypt_key"], v["expected_plain"], iv=iv) == v["encrypt"]
