"""A small async client for the Feishu / Lark Open API (the handful of calls RelayDesk makes).

- tenant_access_token cached per app until shortly before it expires, refreshed
  under a lock (one refresh for any number of concurrent senders), and again when
  the API says the token is invalid;
- errors mapped to DeliveryError: rate limits, 5xx and timeouts are retryable
  (with the platform's reset time when it gives one); bad recipients, missing
  permissions and wrong credentials are not, and configuration problems are
  logged once with what to change.

Paths are relative to `api_base` (https://open.feishu.cn, or https://open.larksuite.com for Lark).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx

from bot.channel import DeliveryError, read_upload
from bot.channels.shared.access_token import AccessToken
from bot.channels.shared.http import api_client

log = logging.getLogger(__name__)

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES_PATH = "/open-apis/im/v1/messages"
IMAGES_PATH = "/open-apis/im/v1/images"
BOT_INFO_PATH = "/open-apis/bot/v3/info"

# Refresh this long before the token's announced expiry.
TOKEN_MARGIN_SECONDS = 600
MAX_IMAGE_BYTES = 10 * 1024 * 1024

# The API's "this access token is missing / invalid / expired" codes.
TOKEN_INVALID = frozenset({99991661, 99991663, 99991664, 99991665, 99991668, 99991671})
# Frequency limits: per app (99991400), per chat or per user (230020).
RATE_LIMITED = frozenset({99991400, 230020})
# Problems only the person configuring the app can fix, with the fix.
CONFIG_HINTS: dict[int, str] = {
    10003: "Feishu rejected app_id/app_secret: check [feishu] app_id and app_secret "
           "(RELAYDESK_FEISHU__APP_SECRET) against 开发者后台 → 凭证与基础信息",
    10014: "Feishu rejected app_secret: check [feishu] app_secret (RELAYDESK_FEISHU__APP_SECRET)",
    99991672: "the app lacks an API scope: grant im:message, im:message:send_as_bot and im:resource "
              "in 开发者后台 → 权限管理, then publish a new app version",
    99991401: "Feishu refused the caller's IP: add this server's egress IP to the app's IP allow-list "
              "(开发者后台 → 安全设置)",
    230002: "the bot is not in that chat: add the app's bot to the group (群设置 → 群机器人)",
    230006: "the app has no bot: enable 应用能力 → 机器人 and publish a new app version",
    230013: "the user is outside the app's availability: widen 可用范围 in 开发者后台 → 版本管理与发布",
}


class FeishuAPIError(DeliveryError):
    """A failed API call; `code` is Feishu's error code when it gave one."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None,
                 retryable: bool = True, retry_after: float | None = None):
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.code = code
        self.status = status


def _retry_after(resp: httpx.Response) -> float:
    for header in ("x-ogw-ratelimit-reset", "retry-after"):
        value = resp.headers.get(header)
        if value:
            try:
                return max(1.0, float(value))
            except ValueError:
                pass
    return 2.0


