"""WeCom (企业微信): the adapter, its API client, callback crypto and card renderer.

Importing the package registers the channel (`bot.channel.register`).
"""
from bot.channels.wecom.adapter import WeComChannel  # noqa: F401
