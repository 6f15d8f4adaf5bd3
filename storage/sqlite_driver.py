"""The SQLite driver: each DB-API call is one trip to the connection's thread.

aiosqlite runs a SQLite connection on a thread of its own and hands every call
to it: the event loop queues the call, the thread runs it and wakes the loop
(a future, a thread-safe callback, a self-pipe write and an epoll wake-up).
SQLAlchemy's aiosqlite adapter makes one such trip for each step of a
statement: open a cursor, execute, fetch the rows, close the cursor. Applying
a report sends about twenty statements plus BEGIN, COMMIT and a savepoint or
two, so under a burst of reports the loop spent more CPU on those trips than
SQLite spent running the statements.

Here a statement is one trip: a single function on the connection's thread
opens a cursor, executes, fetches every row, reads the description, rowcount
and lastrowid and closes the cursor; the adapted cursor keeps those results and
answers SQLAlchemy's fetches and attribute reads from them. `executemany` is
one trip too; BEGIN, SAVEPOINT, RELEASE are statements like any other, and
COMMIT and ROLLBACK already were one trip each.

The statements stay on the connection's thread rather than running on the
event loop, although that would save the trips altogether: SQLite work done on
the loop delays everything else the loop does, and platform callbacks, whose
answers must be quick, then waited behind the background workers' statements.
On the thread the loop only waits for their results.

A task cancelled while its statement runs leaves nothing behind: the statement
finishes on the thread and its cursor is fetched and closed there. SQLAlchemy
then closes that connection, and the close ends its transaction. (With a
cursor per step, the cancelled statement's cursor stayed open, half-read;
SQLite keeps a connection with an unfinished statement alive after its close,
transaction and write lock included, and every other connection waited for
the lock until its busy timeout.) Connecting, closing and terminating are the
stock aiosqlite adapter's.

`dbapi()` gives the module-like object to pass as `module=` to
`create_async_engine` for a `sqlite+aiosqlite` URL.
"""
from __future__ import annotations

import collections
import sqlite3
from typing import Any, Optional, Sequence

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

# What one statement leaves for the cursor: rows, description, rowcount, lastrowid.
_Outcome = tuple[Sequence[Any], Optional[tuple], int, Optional[int]]


def _execute(conn: sqlite3.Connection, sql: str, parameters: Any) -> _Outcome:
    """Run one statement and collect everything SQLAlchemy reads from its cursor
    (on the connection's thread)."""
    cursor = conn.cursor()
    try:
        cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else ()
        # rowcount last: for a statement with RETURNING it is known once every row is read
        return rows, description, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _executemany(conn: sqlite3.Connection, sql: str, seq_of_parameters: Any) -> _Outcome:
    """Run one statement for each parameter set (on the connection's thread)."""
    cursor = conn.cursor()
    try:
        cursor.executemany(sql, seq_of_parameters)
        return (), cursor.description, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class _Cursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that holds the results of its last statement instead of a cursor
    on the connection's thread: fetches, description, rowcount and lastrowid cost
    no trip, and closing it has nothing left to close."""

    # Plain slots: they shadow the base class's properties, which read the thread's cursor.
    __slots__ = ("description", "rowcount", "lastrowid", "arraysize")

    def __init__(self, adapt_connection: "_Connection") -> None:
        # Not the base constructor: it opens a cursor on the thread, one trip for nothing.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self.description: Optional[tuple] = None
        self.rowcount = -1
        self.lastrowid: Optional[int] = None
        self.arraysize = 1

    async def _async_soft_close(self) -> None:
        """Nothing to close: the statement's cursor was closed on the thread."""

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> None:
        try:
            await_(self._run(_execute, operation, () if parameters is None else parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        try:
            await_(self._run(_executemany, operation, seq_of_parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _run(self, fn, operation: Any, parameters: Any) -> None:
        self._adapt_connection._idle = False  # also when the cursor is used again
        async with self._adapt_connection._execute_mutex:
            conn: aiosqlite.Connection = self._connection
            rows, self.description, self.rowcount, self.lastrowid = await conn._execute(
                fn, conn._conn, operation, parameters)
        self._rows = collections.deque(rows)


class _Connection(AsyncAdapt_aiosqlite_connection):
    """The stock adapted aiosqlite connection with one-trip cursors, and no trip for
    a rollback that has nothing to roll back.

    The pool rolls back every connection it is handed back, also after a commit,
    when there is no transaction left: a trip for nothing per transaction. `_idle`
    says that the connection's last trip was a COMMIT or ROLLBACK that succeeded and
    nothing was sent since; trips run in order, so it then has no transaction. A
    cancelled or failed COMMIT or ROLLBACK leaves it false: the next rollback runs.
    """

    __slots__ = ("_idle",)
    _cursor_cls = _Cursor

    def __init__(self, dbapi: Any, connection: aiosqlite.Connection) -> None:
        super().__init__(dbapi, connection)
        self._idle = False

    def cursor(self, server_side: bool = False):
        self._idle = False  # a statement may follow (server-side cursors are the stock ones)
        return super().cursor(server_side)

    def commit(self) -> None:
        self._idle = False
        super().commit()
        self._idle = True

    def rollback(self) -> None:
        if self._idle:
            return
        super().rollback()
        self._idle = True


class _DBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        # The stock connect starts the thread and connects; only the adapter differs.
        return _Connection(self, super().connect(*arg, **kw)._connection)


def dbapi() -> _DBAPI:
    """The DB-API module for `create_async_engine(..., module=dbapi())`."""
    return _DBAPI(aiosqlite, sqlite3)


__all__ = ["dbapi"]
