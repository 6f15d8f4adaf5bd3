"""Pruning of finished bookkeeping rows, so the tables that grow with traffic stay bounded.

Every kind below grows by a row per message, event, click or call and is useless
once finished and old. `prune` deletes, per kind, rows older than the configured
number of days (`[retention]`, 0 = keep for ever) in batches of at most `batch`
rows, each batch its own short transaction, so a large backlog never holds a
lock for long and callbacks get their turns in between. It never deletes a row
that is still needed:

- outbox: only `sent`, `superseded` and `folded` rows (never pending, sending or
  failed). A card row is how later updates find where the card went (and how a
  DingTalk click finds its card), so card rows of a ticket stay while the ticket
  is live and until it has been closed or cancelled for the same number of days;
- inbox_event: only `done` events (pending and dead letters stay);
- processed_event: the platforms' retries stop at these marks; platforms retry
  for hours at most, so the default week is far outside their window;
- card_action: the button tokens of tickets closed or cancelled that long ago
  (a click on such an old card is then answered as an expired button);
- phone_call: calls older than that (the throttles count minutes to a day);
- api_idempotency: an Idempotency-Key is remembered this long (docs/api.md);
- process_heartbeat: process slots that have not beaten for that long;
- periodic_job: rows of jobs not started for that long (the per-day report
  rows; a job that runs regularly restarts its row every interval).

Tickets, their events and attachments are the service record and are never pruned.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable, Iterable

from sqlalchemy import and_, delete, or_, select, tuple_

from storage.integration import ApiIdempotency
from storage.models import (CardAction, InboxEvent, OutboxMessage, PeriodicJob, PhoneCall, ProcessedEvent,
                            ProcessHeartbeat, Ticket)

if TYPE_CHECKING:  # pragma: no cover
    from storage.db import Database

log = logging.getLogger(__name__)

# Outbox and inbox states that are final and need nothing more (bot/outbox.py, bot/inbox.py).
OUTBOX_FINISHED = ("sent", "superseded", "folded")
INBOX_FINISHED = "done"
# A run stops after this many batches per kind; the next run carries on.
MAX_BATCHES = 100


@dataclass(frozen=True)
class Kind:
    """One prunable kind: its table's key columns and which of its rows are old enough to go."""

    name: str  # also the `[retention] <name>_days` key
    model: type
    key: tuple[str, ...]
    where: Callable[[datetime, frozenset[str]], object]  # (cutoff, terminal ticket states) -> condition


def _closed_tickets(cutoff: datetime, terminal: frozenset[str]):
    """Ids of tickets closed or cancelled before `cutoff` (no change since)."""
    return select(Ticket.id).where(Ticket.state.in_(terminal), Ticket.updated_at < cutoff)


def _outbox(cutoff: datetime, terminal: frozenset[str]):
    # next_attempt_at of a finished row is when it was last taken (about when it was
    # sent or set aside): the (status, next_attempt_at) index serves this query.
    return and_(OutboxMessage.status.in_(OUTBOX_FINISHED), OutboxMessage.next_attempt_at < cutoff,
                or_(OutboxMessage.track_key.is_(None), OutboxMessage.ticket_id.is_(None),
                    OutboxMessage.ticket_id.in_(_closed_tickets(cutoff, terminal))))


KINDS: tuple[Kind, ...] = (
    Kind("outbox", OutboxMessage, ("id",), _outbox),
    Kind("inbox", InboxEvent, ("id",),
         lambda cutoff, _t: and_(InboxEvent.status == INBOX_FINISHED, InboxEvent.processed_at < cutoff)),
    Kind("processed_event", ProcessedEvent, ("platform", "event_id"),
         lambda cutoff, _t: ProcessedEvent.received_at < cutoff),
    Kind("card_action", CardAction, ("token",),
         lambda cutoff, terminal: CardAction.ticket_id.in_(_closed_tickets(cutoff, terminal))),
    Kind("phone_call", PhoneCall, ("id",), lambda cutoff, _t: PhoneCall.created_at < cutoff),
    Kind("api_idempotency", ApiIdempotency, ("token_name", "key"),
         lambda cutoff, _t: ApiIdempotency.created_at < cutoff),
    Kind("process_heartbeat", ProcessHeartbeat, ("owner",), lambda cutoff, _t: ProcessHeartbeat.beat_at < cutoff),
    Kind("periodic_job", PeriodicJob, ("name",), lambda cutoff, _t: PeriodicJob.last_started_at < cutoff),
)


async def prune(db: "Database", policy, now: datetime, *, terminal: Iterable[str],
                kinds: Iterable[Kind] = KINDS, max_batches: int = MAX_BATCHES) -> dict[str, int]:
    """Delete what `policy` (a `[retention]` section) lets go; rows deleted per kind.

    At most `max_batches` batches of `policy.batch` rows per kind and call.
    """
    terminal = frozenset(terminal)
    deleted: dict[str, int] = {}
    for kind in kinds:
        days = getattr(policy, f"{kind.name}_days")
        if not days:
            continue
        cutoff = now - timedelta(days=days)
        total = 0
        for _ in range(max_batches):
            n = await _delete_batch(db, kind, kind.where(cutoff, terminal), policy.batch)
            total += n
            if n < policy.batch:
                break
            await asyncio.sleep(0)  # let waiting transactions in between batches
        if total:
            deleted[kind.name] = total
    if deleted:
        log.info("retention: deleted %s", ", ".join(f"{n} {k}" for k, n in deleted.items()))
    return deleted


async def _delete_batch(db: "Database", kind: Kind, condition, batch: int) -> int:
    cols = [getattr(kind.model, c) for c in kind.key]
    chosen = select(*cols).where(condition).limit(batch)
    target = cols[0] if len(cols) == 1 else tuple_(*cols)
    async with db.session() as s:
        result = await s.exec(delete(kind.model).where(target.in_(chosen)).execution_options(
            synchronize_session=False))
    return result.rowcount or 0
