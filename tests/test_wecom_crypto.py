"""WeCom crypto helper: official vectors V1-V5, refusals, XML without entity expansion.

The same vectors also go through the real endpoint in test_wecom_channel.py.
"""
import json
from pathlib import Path

import pytest

from bot.channels.wecom.crypto import (DecryptError, MalformedRequest, SignatureError, WeComCrypto,
                                       parse_xml)

VECTORS = json.loads((Path(__file__).parent / "data" / "vectors.json").read_text(encoding="utf-8"))


def crypto_for(v: dict) -> WeComCrypto:
    return WeComCrypto(v["token"], v["encoding_aes_key"], v["receive_id"])


@pytest.mark.parametrize("name", ["V1", "V3"])
def test_url_verification_vectors(name):
    v = VECTORS[name]
    assert crypto_for(v).verify_url(v["msg_signature"], v["timestamp"], v["nonce"], v["echostr"]) \
        == v["expected_reply"]


def test_v3_negative_case_is_a_signature_error():
    v = VECTORS["V3"]
    with pytest.raises(SignatureError):
        crypto_for(v).verify_url(v["msg_signature"], v["timestamp"], "437374424", v["echostr"])


def test_v2_post_envelope_decrypts_to_the_official_plaintext():
    v = VECTORS["V2"]
    msg = crypto_for(v).open_envelope(v["msg_signature"], v["timestamp"], v["nonce"], v["post_body"])
    assert msg == parse_xml(v["expected_plain"])
    assert msg["FromUserName"] == "mycreate" and msg["Content"] == "hello"
    assert msg["MsgId"] == "4561255354251345929"  # a string, never an int


def test_v4_decrypt():
    v = VECTORS["V4"]
    c = crypto_for(v)
    c.check_signature(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])
    assert c.decrypt(v["encrypt"]) == v["expected_plain"]


def test_v5_encrypted_reply_is_byte_for_byte_wechatpy():
    v = VECTORS["V5"]
    reply = crypto_for(v).encrypt_reply(v["plaintext"], v["nonce"], v["timestamp"], random_prefix=v["random"])
    assert reply == (
        "<xml>\n<Encrypt><![CDATA[" + v["expected_encrypt"] + "]]></Encrypt>\n"
        "<MsgSignature><![CDATA[" + v["expected_sig"] + "]]></MsgSignature>\n"
        "<TimeStamp>" + v["timestamp"] + "</TimeStamp>\n<Nonce><![CDATA[" + v["nonce"] + "]]></Nonce>\n</xml>"
    )


def test_round_trip_with_32_byte_padding_blocks():
    c = WeComCrypto("tok", VECTORS["V3"]["encoding_aes_key"], "corp1")
    for n in range(0, 70):  # every pad length 1..32 occurs
        text = "报" * n
        assert c.decrypt(c.encrypt(text)) == text


def test_encrypted_post_opens_again():
    c = WeComCrypto("tok", VECTORS["V3"]["encoding_aes_key"], "corp1")
    plain = "<xml><FromUserName><![CDATA[u1]]></FromUserName><Content><![CDATA[水泵坏了]]></Content></xml>"
    query, body = c.encrypted_post(plain, 1000002)
    msg = c.open_envelope(query["msg_signature"], query["timestamp"], query["nonce"], body)
    assert msg == {"FromUserName": "u1", "Content": "水泵坏了"}


def test_other_corp_or_key_is_a_decrypt_error():
    mine = WeComCrypto("tok", VECTORS["V3"]["encoding_aes_key"], "corp1")
    other_corp = WeComCrypto("tok", VECTORS["V3"]["encoding_aes_key"], "corp2")
    other_key = WeComCrypto("tok", VECTORS["V1"]["encoding_aes_key"], "corp1")
    enc = mine.encrypt("hi")
    for c in (other_corp, other_key):
        with pytest.raises(DecryptError):
            c.decrypt(enc)
    with pytest.raises(DecryptError):
        mine.decrypt("not base64!!")


def test_bad_aes_key_is_refused_at_construction():
    with pytest.raises(ValueError, match="EncodingAESKey"):
        WeComCrypto("tok", "x" * 42 + "!", "corp")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>
<xml><Encrypt>&c;</Encrypt></xml>"""
EXTERNAL = """<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<xml><Encrypt>&x;</Encrypt></xml>"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL, "<xml><Encrypt>", "not xml", "", "<root/>",
                                 b"\xff\xfe<xml/>"])
def test_hostile_or_broken_xml_is_malformed(doc):
    with pytest.raises(MalformedRequest):
        parse_xml(doc)


def test_nested_elements_become_dicts():
    doc = ("<xml><SelectedItems><SelectedItem><QuestionKey><![CDATA[q]]></QuestionKey></SelectedItem>"
           "</SelectedItems><TaskId>t</TaskId></xml>")
    assert parse_xml(doc) == {"SelectedItems": {"SelectedItem": {"QuestionKey": "q"}}, "TaskId": "t"}
