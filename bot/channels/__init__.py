"""Channel adapters, one module per IM platform, plus the playground.

Each registers itself with `bot.channel.register` when imported; bot/app.py imports them.
"""
