"""DingTalk's REST client (callback signatures and event crypto: crypto.py).

Facts used here are in docs/PLATFORMS.md §2:

* Two API hosts: api.dingtalk.com (token in the `x-acs-dingtalk-access-token`
  header, errors as HTTP 4xx/5xx with `code`/`message`) and oapi.dingtalk.com
  (token as `?access_token=`, errors as HTTP 200 with `errcode`/`errmsg`).
  Each has its own cached access token.
"""
from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

import httpx

from bot.channel import DeliveryError, read_upload
from bot.channels.shared.access_token import AccessToken
from bot.channels.shared.http import api_client
from bot.config import DingTalkConfig

log = logging.getLogger(__name__)

# Refresh a token this long before DingTalk says it expires.
TOKEN_MARGIN_SECONDS = 300
# api.dingtalk.com error codes meaning "the token is no good: fetch another".
_API_TOKEN_CODES = {"InvalidAuthentication", "invalidAuthentication", "InvalidAccessToken",
                    "Unauthorized.AccessToken", "invalidAccessToken"}
# oapi.dingtalk.com errcodes for an invalid or expired access_token.
_OAPI_TOKEN_ERRCODES = {40014, 42001, 40001}
# oapi errcodes that mean "busy / too many calls, try again later".
_OAPI_RETRY_ERRCODES = {-1, 88, 90002, 90005, 90006, 90018, 130101}
# sessionWebhook errcode: the session no longer exists (expired).
SESSION_GONE_ERRCODE = 300001


# ---- REST client -------------------------------------------------------------


class SessionGone(Exception):
    """The conversation's sessionWebhook expired; send through the OpenAPI instead."""


