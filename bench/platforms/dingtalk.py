"""DingTalk for bench/callbacks.py: signed robot messages and a fake DingTalk on loopback.

Each report is a 1:1 robot message from a different customer, signed with the
app secret (headers `timestamp` + `sign`) and carrying a sessionWebhook that
points at the fake API, as DingTalk's do. The bot runs with an interactive-card
template, so the engineer card is a `createAndDeliver` into the engineers' group.
Both DingTalk hosts (api and oapi) are the one fake server: their paths differ.
"""
from __future__ import annotations

import json
import time

from aiohttp import web

from bench.platforms import (KEYED_REPORT_SKILLS, KEYED_REPORTS, directory_toml, find_report_key, head_toml,
                             report_key)
from bot.channels.dingtalk.crypto import robot_sign

APP_KEY = "dingbenchapp0001"
APP_SECRET = "bench-app-secret-2026"
CARD_SECRET = "bench-card-secret"
ENGINEERS_CHAT = "cidBENCHengineers=="
BOT_ID = "$:LWCP_v1:$benchbot"
REPORTS = KEYED_REPORTS
# The people (id -> staff id); the customers are unknown reporters.
PEOPLE = {"eng_zhang": "u_zhang", "eng_li": "u_li", "lead_zhao": "u_zhao", "director_sun": "u_sun"}
# The fake API's address, known once config_toml ran (make_report needs it for sessionWebhooks).
_fake = {"base": "http://127.0.0.1:9"}


def config_toml(fake_api_base: str, db_url: str) -> str:
    _fake["base"] = fake_api_base
    return head_toml(db_url, server='host = "127.0.0.1"') + f'''
[dingtalk]
app_key = "{APP_KEY}"
app_secret = "{APP_SECRET}"
api_base = "{fake_api_base}"
oapi_base = "{fake_api_base}"
card_template_id = "bench-template.schema"
card_callback_route_key = "relaydesk-bench"
card_api_secret = "{CARD_SECRET}"
engineers_chat = "{ENGINEERS_CHAT}"

''' + directory_toml("dingtalk", PEOPLE, ENGINEERS_CHAT, team_skills=KEYED_REPORT_SKILLS)


def make_report(i: int) -> tuple[str, dict[str, str], bytes]:
    text = REPORTS[i % len(REPORTS)].format(key=report_key(i))
    now_ms = int(time.time() * 1000)
    staff = f"bench_cust_{i}"
    msg = {
        "msgtype": "text", "text": {"content": f" {text}"},
        "msgId": f"msgBENCH{i:08d}==", "createAt": now_ms,
        "conversationType": "1", "conversationId": f"cidBENCH1on1{i:08d}==",
        "senderId": f"$:LWCP_v1:${staff}", "senderStaffId": staff, "senderNick": f"客户{i}",
        "senderCorpId": "dingbenchcorp", "chatbotUserId": BOT_ID, "chatbotCorpId": "dingbenchcorp",
        "robotCode": APP_KEY, "isAdmin": False, "isInAtList": True, "atUsers": [{"dingtalkId": BOT_ID}],
        "sessionWebhook": f"{_fake['base']}/robot/sendBySession?session=bench{i}",
        "sessionWebhookExpiredTime": now_ms + 90 * 60 * 1000,
    }
    ts = str(now_ms)
    headers = {"Content-Type": "application/json; charset=utf-8", "timestamp": ts, "sign": robot_sign(ts, APP_SECRET)}
    return "/callbacks/dingtalk", headers, json.dumps(msg, ensure_ascii=False).encode("utf-8")


def is_card_send(path: str, body: bytes) -> str | None:
    """An engineer card (an interactive card with buttons, or markdown to the engineers' group)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if path == "/v1.0/card/instances/createAndDeliver":
        params = (doc.get("cardData") or {}).get("cardParamMap") or {}
        if params.get("kind") != "engineer":
            return None
        return find_report_key(params.get("body", "") + params.get("markdown", ""))
    if path == "/v1.0/robot/groupMessages/send" and doc.get("openConversationId") == ENGINEERS_CHAT:
        return find_report_key(doc.get("msgParam", ""))
    return None


def fake_api_routes(record) -> list[web.RouteDef]:
    counter = {"n": 0}

    async def api_token(request: web.Request) -> web.Response:
        record(request.path, await request.read())
        return web.json_response({"accessToken": "BENCHTOKEN", "expireIn": 7200})

    async def oapi_token(request: web.Request) -> web.Response:
        record(request.path, b"")
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": "BENCHOTOKEN", "expires_in": 7200})

    async def robot_send(request: web.Request) -> web.Response:
        record(request.path, await request.read())
        counter["n"] += 1
        return web.json_response({"processQueryKey": f"q{counter['n']}", "invalidStaffIdList": [],
                                  "flowControlledStaffIdList": []})

    async def card_create(request: web.Request) -> web.Response:
        body = await request.read()
        record(request.path, body)
        doc = json.loads(body)
        return web.json_response({"success": True, "result": {
            "outTrackId": doc.get("outTrackId"),
            "deliverResults": [{"spaceType": "IM", "spaceId": doc.get("openSpaceId", ""), "success": True}]}})

    async def card_update(request: web.Request) -> web.Response:
        record(request.path, await request.read())
        return web.json_response({"success": True, "result": True})

    async def session(request: web.Request) -> web.Response:
        record(request.path, await request.read())
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def user_get(request: web.Request) -> web.Response:
        body = await request.read()
        record(request.path, body)
        uid = json.loads(body or b"{}").get("userid", "")
        return web.json_response({"errcode": 0, "errmsg": "ok", "result": {"userid": uid, "name": uid}})

    return [
        web.post("/v1.0/oauth2/accessToken", api_token),
        web.get("/gettoken", oapi_token),
        web.post("/v1.0/robot/oToMessages/batchSend", robot_send),
        web.post("/v1.0/robot/groupMessages/send", robot_send),
        web.post("/v1.0/card/instances/createAndDeliver", card_create),
        web.put("/v1.0/card/instances", card_update),
        web.post("/robot/sendBySession", session),
        web.post("/topapi/v2/user/get", user_get),
    ]
