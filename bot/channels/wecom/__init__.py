"""WeCom (企业微信): the adapter, its API client, callback crypto, card renderer and card-code state.

Importing the package registers the channel (`bot.channel.register`).
"""
from bot.channels.wecom.adapter import WeComChannel  # noqa: F401
