"""The DingTalk REST client against a DingTalk faked with respx: tokens, errors, sends."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import respx

from bot.channel import DeliveryError
from bot.channels.dingtalk.api import DingTalkAPI, SessionGone
from bot.config import DingTalkConfig

API = "https://api.dt.test"
OAPI = "https://oapi.dt.test"


@pytest.fixture
async def api():
    client = DingTalkAPI(DingTalkConfig(app_key="dingkey", app_secret="s3cret", api_base=API, oapi_base=OAPI))
    await client.start()
    yield client
    await client.close()


def token_route(mock, value="tok-1", expire=7200):
    return mock.post(f"{API}/v1.0/oauth2/accessToken").mock(
        return_value=httpx.Response(200, json={"accessToken": value, "expireIn": expire}))


async def test_token_is_fetched_once_for_concurrent_senders(api, respx_mock):
    async def slow_token(request):
        await asyncio.sleep(0.05)
        assert json.loads(request.content) == {"appKey": "dingkey", "appSecret": "s3cret"}
        return httpx.Response(200, json={"accessToken": "tok-1", "expireIn": 7200})

    tokens = respx_mock.post(f"{API}/v1.0/oauth2/accessToken").mock(side_effect=slow_token)
    send = respx_mock.post(f"{API}/v1.0/robot/groupMessages/send").mock(
        return_value=httpx.Response(200, json={"processQueryKey": "k"}))
    await asyncio.gather(*(api.send_to_group(f"cid{i}", "sampleText", {"content": "hi"}) for i in range(20)))
    assert tokens.call_count == 1 and send.call_count == 20
    assert all(c.request.headers["x-acs-dingtalk-access-token"] == "tok-1" for c in send.calls)
    body = json.loads(send.calls[0].request.content)
    assert body["robotCode"] == "dingkey" and json.loads(body["msgParam"]) == {"content": "hi"}


async def test_refused_token_is_refreshed_once_and_the_call_repeated(api, respx_mock):
    respx_mock.post(f"{API}/v1.0/oauth2/accessToken").mock(side_effect=[
        httpx.Response(200, json={"accessToken": "old", "expireIn": 7200}),
        httpx.Response(200, json={"accessToken": "new", "expireIn": 7200})])

    def send(request):
        if request.headers["x-acs-dingtalk-access-token"] == "old":
            return httpx.Response(401, json={"code": "InvalidAuthentication", "message": "token invalid"})
        return httpx.Response(200, json={"processQueryKey": "k"})

    route = respx_mock.post(f"{API}/v1.0/robot/oToMessages/batchSend").mock(side_effect=send)
    await api.send_to_user("u1", "sampleText", {"content": "hi"})
    assert route.call_count == 2 and api.api_token.fetches == 2


@pytest.mark.parametrize("status,body,retryable", [
    (429, {"code": "Forbidden.AccessDenied.QpsLimitForApi", "message": "qps"}, True),
    (500, {"code": "SystemError", "message": "busy"}, True),
    (503, {}, True),
    (400, {"code": "param.invalid", "message": "openConversationId invalid"}, False),
    (403, {"code": "Forbidden.AccessDenied.AccessTokenPermissionDenied", "message": "no perm"}, True),
    (400, {"code": "param.templateUnpublished", "message": "template"}, True),
])
async def test_api_errors_are_mapped(api, respx_mock, status, body, retryable):
    token_route(respx_mock)
    respx_mock.post(f"{API}/v1.0/robot/groupMessages/send").mock(
        return_value=httpx.Response(status, json=body, headers={"Retry-After": "7"} if status == 429 else {}))
    with pytest.raises(DeliveryError) as e:
        await api.send_to_group("cid", "sampleText", {"content": "x"})
    assert e.value.retryable is retryable
    if status == 429:
        assert e.value.retry_after == 7


async def test_timeouts_are_retryable(api, respx_mock):
    token_route(respx_mock)
    respx_mock.post(f"{API}/v1.0/robot/groupMessages/send").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(DeliveryError) as e:
        await api.send_to_group("cid", "sampleText", {"content": "x"})
    assert e.value.retryable


async def test_invalid_and_flow_controlled_recipients(api, respx_mock):
    token_route(respx_mock)
    route = respx_mock.post(f"{API}/v1.0/robot/oToMessages/batchSend")
    route.mock(return_value=httpx.Response(200, json={"invalidStaffIdList": ["gone"]}))
    with pytest.raises(DeliveryError) as e:
        await api.send_to_user("gone", "sampleText", {"content": "x"})
    assert not e.value.retryable
    route.mock(return_value=httpx.Response(200, json={"flowControlledStaffIdList": ["busy"]}))
    with pytest.raises(DeliveryError) as e:
        await api.send_to_user("busy", "sampleText", {"content": "x"})
    assert e.value.retryable and e.value.retry_after == 60


async def test_bad_credentials_are_logged_once_and_kept_retryable(api, respx_mock, caplog):
    respx_mock.post(f"{API}/v1.0/oauth2/accessToken").mock(
        return_value=httpx.Response(400, json={"code": "invalidClientIdOrSecret", "message": "bad"}))
    for _ in range(3):
        with pytest.raises(DeliveryError) as e:
            await api.send_to_group("cid", "sampleText", {"content": "x"})
        assert e.value.retryable
    assert sum("app_secret" in r.getMessage() for r in caplog.records) == 1


async def test_oapi_token_errors_and_user_lookup(api, respx_mock):
    respx_mock.get(f"{OAPI}/gettoken").mock(side_effect=[
        httpx.Response(200, json={"errcode": 0, "access_token": "o1", "expires_in": 7200}),
        httpx.Response(200, json={"errcode": 0, "access_token": "o2", "expires_in": 7200})])

    def user(request):
        if request.url.params["access_token"] == "o1":
            return httpx.Response(200, json={"errcode": 42001, "errmsg": "expired"})
        uid = json.loads(request.content)["userid"]
        if uid == "nobody":
            return httpx.Response(200, json={"errcode": 60121, "errmsg": "找不到该用户"})
        return httpx.Response(200, json={"errcode": 0, "result": {"userid": uid, "name": "张三"}})

    respx_mock.post(f"{OAPI}/topapi/v2/user/get").mock(side_effect=user)
    assert (await api.get_user("u1"))["name"] == "张三"
    assert await api.get_user("nobody") is None
    assert api.oapi_token.fetches == 2


async def test_oapi_busy_is_retryable(api, respx_mock):
    respx_mock.get(f"{OAPI}/gettoken").mock(
        return_value=httpx.Response(200, json={"errcode": 0, "access_token": "o1", "expires_in": 7200}))
    respx_mock.post(f"{OAPI}/topapi/v2/user/get").mock(
        return_value=httpx.Response(200, json={"errcode": -1, "errmsg": "系统繁忙"}))
    with pytest.raises(DeliveryError) as e:
        await api.get_user("u1")
    assert e.value.retryable


async def test_session_webhook(api, respx_mock):
    url = f"{OAPI}/robot/sendBySession?session=abc"
    route = respx_mock.post(url).mock(return_value=httpx.Response(200, json={"errcode": 0, "errmsg": "ok"}))
    await api.session_send(url, {"msgtype": "text", "text": {"content": "hi"}})
    assert route.call_count == 1 and "access_token" not in str(route.calls[0].request.url)
    route.mock(return_value=httpx.Response(200, json={"errcode": 300001, "errmsg": "session 不存在"}))
    with pytest.raises(SessionGone):
        await api.session_send(url, {})
    route.mock(return_value=httpx.Response(200, json={"errcode": 130101, "errmsg": "send too fast"}))
    with pytest.raises(DeliveryError) as e:
        await api.session_send(url, {})
    assert e.value.retryable and e.value.retry_after == 60
    assert api.session_allowed(url)
    assert not api.session_allowed("https://evil.example/robot/sendBySession?session=abc")
    assert not api.session_allowed("http://oapi.dt.test/robot")  # scheme too


async def test_card_create_and_update(api, respx_mock):
    token_route(respx_mock)
    create = respx_mock.post(f"{API}/v1.0/card/instances/createAndDeliver")
    create.mock(return_value=httpx.Response(200, json={"success": True, "result": {
        "outTrackId": "rd1", "deliverResults": [{"spaceType": "IM_GROUP", "spaceId": "cid", "success": True}]}}))
    await api.create_and_deliver({"outTrackId": "rd1"})
    create.mock(return_value=httpx.Response(200, json={"success": True, "result": {
        "deliverResults": [{"success": False, "errorMsg": "robot not in group"}]}}))
    with pytest.raises(DeliveryError, match="robot not in group") as e:
        await api.create_and_deliver({"outTrackId": "rd2"})
    assert not e.value.retryable
    update = respx_mock.put(f"{API}/v1.0/card/instances").mock(
        return_value=httpx.Response(200, json={"success": True, "result": True}))
    await api.update_card("rd1", {"title": "x"})
    body = json.loads(update.calls[0].request.content)
    assert body["outTrackId"] == "rd1" and body["cardData"] == {"cardParamMap": {"title": "x"}}
    assert body["cardUpdateOptions"]["updateCardDataByKey"] is True


async def test_image_upload(api, respx_mock, tmp_path):
    respx_mock.get(f"{OAPI}/gettoken").mock(
        return_value=httpx.Response(200, json={"errcode": 0, "access_token": "o1", "expires_in": 7200}))
    up = respx_mock.post(f"{OAPI}/media/upload").mock(
        return_value=httpx.Response(200, json={"errcode": 0, "media_id": "@lA0abc"}))
    img = tmp_path / "p.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert await api.upload_image(str(img)) == "@lA0abc"
    req = up.calls[0].request
    assert req.url.params["type"] == "image" and b'name="media"' in req.content
    with pytest.raises(DeliveryError) as e:
        await api.upload_image(str(tmp_path / "missing.png"))
    assert not e.value.retryable
