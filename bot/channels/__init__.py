"""Channel adapters: one package per IM platform, plus the playground.

Every package has the same files where the roles match: `adapter.py` (the
Channel: verify, decrypt, parse into neutral events; neutral messages into
API calls), `api.py` (the platform's HTTP API client), `crypto.py` (callback
signatures and encryption), `render.py` (neutral cards into the platform's
card format); WeCom adds `state.py` (card response codes), Feishu `frame.py`
(its long-connection frame codec), the playground `model.py`, `routes.py`
and `static/` (its page). `shared/` holds
what the adapters share: access tokens, the platform APIs' HTTP client
(`http.py`), the stream connection, `same()`.

Importing a package registers its channel with `bot.channel.register`;
the composition root (app/runtime.py) imports them.
"""
