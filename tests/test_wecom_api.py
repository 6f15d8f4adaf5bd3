"""WeCom API client: token cache and refresh, errcodes mapped the way a user wants."""
import asyncio
import logging

import httpx
import pytest

from bot.channel import DeliveryError
from bot.channels.wecom.api import WeComAPI, WeComAPIError

BASE = "https://wecom.test"


@pytest.fixture
async def api():
    a = WeComAPI(corp_id="corp1", secret="s3cret", agent_id=1000002, api_base=BASE)
    await a.start()
    yield a
    await a.close()


def token_route(mock, *tokens, expires_in=7200):
    answers = [httpx.Response(200, json={"errcode": 0, "errmsg": "ok", "access_token": t,
                                         "expires_in": expires_in}) for t in tokens]
    return mock.get(f"{BASE}/cgi-bin/gettoken").mock(side_effect=answers)


async def test_token_is_fetched_once_for_concurrent_senders(api, respx_mock):
    gettoken = token_route(respx_mock, "T1")

    async def slow_ok(request):
        await asyncio.sleep(0.01)
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})

    send = respx_mock.post(f"{BASE}/cgi-bin/message/send").mock(side_effect=slow_ok)
    await asyncio.gather(*(api.send_message({"touser": f"u{i}", "msgtype": "text", "text": {"content": "x"}})
                           for i in range(20)))
    assert gettoken.call_count == 1
    assert send.call_count == 20
    assert all(c.request.url.params["access_token"] == "T1" for c in send.calls)
    assert gettoken.calls[0].request.url.params["corpid"] == "corp1"
    assert gettoken.calls[0].request.url.params["corpsecret"] == "s3cret"
    assert b'"agentid":1000002' in send.calls[0].request.content.replace(b" ", b"")


async def test_expired_token_is_refetched_and_the_call_repeated(api, respx_mock):
    gettoken = token_route(respx_mock, "OLD", "NEW")
    send = respx_mock.post(f"{BASE}/cgi-bin/message/send").mock(side_effect=[
        httpx.Response(200, json={"errcode": 0}),
        httpx.Response(200, json={"errcode": 42001, "errmsg": "access_token expired"}),
        httpx.Response(200, json={"errcode": 0}),
    ])
    await api.send_message({"touser": "u", "msgtype": "text", "text": {"content": "1"}})
    await api.send_message({"touser": "u", "msgtype": "text", "text": {"content": "2"}})
    assert gettoken.call_count == 2
    assert [c.request.url.params["access_token"] for c in send.calls] == ["OLD", "OLD", "NEW"]


async def test_token_expiry_from_expires_in(api, respx_mock, monkeypatch):
    gettoken = token_route(respx_mock, "A", "B", expires_in=7200)
    respx_mock.post(f"{BASE}/cgi-bin/message/send").mock(return_value=httpx.Response(200, json={"errcode": 0}))
    now = [1000.0]
    monkeypatch.setattr(api, "clock", lambda: now[0])
    await api.send_message({"touser": "u"})
    now[0] += 7200 - 301  # just inside the margin
    await api.send_message({"touser": "u"})
    assert gettoken.call_count == 1
    now[0] += 2
    await api.send_message({"touser": "u"})
    assert gettoken.call_count == 2


async def test_ip_not_trusted_is_logged_once_with_the_fix(api, respx_mock, caplog):
    respx_mock.get(f"{BASE}/cgi-bin/gettoken").mock(
        return_value=httpx.Response(200, json={"errcode": 60020, "errmsg": "not allow to access from your ip"}))
    caplog.set_level(logging.ERROR, logger="bot.channels.wecom.api")
    for _ in range(3):
        with pytest.raises(WeComAPIError) as e:
            await api.send_message({"touser": "u"})
        assert e.value.retryable and e.value.retry_after == 60
        assert e.value.errcode == 60020
    hints = [r for r in caplog.records if "企业可信IP" in r.getMessage()]
    assert len(hints) == 1


