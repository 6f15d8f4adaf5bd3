"""Feishu (飞书): one package, the same files for the same roles as every channel.

* adapter.py - the channel: its route, inbound requests into neutral events, sending
* api.py - the platform's HTTP API client (messages, cards, images, bot info)
* crypto.py - request signatures and encrypted bodies
* render.py - neutral cards as message-card JSON
* state.py - what is kept between callbacks: the card clicks being answered
* stream.py - the long connection: the endpoint request and frame handling (the connection: shared/stream.py)
* frame.py - the long connection's frame codec (pbbp2), used by stream.py

Importing the package registers the channel (`bot.channel.register`).
"""
from bot.channels.feishu.adapter import FeishuChannel  # noqa: F401
