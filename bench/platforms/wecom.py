"""WeCom for bench/callbacks.py: encrypted app callbacks and a fake qyapi on loopback."""
from __future__ import annotations

import json
import secrets
import time
from urllib.parse import urlencode

from aiohttp import web

from bench.platforms import (KEYED_REPORT_SKILLS, KEYED_REPORTS, directory_toml, find_report_key, head_toml,
                             report_key)
from bot.channels.wecom.crypto import WeComCrypto

CORP_ID = "wwbench0000000001"
AGENT_ID = 1000002
TOKEN = "benchToken2026"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"  # a valid 43-character EncodingAESKey
ENGINEERS_CHAT = "wrbenchengineers"
REPORTS = KEYED_REPORTS

# The people (id -> WeCom userid); the customers are unknown reporters.
PEOPLE = {"eng_zhang": "zhangsan", "eng_li": "lisi", "lead_zhao": "zhaozz", "director_sun": "sunzj"}

_crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)


def config_toml(fake_api_base: str, db_url: str) -> str:
    return head_toml(db_url, server='host = "127.0.0.1"') + f'''
[wecom]
corp_id = "{CORP_ID}"
agent_id = {AGENT_ID}
secret = "bench-secret"
token = "{TOKEN}"
encoding_aes_key = "{AES_KEY}"
api_base = "{fake_api_base}"
engineers_chat = "{ENGINEERS_CHAT}"
member_per_minute = 0

''' + directory_toml("wecom", PEOPLE, ENGINEERS_CHAT, team_skills=KEYED_REPORT_SKILLS)


def make_report(i: int) -> tuple[str, dict[str, str], bytes]:
    text = REPORTS[i % len(REPORTS)].format(key=report_key(i))
    now = int(time.time())
    plain = ("<xml><ToUserName><![CDATA[{corp}]]></ToUserName>"
             "<FromUserName><![CDATA[bench_cust_{i}]]></FromUserName>"
             "<CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
             "<Content><![CDATA[{text}]]></Content><MsgId>{msgid}</MsgId>"
             "<AgentID>{agent}</AgentID></xml>").format(corp=CORP_ID, i=i, now=now, text=text,
                                                        msgid=7_000_000_000_000_000_000 + i, agent=AGENT_ID)
    query, body = _crypto.encrypted_post(plain, AGENT_ID, timestamp=now, nonce=str(secrets.randbelow(10**9)))
    return "/callbacks/wecom?" + urlencode(query), {"Content-Type": "text/xml; charset=utf-8"}, body


def is_card_send(path: str, body: bytes) -> str | None:
    """The engineers' group markdown (appchat) or an engineer's template card naming a report."""
    if path not in ("/cgi-bin/appchat/send", "/cgi-bin/message/send", "/cgi-bin/webhook/send"):
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if path == "/cgi-bin/message/send":
        card = doc.get("template_card") or {}
        if not card.get("button_list"):
            return None  # texts and the customer's markdown status card
        return find_report_key(json.dumps(card, ensure_ascii=False))
    content = (doc.get("markdown") or {}).get("content", "")
    return find_report_key(content)


def fake_api_routes(record) -> list[web.RouteDef]:
    counter = {"n": 0}

    async def gettoken(request: web.Request) -> web.Response:
        record(request.path, b"")
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": "BENCHTOKEN", "expires_in": 7200})

    async def ok(request: web.Request) -> web.Response:
        body = await request.read()
        record(request.path, body)
        counter["n"] += 1
        answer = {"errcode": 0, "errmsg": "ok"}
        if request.path == "/cgi-bin/message/send":
            answer.update(msgid=f"msg{counter['n']}", response_code=f"rc{counter['n']}", invaliduser="")
        if request.path == "/cgi-bin/media/upload":
            answer.update(type="image", media_id=f"media{counter['n']}", created_at=str(int(time.time())))
        return web.json_response(answer)

    async def media_get(request: web.Request) -> web.Response:
        record(request.path, b"")
        return web.Response(body=b"\xff\xd8\xff\xe0fakejpeg", content_type="image/jpeg")

    return [
        web.get("/cgi-bin/gettoken", gettoken),
        web.post("/cgi-bin/message/send", ok),
        web.post("/cgi-bin/message/update_template_card", ok),
        web.post("/cgi-bin/appchat/send", ok),
        web.post("/cgi-bin/webhook/send", ok),
        web.post("/cgi-bin/media/upload", ok),
        web.get("/cgi-bin/media/get", media_get),
    ]