async def test_rate_limit_is_retried_later_not_dropped(api, respx_mock):
    token_route(respx_mock, "T")
    respx_mock.post(f"{BASE}/cgi-bin/message/send").mock(
        return_value=httpx.Response(200, json={"errcode": 45009, "errmsg": "api freq out of limit"}))
    with pytest.raises(DeliveryError) as e:
        await api.send_message({"touser": "u"})
    assert e.value.retryable and e.value.retry_after == 60


async def test_no_valid_recipient_is_reported_not_retried(api, respx_mock):
    token_route(respx_mock, "T")
    respx_mock.post(f"{BASE}/cgi-bin/message/send").mock(
        return_value=httpx.Response(200, json={"errcode": 81013, "errmsg": "user & party & tag all invalid"}))
    with pytest.raises(DeliveryError) as e:
        await api.send_message({"touser": "ghost"})
    assert not e.value.retryable
    assert "81013" in str(e.value) and "identity" in str(e.value)


async def test_transport_trouble_and_5xx_are_retryable(api, respx_mock):
    token_route(respx_mock, "T")
    route = respx_mock.post(f"{BASE}/cgi-bin/message/send")
    route.mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(DeliveryError) as e:
        await api.send_message({"touser": "u"})
    assert e.value.retryable
    route.mock(return_value=httpx.Response(502))
    with pytest.raises(DeliveryError) as e:
        await api.send_message({"touser": "u"})
    assert e.value.retryable
    route.mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(DeliveryError) as e:
        await api.send_message({"touser": "u"})
    assert e.value.retryable


async def test_unknown_errcode_is_not_retried_forever(api, respx_mock):
    token_route(respx_mock, "T")
    respx_mock.post(f"{BASE}/cgi-bin/message/send").mock(
        return_value=httpx.Response(200, json={"errcode": 42014, "errmsg": "taskid has existed"}))
    with pytest.raises(DeliveryError) as e:
        await api.send_message({"touser": "u"})
    assert not e.value.retryable


async def test_media_upload_and_download(api, respx_mock, tmp_path):
    token_route(respx_mock, "T")
    up = respx_mock.post(f"{BASE}/cgi-bin/media/upload").mock(
        return_value=httpx.Response(200, json={"errcode": 0, "type": "image", "media_id": "MID"}))
    pic = tmp_path / "p.png"
    pic.write_bytes(b"\x89PNG....")
    assert await api.upload_media(pic) == "MID"
    req = up.calls[0].request
    assert req.url.params["type"] == "image"
    assert b'name="media"; filename="p.png"' in req.content
    respx_mock.get(f"{BASE}/cgi-bin/media/get").mock(side_effect=[
        httpx.Response(200, content=b"JPEGDATA", headers={"content-type": "image/jpeg"}),
        httpx.Response(200, json={"errcode": 40007, "errmsg": "invalid media_id"}),
    ])
    assert await api.download_media("M1") == (b"JPEGDATA", "image/jpeg")
    with pytest.raises(DeliveryError) as e:
        await api.download_media("M2")
    assert not e.value.retryable
    with pytest.raises(DeliveryError):
        await api.upload_media(tmp_path / "missing.png")


async def test_robot_webhook_uses_its_key_and_no_token(api, respx_mock):
    gettoken = token_route(respx_mock, "T")
    robot = respx_mock.post(f"{BASE}/cgi-bin/webhook/send").mock(
        return_value=httpx.Response(200, json={"errcode": 0, "errmsg": "ok"}))
    await api.robot_send("KEY1", {"msgtype": "text", "text": {"content": "hi", "mentioned_list": ["zhangsan"]}})
    assert robot.calls[0].request.url.params["key"] == "KEY1"
    assert "access_token" not in robot.calls[0].request.url.params
    assert gettoken.call_count == 0
