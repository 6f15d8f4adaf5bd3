"""The aiohttp application: health, metrics, channel callbacks, the outbox worker."""
from __future__ import annotations

import functools
import gc
import logging
import time

from aiohttp import web
from sqlalchemy import text

from api.routes import api_routes
from bot.channel import ChannelRegistry, build_channels
# The channels, in the order people are reached by them; each registers itself.
from bot.channels import wecom, feishu, dingtalk, playground  # noqa: F401,I001
from escalation import phone  # noqa: F401
from api import webhooks  # noqa: F401  (last: subscriptions are other systems, not people)
from bot.config import Config
from bot.core.directory import Directory
from bot.core.dispatch import unknown_skills
from bot.core.handler import TicketBot
from bot.core.notify import Notifier
from bot.core.service import TicketService
from bot.inbound import guard
from bot.metrics import Metrics
from bot.inbox import InboxWorker
from bot.outbox import OutboxWorker
from bot.tasks import BackgroundTasks
from escalation.engine import EscalationEngine
from escalation.jobs import Jobs
from escalation.voice import VoiceWebhook
from nlp import Classifier, SopLibrary
from storage.db import Database

log = logging.getLogger(__name__)


# How long the workers get to finish the event or delivery pass they are in
# before they are cancelled at shutdown (a delivery pass is bounded by the
# platforms' HTTP timeouts).
WORKER_GRACE_S = 4.0


class Runtime:
    """Everything one bot process holds, wired once."""

    def __init__(self, config: Config, db: Database | None = None):
        self.config = config
        self.db = db or Database(config.database_url)
        self.metrics = Metrics()
        classifier = Classifier.from_file(config.nlp.taxonomy) if config.nlp.taxonomy else Classifier.default()
        sops = SopLibrary.from_file(config.nlp.sop) if config.nlp.sop else SopLibrary.default()
        self.channels = ChannelRegistry()
        # The channel list is known before the channels exist: the directory needs
        # the names, the channels need the bot as their sink.
        self.directory = Directory(config, [])
        self.service = TicketService(config, self.directory, classifier)
        for key in unknown_skills(config, set(classifier.taxonomy.categories)):
            log.warning("%s is not a category id of the taxonomy: dispatch never matches it", key)
        self.notifier = Notifier(config, self.directory, self.service, sops)
        self.escalation = EscalationEngine(config, self.db, self.directory, self.service, self.notifier,
                                           self.metrics, on_commit=self._wake_outbox, jobs=Jobs)
        # Dispatch weighs who is on call now (the escalation engine's schedule).
        self.service.dispatcher.oncall = self._on_call
        self.bot = TicketBot(config, self.db, self.directory, self.service, self.notifier, self.metrics,
                             on_commit=self._wake_outbox, escalation=self.escalation)
        for channel in build_channels(config, self.bot, self.db):
            self.channels.add(channel)
        self.directory.channels = self.channels.names()
        self.outbox = OutboxWorker(self.db, self.channels, config.outbox, self.metrics)
        self.inbox = InboxWorker(self.db, self.bot, self.metrics)
        self.bot.on_accept = self.inbox.wake
        self.outbox.yield_to = self.bot.yield_to_callbacks
        for channel in self.channels:
            channel.wake_outbox = self.outbox.wake
            channel.count = functools.partial(self.count_inbound, channel.name)
        self.tasks = BackgroundTasks("runtime")

    def _on_call(self, team_id: str, at) -> str | None:
        now = self.escalation.oncall.who(team_id, at)
        return now.person_id if now is not None else None

    def _wake_outbox(self) -> None:
        self.outbox.wake()

    def count_inbound(self, platform: str, result: str) -> None:
        """/metrics: an inbound event's fate when it did not reach the core (rejected, ignored)."""
        self.metrics.inbound.labels(platform, result).inc()

    async def start(self, *, workers: bool = True) -> None:
        await self.db.init()
        await self.directory.sync(self.db)
        for channel in self.channels:
            await channel.start()
        # The classifier's dictionaries are millions of long-lived objects: keep the
        # garbage collector from walking them on every full collection (pauses of
        # tens of milliseconds in the middle of answering callbacks).
        gc.collect()
        gc.freeze()
        # With workers, messages are answered once recorded and applied by the
        # inbox worker; without (tests), the sink applies them before answering.
        self.bot.defer_inbound = workers
        if workers:
            self.tasks.spawn(self.inbox.run(), "inbox")
            self.tasks.spawn(self.outbox.run(), "outbox")
            await self.escalation.start()

    async def stop(self) -> None:
        """Stop the workers and channels and close the database, each within a bound.

        An event or message being worked on when its worker is cancelled stays in
        its table: its transaction rolls back (or its lease runs out) and it is
        taken again after a restart. Calling stop twice is harmless.
        """
        await self.escalation.stop()
        self.inbox.stop_soon()
        self.outbox.stop_soon()
        if not await self.tasks.wait(timeout=WORKER_GRACE_S):
            await self.tasks.stop(timeout=2.0)
        for channel in self.channels:
            await channel.close()
        await self.db.dispose()


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
    rt = request.app[RUNTIME]
    try:
        async with rt.db.session() as s:
            await s.exec(text("SELECT 1"))
    except Exception as e:  # the database is what a health check is for
        return web.json_response({"status": "error", "database": str(e)}, status=503)
    body: dict = {"status": "ok", "channels": rt.channels.names()}
    states = {ch.name: h for ch in rt.channels if (h := ch.health()) is not None}
    if states:
        body["channel_state"] = states  # e.g. a stream connection: up, connecting, down
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    await rt.outbox.update_gauges()
    return web.Response(body=rt.metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def create_app(config: Config, *, db: Database | None = None, workers: bool = True) -> web.Application:
    """The bot as an aiohttp app; `workers=False` leaves delivery to `outbox.drain()` (tests)."""
    runtime = Runtime(config, db)
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
    app.router.add_routes(api_routes(runtime))

    async def on_startup(_app: web.Application) -> None:
        await runtime.start(workers=workers)

    async def on_cleanup(_app: web.Application) -> None:
        await runtime.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
