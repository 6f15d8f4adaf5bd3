"""Call receipts from the domestic providers: the key pressed and how the call
ended, pushed over HTTP.

    POST /callbacks/aliyun/voice[?token=<[aliyun] callback_token>]   HTTP batch push, a JSON array
    POST /callbacks/tencent/voice?token=<[tencent] callback_token>   voicekey_callback / voiceprompt_callback

Neither cloud signs its pushes, so RelayDesk checks what only it and the
cloud know: the secret token in the URL configured in the console (compared
in constant time), and for Aliyun each receipt's `out_id`, the
`<call id>.<HMAC>` tag the call was placed with (escalation/phones). A
receipt must also name the provider's call id the call was placed under. A
forged or unknown receipt gets 403 and changes nothing; a batch is checked
whole before any of it is applied. What keys and unanswered calls do is
escalation/answers.py; redelivered receipts are applied once.
"""
from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from sqlmodel import select

from escalation import answers
from escalation.phones import check_tag
from escalation.phones.aliyun import VOICE_PATH as ALIYUN_PATH
from escalation.phones.tencent import VOICE_PATH as TENCENT_PATH
from storage.models import PhoneCall

if TYPE_CHECKING:  # pragma: no cover
    from escalation.engine import EscalationEngine

log = logging.getLogger(__name__)

# Aliyun's call status codes (运营商回执错误码): intermediate states, ignored ...
ALIYUN_PROGRESS = frozenset({"200100", "200101", "200102", "200103", "200201"})
ALIYUN_DTMF = "300000"
# ... and final results of a call that was answered (heard to the end, hung up
# early, no key before the timeout); every other final code did not reach anybody.
ALIYUN_ANSWERED = frozenset({"200000", "200001", "200008"})
# Tencent voiceprompt_callback.result: 0 answered, 1 not answered, 2 call failed.
TENCENT_STATUS = {"0": "completed", "1": "no-answer", "2": "failed"}


def _token_ok(expected: str | None, got: str) -> bool:
    return expected is None or hmac.compare_digest(expected.encode(), got.encode())


async def apply_aliyun(engine: "EscalationEngine", reports: list[dict]) -> bool:
    """Apply a batch of Aliyun receipts (VoiceCallReport / VoiceReport), pushed or
    pulled. All or nothing: False, and nothing changed, when one of them does not
    name a call RelayDesk placed through Aliyun (its `out_id` tag and `call_id`)."""
    cfg = engine.config.aliyun
    assert cfg is not None
    async with engine.db.session() as s:
        checked: list[tuple[PhoneCall, dict]] = []
        for item in reports:
            call_id = check_tag(cfg.access_key_secret, str(item.get("out_id") or ""))
            call = await s.get(PhoneCall, call_id) if call_id is not None else None
            sid = str(item.get("call_id") or "")
            if call is None or call.kind != "call" or call.provider != "aliyun" or (call.sid and sid != call.sid):
                log.warning("aliyun voice receipt refused: out_id %r, call_id %r", item.get("out_id"), sid)
                return False
            checked.append((call, item))
        for call, item in checked:
            await _aliyun_one(engine, s, call, item)
    engine.on_commit()
    return True


async def _aliyun_one(engine: "EscalationEngine", s, call: PhoneCall, item: dict) -> None:
    code = str(item.get("status_code") or "")
    dtmf = str(item.get("dtmf") or "").strip()[:1]
    sid = str(item.get("call_id") or call.sid or call.id)
    if dtmf in answers.KEYS and (code == ALIYUN_DTMF or code not in ALIYUN_PROGRESS):
        await answers.pressed(engine, s, call, dtmf, "aliyun", f"{sid}:dtmf")
    if code in ALIYUN_PROGRESS or code == ALIYUN_DTMF or not code:
        return
    answered = code in ALIYUN_ANSWERED
    await answers.ended(engine, s, call, "completed" if answered else f"aliyun:{code}", answered=answered,
                        platform="aliyun", event_id=f"{sid}:end", interactive=engine.config.aliyun.ivr)


class Receipts:
    def __init__(self, engine: "EscalationEngine"):
        self.engine = engine
        self.aliyun = engine.config.aliyun
        self.tencent = engine.config.tencent

    def routes(self) -> list[web.RouteDef]:
        out = []
        if self.aliyun is not None:
            out.append(web.post(ALIYUN_PATH, self.handle_aliyun))
        if self.tencent is not None:
            out.append(web.post(TENCENT_PATH, self.handle_tencent))
        return out

    async def _json(self, request: web.Request):
        body = await request.read()  # larger than [server] max_body_bytes: 413
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    # ---- Aliyun ----------------------------------------------------------------

    async def handle_aliyun(self, request: web.Request) -> web.Response:
        cfg = self.aliyun
        assert cfg is not None
        data = await self._json(request)
        if not _token_ok(cfg.callback_token, request.query.get("token", "")):
            log.warning("aliyun voice receipt: bad token")
            return web.json_response({"code": 403, "msg": "bad token"}, status=403)
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
            return web.json_response({"code": 400, "msg": "expected a JSON array of receipts"}, status=400)
        if not await apply_aliyun(self.engine, data):
            return web.json_response({"code": 403, "msg": "unknown call"}, status=403)
        return web.json_response({"code": 0, "msg": "成功"})

    # ---- Tencent ---------------------------------------------------------------

    async def handle_tencent(self, request: web.Request) -> web.Response:
        cfg = self.tencent
        assert cfg is not None
        data = await self._json(request)
        if not _token_ok(cfg.callback_token, request.query.get("token", "")):
            log.warning("tencent voice callback: bad token")
            return web.json_response({"result": 403, "errmsg": "bad token"}, status=403)
        if not isinstance(data, dict):
            return web.json_response({"result": 400, "errmsg": "expected a JSON object"}, status=400)
        key = data.get("voicekey_callback")
        prompt = data.get("voiceprompt_callback")
        item = key if isinstance(key, dict) else prompt if isinstance(prompt, dict) else None
        if item is None:
            return web.json_response({"result": 0, "errmsg": "OK"})  # another kind of report: nothing to do
        sid = str(item.get("callid") or "")
        engine = self.engine
        async with engine.db.session() as s:
            call = (await s.exec(select(PhoneCall).where(PhoneCall.sid == sid, PhoneCall.provider == "tencent",
                                                         PhoneCall.kind == "call"))).first() if sid else None
            context = str(item.get("session_context") or "")
            if call is None or (context and check_tag(cfg.secret_key, context) != call.id):
                log.warning("tencent voice callback refused: callid %r", sid)
                return web.json_response({"result": 403, "errmsg": "unknown call"}, status=403)
            if item is key:
                digit = str(item.get("keypress") or "").strip()[:1]
                if digit in answers.KEYS:
                    await answers.pressed(engine, s, call, digit, "tencent", f"{sid}:key")
            else:
                status = TENCENT_STATUS.get(str(item.get("result")), "failed")
                await answers.ended(engine, s, call, status, answered=status == "completed", platform="tencent",
                                    event_id=f"{sid}:end")
        engine.on_commit()
        return web.json_response({"result": 0, "errmsg": "OK"})
