"""Feishu / Lark callback crypto: AES-256-CBC bodies and request signatures.

- Encrypted bodies are `{"encrypt": base64(iv(16) || AES-256-CBC(sha256(encrypt_key), iv, PKCS#7(json)))}`.
- Events and `card.action.trigger` callbacks are signed when an Encrypt Key is set:
  `X-Lark-Signature = hex(sha256(timestamp + nonce + encrypt_key + raw_body))`.
- The legacy card callback (card.action.trigger_v1, "消息卡片请求网址") signs with
  SHA-1 over `timestamp + nonce + verification_token + raw_body`; RelayDesk only
  recognises it to explain what to configure instead.

Unpadding is strict (every pad byte checked), unlike the platform's own samples.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16


class FeishuCryptoError(ValueError):
    """A body that cannot be decrypted (wrong key, truncated, bad padding)."""


def _key(encrypt_key: str) -> bytes:
    return hashlib.sha256(encrypt_key.encode("utf-8")).digest()


def decrypt(encrypt_key: str, encrypted: str) -> bytes:
    """The plaintext bytes of an `encrypt` field."""
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError):
        raise FeishuCryptoError("encrypt is not valid base64") from None
    if len(raw) < 2 * BLOCK or len(raw) % BLOCK:
        raise FeishuCryptoError("encrypt has the wrong length for AES-CBC")
    decryptor = Cipher(algorithms.AES(_key(encrypt_key)), modes.CBC(raw[:BLOCK])).decryptor()
    padded = decryptor.update(raw[BLOCK:]) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise FeishuCryptoError("bad PKCS#7 padding (wrong encrypt_key?)")
    return padded[:-pad]


def encrypt(encrypt_key: str, plaintext: bytes | str, iv: bytes | None = None) -> str:
    """The `encrypt` field for `plaintext`, as Feishu builds it (tests, benchmarks)."""
    data = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
    iv = os.urandom(BLOCK) if iv is None else iv
    if len(iv) != BLOCK:
        raise ValueError("iv must be 16 bytes")
    pad = BLOCK - len(data) % BLOCK
    encryptor = Cipher(algorithms.AES(_key(encrypt_key)), modes.CBC(iv)).encryptor()
    body = encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()
    return base64.b64encode(iv + body).decode("ascii")


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """X-Lark-Signature of a request: SHA-256 over the raw body bytes."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + body).hexdigest()


def legacy_signature(timestamp: str, nonce: str, verification_token: str, body: bytes) -> str:
    """The legacy card callback's signature: SHA-1 with the verification token."""
    return hashlib.sha1((timestamp + nonce + verification_token).encode("utf-8") + body).hexdigest()
