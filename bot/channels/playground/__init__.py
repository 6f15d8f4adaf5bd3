"""The playground page: a customer chat, an engineers' group and a lead's chat in one browser tab."""
from bot.channels.playground.adapter import PlaygroundChannel  # noqa: F401
