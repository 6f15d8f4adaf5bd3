"""DingTalk Stream mode: the endpoint request and the frames, over the shared stream link.

The app asks `POST /v1.0/gateway/connections/open` for a WebSocket endpoint
and a one-time ticket, subscribed to robot messages and card callbacks;
`bot/channels/shared/stream.py` keeps the connection. Each pushed frame is
answered on it: SYSTEM frames (ping, disconnect) at once, a robot message once
it is in the inbox, a card click with the card's update.
"""
from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable
from urllib.parse import quote_plus

from bot.channels.shared.stream import EndpointError, StreamLink
from bot.config import DingTalkConfig
from bot.inbound import Refusal, json_object, text as _str

log = logging.getLogger(__name__)

# The topics subscribed on the outbound connection.
STREAM_ROBOT = "/v1.0/im/bot/messages/get"
STREAM_CARD = "/v1.0/card/instances/callback"
STREAM_TOPICS = (STREAM_ROBOT, STREAM_CARD)


class DingTalkStream:
    """The platform half of DingTalk's stream connection; `link` is the connection itself.

    `robot_message(data)` returns once the message is recorded;
    `card_click(data, click_id)` returns the answer that updates the card.
    """

    def __init__(self, config: DingTalkConfig, robot_message: Callable[[dict], Awaitable[None]],
                 card_click: Callable[[dict, str], Awaitable[dict]]):
        self.config = config
        self.robot_message = robot_message
        self.card_click = card_click
        self.link = StreamLink("dingtalk", self._endpoint, self._on_frame)


    async def _endpoint(self, session) -> str:
        """POST /v1.0/gateway/connections/open: the WebSocket endpoint and its one-time ticket."""
        body = {"clientId": self.config.app_key, "clientSecret": self.config.app_secret, "ua": "relaydesk",
                "localIp": "", "subscriptions": [{"type": "CALLBACK", "topic": t} for t in STREAM_TOPICS]}
        async with session.post(f"{self.config.api_base}/v1.0/gateway/connections/open", json=body) as r:
            text = await r.text()
            if r.status != 200:
                raise EndpointError(f"gateway/connections/open answered {r.status}: {text[:200]}")
        doc = json_object(text, "the gateway's answer")
        endpoint, ticket = _str(doc.get("endpoint")), _str(doc.get("ticket"))
        if not endpoint or not ticket:
            raise EndpointError("gateway/connections/open gave no endpoint or ticket")
        return f"{endpoint}?ticket={quote_plus(ticket)}"

    async def _on_frame(self, raw, answer) -> None:
        """One frame: SYSTEM (ping, disconnect) answered at once; a robot message answered once it
        is in the inbox; a card click answered with the card's update."""
        try:
            frame = json_object(raw, "the frame")
        except Refusal as r:
            log.warning("dingtalk stream: %s; frame ignored", r.reason)
            return
        headers = frame.get("headers") if isinstance(frame.get("headers"), dict) else {}
        message_id, topic = _str(headers.get("messageId")), _str(headers.get("topic"))
        kind, data = frame.get("type"), _str(frame.get("data"))
        try:
            if kind == "SYSTEM":
                if topic == "disconnect":
                    log.info("dingtalk stream: the gateway asks to reconnect")
                await answer(_ack(message_id, data=data))
            elif kind != "CALLBACK":
                await answer(_ack(message_id, data=data))  # events: RelayDesk subscribes to none
            elif topic == STREAM_ROBOT:
                await self.robot_message(json_object(data, "the frame's data"))
                await answer(_ack(message_id, data=json.dumps({"response": None})))
            elif topic == STREAM_CARD:
                response = await self.card_click(json_object(data, "the frame's data"), f"stream:{message_id}")
                await answer(_ack(message_id, data=json.dumps({"response": response}, ensure_ascii=False)))
            else:
                await answer(_ack(message_id, code=404, message=f"topic {topic} not subscribed"))
        except Refusal as r:
            # A frame that can never succeed: said so, so that the gateway does not redeliver it forever.
            log.warning("dingtalk stream: frame %s refused: %s", message_id, r.reason)
            await answer(_ack(message_id, code=400, message=r.reason))


def _ack(message_id: str, *, code: int = 200, message: str = "OK", data: str = "") -> str:
    """The answer frame the DingTalk gateway expects for a pushed frame."""
    return json.dumps({"code": code, "headers": {"contentType": "application/json", "messageId": message_id},
                       "message": message, "data": data}, ensure_ascii=False)
