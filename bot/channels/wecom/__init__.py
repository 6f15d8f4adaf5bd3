"""WeCom (企业微信): one package, the same files for the same roles as every channel.

* adapter.py - the channel: its route, inbound requests into neutral events, sending
* api.py - the platform's HTTP API client (access token, messages, card updates, media)
* crypto.py - callback signatures, AES and safe XML parsing
* render.py - neutral cards as template cards or markdown
* state.py - what is kept between callbacks: each card's newest click ResponseCode

No stream mode: WeCom delivers callbacks to a public URL only.

Importing the package registers the channel (`bot.channel.register`).
"""
from bot.channels.wecom.adapter import WeComChannel  # noqa: F401
