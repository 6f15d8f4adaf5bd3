"""What the DingTalk channel keeps between callbacks: robot sessionWebhooks and address-book sync rows.

* `SessionWebhooks`: each conversation's latest sessionWebhook (the cheap way
  to answer while it is valid), in memory for this process and in the
  `dingtalk_session` table, written in small batches after the callback was
  answered, so the answer does not wait for an extra write; another process
  falls back to the OpenAPI until its own copy is written.
* `DirectorySync`: address-book events. A user who leaves is deactivated at
  once (one row update); a user who joins or changes is queued in
  `dingtalk_user_sync` and their name is fetched from `/topapi/v2/user/get`
  after the answer, by a background loop, with back-off on failures.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import select

from bot.channel import DeliveryError
from bot.channels.dingtalk.api import DingTalkAPI
from bot.core.directory import Directory
from bot.events import Address
from bot.inbound import text as _str
from storage.db import Database
from storage.models import DingTalkSession, DingTalkUserSync
from storage.types import utcnow

log = logging.getLogger(__name__)

# Don't use a sessionWebhook this close to its expiry.
SESSION_MARGIN_SECONDS = 60
# How long a conversation found without a sessionWebhook is not looked up again.
SESSION_MISS_SECONDS = 10.0
# Pending sessionWebhooks are written at most this often (one transaction each time).
SESSION_FLUSH_CHUNK = 200  # rows per statement
SESSION_FLUSH_SECONDS = 0.5
# Address-book events: wait this long for a burst to finish before fetching details.
SYNC_DELAY_SECONDS = 1.0
SYNC_MAX_ATTEMPTS = 10


class SessionWebhooks:
    """Robot sessionWebhooks per conversation: remembered, looked up, forgotten, saved in batches."""

    def __init__(self, db: Database, api: DingTalkAPI, clock: Callable[[], float]):
        self.db = db
        self.api = api
        # Seconds since the epoch (the channel's clock, which tests pin).
        self.clock = clock
        # (to_kind, to_id) -> (webhook, expires at, epoch seconds)
        self._sessions: dict[tuple[str, str], tuple[str, float]] = {}
        self._unsaved: dict[tuple[str, str], tuple[str, float]] = {}
        # Conversations found without a session in the database, until when (epoch s):
        # spares the outbox a read per message to a group nobody wrote in lately.
        self._misses: dict[tuple[str, str], float] = {}
        self._wake: asyncio.Event | None = None

    def remember(self, to: Address, msg: dict) -> None:
        url = msg.get("sessionWebhook")
        expires = msg.get("sessionWebhookExpiredTime")
        if not isinstance(url, str) or not url or not isinstance(expires, (int, float)) or isinstance(expires, bool):
            return
        if not self.api.session_allowed(url):
            self.api.log_once("session_host", "dingtalk: ignoring sessionWebhooks on an unexpected host (%s): "
                              "replies go through the OpenAPI; set [dingtalk] oapi_base if DingTalk moved", url[:60])
            return
        key = (to.kind, to.id)
        value = (url, float(expires) / 1000)
        if self._sessions.get(key) == value:
            return
        self._sessions[key] = value
        self._unsaved[key] = value
        self._misses.pop(key, None)
        if self._wake is not None:
            self._wake.set()

    def start(self) -> asyncio.Task:
        """The background task that writes what `remember` kept, shortly after it came."""
        self._wake = asyncio.Event()
        return asyncio.create_task(self._run(), name="dingtalk-sessions")

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(SESSION_FLUSH_SECONDS)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dingtalk: saving sessionWebhooks failed")

    async def flush(self) -> None:
        """Write the sessionWebhooks received since the last flush."""
        if not self._unsaved:
            return
        batch, self._unsaved = self._unsaved, {}
        now = utcnow()
        dialect = postgresql if self.db.is_postgres else sqlite
        rows = [dict(to_kind=kind, to_id=ident, webhook=url, updated_at=now,
                     expires_at=datetime.fromtimestamp(expires, timezone.utc))
                for (kind, ident), (url, expires) in batch.items()]
        try:
            # One statement per chunk, one short transaction each: callbacks waiting
            # for the database get their turn between chunks.
            for i in range(0, len(rows), SESSION_FLUSH_CHUNK):
                stmt = dialect.insert(DingTalkSession).values(rows[i:i + SESSION_FLUSH_CHUNK])
                stmt = stmt.on_conflict_do_update(
                    index_elements=["to_kind", "to_id"],
                    set_={c: stmt.excluded[c] for c in ("webhook", "expires_at", "updated_at")})
                async with self.db.session() as s:
                    await s.exec(stmt)
        except Exception:
            for key, value in batch.items():
                self._unsaved.setdefault(key, value)
            raise
        # Forget expired sessions kept in memory.
        limit = self.clock()
        for key in [k for k, (_, exp) in self._sessions.items() if exp < limit]:
            self._sessions.pop(key, None)
        for key in [k for k, until in self._misses.items() if until < limit]:
            self._misses.pop(key, None)

    async def get(self, to: Address) -> str | None:
        """The conversation's sessionWebhook if it is still valid."""
        key = (to.kind, to.id)
        hit = self._sessions.get(key)
        if hit is None and self._misses.get(key, 0) < self.clock():
            async with self.db.session() as s:
                row = await s.get(DingTalkSession, key)
            if row is not None:
                hit = (row.webhook, row.expires_at.timestamp())
                self._sessions[key] = hit
            else:
                self._misses[key] = self.clock() + SESSION_MISS_SECONDS
        if hit and hit[1] - SESSION_MARGIN_SECONDS > self.clock():
            return hit[0]
        return None

    async def forget(self, to: Address, url: str) -> None:
        """Drop a sessionWebhook DingTalk said is gone (unless a newer one replaced it)."""
        key = (to.kind, to.id)
        if self._sessions.get(key, ("",))[0] == url:
            self._sessions.pop(key, None)
        self._unsaved.pop(key, None)
        async with self.db.session() as s:
            row = await s.get(DingTalkSession, key)
            if row is not None and row.webhook == url:
                await s.delete(row)


