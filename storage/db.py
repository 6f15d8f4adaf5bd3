"""The async database handle: engine, sessions, schema creation and version check."""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from pathlib import Path
from typing import AsyncIterator

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

# Importing storage.models and storage.integration registers every table on SQLModel.metadata
# (create_all needs them).
import storage.integration  # noqa: F401
from storage.models import SCHEMA_VERSION, SchemaMeta
from storage.queries import insert_ignore
from storage.sqlite_driver import dbapi as sqlite_dbapi


# PostgreSQL connections per process: kept open, and opened on demand beyond them.
POOL_SIZE = 10
POOL_OVERFLOW = 10


class SchemaVersionError(RuntimeError):
    pass


_APPEND_ONLY_SQLITE = [
    """CREATE TRIGGER IF NOT EXISTS ticket_event_no_update BEFORE UPDATE ON ticket_event
       BEGIN SELECT RAISE(ABORT, 'ticket_event is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS ticket_event_no_delete BEFORE DELETE ON ticket_event
       BEGIN SELECT RAISE(ABORT, 'ticket_event is append-only'); END""",
]
_APPEND_ONLY_PG = [
    """CREATE OR REPLACE FUNCTION relaydesk_append_only() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'ticket_event is append-only'; END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS ticket_event_append_only ON ticket_event",
    """CREATE TRIGGER ticket_event_append_only BEFORE UPDATE OR DELETE ON ticket_event
       FOR EACH ROW EXECUTE FUNCTION relaydesk_append_only()""",
]


class Database:
    """One engine per process.

    SQLite runs in WAL mode and every transaction starts with BEGIN IMMEDIATE,
    so read-modify-write sequences (ticket numbers, state changes) serialise
    instead of failing on lock upgrade. PostgreSQL uses row locks instead.
    """

    def __init__(self, url: str, *, echo: bool = False):
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # One trip to the connection's thread per statement (see storage.sqlite_driver).
            self.engine: AsyncEngine = create_async_engine(
                url, echo=echo, connect_args={"timeout": 30}, module=sqlite_dbapi()
            )
            _sqlite_setup(self.engine)
            self._gate: _TurnGate | None = _TurnGate()
        else:
            self.engine = create_async_engine(url, echo=echo, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
            self._gate = None

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def urgent_waiting(self) -> bool:
        """Whether an urgent transaction (answering a callback) waits for this process's
        SQLite write lock: a long background transaction should end now. Always false
        on PostgreSQL, where a callback's insert waits for no other transaction."""
        return self._gate is not None and self._gate.urgent_waiting

    @contextlib.asynccontextmanager
    async def session(self, *, urgent: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error.

        On SQLite the process's transactions take turns through a gate instead of
        SQLite's busy-wait (which sleeps up to 100 ms per retry); `urgent` ones
        (answering a platform callback) go before the background workers' ones.
        Sessions must not be nested.
        """
        if self._gate is None:
            async with AsyncSession(self.engine, expire_on_commit=False) as s:
                async with s.begin():
                    yield s
            return
        await self._gate.acquire(urgent)
        try:
            async with AsyncSession(self.engine, expire_on_commit=False) as s:
                async with s.begin():
                    yield s
        finally:
            self._gate.release()

    async def init(self) -> None:
        """Create missing tables; refuse a database written by a newer RelayDesk."""
        async with self.engine.begin() as conn:
            if self.is_postgres:  # processes starting together create the schema one at a time
                await conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
            await conn.run_sync(SQLModel.metadata.create_all)
            for stmt in _APPEND_ONLY_PG if self.is_postgres else _APPEND_ONLY_SQLITE:
                await conn.execute(text(stmt))
        async with self.session() as s:
            # Processes starting together on a new database: the first one records the
            # version, the others find it (a plain insert made the second one exit).
            await insert_ignore(s, SchemaMeta, key="version", value=str(SCHEMA_VERSION))
            meta = await s.get(SchemaMeta, "version")
            if int(meta.value) != SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"the database has schema version {meta.value}, this RelayDesk uses "
                    f"{SCHEMA_VERSION}: run the RelayDesk release that wrote it"
                )

    async def warm(self) -> None:
        """PostgreSQL: open the pool's connections now. An outage's first forty callbacks
        arrive together, and each one that opened a connection of its own waited for the
        handshake (answers of about 150 ms instead of 15)."""
        if not self.is_postgres:
            return
        conns = await asyncio.gather(*(self.engine.connect() for _ in range(POOL_SIZE)), return_exceptions=True)
        for conn in conns:
            if isinstance(conn, BaseException):
                raise conn
            await conn.close()

    async def dispose(self) -> None:
        await self.engine.dispose()


class _TurnGate:
    """A lock with two queues: urgent waiters are handed the lock first."""

    def __init__(self) -> None:
        self._locked = False
        self._urgent: deque[asyncio.Future] = deque()
        self._normal: deque[asyncio.Future] = deque()

    @property
    def urgent_waiting(self) -> bool:
        return any(not fut.done() for fut in self._urgent)

    async def acquire(self, urgent: bool) -> None:
        if not self._locked and not self._urgent and (urgent or not self._normal):
            self._locked = True
            return
        fut = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the lock was handed to us as we were cancelled
            elif fut in queue:
                queue.remove(fut)
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # hand over: stays locked
                    return
        self._locked = False


def _sqlite_setup(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let BEGIN IMMEDIATE below control transactions instead of pysqlite.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


__all__ = ["Database", "SchemaVersionError"]
