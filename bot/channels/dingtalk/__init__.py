"""DingTalk (钉钉): one package, the same files for the same roles as every channel.

* adapter.py - the channel: its routes, inbound requests into neutral events, sending
* api.py - the platform's HTTP API client (robot and card OpenAPI, sessionWebhooks)
* crypto.py - callback signatures and event-subscription encryption
* render.py - neutral cards as interactive-card data or markdown
* state.py - what is kept between callbacks: sessionWebhooks, address-book sync rows
* stream.py - Stream mode: the endpoint request and frame handling (the connection: shared/stream.py)

Importing the package registers the channel (`bot.channel.register`).
"""
from bot.channels.dingtalk.adapter import DingTalkChannel  # noqa: F401
