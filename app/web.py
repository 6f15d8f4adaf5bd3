"""The aiohttp application: health, metrics, channel callbacks, the API and the console, over one Runtime."""
from __future__ import annotations

import time

from aiohttp import web

from api.routes import api_routes
from app.runtime import Runtime
from bot.config import WORKER_ROLES, Config
from bot.inbound import guard
from escalation.receipts import Receipts
from escalation.voice import VoiceWebhook
from storage.db import Database


RUNTIME = web.AppKey("runtime", Runtime)


@web.middleware
async def _timing(request: web.Request, handler):
    start = time.perf_counter()
    try:
        return await handler(request)
    finally:
        if request.path.startswith("/callbacks/"):
            platform = request.path.split("/")[2] or "unknown"
            request.app[RUNTIME].metrics.callback_seconds.labels(platform).observe(time.perf_counter() - start)


async def healthz(request: web.Request) -> web.Response:
    """200 when the database accepts a write and every worker passed recently; 503 with the reasons.

    A channel whose API is down is shown (`channels`), not a 503: the bot itself is fine.
    """
    rt = request.app[RUNTIME]
    reasons: list[str] = []
    body: dict = {"channels": rt.outbox.channel_states()}
    try:
        await rt.heartbeat.beat()
    except Exception as e:  # the database is what a health check is for
        reasons.append(f"the database does not accept writes: {type(e).__name__}: {e}"[:300])
    else:
        reasons += rt.heartbeat.stale_workers()
        body["workers"] = {k: v.isoformat() if v else None for k, v in rt.heartbeat.passes().items()}
        elsewhere = [role for role in WORKER_ROLES if role not in rt.config.server.workers]
        if elsewhere:  # run by worker processes: their heartbeat rows say which run
            remote = await rt.heartbeat.remote_workers()
            body["worker_processes"] = remote
            for role in elsewhere:
                if not any(w["alive"] and role in (w["passes"] or {}) for w in remote.values()):
                    reasons.append(f"no worker process runs the {role} worker "
                                   f"(python run_bot.py worker --roles {role})")
    streams = {ch.name: h for ch in rt.channels if (h := ch.health()) is not None}
    if streams:
        body["channel_state"] = streams  # a stream connection: up, connecting, down
    body["status"] = "error" if reasons else "ok"
    if reasons:
        body["reasons"] = reasons
    return web.json_response(body, status=503 if reasons else 200)


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    await rt.outbox.update_gauges()
    return web.Response(body=rt.metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def create_app(config: Config, *, db: Database | None = None, workers: bool = True,
               owner: str | None = None) -> web.Application:
    """The bot as an aiohttp app; `workers=False` leaves delivery to `outbox.drain()` (tests).

    With `[server] workers = false` the app records and answers only; worker
    processes (`python run_bot.py worker`) apply and deliver.
    """
    runtime = Runtime(config, db, owner=owner)
    server = config.server
    body_guard = guard(server.max_body_bytes, server.body_timeout.total_seconds(), runtime.count_inbound)
    app = web.Application(client_max_size=server.max_body_bytes, middlewares=[_timing, body_guard])
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    for channel in runtime.channels:
        app.router.add_routes(channel.routes())
    if config.twilio is not None:
        app.router.add_routes(VoiceWebhook(runtime.escalation).routes())
    if config.aliyun is not None or config.tencent is not None:
        app.router.add_routes(Receipts(runtime.escalation).routes())
    app.router.add_routes(runtime.console.routes())
    app.router.add_routes(api_routes(runtime))

    async def on_startup(_app: web.Application) -> None:
        await runtime.start(workers=config.server.workers if workers else (), defer_inbound=workers)
        await runtime.db.warm()  # the answers to a burst's first callbacks do not wait for connections

    async def on_cleanup(_app: web.Application) -> None:
        await runtime.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
