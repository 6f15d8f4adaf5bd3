"""The playground page: a customer chat, an engineers' group and a lead's chat in one browser tab."""
from bot.playground.routes import playground_routes

__all__ = ["playground_routes"]
