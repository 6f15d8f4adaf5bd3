"""Channel adapters, one module per IM platform, plus the playground."""
from __future__ import annotations

from bot.channel import Channel, EventSink
from bot.config import Config
from storage.db import Database


def build_channels(config: Config, sink: EventSink, db: Database) -> list[Channel]:
    """The channels the config enables, in the order people are reached by them."""
    channels: list[Channel] = []
    if config.wecom is not None:
        from bot.channels.wecom import WeComChannel

        channels.append(WeComChannel(config.wecom, sink, db))
    if config.feishu is not None:
        from bot.channels.feishu import FeishuChannel

        channels.append(FeishuChannel(config.feishu, sink, db))
    if config.dingtalk is not None:
        from bot.channels.dingtalk import DingTalkChannel

        channels.append(DingTalkChannel(config.dingtalk, sink, db))
    if config.playground.enabled:
        from bot.channels.playground import PlaygroundChannel

        channels.append(PlaygroundChannel(sink, db, config.people, teams=config.teams))
    if config.twilio is not None:
        from escalation.phone import TwilioChannel

        channels.append(TwilioChannel(config.twilio, sink, db, config.server.public_url))
    from api.webhooks import WebhookChannel  # always: subscriptions are made at run time

    channels.append(WebhookChannel(config.webhooks, sink, db))
    return channels
