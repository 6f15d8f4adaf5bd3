"""One bot process wired from its parts: the channels, the ticket core, escalation, reports, the console."""
from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import time
from collections.abc import Iterable

from bot.channel import ChannelRegistry, build_channels
# The channels, in the order people are reached by them; each registers itself.
from bot.channels import wecom, feishu, dingtalk, playground  # noqa: F401,I001
from escalation import phone  # noqa: F401
from api import webhooks  # noqa: F401  (last: subscriptions are other systems, not people)
from bot.config import Config, worker_roles
from bot.core.directory import Directory
from bot.core.dispatch import unknown_skills
from bot.core.handler import TicketBot
from bot.core.notify import Notifier
from bot.core.service import TicketService
from bot.heartbeat import STALE_AFTER, Heartbeat
from bot.inbox import InboxWorker
from bot.metrics import Metrics
from bot.outbox import OutboxWorker, process_identity
from bot.tasks import BackgroundTasks
from bot.wakeup import INBOX_CHANNEL, OUTBOX_CHANNEL, Poker, listen
from console.links import Links
from console.routes import Console
from escalation.engine import EscalationEngine
from escalation.jobs import Jobs
from escalation.receipt_queue import AliyunReceiptQueue
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
        for channel in build_channels(config, self.bot, self.db, self.directory):
            self.channels.add(channel)
        self.directory.channels = self.channels.names()
        self.outbox = OutboxWorker(self.db, self.channels, config.outbox, self.metrics, owner=self.owner)
        self.inbox = InboxWorker(self.db, self.bot, self.metrics, directory=self.directory,
                                 poll_interval=config.outbox.poll_interval.total_seconds())
        self.heartbeat = Heartbeat(self.db, self.owner)
        # An accepted event wakes this process's inbox worker and, on PostgreSQL, those of
        # other processes (a notification after the answering transaction commits).
        self.inbox_poker = Poker(self.db.url, INBOX_CHANNEL) if self.db.is_postgres else None
        self.bot.on_accept = self._accepted
        self.bot.on_picture_applied = self._picture_applied
        self.outbox.yield_to = self.bot.yield_to_callbacks
        # Card work waits for its turn while the inbox has events due to apply (counted in the
        # database: on PostgreSQL, whichever process recorded them; one waiting for a retry
        # is no backlog).
        self.outbox.backlog = self.inbox.due
        for channel in self.channels:
            channel.wake_outbox = self.outbox.wake
            channel.count = functools.partial(self.count_inbound, channel.name)
        self.tasks = BackgroundTasks("runtime")
        self._wakeups: list[asyncio.Task] = []  # LISTEN connections waking this process's workers
        self.roles: tuple[str, ...] = ()  # the workers running in this process (start)

    def _on_call(self, team_id: str, at) -> str | None:
        now = self.escalation.oncall.who(team_id, at)
        return now.person_id if now is not None else None

    def _picture_applied(self, event) -> None:
        channel = self.channels.get(event.platform)
        if channel is not None:
            channel.picture_applied(event)

    def _escalation_pass(self) -> float | None:
        """The escalation worker's last pass: its last sweep; with escalation switched off
        (its scheduler still runs the reports and the retention job), now while it runs."""
        if not self.config.escalation.enabled:
            return time.monotonic() if self.escalation.scheduler is not None else None
        return self.escalation.last_pass

    def _accepted(self) -> None:
        self.inbox.wake()
        if self.inbox_poker is not None:
            self.inbox_poker.poke()

    def _wake_outbox(self) -> None:
        self.outbox.wake()

    def count_inbound(self, platform: str, result: str) -> None:
        """/metrics: an inbound event's fate when it did not reach the core (rejected, ignored)."""
        self.metrics.inbound.labels(platform, result).inc()

    async def start(self, *, workers: bool | Iterable[str] = True, defer_inbound: bool | None = None) -> None:
        """Open everything; `workers` says which workers run in this process: true (all),
        false (none) or some of WORKER_ROLES (the inbox worker, the outbox worker, the
        escalation sweep with the scheduled reports). `defer_inbound` (default: whether any
        run here) answers messages once recorded instead of applying them first."""
        self.roles = tuple(worker_roles(workers))
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
        # With workers, messages are answered once recorded and applied by an inbox
        # worker (here or in another process); without (tests), the sink applies them
        # before answering.
        self.bot.defer_inbound = bool(self.roles) if defer_inbound is None else defer_inbound
        if not self.roles:
            return
        passes = {"inbox": lambda: self.inbox.last_pass, "outbox": lambda: self.outbox.last_pass,
                  "escalation": self._escalation_pass}
        self.heartbeat.workers = {role: passes[role] for role in self.roles}
        # A sweep every `sweep_interval`: a long interval is not a stalled worker.
        self.heartbeat.stale_after["escalation"] = max(STALE_AFTER, 3 * self.config.escalation.sweep_interval)
        self.tasks.spawn(self.heartbeat.run(), "heartbeat")
        if "inbox" in self.roles:
            self.tasks.spawn(self.inbox.run(), "inbox")
            if self.db.is_postgres:  # events recorded by another process wake this inbox
                self._wakeups.append(self.tasks.spawn(
                    listen(self.db.url, INBOX_CHANNEL, self.inbox.wake), "inbox-wakeup"))
        if "outbox" in self.roles:
            self.tasks.spawn(self.outbox.run(), "outbox")
            if self.db.is_postgres:  # messages queued by another process wake this outbox
                self._wakeups.append(self.tasks.spawn(
                    listen(self.db.url, OUTBOX_CHANNEL, self.outbox.wake), "outbox-wakeup"))
        if "escalation" in self.roles:
            await self.escalation.start()
            self.reports.start(self.escalation.scheduler)

    async def stop(self) -> None:
        """Stop the workers and channels and close the database, each within a bound.

        An event or message being worked on when its worker is cancelled stays in
        its table: its transaction rolls back (or its lease runs out) and it is
        taken again after a restart. Calling stop twice is harmless.
        """
        await self.escalation.stop()
        for task in self._wakeups:
            task.cancel()  # they only listen: never waited for
        if self.inbox_poker is not None:
            await self.inbox_poker.close()
        self.inbox.stop_soon()
        self.outbox.stop_soon()
        self.heartbeat.stop_soon()
        if not await self.tasks.wait(timeout=WORKER_GRACE_S):
            await self.tasks.stop(timeout=2.0)
        for channel in self.channels:
            await channel.close()
        await self.db.dispose()
