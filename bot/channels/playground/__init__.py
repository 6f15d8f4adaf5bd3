"""The playground (a customer chat, an engineers' group and a lead's chat in one browser tab):
one package, the same files for the same roles as every channel.

* adapter.py - the channel: its chat panes and who may speak, sending as message rows the page fetches
* routes.py - the page, its files and its small JSON API: what people type into neutral events
* model.py - what the channel and its page share: chat panes, conversation keys, rows as JSON
* render.py - neutral cards and texts as HTML fragments
* static/ - the page itself

No crypto, state or stream: the page is served by the bot itself.

Importing the package registers the channel (`bot.channel.register`).
"""
from bot.channels.playground.adapter import PlaygroundChannel  # noqa: F401
