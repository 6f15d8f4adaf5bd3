"""Waking workers in other processes: PostgreSQL LISTEN/NOTIFY.

When the serving process only answers (`[server] workers = false`) and worker
processes apply the inbox, a recorded event used to wait for a worker's next
poll. The transaction that records an event also sends a notification, which
PostgreSQL delivers at commit; every worker listens on one connection of its
own and wakes its inbox at once. The outbox works the same way: a transaction
that queues messages notifies OUTBOX_CHANNEL, so a receipt queued by the inbox
in one process is sent by an outbox worker in another at once. Polling stays as the fallback: a notification
lost while a listener reconnects delays an event by at most one poll interval,
it never loses it (the event is a row).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)

INBOX_CHANNEL = "relaydesk_inbox"
_NOTIFY_INBOX = text(f"NOTIFY {INBOX_CHANNEL}")
# Messages were queued: a transaction that writes outbox rows notifies at commit (bot/outbox.py).
OUTBOX_CHANNEL = "relaydesk_outbox"
NOTIFY_OUTBOX = text(f"NOTIFY {OUTBOX_CHANNEL}")


async def notify_inbox(s: AsyncSession) -> None:
    """Tell listening workers, when this transaction commits, that the inbox has work."""
    await s.exec(_NOTIFY_INBOX)


def _dsn(url: str) -> str:
    """The plain libpq-style URL asyncpg takes, from SQLAlchemy's `postgresql+asyncpg://…`."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(url: str, channel: str, wake: Callable[[], None], *, retry: float = 1.0) -> None:
    """Call `wake` on every notification on `channel` until cancelled; reconnects after
    a lost connection (and wakes once then: a notification may have been missed)."""
    import asyncpg

    while True:
        conn = None
        try:
            conn = await asyncpg.connect(_dsn(url))
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(channel, lambda *_: wake())
            wake()
            await lost.wait()
            log.warning("wakeup: the connection listening on %s was lost; reconnecting", channel)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the database restarting: polling carries on meanwhile
            log.warning("wakeup: cannot listen on %s (%s); retrying in %.0f s", channel, e, retry)
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()  # it only listens: nothing to finish, and never waits at shutdown
        await asyncio.sleep(retry)
