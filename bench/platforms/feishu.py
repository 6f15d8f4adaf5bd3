"""Feishu / Lark for the callback benchmark (bench/callbacks.py --platform feishu).

Reports are `im.message.receive_v1` p2p text events from distinct customers,
encrypted with the Encrypt Key and signed with X-Lark-Signature exactly as
Feishu sends them. The fake Open API answers the token, bot-info, send,
reply, PATCH and image-upload calls with success.
"""
from __future__ import annotations

import itertools
import json
import time
import uuid

from aiohttp import web

from bench.platforms import directory_toml, find_report_key, head_toml, report_key
from bot.channels.feishu import crypto as fc

PATH = "/callbacks/feishu"
APP_ID = "cli_bench000000000"
APP_SECRET = "bench-secret"
VERIFICATION_TOKEN = "bench-verification-token"
ENCRYPT_KEY = "bench-encrypt-key"
BOT_OPEN_ID = "ou_bench_bot"
ENGINEERS_CHAT = "oc_bench_engineers"
# The people (id -> open_id); the customers are unknown reporters.
PEOPLE = {"eng_zhang": "ou_bench_zhang", "eng_li": "ou_bench_li", "lead_zhao": "ou_bench_lead",
          "director_sun": "ou_bench_sun"}

# Realistic reports; each carries report_key(i) as a device serial, which the engineer card repeats.
REPORTS = (
    "3号泵又不出水了，整条线停着",
    "2号空压机报警E102停机，车间没气了",
    "包装线PLC通讯中断，触摸屏显示离线",
    "冷却塔风机异响很大，温度降不下来",
    "注塑机液压油温过高报警，已经停机",
    "变频器过流跳闸，3号线传送带不动",
)


def config_toml(fake_api_base: str, db_url: str) -> str:
    return head_toml(db_url, server="max_body_bytes = 1048576", poll_interval="1s") + f"""
[feishu]
app_id = "{APP_ID}"
app_secret = "{APP_SECRET}"
verification_token = "{VERIFICATION_TOKEN}"
encrypt_key = "{ENCRYPT_KEY}"
api_base = "{fake_api_base}"
bot_open_id = "{BOT_OPEN_ID}"

""" + directory_toml("feishu", PEOPLE, ENGINEERS_CHAT, team_skills=("泵", "电气", "变频器"),
                     skills={"eng_zhang": ("泵", "电气"), "eng_li": ("变频器", "PLC")})


def report_text(i: int) -> str:
    return f"{REPORTS[i % len(REPORTS)]}，设备编号 {report_key(i)}"


def make_report(i: int) -> tuple[str, dict[str, str], bytes]:
    now = int(time.time())
    event = {
        "schema": "2.0",
        "header": {"event_id": uuid.uuid4().hex, "event_type": "im.message.receive_v1",
                   "create_time": str(now * 1000), "token": VERIFICATION_TOKEN, "app_id": APP_ID,
                   "tenant_key": "bench"},
        "event": {
            "sender": {"sender_id": {"open_id": f"ou_bench_c{i:06d}", "union_id": f"on_bench_c{i:06d}",
                                     "user_id": ""}, "sender_type": "user", "tenant_key": "bench"},
            "message": {"message_id": f"om_bench_{i:06d}_{uuid.uuid4().hex[:8]}", "root_id": "", "parent_id": "",
                        "create_time": str(now * 1000), "chat_id": f"oc_bench_p2p_{i:06d}", "chat_type": "p2p",
                        "message_type": "text", "content": json.dumps({"text": report_text(i)}, ensure_ascii=False),
                        "mentions": []},
        },
    }
    body = json.dumps({"encrypt": fc.encrypt(ENCRYPT_KEY, json.dumps(event, ensure_ascii=False))}).encode()
    ts, nonce = str(now), uuid.uuid4().hex[:16]
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Lark-Request-Timestamp": ts,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": fc.signature(ts, nonce, ENCRYPT_KEY, body),
    }
    return PATH, headers, body


def is_card_send(path: str, body: bytes) -> str | None:
    """The report_key of the report whose engineer card this request sends to the engineers' group."""
    if not path.endswith("/open-apis/im/v1/messages"):
        return None
    try:
        sent = json.loads(body)
    except ValueError:
        return None
    if sent.get("msg_type") != "interactive" or sent.get("receive_id") != ENGINEERS_CHAT:
        return None
    return find_report_key(sent.get("content") or "")


def fake_api_routes(record) -> list[web.RouteDef]:
    ids = itertools.count(1)

    async def token(request: web.Request) -> web.Response:
        record(request.path, await request.read())
        return web.json_response({"code": 0, "msg": "ok", "tenant_access_token": "t-bench", "expire": 7200})

    async def bot_info(request: web.Request) -> web.Response:
        record(request.path, await request.read())
        return web.json_response({"code": 0, "msg": "ok", "bot": {"open_id": BOT_OPEN_ID, "app_name": "RelayDesk"}})

    async def send(request: web.Request) -> web.Response:
        body = await request.read()
        record(request.path, body)
        receive = request.query.get("receive_id_type")
        try:
            to = json.loads(body).get("receive_id", "")
        except ValueError:
            to = ""
        chat = to if receive == "chat_id" else f"oc_p2p_{to}"
        return web.json_response({"code": 0, "msg": "success",
                                  "data": {"message_id": f"om_fake_{next(ids)}", "chat_id": chat}})

    async def ok(request: web.Request) -> web.Response:
        record(request.path, await request.read())
        return web.json_response({"code": 0, "msg": "success", "data": {}})

    async def image(request: web.Request) -> web.Response:
        record(request.path, await request.read())
        return web.json_response({"code": 0, "msg": "success", "data": {"image_key": "img_v2_bench"}})

    return [
        web.post("/open-apis/auth/v3/tenant_access_token/internal", token),
        web.get("/open-apis/bot/v3/info", bot_info),
        web.post("/open-apis/im/v1/messages", send),
        web.post("/open-apis/im/v1/messages/{message_id}/reply", send),
        web.patch("/open-apis/im/v1/messages/{message_id}", ok),
        web.post("/open-apis/im/v1/images", image),
    ]
