"""DingTalk callback signatures and event crypto.

Facts used here are in docs/PLATFORMS.md §2:

* Robot messages (HTTP mode): header `sign` = base64(HMAC-SHA256(key=appSecret,
  msg=timestamp + "\\n" + appSecret)), header `timestamp` in ms, within 1 h.
* Card callbacks: header `x-ddpaas-signature` = base64(HMAC-SHA256(key=apiSecret,
  msg=str(x-ddpaas-signature-timestamp))).
* Event subscription: WeCom-style sorted-SHA1 signature and AES-CBC envelope,
  done by dingtalk-sdk's `DingTalkCrypto`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from dingtalk.core.exceptions import InvalidCorpIdOrSuiteKeyException, InvalidSignatureException
from dingtalk.core.utils import DingTalkSigner
from dingtalk.crypto import DingTalkCrypto

from bot.channels.shared.verify import same


# ---- callback signatures ---------------------------------------------------


def _hmac_b64(key: str, msg: str) -> str:
    return base64.b64encode(hmac.new(key.encode(), msg.encode(), hashlib.sha256).digest()).decode()


def robot_sign(timestamp: str, app_secret: str) -> str:
    """The `sign` header DingTalk puts on a robot message."""
    return _hmac_b64(app_secret, f"{timestamp}\n{app_secret}")


def card_signature(timestamp: str, api_secret: str) -> str:
    """The `x-ddpaas-signature` header of a card callback."""
    return _hmac_b64(api_secret, str(timestamp))


def timestamp_ms(value: str | None) -> int | None:
    """A callback timestamp as epoch ms (DingTalk sends ms; seconds are accepted)."""
    if not value or not value.isdigit() or len(value) > 16:
        return None
    n = int(value)
    return n * 1000 if n < 100_000_000_000 else n


def fresh(ts_ms: int, now_ms: float, window_seconds: float) -> bool:
    return abs(now_ms - ts_ms) <= window_seconds * 1000


# ---- event subscription crypto ---------------------------------------------


class BadSignature(Exception):
    """The request is not from DingTalk (or not for this app)."""


class BadPayload(Exception):
    """Signed correctly but not decryptable / not what DingTalk sends."""


class EventCrypto:
    """dingtalk-sdk's DingTalkCrypto with a constant-time signature check and
    its decoding failures sorted into BadSignature / BadPayload."""

    def __init__(self, token: str, encoding_aes_key: str, owner_key: str):
        if len(encoding_aes_key) != 43:
            raise ValueError("the event AES key (EncodingAESKey) has 43 characters")
        self.token = token
        self.owner_key = owner_key
        self._crypto = DingTalkCrypto(token, encoding_aes_key, owner_key)

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        signer = DingTalkSigner()
        signer.add_data(self.token, timestamp, nonce, encrypt)
        return signer.signature

    def decrypt(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        if not same(self.signature(timestamp, nonce, encrypt), signature or ""):
            raise BadSignature("signature mismatch")
        try:
            return self._crypto.decrypt_encrypt_str(signature, timestamp, nonce, encrypt)
        except InvalidSignatureException:  # pragma: no cover - checked above
            raise BadSignature("signature mismatch") from None
        except InvalidCorpIdOrSuiteKeyException:
            # Encrypted for another app / corp / suite: the owner key differs.
            raise BadSignature("owner key mismatch") from None
        except Exception as e:  # bad base64, bad padding, bad UTF-8 ...
            raise BadPayload(f"{type(e).__name__}: {e}") from None

    def encrypt_reply(self, message: str = "success", *, nonce: str | None = None,
                      timestamp: str | int | None = None) -> dict[str, str]:
        """The JSON map DingTalk expects back: msg_signature, timeStamp, nonce, encrypt."""
        return self._crypto.encrypt_message(message, nonce=nonce, timestamp=timestamp)
