"""WeCom callback security: signatures, AES, and XML parsed without entity expansion.

A thin layer over wechatpy's enterprise crypto (wechatpy 1.8.x: `wechatpy.enterprise`;
PKCS#7 padding to 32-byte blocks). What it adds:

* the signature is compared in constant time, and checked *before* anything is
  decrypted or parsed beyond the outer envelope (wechatpy's `decrypt_message`
  parses untrusted XML with xmltodict first);
* XML, outer and inner, is parsed with defusedxml, DTDs refused outright;
* every failure is one of three exceptions the endpoint maps to HTTP statuses:
  MalformedRequest -> 400, SignatureError -> 403, DecryptError -> 403;
* `encrypt_reply` / `encrypted_post` build callbacks exactly as WeCom does, with an
  optional fixed random prefix so official vectors can be reproduced.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import string
import struct
import time
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException
from wechatpy.enterprise.crypto import PrpCrypto
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.utils import WeChatSigner

# WeCom's deepest element is SelectedItems/SelectedItem/OptionIds/OptionId under <xml>.
MAX_XML_DEPTH = 8
_RANDOM_ALPHABET = string.ascii_letters + string.digits
REPLY_TEMPLATE = """<xml>
<Encrypt><![CDATA[{encrypt}]]></Encrypt>
<MsgSignature><![CDATA[{signature}]]></MsgSignature>
<TimeStamp>{timestamp}</TimeStamp>
<Nonce><![CDATA[{nonce}]]></Nonce>
</xml>"""
POST_TEMPLATE = ("<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName>"
                 "<Encrypt><![CDATA[{encrypt}]]></Encrypt>"
                 "<AgentID><![CDATA[{agent_id}]]></AgentID></xml>")


class MalformedRequest(ValueError):
    """Not a WeCom callback: missing parameters, broken or hostile XML (HTTP 400)."""


class SignatureError(Exception):
    """The signature does not match the configured token (HTTP 403)."""


class DecryptError(Exception):
    """Signed correctly but not decryptable for this app: wrong key or receive id (HTTP 403)."""


class _FixedRandomPrp(PrpCrypto):
    def __init__(self, key: bytes, prefix: str):
        super().__init__(key)
        self._prefix = prefix

    def get_random_string(self) -> str:
        return self._prefix


def parse_xml(data: bytes | str) -> dict:
    """A WeCom `<xml>` document as a dict of its child elements' text.

    Elements with children become nested dicts (e.g. SelectedItems). Refuses
    DTDs, entities and external references, and anything that is not `<xml>`.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRequest("body is not UTF-8") from None
    if not data.strip():
        raise MalformedRequest("empty body")
    try:
        root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise MalformedRequest(f"XML refused: {type(e).__name__}") from None
    except ParseError as e:
        raise MalformedRequest(f"malformed XML: {e}") from None
    if root.tag != "xml":
        raise MalformedRequest(f"unexpected root element <{root.tag}>")
    if _depth(root) > MAX_XML_DEPTH:
        raise MalformedRequest("XML nested too deeply")
    return _element_dict(root)


def _depth(root: Element) -> int:
    """How deep elements nest under `root` (iteratively: the input is untrusted)."""
    deepest, stack = 0, [(root, 0)]
    while stack:
        el, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_XML_DEPTH:
            stack.extend((child, depth + 1) for child in el)
    return deepest


def _element_dict(el: Element) -> dict:
    out: dict = {}
    for child in el:
        if len(child):
            out[child.tag] = _element_dict(child)
        else:
            out[child.tag] = child.text or ""
    return out


class WeComCrypto:
    """Signature and AES for one app: `receive_id` is the CorpID for self-built apps."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str):
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error:
            key = b""
        if len(key) != 32:
            raise ValueError("encoding_aes_key must be the 43-character EncodingAESKey from the WeCom console")
        self.token = token
        self.key = key
        self.receive_id = receive_id

    # ---- signature -------------------------------------------------------

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        signer = WeChatSigner()
        signer.add_data(self.token, timestamp, nonce, encrypt)
        return signer.signature

    def check_signature(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        expected = self.signature(timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode(), (signature or "").lower().encode()):
            raise SignatureError("msg_signature does not match")

    # ---- AES ---------------------------------------------------------------

    def decrypt(self, encrypt: str) -> str:
        try:
            return PrpCrypto(self.key).decrypt(encrypt, self.receive_id)
        except InvalidCorpIdException:
            raise DecryptError("receive id does not match corp_id") from None
        except (ValueError, struct.error, UnicodeDecodeError, IndexError, TypeError) as e:
            raise DecryptError(f"cannot decrypt: {type(e).__name__}") from None

    def encrypt(self, plaintext: str, random_prefix: str | None = None) -> str:
        prefix = random_prefix if random_prefix is not None else "".join(
            secrets.choice(_RANDOM_ALPHABET) for _ in range(16))
        if len(prefix.encode()) != 16:
            raise ValueError("the random prefix is 16 bytes")
        return _FixedRandomPrp(self.key, prefix).encrypt(plaintext, self.receive_id).decode()

    # ---- whole messages ----------------------------------------------------

    def verify_url(self, signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """GET URL verification: the decrypted echostr to answer with."""
        self.check_signature(signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def open_envelope(self, signature: str, timestamp: str, nonce: str, body: bytes | str) -> dict:
        """POST: outer XML (defused) -> signature -> decrypt -> inner XML (defused)."""
        envelope = parse_xml(body)
        encrypt = envelope.get("Encrypt")
        if not isinstance(encrypt, str) or not encrypt.strip():
            raise MalformedRequest("no <Encrypt> element")
        self.check_signature(signature, timestamp, nonce, encrypt.strip())
        return parse_xml(self.decrypt(encrypt.strip()))

    def encrypt_reply(self, plaintext: str, nonce: str, timestamp: str | int | None = None,
                      random_prefix: str | None = None) -> str:
        """A passive reply as WeCom expects it (same layout as wechatpy's)."""
        timestamp = str(timestamp if timestamp is not None else int(time.time()))
        encrypt = self.encrypt(plaintext, random_prefix)
        return REPLY_TEMPLATE.format(encrypt=encrypt, signature=self.signature(timestamp, nonce, encrypt),
                                     timestamp=timestamp, nonce=nonce)

    def encrypted_post(self, plaintext: str, agent_id: int | str, *, nonce: str | None = None,
                       timestamp: str | int | None = None,
                       random_prefix: str | None = None) -> tuple[dict[str, str], bytes]:
        """A callback as WeCom sends it: (query parameters, body). For tests and the benchmark."""
        timestamp = str(timestamp if timestamp is not None else int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**10))
        encrypt = self.encrypt(plaintext, random_prefix)
        query = {"msg_signature": self.signature(timestamp, nonce, encrypt), "timestamp": timestamp,
                 "nonce": nonce}
        body = POST_TEMPLATE.format(corp_id=self.receive_id, encrypt=encrypt, agent_id=agent_id)
        return query, body.encode()

    def signed_echo(self, plaintext: str, *, nonce: str | None = None,
                    timestamp: str | int | None = None) -> dict[str, str]:
        """GET verification query parameters as WeCom sends them (tests, benchmark)."""
        timestamp = str(timestamp if timestamp is not None else int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**10))
        echostr = self.encrypt(plaintext)
        return {"msg_signature": self.signature(timestamp, nonce, echostr), "timestamp": timestamp,
                "nonce": nonce, "echostr": echostr}
