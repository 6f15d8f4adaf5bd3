"""The Feishu API client against a respx fake: token cache and refresh, error mapping."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import respx

from bot.channel import DeliveryError
from bot.channels.feishu.api import FeishuAPI, FeishuAPIError

BASE = "https://feishu.test"
TOKEN = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES = "/open-apis/im/v1/messages"


@pytest.fixture
async def api():
    a = FeishuAPI("cli_test", "secret", BASE, timeout=2)
    await a.start()
    yield a
    await a.close()


def _token_route(mock, *tokens: str, expire: int = 7200):
    answers = [httpx.Response(200, json={"code": 0, "msg": "ok", "tenant_access_token": t, "expire": expire})
               for t in tokens]
    return mock.post(f"{BASE}{TOKEN}").mock(side_effect=answers)


def _sent_ok(message_id="om_1", chat_id="oc_1"):
    return httpx.Response(200, json={"code": 0, "msg": "success",
                                     "data": {"message_id": message_id, "chat_id": chat_id}})


@respx.mock(using="httpx", assert_all_called=False)
async def test_token_cached_and_one_refresh_for_concurrent_senders(api, respx_mock):
    token = _token_route(respx_mock, "t-1", "t-2")
    seen: list[str] = []

    def send(request: httpx.Request):
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer t-1" and len(seen) > 3:
            return httpx.Response(400, json={"code": 99991663, "msg": "Invalid access token for authorization."})
        return _sent_ok()

    respx_mock.post(f"{BASE}{MESSAGES}").mock(side_effect=send)
    for _ in range(3):
        await api.send_message("open_id", "ou_a", "text", '{"text":"hi"}')
    assert token.call_count == 1  # cached
    # Now t-1 is refused: eight concurrent senders cause exactly one refresh.
    await asyncio.gather(*(api.send_message("open_id", "ou_a", "text", '{"text":"hi"}') for _ in range(8)))
    assert token.call_count == 2
    assert seen[-1] == "Bearer t-2"


@respx.mock(using="httpx")
async def test_token_request_body_and_expiry(api, respx_mock):
    token = _token_route(respx_mock, "t-1", "t-2", expire=30)  # shorter than the safety margin
    respx_mock.post(f"{BASE}{MESSAGES}").mock(return_value=_sent_ok())
    await api.send_message("chat_id", "oc_1", "text", "{}")
    assert json.loads(token.calls[0].request.content) == {"app_id": "cli_test", "app_secret": "secret"}
    api._access_token.clock = lambda: time.monotonic() + 61  # the minute passed
    await api.send_message("chat_id", "oc_1", "text", "{}")
    assert token.call_count == 2


@respx.mock(using="httpx")
async def test_send_body_uuid_and_receive_id_type(api, respx_mock):
    _token_route(respx_mock, "t-1")
    route = respx_mock.post(f"{BASE}{MESSAGES}").mock(return_value=_sent_ok("om_9", "oc_9"))
    data = await api.send_message("chat_id", "oc_9", "interactive", '{"a":1}', uuid="rd1-x")
    assert data["message_id"] == "om_9"
    req = route.calls[0].request
    assert req.url.params["receive_id_type"] == "chat_id"
    assert json.loads(req.content) == {"receive_id": "oc_9", "msg_type": "interactive", "content": '{"a":1}',
                                       "uuid": "rd1-x"}


@respx.mock(using="httpx")
async def test_rate_limit_is_retryable_with_reset_time(api, respx_mock):
    _token_route(respx_mock, "t-1")
    respx_mock.post(f"{BASE}{MESSAGES}").mock(return_value=httpx.Response(
        429, headers={"x-ogw-ratelimit-reset": "7"}, json={"code": 99991400, "msg": "request trigger frequency limit"}))
    with pytest.raises(FeishuAPIError) as e:
        await api.send_message("open_id", "ou_a", "text", "{}")
    assert e.value.retryable and e.value.retry_after == 7 and e.value.code == 99991400


@respx.mock(using="httpx")
async def test_chat_rate_limit_230020_is_retryable(api, respx_mock):
    _token_route(respx_mock, "t-1")
    respx_mock.post(f"{BASE}{MESSAGES}").mock(return_value=httpx.Response(
        400, json={"code": 230020, "msg": "This operation triggers the frequency limit."}))
    with pytest.raises(FeishuAPIError) as e:
        await api.send_message("chat_id", "oc_1", "text", "{}")
    assert e.value.retryable and e.value.retry_after


@respx.mock(using="httpx")
async def test_server_errors_and_timeouts_are_retryable(api, respx_mock):
    _token_route(respx_mock, "t-1")
    route = respx_mock.post(f"{BASE}{MESSAGES}")
    route.mock(return_value=httpx.Response(502, text="bad gateway"))
    with pytest.raises(FeishuAPIError) as e:
        await api.send_message("open_id", "ou_a", "text", "{}")
    assert e.value.retryable
    route.mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(FeishuAPIError) as e:
        await api.send_message("open_id", "ou_a", "text", "{}")
    assert e.value.retryable and "timed out" in str(e.value)


@respx.mock(using="httpx")
async def test_bot_not_in_chat_is_permanent_and_logged_once_with_the_fix(api, respx_mock, caplog):
    _token_route(respx_mock, "t-1")
    respx_mock.post(f"{BASE}{MESSAGES}").mock(return_value=httpx.Response(
        400, json={"code": 230002, "msg": "Bot/User can NOT be out of the chat."}))
    for _ in range(3):
        with pytest.raises(FeishuAPIError) as e:
            await api.send_message("chat_id", "oc_x", "text", "{}")
        assert not e.value.retryable and "add the app's bot to the group" in str(e.value)
    assert sum("add the app's bot" in r.getMessage() for r in caplog.records) == 1


@respx.mock(using="httpx")
async def test_wrong_app_secret_is_permanent(api, respx_mock):
    respx_mock.post(f"{BASE}{TOKEN}").mock(return_value=httpx.Response(
        200, json={"code": 10014, "msg": "app secret invalid"}))
    with pytest.raises(FeishuAPIError) as e:
        await api.send_message("open_id", "ou_a", "text", "{}")
    assert not e.value.retryable and "app_secret" in str(e.value)


@respx.mock(using="httpx")
async def test_bad_recipient_is_permanent(api, respx_mock):
    _token_route(respx_mock, "t-1")
    respx_mock.post(f"{BASE}{MESSAGES}").mock(return_value=httpx.Response(
        400, json={"code": 230001, "msg": "invalid receive_id"}))
    with pytest.raises(FeishuAPIError) as e:
        await api.send_message("open_id", "ou_nobody", "text", "{}")
    assert not e.value.retryable and e.value.code == 230001


@respx.mock(using="httpx")
async def test_patch_reply_upload_and_bot_info(api, respx_mock, tmp_path):
    _token_route(respx_mock, "t-1")
    patch = respx_mock.patch(f"{BASE}{MESSAGES}/om_1").mock(return_value=httpx.Response(200, json={"code": 0}))
    reply = respx_mock.post(f"{BASE}{MESSAGES}/om_2/reply").mock(return_value=_sent_ok("om_3"))
    upload = respx_mock.post(f"{BASE}/open-apis/im/v1/images").mock(return_value=httpx.Response(
        200, json={"code": 0, "data": {"image_key": "img_v2_k"}}))
    respx_mock.get(f"{BASE}/open-apis/bot/v3/info").mock(return_value=httpx.Response(
        200, json={"code": 0, "msg": "ok", "bot": {"open_id": "ou_bot", "app_name": "RelayDesk"}}))
    await api.patch_message("om_1", '{"x":1}')
    assert json.loads(patch.calls[0].request.content) == {"content": '{"x":1}'}
    await api.reply_message("om_2", "text", '{"text":"a"}', in_thread=True)
    assert json.loads(reply.calls[0].request.content)["reply_in_thread"] is True
    img = tmp_path / "p.png"
    img.write_bytes(b"\x89PNG fake")
    assert await api.upload_image(img) == "img_v2_k"
    form = upload.calls[0].request.content
    assert b'name="image_type"' in form and b"message" in form and b'filename="p.png"' in form
    assert await api.bot_open_id() == "ou_bot"
    with pytest.raises(DeliveryError, match="file not found") as e:
        await api.upload_image(tmp_path / "missing.png")
    assert not e.value.retryable