class DirectorySync:
    """Address-book events into the directory: leaves at once, joins and changes fetched after the answer."""

    def __init__(self, db: Database, api: DingTalkAPI, directory: Directory | None, channel: str):
        self.db = db
        self.api = api
        # Address-book events (join, change, leave) are the directory's to apply.
        self.directory = directory
        self.channel = channel
        self._wake: asyncio.Event | None = None

    async def record(self, etype: str, user_ids: list[str]) -> None:
        """Apply a leave now; queue a join/change to fetch the member's name after the answer."""
        if not user_ids:
            return
        now = utcnow()
        dialect = postgresql if self.db.is_postgres else sqlite
        async with self.db.session() as s:
            for uid in user_ids[:1000]:
                if etype == "user_leave_org":
                    await self._deactivate(s, uid)
                    row = await s.get(DingTalkUserSync, uid)
                    if row is not None:
                        await s.delete(row)
                    continue
                values = dict(event_type=etype, received_at=now, next_attempt_at=now, attempts=0, last_error=None)
                stmt = dialect.insert(DingTalkUserSync).values(user_id=uid, **values)
                await s.exec(stmt.on_conflict_do_update(index_elements=["user_id"], set_=values))
        if self._wake is not None and etype != "user_leave_org":
            self._wake.set()

    async def _deactivate(self, s, uid: str) -> None:
        person = await self.directory.member_changed(s, self.channel, uid, left=True)
        if person is not None:
            log.info("dingtalk: %s (%s) left the organisation: deactivated", person.id, uid)

    def start(self) -> asyncio.Task:
        """The background task that fetches queued members shortly after their event, and retries when due."""
        self._wake = asyncio.Event()
        return asyncio.create_task(self._run(), name="dingtalk-directory")

    async def _run(self) -> None:
        assert self._wake is not None
        self._wake.set()  # rows left over from before a restart
        while True:
            await self._wake.wait()
            await asyncio.sleep(SYNC_DELAY_SECONDS)
            self._wake.clear()
            try:
                while await self.sync():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dingtalk: address-book sync failed")
            # Rows waiting for a retry: look again when the next one is due.
            due = await self._next_due()
            if due is not None:
                delay = max(1.0, (due - utcnow()).total_seconds())
                asyncio.get_running_loop().call_later(delay, self._wake.set)

    async def _next_due(self) -> datetime | None:
        async with self.db.session() as s:
            row = (await s.exec(select(DingTalkUserSync).order_by(DingTalkUserSync.next_attempt_at).limit(1))).first()
        return row.next_attempt_at if row else None

    async def sync(self, limit: int = 50) -> int:
        """Fetch the details of members queued by address-book events; the number handled."""
        async with self.db.session() as s:
            rows = (await s.exec(select(DingTalkUserSync)
                                 .where(DingTalkUserSync.next_attempt_at <= utcnow())
                                 .order_by(DingTalkUserSync.next_attempt_at).limit(limit))).all()
        handled = 0
        for row in rows:
            try:
                info = await self.api.get_user(row.user_id)
            except DeliveryError as e:
                await self._failed(row, e)
                continue
            async with self.db.session() as s:
                current = await s.get(DingTalkUserSync, row.user_id)
                if current is None:
                    continue  # they left meanwhile
                if info is None:
                    await self._deactivate(s, row.user_id)
                else:
                    await self._apply_user(s, row.user_id, info)
                if current.received_at == row.received_at:
                    await s.delete(current)
            handled += 1
        return handled

    async def _failed(self, row: DingTalkUserSync, error: DeliveryError) -> None:
        attempts = row.attempts + 1
        async with self.db.session() as s:
            current = await s.get(DingTalkUserSync, row.user_id)
            if current is None:
                return
            if attempts >= SYNC_MAX_ATTEMPTS or not error.retryable:
                log.error("dingtalk: giving up fetching member %s after %d attempt(s): %s",
                          row.user_id, attempts, error)
                await s.delete(current)
                return
            delay = min(3600.0, 30.0 * 2 ** (attempts - 1))
            if error.retry_after:
                delay = max(delay, error.retry_after)
            current.attempts = attempts
            current.last_error = str(error)[:500]
            current.next_attempt_at = utcnow() + timedelta(seconds=delay)
            s.add(current)

    async def _apply_user(self, s, uid: str, info: dict) -> None:
        await self.directory.member_changed(s, self.channel, uid, name=_str(info.get("name")),
                                            phone=_str(info.get("mobile")).strip() or None)
