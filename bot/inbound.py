"""What every inbound HTTP endpoint shares: one refusal type, bounded bodies, bounded parsing.

Platform callbacks and the playground's API are public endpoints that get
scanned and fuzzed. The rules here hold for every route of the app:

* `Refusal(status, reason)` is the one way a handler says no. The `guard`
  middleware turns it into `{"error": reason}` with that status, counts it
  (`relaydesk_inbound_events_total{result="rejected"}`) and logs it without a
  traceback, at most once a minute per endpoint at warning level (the rest at
  debug level, with a count in the next warning).
* A declared `Content-Length` over `[server] max_body_bytes` is answered 413
  before a byte of the body is read; a body that has not fully arrived within
  `[server] body_timeout` is answered 408. Both close the connection. Handlers
  then `await request.read()` the body already in memory. Uploads (pictures,
  multipart forms) are left to their handler, which applies its own size limit
  and reads within `UPLOAD_TIMEOUT`.
* `parse_json` / `json_object` refuse documents nested deeper than
  `MAX_DEPTH` before handing them to the parser (whose recursion would
  otherwise end in a RecursionError and a 500), and answer 400 for anything
  that is not JSON.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

log = logging.getLogger("bot.inbound")

# Deeper than any platform's payload (Feishu's cards and posts stay under 10).
MAX_DEPTH = 32
REFUSAL_LOG_INTERVAL = 60.0  # seconds between warnings for one endpoint
# Uploads (a picture as the raw body, multipart forms) are streamed by their handler,
# which checks their own size limit and reads them within this time.
UPLOAD_TIMEOUT = 30.0
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A JSON string literal; what is inside one never counts as nesting.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class Refusal(Exception):
    """A request refused: the HTTP status, the reason the caller is told, and an optional
    hint for the operator's log (which config key to check)."""

    def __init__(self, status: int, reason: str, *, hint: str | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.hint = hint

    def response(self) -> web.Response:
        return web.json_response({"error": self.reason}, status=self.status, headers={"Cache-Control": "no-store"})


# ---- bounded parsing --------------------------------------------------------


def nesting_within(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the brackets of a JSON text nest at most `limit` deep (strings ignored)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True  # the common case: too few brackets to nest that deep
    skeleton = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw))
    depth = 0
    for byte in skeleton:
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def parse_json(raw: bytes | str, what: str = "the body", *, expect: str = "JSON") -> Any:
    """JSON with a depth limit; Refusal(400, "<what> is not <expect>") for anything else."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if not nesting_within(data):
        raise Refusal(400, f"{what} is nested too deeply")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refusal(400, f"{what} is not {expect}") from None


def json_object(raw: bytes | str, what: str = "the body") -> dict:
    """A JSON object (depth-limited); Refusal(400) otherwise."""
    value = parse_json(raw, what, expect="a JSON object")
    if not isinstance(value, dict):
        raise Refusal(400, f"{what} is not a JSON object")
    return value


def text(value: Any) -> str:
    """A payload field as a string; anything else (missing, a number, an object) is ""."""
    return value if isinstance(value, str) else ""


# ---- refusal logging --------------------------------------------------------


@dataclass
class RefusalLog:
    """Logs refusals without tracebacks: per endpoint, the first of a minute at warning
    level (with how many were held back since), the others at debug level."""

    interval: float = REFUSAL_LOG_INTERVAL
    _last: dict[str, float] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)

    def __call__(self, endpoint: str, refusal: Refusal, detail: str = "") -> None:
        now = time.monotonic()
        hint = f" ({refusal.hint})" if refusal.hint else ""
        if now - self._last.get(endpoint, -self.interval) >= self.interval:
            self._last[endpoint] = now
            held = self._held.pop(endpoint, 0)
            more = f"; {held} more refused since the last warning" if held else ""
            log.warning("%s refused (%d): %s%s%s%s", endpoint, refusal.status, refusal.reason, hint, detail, more)
        else:
            self._held[endpoint] = self._held.get(endpoint, 0) + 1
            log.debug("%s refused (%d): %s%s", endpoint, refusal.status, refusal.reason, detail)


# ---- the middleware ---------------------------------------------------------


def is_upload(request: web.Request) -> bool:
    """A body its handler streams itself (see UPLOAD_TIMEOUT)."""
    ctype = request.content_type
    return ctype == "multipart/form-data" or ctype.startswith("image/")


def platform_of(path: str) -> str | None:
    """The platform a path belongs to, for metrics: /callbacks/<p>/..., /playground/..."""
    parts = path.split("/")
    if len(parts) > 2 and parts[1] == "callbacks":
        return parts[2] or None
    if len(parts) > 1 and parts[1] == "playground":
        return "playground"
    return None


def guard(max_body: int, body_timeout: float,
          count: Callable[[str, str], None] = lambda platform, result: None):
    """The middleware described in the module docstring; `count(platform, "rejected")` per refusal."""
    refusals = RefusalLog()

    def refused(request: web.Request, r: Refusal, *, close: bool = False) -> web.Response:
        endpoint = f"{request.method} {request.match_info.route.resource.canonical}" \
            if request.match_info.route.resource is not None else f"{request.method} {request.path}"
        refusals(endpoint, r, f"; from {request.remote}")
        platform = platform_of(request.path)
        if platform:
            count(platform, "rejected")
        response = r.response()
        if close:
            response.force_close()
        return response

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if request.method in _BODY_METHODS and request.body_exists and not is_upload(request):
            declared = request.content_length
            if declared is not None and declared > max_body:
                return refused(request, Refusal(413, f"request body larger than {max_body} bytes"), close=True)
            try:
                async with asyncio.timeout(body_timeout):
                    await request.read()  # kept by aiohttp: the handler's read() returns it
            except TimeoutError:
                return refused(request, Refusal(408, f"request body not received within {body_timeout:g} s"),
                               close=True)
            except web.HTTPRequestEntityTooLarge:
                return refused(request, Refusal(413, f"request body larger than {max_body} bytes"), close=True)
        try:
            return await handler(request)
        except Refusal as r:
            return refused(request, r)

    return middleware
