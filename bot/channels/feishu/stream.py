"""Feishu's long connection: the endpoint request and the pbbp2 frames, over the shared stream link.

The app asks `POST /callback/ws/endpoint` for a WebSocket URL (with its device
and service ids, and the ping interval Feishu wants);
`bot/channels/shared/stream.py` keeps the connection. Events come as DATA
frames, possibly split over several frames; each is answered on the same
connection once it is recorded (a card click with its toast and card).
"""
from __future__ import annotations

import base64
import json
import logging
import time
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from bot.channels.feishu.frame import CONTROL, DATA, Frame, FrameError
from bot.channels.shared.bounded import Bounded
from bot.channels.shared.stream import EndpointError, StreamLink
from bot.config import FeishuConfig
from bot.inbound import Refusal, json_object

log = logging.getLogger(__name__)


class FeishuStream:
    """The platform half of Feishu's long connection; `link` is the connection itself.

    `handle_payload(payload, write)` hands a verified event to the core and
    calls `write` with the answer once it is recorded.
    """

    def __init__(self, config: FeishuConfig,
                 handle_payload: Callable[[dict, Callable[[dict], Awaitable[None]]], Awaitable[None]]):
        self.config = config
        self.handle_payload = handle_payload
        self.link = StreamLink("feishu", self._endpoint, self._on_frame, keepalive=self._ping_frame)
        # The connection's service id (for ping frames) and payloads split over several frames.
        self._service_id = 0
        self._parts: Bounded = Bounded(100)


    async def _endpoint(self, session) -> str:
        """POST /callback/ws/endpoint: the WebSocket URL (with its device and service ids)."""
        body = {"AppID": self.config.app_id, "AppSecret": self.config.app_secret}
        async with session.post(f"{self.config.api_base}/callback/ws/endpoint", json=body,
                                headers={"locale": "zh"}) as r:
            text = await r.text()
            if r.status != 200:
                raise EndpointError(f"/callback/ws/endpoint answered {r.status}: {text[:200]}")
        doc = json_object(text, "the endpoint answer")
        data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
        url = data.get("URL")
        if doc.get("code") != 0 or not isinstance(url, str) or not url:
            raise EndpointError(f"/callback/ws/endpoint: code {doc.get('code')}: {str(doc.get('msg'))[:200]}")
        service = parse_qs(urlsplit(url).query).get("service_id", ["0"])[0]
        self._service_id = int(service) if service.isdigit() else 0
        conf = data.get("ClientConfig") if isinstance(data.get("ClientConfig"), dict) else {}
        ping = conf.get("PingInterval")
        if isinstance(ping, int) and 5 <= ping <= 600:
            self.link.timings.heartbeat = float(ping)
        return url

    def _ping_frame(self) -> bytes:
        return Frame(service=self._service_id, method=CONTROL, headers=[("type", "ping")]).encode()

    async def _on_frame(self, raw, answer) -> None:
        """One frame: control frames (pong) need nothing; an event is answered, on the same
        connection, once it is recorded (a card click with its toast and card)."""
        try:
            frame = Frame.decode(raw if isinstance(raw, bytes) else raw.encode())
        except FrameError as e:
            log.warning("Feishu stream: a frame that is not a pbbp2 frame was ignored (%s)", e)
            return
        if frame.method != DATA or frame.header("type") != "event":
            return  # pong; "card" frames (legacy card callbacks) are not sent over long connections
        payload = self._whole_payload(frame)
        if payload is None:
            return  # more parts to come
        started = time.monotonic()

        async def write(body: dict) -> None:
            data = base64.b64encode(json.dumps(body, ensure_ascii=False).encode()).decode() if body else None
            frame.headers.append(("biz_rt", str(int((time.monotonic() - started) * 1000))))
            frame.payload = json.dumps({"code": 200, "headers": {}, "data": data}).encode()
            await answer(frame.encode())

        try:
            await self.handle_payload(json_object(payload, "the event"), write)
        except Refusal as r:
            # Never going to succeed: answered (400) so that Feishu does not push it again.
            log.warning("Feishu stream: event %s refused: %s", frame.header("message_id"), r.reason)
            frame.payload = json.dumps({"code": 400, "headers": {}, "data": None}).encode()
            await answer(frame.encode())

    def _whole_payload(self, frame: Frame) -> bytes | None:
        """The payload of a message Feishu split over several frames, once all have come."""
        try:
            total, seq = int(frame.header("sum", "1") or 1), int(frame.header("seq", "0") or 0)
        except ValueError:
            return frame.payload
        if total <= 1:
            return frame.payload
        if not 0 <= seq < total <= 64:
            return None
        parts = self._parts.get(frame.header("message_id")) or [None] * total
        parts[seq] = frame.payload
        if any(p is None for p in parts):
            self._parts[frame.header("message_id")] = parts
            return None
        self._parts.pop(frame.header("message_id"), None)
        return b"".join(parts)
