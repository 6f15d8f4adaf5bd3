"""Waking workers in other processes: PostgreSQL LISTEN/NOTIFY.

When the serving process only answers (`[server] workers = false`) and worker
processes apply the inbox, a recorded event used to wait for a worker's next
poll. Once the transaction that records an event has committed, the process
sends a notification (`Poker`, coalesced across a burst); every worker listens
on one connection of its own and wakes its inbox at once. Outbox workers are
woken the same way, by the transaction that queues messages notifying
OUTBOX_CHANNEL at commit (bot/outbox.py: one per transaction, in the applying
worker, away from the answers), so a receipt queued by the inbox in one process
is sent by an outbox worker in another at once. Polling stays as the fallback:
a notification lost while a listener reconnects delays an event by at most one
poll interval, it never loses it (the event is a row).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

INBOX_CHANNEL = "relaydesk_inbox"
# Messages were queued: a transaction that writes outbox rows notifies at commit (bot/outbox.py).
OUTBOX_CHANNEL = "relaydesk_outbox"
NOTIFY_OUTBOX = text(f"NOTIFY {OUTBOX_CHANNEL}")


class Poker:
    """Sends NOTIFY on `channel` after commits, on a connection of its own, coalesced.

    An accepted callback used to notify inside its own transaction. PostgreSQL
    takes one lock for every committing transaction that notifies and holds it
    through the commit's flush to disk, so forty callbacks of one outage answered
    one after the other (p99 about 110 ms against 15 on SQLite). Now the answering
    transaction only records the event; after it commits, `poke()` asks for one
    notification. While one is being sent, further pokes make one more follow it:
    every event committed before a worker's wake-up is seen by that worker, and a
    burst costs a few notifications, not one each. A lost connection is opened
    again at the next poke; meanwhile the workers' polling still finds the events.
    """

    def __init__(self, url: str, channel: str):
        self._dsn = _dsn(url)
        self._sql = f"NOTIFY {channel}"
        self._conn = None
        self._wanted = False
        self._task: asyncio.Task | None = None

    def poke(self) -> None:
        self._wanted = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        import asyncpg

        while self._wanted:
            self._wanted = False
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._dsn)
                await self._conn.execute(self._sql)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database restarting: the workers poll meanwhile
                log.warning("wakeup: cannot notify (%s); the workers' next poll finds the work", e)
                self._conn = None
                return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        self._conn = None


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