class FeishuAPI:
    def __init__(self, app_id: str, app_secret: str, api_base: str, *, timeout: float = 10.0):
        self.app_id = app_id
        self.app_secret = app_secret
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._access_token = AccessToken(self._fetch_tenant_token, margin=TOKEN_MARGIN_SECONDS)
        self._logged: set[int] = set()

    # ---- lifecycle -----------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = api_client(self.api_base, self.timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise FeishuAPIError("the Feishu client is not started", retryable=True)
        return self._client

    # ---- token -----------------------------------------------------------

    @property
    def token_fetches(self) -> int:
        """Successful token fetches, for tests and metrics."""
        return self._access_token.fetches

    async def tenant_token(self, *, stale: str | None = None) -> str:
        """The cached tenant_access_token; `stale` is one the API just refused."""
        if stale:
            self._access_token.invalidate(stale)
        return await self._access_token.get()

    async def _fetch_tenant_token(self) -> tuple[str, float]:
        resp = await self._request("POST", TOKEN_PATH, json={"app_id": self.app_id, "app_secret": self.app_secret})
        data = self._check(resp, "tenant_access_token")
        token = data.get("tenant_access_token")
        if not isinstance(token, str) or not token:
            raise FeishuAPIError("tenant_access_token missing from Feishu's answer")
        return token, float(data.get("expire") or 7200)

    # ---- transport -------------------------------------------------------

    async def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kw)
        except httpx.TimeoutException as e:
            raise FeishuAPIError(f"{method} {path}: timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise FeishuAPIError(f"{method} {path}: {type(e).__name__}: {e}") from None

    def _check(self, resp: httpx.Response, what: str) -> dict:
        """The answer's JSON when `code` is 0; FeishuAPIError otherwise."""
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            retryable = resp.status_code >= 500 or resp.status_code == 429 or resp.status_code < 400
            raise FeishuAPIError(f"{what}: HTTP {resp.status_code} without a JSON answer",
                                 status=resp.status_code, retryable=retryable,
                                 retry_after=_retry_after(resp) if resp.status_code == 429 else None)
        code = body.get("code", 0 if resp.status_code < 400 else -1)
        if code == 0 and resp.status_code < 400:
            return body
        msg = str(body.get("msg") or "")
        text = f"{what}: Feishu error {code} (HTTP {resp.status_code}): {msg}"
        if code in RATE_LIMITED or resp.status_code == 429:
            raise FeishuAPIError(text, code=code, status=resp.status_code, retry_after=_retry_after(resp))
        if code in TOKEN_INVALID:
            raise FeishuAPIError(text, code=code, status=resp.status_code)
        if code in CONFIG_HINTS:
            if code not in self._logged:
                self._logged.add(code)
                log.error("Feishu: %s — %s", text, CONFIG_HINTS[code])
            raise FeishuAPIError(f"{text} ({CONFIG_HINTS[code]})", code=code, status=resp.status_code,
                                 retryable=False)
        if resp.status_code >= 500:
            raise FeishuAPIError(text, code=code, status=resp.status_code)
        # A 4xx with an error code is about this request (recipient, content): retrying won't help.
        raise FeishuAPIError(text, code=code, status=resp.status_code, retryable=resp.status_code < 400)

    async def call(self, method: str, path: str, what: str, **kw) -> dict:
        """An authorised call; on an invalid-token answer, one refresh and one retry."""
        token = await self.tenant_token()
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {token}"}
            resp = await self._request(method, path, headers=headers, **kw)
            try:
                return self._check(resp, what)
            except FeishuAPIError as e:
                if e.code in TOKEN_INVALID and attempt == 1:
                    token = await self.tenant_token(stale=token)
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- messages --------------------------------------------------------

    async def send_message(self, receive_id_type: str, receive_id: str, msg_type: str, content: str,
                           *, uuid: str | None = None) -> dict:
        """POST im/v1/messages; the created message (message_id, chat_id, ...)."""
        body: dict[str, Any] = {"receive_id": receive_id, "msg_type": msg_type, "content": content}
        if uuid:
            body["uuid"] = uuid  # Feishu sends at most one message per uuid within an hour
        answer = await self.call("POST", MESSAGES_PATH, f"send {msg_type}",
                                 params={"receive_id_type": receive_id_type}, json=body)
        return answer.get("data") or {}

    async def reply_message(self, message_id: str, msg_type: str, content: str, *, in_thread: bool = False,
                            uuid: str | None = None) -> dict:
        """POST im/v1/messages/{id}/reply, in the message's thread when `in_thread`."""
        body: dict[str, Any] = {"msg_type": msg_type, "content": content, "reply_in_thread": in_thread}
        if uuid:
            body["uuid"] = uuid
        answer = await self.call("POST", f"{MESSAGES_PATH}/{message_id}/reply", f"reply {msg_type}", json=body)
        return answer.get("data") or {}

    async def patch_message(self, message_id: str, content: str) -> dict:
        """PATCH im/v1/messages/{id}: replace a sent card (shared cards change for everyone)."""
        answer = await self.call("PATCH", f"{MESSAGES_PATH}/{message_id}", "update card",
                                 json={"content": content})
        return answer.get("data") or {}

    async def upload_image(self, path: str | Path) -> str:
        """POST im/v1/images; the image_key to send it with."""
        name, data, mime = await read_upload(path)
        if not data or len(data) > MAX_IMAGE_BYTES:
            raise FeishuAPIError(f"image {name} is {len(data)} bytes; Feishu takes 1 byte to 10 MB",
                                 retryable=False)
        answer = await self.call("POST", IMAGES_PATH, "upload image", data={"image_type": "message"},
                                 files={"image": (name, data, mime)})
        key = (answer.get("data") or {}).get("image_key")
        if not key:
            raise FeishuAPIError("upload image: no image_key in Feishu's answer")
        return key

    async def download_resource(self, message_id: str, file_key: str, kind: str = "image") -> bytes:
        """GET a message's image or file (the bytes)."""
        token = await self.tenant_token()
        resp = await self._request("GET", f"{MESSAGES_PATH}/{message_id}/resources/{file_key}",
                                   params={"type": kind}, headers={"Authorization": f"Bearer {token}"})
        if resp.status_code != 200 or resp.headers.get("content-type", "").startswith("application/json"):
            self._check(resp, "download resource")
        return resp.content

    async def bot_open_id(self) -> str:
        """The bot's own open_id (GET bot/v3/info), to tell its @mention from people's."""
        answer = await self.call("GET", BOT_INFO_PATH, "bot info")
        open_id = (answer.get("bot") or {}).get("open_id")
        if not open_id:
            raise FeishuAPIError("bot info: no open_id in Feishu's answer (is the bot capability enabled?)",
                                 retryable=False)
        return open_id