class DingTalkAPI:
    """Both DingTalk hosts over httpx: tokens, robot messages, cards, media, users."""

    def __init__(self, config: DingTalkConfig, *, timeout: float = 10.0):
        self.config = config
        self.timeout = timeout
        self.robot_code = config.robot_code or config.app_key
        self.api: httpx.AsyncClient | None = None
        self.oapi: httpx.AsyncClient | None = None
        self.api_token = AccessToken(self._fetch_api_token, margin=TOKEN_MARGIN_SECONDS)
        self.oapi_token = AccessToken(self._fetch_oapi_token, margin=TOKEN_MARGIN_SECONDS)
        self._logged: set[str] = set()

    async def start(self) -> None:
        self.api = api_client(self.config.api_base, self.timeout)
        self.oapi = api_client(self.config.oapi_base, self.timeout)

    async def close(self) -> None:
        for client in (self.api, self.oapi):
            if client is not None:
                await client.aclose()
        self.api = self.oapi = None

    def log_once(self, key: str, message: str, *args) -> None:
        """Configuration problems: logged once per process, with the fix."""
        if key not in self._logged:
            self._logged.add(key)
            log.error(message, *args)

    def _client(self, which: str) -> httpx.AsyncClient:
        client = self.api if which == "api" else self.oapi
        if client is None:
            raise DeliveryError("the DingTalk channel is not started")
        return client

    async def _request(self, which: str, method: str, url: str, **kw) -> httpx.Response:
        try:
            return await self._client(which).request(method, url, **kw)
        except httpx.TimeoutException as e:
            raise DeliveryError(f"DingTalk {method} {url}: timeout ({type(e).__name__})") from None
        except httpx.HTTPError as e:
            raise DeliveryError(f"DingTalk {method} {url}: {type(e).__name__}: {e}") from None

    # ---- tokens --------------------------------------------------------

    async def _fetch_api_token(self) -> tuple[str, float]:
        r = await self._request("api", "POST", "/v1.0/oauth2/accessToken",
                                json={"appKey": self.config.app_key, "appSecret": self.config.app_secret})
        data = _json(r)
        if r.status_code == 200 and data.get("accessToken"):
            return str(data["accessToken"]), float(data.get("expireIn") or 7200)
        self._token_failure(r, data.get("code"), data.get("message"))
        raise AssertionError  # pragma: no cover

    async def _fetch_oapi_token(self) -> tuple[str, float]:
        r = await self._request("oapi", "GET", "/gettoken",
                                params={"appkey": self.config.app_key, "appsecret": self.config.app_secret})
        data = _json(r)
        if r.status_code == 200 and data.get("errcode", 0) == 0 and data.get("access_token"):
            return str(data["access_token"]), float(data.get("expires_in") or 7200)
        self._token_failure(r, data.get("errcode"), data.get("errmsg"))
        raise AssertionError  # pragma: no cover

    def _token_failure(self, r: httpx.Response, code, message) -> None:
        if r.status_code >= 500 or r.status_code == 429:
            raise DeliveryError(f"DingTalk token: HTTP {r.status_code}", retry_after=_retry_after(r))
        self.log_once("token", "DingTalk refused the app credentials (%s: %s): check [dingtalk] app_key and "
                      "app_secret (RELAYDESK_DINGTALK__APP_SECRET) against the app in the developer console",
                      code, message)
        # Retryable: fixing the credentials and restarting delivers what waited.
        raise DeliveryError(f"DingTalk token refused: {code} {message}", retry_after=60)

    # ---- calls ---------------------------------------------------------

    async def call_api(self, method: str, path: str, body: dict) -> dict:
        """A call to api.dingtalk.com; one retry with a fresh token if it was refused."""
        for attempt in (1, 2):
            token = await self.api_token.get()
            r = await self._request("api", method, path, json=body,
                                    headers={"x-acs-dingtalk-access-token": token})
            data = _json(r)
            if r.status_code == 200:
                return data
            code = str(data.get("code") or "")
            message = str(data.get("message") or r.text[:200])
            if (r.status_code == 401 or code in _API_TOKEN_CODES) and attempt == 1:
                self.api_token.invalidate(token)
                continue
            raise self._api_error(path, r, code, message)
        raise DeliveryError(f"DingTalk {path}: token refused twice")  # pragma: no cover

    def _api_error(self, path: str, r: httpx.Response, code: str, message: str) -> DeliveryError:
        text = f"DingTalk {path}: HTTP {r.status_code} {code} {message}".strip()
        low = code.lower()
        if r.status_code == 429 or "qpslimit" in low or "throttl" in low or ("limit" in low and "flow" in low):
            return DeliveryError(text, retry_after=_retry_after(r) or 2.0)
        if r.status_code >= 500 or "systemerror" in low or "servicebusy" in low:
            return DeliveryError(text, retry_after=_retry_after(r))
        if "permission" in low or "accessdenied" in low or "forbidden" in low:
            self.log_once(f"perm:{path}", "DingTalk refused %s for lack of permission (%s: %s): grant the app "
                          "the permission this API needs in the developer console (权限管理), see "
                          "docs/channels/dingtalk.md", path, code, message)
            return DeliveryError(text, retry_after=60)
        if "templateunpublished" in low or ("template" in low and "not" in low):
            self.log_once("template", "DingTalk refused the card template (%s: %s): publish template %s in the "
                          "card platform, or remove [dingtalk] card_template_id to send markdown",
                          code, message, self.config.card_template_id)
            return DeliveryError(text, retry_after=60)
        return DeliveryError(text, retryable=False)

    async def call_oapi(self, method: str, path: str, *, params: dict | None = None, **kw) -> dict:
        """A call to oapi.dingtalk.com (access_token in the query)."""
        for attempt in (1, 2):
            token = await self.oapi_token.get()
            r = await self._request("oapi", method, path, params={**(params or {}), "access_token": token}, **kw)
            if r.status_code >= 500 or r.status_code == 429:
                raise DeliveryError(f"DingTalk {path}: HTTP {r.status_code}", retry_after=_retry_after(r))
            data = _json(r)
            errcode = data.get("errcode", 0 if r.status_code == 200 else r.status_code)
            if errcode == 0 and r.status_code == 200:
                return data
            if errcode in _OAPI_TOKEN_ERRCODES and attempt == 1:
                self.oapi_token.invalidate(token)
                continue
            text = f"DingTalk {path}: errcode {errcode} {data.get('errmsg', '')}".strip()
            if errcode in _OAPI_RETRY_ERRCODES:
                raise DeliveryError(text, retry_after=2.0)
            raise DeliveryError(text, retryable=False)
        raise DeliveryError(f"DingTalk {path}: token refused twice")  # pragma: no cover

    # ---- robot messages ------------------------------------------------

    def session_allowed(self, url: str) -> bool:
        """Only post to sessionWebhooks on DingTalk's own hosts (as configured)."""
        parts = urlsplit(url)
        allowed = {(urlsplit(b).scheme, urlsplit(b).netloc) for b in (self.config.oapi_base, self.config.api_base)}
        return (parts.scheme, parts.netloc) in allowed

    async def session_send(self, url: str, payload: dict) -> None:
        """Post a message to a conversation's sessionWebhook (the only way to @ people)."""
        try:
            r = await self._client("oapi").post(url, json=payload)
        except httpx.TimeoutException:
            raise DeliveryError("DingTalk sessionWebhook: timeout") from None
        except httpx.HTTPError as e:
            raise DeliveryError(f"DingTalk sessionWebhook: {type(e).__name__}: {e}") from None
        if r.status_code >= 500 or r.status_code == 429:
            raise DeliveryError(f"DingTalk sessionWebhook: HTTP {r.status_code}", retry_after=_retry_after(r))
        data = _json(r)
        errcode = data.get("errcode", 0 if r.status_code == 200 else r.status_code)
        if errcode == 0 and r.status_code == 200:
            return
        if errcode == SESSION_GONE_ERRCODE or r.status_code in (400, 403, 404):
            raise SessionGone(f"errcode {errcode} {data.get('errmsg', '')}")
        if errcode in _OAPI_RETRY_ERRCODES:
            raise DeliveryError(f"DingTalk sessionWebhook: errcode {errcode} {data.get('errmsg', '')}",
                                retry_after=60.0 if errcode == 130101 else 2.0)
        raise SessionGone(f"errcode {errcode} {data.get('errmsg', '')}")

    async def send_to_user(self, user_id: str, msg_key: str, msg_param: dict) -> dict:
        data = await self.call_api("POST", "/v1.0/robot/oToMessages/batchSend", {
            "robotCode": self.robot_code, "userIds": [user_id], "msgKey": msg_key,
            "msgParam": json.dumps(msg_param, ensure_ascii=False)})
        if user_id in (data.get("invalidStaffIdList") or []):
            raise DeliveryError(f"DingTalk: user {user_id} cannot receive robot messages (not in the app's "
                                f"visible range, or left)", retryable=False)
        if user_id in (data.get("flowControlledStaffIdList") or []):
            raise DeliveryError(f"DingTalk: messages to {user_id} are flow-controlled", retry_after=60.0)
        return data

    async def send_to_group(self, conversation_id: str, msg_key: str, msg_param: dict) -> dict:
        return await self.call_api("POST", "/v1.0/robot/groupMessages/send", {
            "robotCode": self.robot_code, "openConversationId": conversation_id, "msgKey": msg_key,
            "msgParam": json.dumps(msg_param, ensure_ascii=False)})

    async def upload_image(self, path: str) -> str:
        result = await self.call_oapi("POST", "/media/upload", params={"type": "image"},
                                      files={"media": await read_upload(path)})
        media_id = result.get("media_id")
        if not media_id:
            raise DeliveryError(f"DingTalk /media/upload: no media_id in {result}", retryable=False)
        return str(media_id)

    # ---- interactive cards ---------------------------------------------

    async def create_and_deliver(self, body: dict) -> dict:
        data = await self.call_api("POST", "/v1.0/card/instances/createAndDeliver", body)
        result = data.get("result") or {}
        failed = [d for d in (result.get("deliverResults") or []) if not d.get("success", True)]
        if data.get("success") is False or failed:
            reason = "; ".join(str(d.get("errorMsg") or d) for d in failed) or str(data)
            raise DeliveryError(f"DingTalk createAndDeliver: {reason}", retryable=False)
        return data

    async def update_card(self, out_track_id: str, params: dict[str, str]) -> dict:
        return await self.call_api("PUT", "/v1.0/card/instances", {
            "outTrackId": out_track_id,
            "cardData": {"cardParamMap": params},
            "cardUpdateOptions": {"updateCardDataByKey": True, "updatePrivateDataByKey": True},
            "userIdType": 1,
        })

    # ---- address book --------------------------------------------------

    async def get_user(self, user_id: str) -> dict | None:
        """A member's details (`/topapi/v2/user/get`); None when they are not in the org."""
        try:
            data = await self.call_oapi("POST", "/topapi/v2/user/get", json={"userid": user_id, "language": "zh_CN"})
        except DeliveryError as e:
            if "errcode 60121" in str(e) or "errcode 33012" in str(e):
                return None  # no such user (left, or never existed)
            raise
        return data.get("result") or {}


def _json(r: httpx.Response) -> dict:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None


__all__ = [
    "BadPayload", "BadSignature", "DingTalkAPI", "EventCrypto", "SessionGone", "card_signature", "fresh",
    "robot_sign", "same", "timestamp_ms",
]
