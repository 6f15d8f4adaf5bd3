"""DingTalk (钉钉): the adapter, its API client, callback crypto and card renderer.

Importing the package registers the channel (`bot.channel.register`).
"""
from bot.channels.dingtalk.adapter import DingTalkChannel  # noqa: F401
