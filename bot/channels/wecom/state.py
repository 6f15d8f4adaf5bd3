"""What the WeCom channel keeps between callbacks: each card's newest click ResponseCode.

A `template_card` can be updated in place only with the ResponseCode of a
click on it, once, within CODE_TTL. The codes are rows (WeComCardCode), so
every process sees the newest and a code is used once across all of them.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.db import Database
from storage.models import WeComCardCode
from storage.types import utcnow

log = logging.getLogger(__name__)

# response_code validity: 72 h in the current documentation, 24 h in older
# copies; the conservative figure, so an update is not wasted on a dead code.
CODE_TTL = timedelta(hours=24)


class CardCodes:
    """Click ResponseCodes per card (task_id): remembered, taken once, given back, pruned."""

    def __init__(self, db: Database):
        self.db = db

    async def remember(self, task_id: str, userid: str, code: str, created: str) -> None:
        """Keep a click's ResponseCode as the card's newest (a re-delivered older click doesn't win)."""
        try:
            at = datetime.fromtimestamp(int(created), timezone.utc)
        except (ValueError, OverflowError, OSError):
            at = utcnow().replace(microsecond=0)
        async with self.db.session(urgent=True) as s:
            table = WeComCardCode.__table__
            values = {"userid": userid, "response_code": code, "issued_at": utcnow(), "clicked_at": at,
                      "click_code": code}
            insert = postgresql.insert if self.db.is_postgres else sqlite.insert
            stmt = insert(WeComCardCode).values(task_id=task_id, **values)
            stmt = stmt.on_conflict_do_update(
                index_elements=["task_id"], set_=values,
                where=(table.c.click_code.is_(None) | (table.c.click_code != code))
                & (table.c.clicked_at.is_(None) | (table.c.clicked_at <= at)),
            )
            await s.exec(stmt)

    async def take(self, task_id: str) -> str | None:
        """The card's unused, unexpired code, marked used (compare-and-set)."""
        async with self.db.session() as s:
            row = await s.get(WeComCardCode, task_id)
            if row is None or not row.response_code or utcnow() - row.issued_at > CODE_TTL:
                return None
            code = row.response_code
            done = await s.exec(update(WeComCardCode)
                                .where(WeComCardCode.task_id == task_id, WeComCardCode.response_code == code)
                                .values(response_code=None))
            return code if done.rowcount == 1 else None

    async def give_back(self, task_id: str, code: str) -> None:
        async with self.db.session() as s:
            await s.exec(update(WeComCardCode)
                         .where(WeComCardCode.task_id == task_id, WeComCardCode.response_code.is_(None))
                         .values(response_code=code))

    async def prune(self) -> None:
        """Forget response codes of cards too old to update (WeCom: 72 h at most)."""
        try:
            async with self.db.session() as s:
                await s.exec(delete(WeComCardCode).where(WeComCardCode.issued_at < utcnow() - timedelta(days=7)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("wecom: pruning old card codes failed")
