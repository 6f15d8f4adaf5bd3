"""The aiohttp application: health, metrics, channel callbacks, the outbox worker."""
from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import time

from aiohttp import web

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
from bot.heartbeat import Heartbeat
from bot.inbound import guard
from bot.inbox import InboxWorker
from bot.metrics import Metrics
from bot.outbox import OutboxWorker, process_identity
from bot.tasks import BackgroundTasks
from bot.wakeup import INBOX_CHANNEL, listen
from console.links import Links
from console.routes import Console
from escalation.engine import EscalationEngine
from escalation.jobs import Jobs
from escalation.receipt_queue import AliyunReceiptQueue
from escalation.receipts import Receipts
from escalation.voice import VoiceWebhook
from nlp import Classifier, SopLibrary
from reports.chat import ReportChat
from reports.jobs import ReportJobs
from storage.db import Database

log = logging.getLogger(__name__)


# How long the workers get to finish the event or delivery pass they are in
# before they are cancelled at shutdown (a delivery pass is bounded by the
# platforms' HTTP timeouts).
WORKER_GRACE_S = 4.0


class Runtime:
    """Everything one bot process holds, wired once."""

    def __init__(self, config: Config, db: Database | None = None, *, owner: str | None = None):
        self.config = config
        # This process's identity for outbox leases: stable across restarts of one slot.
        self.owner = owner or process_identity(f"{os.getpid()}-{id(self):x}")
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
                                           self.metrics, on_commit=self._wake_outbox, jobs=Jobs,
                                           receipt_queue=AliyunReceiptQueue)
        self.reports = ReportJobs(config, self.directory, self.escalation, on_commit=self._wake_outbox)
        # Dispatch weighs who is on call now (the escalation engine's schedule).
        self.service.dispatcher.oncall = self._on_call
        self.bot = TicketBot(config, self.db, self.directory, self.service, self.notifier, self.metrics,
                             on_commit=self._wake_outbox, escalation=self.escalation)
        # Signed links to the console (看板) and to each ticket's tracking page (receipts).
        self.links = Links(config.server.public_url, clock=lambda: self.service.clock(),
                           secret=config.reports.link_secret)
        self.notifier.tracking_link = lambda ticket: self.links.tracking_url(ticket.number, config.reports.tracking_ttl)
        self.bot.reports = ReportChat(config, self.service,
                                      console_link=lambda p: self.links.console_url(p.id, config.reports.link_ttl))
        self.console = Console(config, self.db, self.links, self.service, self.notifier)
        for channel in build_channels(config, self.bot, self.db):
            self.channels.add(channel)
        self.directory.channels = self.channels.names()
        self.outbox = OutboxWorker(self.db, self.channels, config.outbox, self.metrics, owner=self.owner)
        self.inbox = InboxWorker(self.db, self.bot, self.metrics, directory=self.directory,
                                 poll_interval=config.outbox.poll_interval.total_seconds())
        self.heartbeat = Heartbeat(self.db, self.owner)
        self.bot.on_accept = self.inbox.wake
        self.outbox.yield_to = self.bot.yield_to_callbacks
        for channel in self.channels:
            channel.wake_outbox = self.outbox.wake
            channel.count = functools.partial(self.count_inbound, channel.name)
        self.tasks = BackgroundTasks("runtime")
        self._wakeup: asyncio.Task | None = None

    def _on_call(self, team_id: str, at) -> str | None:
        now = self.escalation.oncall.who(team_id, at)
        return now.person_id if now is not None else None

    def _wake_outbox(self) -> None:
        self.outbox.wake()

    def count_inbound(self, platform: str, result: str) -> None:
        """/metrics: an inbound event's fate when it did not reach the core (rejected, ignored)."""
        self.metrics.inbound.labels(platform, result).inc()

    async def start(self, *, workers: bool = True, defer_inbound: bool | None = None) -> None:
        """Open everything; `workers` runs the inbox and outbox workers and the escalation
        sweep in this process, `defer_inbound` (default: same as `workers`) answers
        messages once recorded instead of applying them first."""
        await self.db.init()
        await self.links.load(self.db)
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
        self.bot.defer_inbound = workers if defer_inbound is None else defer_inbound
        if workers:
            self.heartbeat.workers = {"inbox": lambda: self.inbox.last_pass,
                                      "outbox": lambda: self.outbox.last_pass}
            self.tasks.spawn(self.heartbeat.run(), "heartbeat")
            self.tasks.spawn(self.inbox.run(), "inbox")
            if self.db.is_postgres:  # events recorded by another process wake this inbox
                self._wakeup = self.tasks.spawn(listen(self.config.database_url, INBOX_CHANNEL, self.inbox.wake),
                                                "inbox-wakeup")
            self.tasks.spawn(self.outbox.run(), "outbox")
            await self.escalation.start()
            self.reports.start(self.escalation.scheduler)

    async def stop(self) -> None:
        """Stop the workers and channels and close the database, each within a bound.

        An event or message being worked on when its worker is cancelled stays in
        its table: its transaction rolls back (or its lease runs out) and it is
        taken again after a restart. Calling stop twice is harmless.
        """
        await self.escalation.stop()
        if self._wakeup is not None:
            self._wakeup.cancel()  # it only listens: never waited for
        self.inbox.stop_soon()
        self.outbox.stop_soon()
        self.heartbeat.stop_soon()
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
        if not rt.config.server.workers:
            remote = await rt.heartbeat.remote_workers()
            body["worker_processes"] = remote
            if not any(w["alive"] for w in remote.values()):
                reasons.append("no worker process is running (python run_bot.py worker)")
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
        await runtime.start(workers=workers and config.server.workers, defer_inbound=workers)

    async def on_cleanup(_app: web.Application) -> None:
        await runtime.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
