"""The SQLite driver (storage.sqlite_driver): one trip to the connection's thread per
statement, the same results as the stock adapter, and a cancelled statement that
leaves the connection usable."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage.db import Database


@pytest.fixture
async def db(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    async with database.session() as s:
        await s.exec(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER)"))
    yield database
    await database.dispose()


@pytest.fixture
def trips(monkeypatch):
    """The calls handed to aiosqlite's thread, by function name."""
    seen: list[str] = []
    run = aiosqlite.Connection._execute

    async def counting(self, fn, *args, **kwargs):
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await run(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return seen


async def test_results_rows_rowcount_lastrowid(db):
    async with db.session() as s:
        inserted = await s.exec(text("INSERT INTO t (name, n) VALUES ('a', 1)"))
        assert inserted.lastrowid == 1 and inserted.rowcount == 1
        await s.exec(text("INSERT INTO t (name, n) VALUES (:name, :n)"),
                     params=[{"name": "b", "n": 2}, {"name": "c", "n": 3}])  # executemany
        updated = await s.exec(text("UPDATE t SET n = n + 10 WHERE n >= 2"))
        assert updated.rowcount == 2
        returned = await s.exec(text("UPDATE t SET n = n + 1 WHERE n > 10 RETURNING name"))
        assert sorted(r.name for r in returned) == ["b", "c"]
        rows = await s.exec(text("SELECT id, name, n FROM t ORDER BY id"))
        assert list(rows.keys()) == ["id", "name", "n"]
        assert [tuple(r) for r in rows] == [(1, "a", 1), (2, "b", 13), (3, "c", 14)]
        one = await s.exec(text("SELECT name FROM t WHERE id = 2"))
        assert one.scalar_one() == "b"
        empty = await s.exec(text("SELECT name FROM t WHERE id = 99"))
        assert empty.first() is None


async def test_a_failing_statement_raises_and_rolls_back(db):
    with pytest.raises(IntegrityError):
        async with db.session() as s:
            await s.exec(text("INSERT INTO t (name, n) VALUES ('a', 1)"))
            await s.exec(text("INSERT INTO t (name, n) VALUES ('a', 2)"))
    async with db.session() as s:
        assert (await s.exec(text("SELECT count(*) FROM t"))).scalar_one() == 0
        await s.exec(text("INSERT INTO t (name, n) VALUES ('a', 3)"))
    async with db.session() as s:
        assert (await s.exec(text("SELECT n FROM t"))).scalar_one() == 3


async def test_one_trip_per_statement_and_none_for_the_pools_rollback(db, trips):
    async with db.session() as s:
        await s.exec(text("INSERT INTO t (name, n) VALUES ('a', 1)"))
        async with s.begin_nested():
            await s.exec(text("UPDATE t SET n = 2"))
        assert (await s.exec(text("SELECT n FROM t"))).scalar_one() == 2
    # BEGIN, INSERT, SAVEPOINT, UPDATE, RELEASE, SELECT, COMMIT: no cursor opening,
    # fetching or closing of its own, no rollback after the commit.
    assert trips == ["_execute"] * 6 + ["commit"], trips

    trips.clear()
    with pytest.raises(RuntimeError):
        async with db.session() as s:
            await s.exec(text("UPDATE t SET n = 3"))
            raise RuntimeError("undo")
    assert trips == ["_execute", "_execute", "rollback"], trips
    async with db.session() as s:
        assert (await s.exec(text("SELECT n FROM t"))).scalar_one() == 2


SLOW = """WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000000)
          SELECT count(*) FROM c"""


async def test_a_statement_cancelled_while_it_runs_leaves_the_connection_usable(db, tmp_path):
    started = asyncio.Event()

    async def slow() -> None:
        async with db.session() as s:
            await s.exec(text("INSERT INTO t (name, n) VALUES ('lost', 1)"))
            started.set()
            await s.exec(text(SLOW))

    task = asyncio.create_task(slow())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.05)  # the slow statement is running on the connection's thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)

    async with db.session() as s:  # BEGIN IMMEDIATE again: no transaction was left open
        assert (await s.exec(text("SELECT count(*) FROM t"))).scalar_one() == 0
        await s.exec(text("INSERT INTO t (name, n) VALUES ('kept', 2)"))

    def other_process_writes() -> None:  # the write lock is free
        conn = sqlite3.connect(tmp_path / "d.db", timeout=2, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (name, n) VALUES ('other', 3)")
            conn.execute("COMMIT")
        finally:
            conn.close()

    await asyncio.to_thread(other_process_writes)
    async with db.session() as s:
        names = (await s.exec(text("SELECT name FROM t ORDER BY id"))).scalars().all()
    assert names == ["kept", "other"]
    began = time.monotonic()
    await db.dispose()
    assert time.monotonic() - began < 5
