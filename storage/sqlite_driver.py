"""The SQLite driver connection: statements run on the event loop, waits on a thread.

aiosqlite runs every call on the connection's own thread and hands the result
back to the event loop. SQLAlchemy makes four such calls for each query (open a
cursor, execute, fetch the rows, close the cursor) and three for each write;
each is a wake-up of the other thread and a wait for the interpreter lock, and
under load those hand-overs cost more than SQLite itself (applying a report
sends about twenty statements).

Here only the calls that can wait go to the connection's thread: BEGIN (every
transaction starts with BEGIN IMMEDIATE, which waits while another process
holds SQLite's write lock), COMMIT (may checkpoint the WAL and sync the disk)
and ROLLBACK. The statements in between run directly: their transaction holds
the write lock, so they never wait for another connection, and in WAL mode an
indexed read or write is microseconds of CPU. Within one process the
transactions already take turns (storage.db's gate), so running them on the
loop holds nothing back that was not waiting anyway.
"""
from __future__ import annotations

import sqlite3
from collections import deque
from typing import Any

import aiosqlite
from aiosqlite.context import contextmanager


class _Cursor(aiosqlite.Cursor):
    """A cursor whose `execute` runs the statement and fetches its rows at once."""

    def __init__(self, conn: "Connection", cursor: sqlite3.Cursor) -> None:
        super().__init__(conn, cursor)
        self._rows: deque = deque()

    def _execute_fetch(self, sql: str, parameters: Any) -> list:
        self._cursor.execute(sql, parameters)
        return self._cursor.fetchall() if self._cursor.description else []

    async def execute(self, sql: str, parameters: Any = None) -> "_Cursor":
        params = () if parameters is None else parameters
        if sql.lstrip()[:5].upper() == "BEGIN":  # may wait for another process: off the loop
            rows = await self._execute(self._execute_fetch, sql, params)
        else:
            rows = self._execute_fetch(sql, params)
        self._rows = deque(rows)
        return self

    async def executemany(self, sql: str, parameters) -> "_Cursor":
        self._cursor.executemany(sql, parameters)
        self._rows = deque()
        return self

    async def fetchone(self):
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list:
        n = self.arraysize if size is None else size
        return [self._rows.popleft() for _ in range(min(n, len(self._rows)))]

    async def fetchall(self) -> list:
        rows, self._rows = list(self._rows), deque()
        return rows

    async def close(self) -> None:
        self._rows = deque()
        self._cursor.close()


class Connection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors run statements on the caller's thread."""

    @contextmanager
    async def cursor(self) -> _Cursor:
        return _Cursor(self, self._conn.cursor())


def connect(database: str, **kwargs: Any) -> Connection:
    """Like `aiosqlite.connect`; the connection is used from both the event loop's
    thread and its own, one call at a time, so the thread check is off."""
    kwargs["check_same_thread"] = False

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, **kwargs)

    conn = Connection(connector, 64)
    conn._thread.daemon = True  # as SQLAlchemy does: never keeps a stopping process alive
    return conn


__all__ = ["Connection", "connect"]
