"""WeCom server API over httpx: access token cache and the calls the channel makes.

One `WeComAPI` per self-built app. The access token is cached until shortly
before it expires and refetched under a lock (one `gettoken` for any number
of concurrent senders), and again when WeCom says it is invalid or expired.
Errors come back as `WeComAPIError`, a `DeliveryError` that says whether the
outbox should retry and when; configuration problems (IP not trusted, wrong
secret) are logged once, with the fix.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx

from bot.channel import DeliveryError, read_upload
from bot.channels.shared.access_token import AccessToken
from bot.channels.shared.http import api_client

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://qyapi.weixin.qq.com"
# Errcodes meaning "this access token is no good": refetch it and try again once.
INVALID_TOKEN = frozenset({40014, 42001, 41001})
# Frequency limits and transient trouble: retry later (seconds).
RETRY_LATER: dict[int, float] = {
    -1: 5,  # system busy
    45009: 60,  # API frequency limit (minute bans last 60 s)
    45033: 5,  # too many concurrent calls
    45011: 60,  # API call too frequent
    45047: 60,  # too many messages in the queue
}
# Configuration problems: the outbox keeps retrying (slowly) so messages go out
# once the admin has fixed it; the log says what to fix, once per process.
CONFIG_PROBLEMS: dict[int, str] = {
    60020: ("WeCom refuses calls from this server's IP (errcode 60020). In the WeCom admin console open "
            "应用管理 → {app} → 企业可信IP and add this server's egress IP (a trusted domain or a verified "
            "callback URL must be configured first)."),
    40001: "WeCom says the secret is wrong (errcode 40001): copy the app's Secret into [wecom] secret.",
    40013: "WeCom says the corp id is wrong (errcode 40013): set [wecom] corp_id to 我的企业 → 企业ID.",
    40091: "WeCom says the secret is wrong (errcode 40091): copy the app's Secret into [wecom] secret.",
    40056: "WeCom says the agent id is wrong (errcode 40056): set [wecom] agent_id to the app's AgentId.",
    48002: "The app may not call this API (errcode 48002): check the app's API permissions in the console.",
    301002: "The app may not send to this member or chat (errcode 301002): check the app's visible range.",
}
CONFIG_RETRY_AFTER = 60.0
# Nobody to deliver to: reported, not retried.
RECIPIENT_PROBLEMS: dict[int, str] = {
    81013: ("none of the recipients is valid (errcode 81013): check the person's wecom identity "
            "(their WeCom userid) and that they are in the app's visible range"),
    40003: "invalid userid (errcode 40003): check the person's wecom identity",
    86003: ("chat not found (errcode 86003): the engineers' chat must be a chat created by this app "
            "through appchat/create"),
    86004: "invalid chat id (errcode 86004): check engineers_chat / the team's wecom group",
    93000: "invalid robot webhook key (errcode 93000): check [wecom] robot_webhook_key",
}
TOKEN_MARGIN = 300.0  # refetch this long before WeCom's expiry


class WeComAPIError(DeliveryError):
    def __init__(self, errcode: int, errmsg: str, *, path: str, retryable: bool,
                 retry_after: float | None = None, hint: str | None = None):
        text = f"WeCom {path}: errcode {errcode} {errmsg}".strip()
        if hint:
            text += f" — {hint}"
        super().__init__(text, retryable=retryable, retry_after=retry_after)
        self.errcode = errcode
        self.errmsg = errmsg


class WeComAPI:
    def __init__(self, *, corp_id: str, secret: str, agent_id: int, api_base: str = DEFAULT_API_BASE,
                 timeout: float = 10.0, app_name: str = "RelayDesk", clock=time.monotonic):
        self.corp_id = corp_id
        self.secret = secret
        self.agent_id = agent_id
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.app_name = app_name
        self.clock = clock
        self._client: httpx.AsyncClient | None = None
        # Trusted until TOKEN_MARGIN before WeCom's expiry, but at least half its lifetime;
        # `self.clock` is looked up on each use so it can be replaced after construction.
        self._access_token = AccessToken(self._fetch_token, margin=TOKEN_MARGIN,
                                         min_lifetime=lambda ttl: ttl / 2, clock=lambda: self.clock())
        self._warned: set[int] = set()

    async def start(self) -> None:
        if self._client is None:
            self._client = api_client(self.api_base, self.timeout, headers={"User-Agent": "RelayDesk"})

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise DeliveryError("the WeCom client is not started")
        return self._client

    # ---- access token ------------------------------------------------------

    @property
    def token_fetches(self) -> int:
        return self._access_token.fetches

    async def token(self) -> str:
        return await self._access_token.get()

    async def _fetch_token(self) -> tuple[str, float]:
        data = await self._request("GET", "/cgi-bin/gettoken",
                                   params={"corpid": self.corp_id, "corpsecret": self.secret})
        self._check(data, "/cgi-bin/gettoken")
        tok = data.get("access_token")
        if not tok:
            raise DeliveryError("WeCom gettoken answered without an access_token")
        return tok, float(data.get("expires_in") or 7200)

    def invalidate(self, used: str) -> None:
        """Forget the token `used`, unless somebody already replaced it."""
        self._access_token.invalidate(used)

    # ---- plumbing --------------------------------------------------------

    async def _request(self, method: str, path: str, **kw) -> dict:
        try:
            resp = await self.client.request(method, path, **kw)
        except httpx.TimeoutException:
            raise DeliveryError(f"WeCom {path}: timed out") from None
        except httpx.TransportError as e:
            raise DeliveryError(f"WeCom {path}: {type(e).__name__}: {e}") from None
        return self._json(resp, path)

    @staticmethod
    def _json(resp: httpx.Response, path: str) -> dict:
        if resp.status_code == 429:
            raise DeliveryError(f"WeCom {path}: HTTP 429", retry_after=_retry_after(resp) or 60)
        if resp.status_code >= 500:
            raise DeliveryError(f"WeCom {path}: HTTP {resp.status_code}", retry_after=_retry_after(resp))
        if resp.status_code >= 400:
            raise DeliveryError(f"WeCom {path}: HTTP {resp.status_code}", retryable=False)
        try:
            data = resp.json()
        except ValueError:
            raise DeliveryError(f"WeCom {path}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise DeliveryError(f"WeCom {path}: unexpected answer")
        return data

    def _check(self, data: dict, path: str) -> None:
        code = data.get("errcode", 0)
        try:
            code = int(code)
        except (TypeError, ValueError):
            code = -1
        if code == 0:
            return
        msg = str(data.get("errmsg", ""))
        if code in CONFIG_PROBLEMS:
            hint = CONFIG_PROBLEMS[code].format(app=self.app_name)
            if code not in self._warned:
                self._warned.add(code)
                log.error("%s", hint)
            raise WeComAPIError(code, msg, path=path, retryable=True, retry_after=CONFIG_RETRY_AFTER, hint=hint)
        if code in RETRY_LATER:
            raise WeComAPIError(code, msg, path=path, retryable=True, retry_after=RETRY_LATER[code])
        if code in RECIPIENT_PROBLEMS:
            raise WeComAPIError(code, msg, path=path, retryable=False, hint=RECIPIENT_PROBLEMS[code])
        if code in INVALID_TOKEN:
            raise WeComAPIError(code, msg, path=path, retryable=True, retry_after=1)
        # Anything else is a request WeCom will refuse again: don't retry forever.
        raise WeComAPIError(code, msg, path=path, retryable=False)

    async def call(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                   files: Any = None, data: Any = None) -> dict:
        """An authenticated call; a stale token is refetched and the call repeated once."""
        for attempt in (1, 2):
            tok = await self.token()
            q = dict(params or {})
            q["access_token"] = tok
            answer = await self._request(method, path, params=q, json=json, files=files, data=data)
            code = answer.get("errcode", 0)
            if code in INVALID_TOKEN and attempt == 1:
                log.info("WeCom %s: access token rejected (errcode %s), fetching a new one", path, code)
                self.invalidate(tok)
                continue
            self._check(answer, path)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- the calls ---------------------------------------------------------

    async def send_message(self, body: dict) -> dict:
        """`message/send` to users; `agentid` is filled in."""
        return await self.call("POST", "/cgi-bin/message/send", json={"agentid": self.agent_id, **body})

    async def update_template_card(self, body: dict) -> dict:
        return await self.call("POST", "/cgi-bin/message/update_template_card",
                               json={"agentid": self.agent_id, **body})

    async def appchat_send(self, body: dict) -> dict:
        return await self.call("POST", "/cgi-bin/appchat/send", json=body)

    async def robot_send(self, key: str, body: dict) -> dict:
        """Group robot webhook: no access token, the key is the credential."""
        path = "/cgi-bin/webhook/send"
        answer = await self._request("POST", path, params={"key": key}, json=body)
        self._check(answer, path)
        return answer

    async def upload_media(self, path: str | Path, media_type: str = "image") -> str:
        answer = await self.call("POST", "/cgi-bin/media/upload", params={"type": media_type},
                                 files={"media": await read_upload(path)})
        media_id = answer.get("media_id")
        if not media_id:
            raise DeliveryError("WeCom media/upload answered without a media_id")
        return media_id

    async def download_media(self, media_id: str) -> tuple[bytes, str]:
        """`media/get`: the file's bytes and content type."""
        path = "/cgi-bin/media/get"
        for attempt in (1, 2):
            tok = await self.token()
            try:
                resp = await self.client.get(path, params={"access_token": tok, "media_id": media_id})
            except httpx.TimeoutException:
                raise DeliveryError(f"WeCom {path}: timed out") from None
            except httpx.TransportError as e:
                raise DeliveryError(f"WeCom {path}: {type(e).__name__}: {e}") from None
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if resp.status_code == 200 and ctype not in ("application/json", "text/plain"):
                return resp.content, ctype or "application/octet-stream"
            answer = self._json(resp, path)
            if answer.get("errcode") in INVALID_TOKEN and attempt == 1:
                self.invalidate(tok)
                continue
            self._check(answer, path)
            raise DeliveryError(f"WeCom {path}: no file in the answer", retryable=False)
        raise AssertionError("unreachable")  # pragma: no cover

    async def download_url(self, url: str) -> tuple[bytes, str]:
        """A user's picture by its PicUrl (no token needed)."""
        try:
            resp = await self.client.get(url)
        except httpx.HTTPError as e:
            raise DeliveryError(f"picture download failed: {type(e).__name__}") from None
        if resp.status_code != 200:
            raise DeliveryError(f"picture download: HTTP {resp.status_code}")
        return resp.content, resp.headers.get("content-type", "image/jpeg").split(";")[0]


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None
