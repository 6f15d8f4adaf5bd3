"""Feishu (飞书): the adapter, its API client, event crypto, long-connection frame codec and card renderer.

Importing the package registers the channel (`bot.channel.register`).
"""
from bot.channels.feishu.adapter import FeishuChannel  # noqa: F401
