"""Shared fixtures: configs, databases (SQLite and the real PostgreSQL), the app."""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import sys
import threading
import uuid

import pytest
from hypothesis import settings
from sqlalchemy import text

from bot.config import load_config

# CI runs the same examples every time (a landing must not hinge on a random draw);
# developers' runs keep exploring new ones.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.register_profile("ci", derandomize=True, deadline=None)
if IN_CI:
    settings.load_profile("ci")

# A test that hangs is stopped by pytest-timeout (the `timeout` setting in
# pyproject.toml), which prints every thread's stack and ends the run. A hang
# inside the event loop shows there only as the loop's select(), so a moment
# before the timeout fires this prints the stack of every asyncio task of every
# running loop: the task that ignores its cancellation is among them.
_TASK_DUMP_LEAD = 5.0


def _dump_asyncio_tasks(nodeid: str) -> None:
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
    print(f"\n==== {nodeid}: about to time out; asyncio tasks of {len(loops)} running loop(s) ====",
          file=sys.stderr)
    for loop in loops:
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the set changed while we read it from this thread
            tasks = list(asyncio.all_tasks(loop))
        for task in tasks:
            print(f"--- {task!r}", file=sys.stderr)
            task.print_stack(limit=15, file=sys.stderr)
    sys.stderr.flush()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    if settings.timeout and settings.timeout > 2 * _TASK_DUMP_LEAD:
        timer = threading.Timer(settings.timeout - _TASK_DUMP_LEAD, _dump_asyncio_tasks, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
        item.stash[_DUMP_TIMER] = timer
    return None  # pytest-timeout sets its own timer too


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item):
    timer = item.stash.get(_DUMP_TIMER, None)
    if timer is not None:
        timer.cancel()
    return None


_DUMP_TIMER = pytest.StashKey[threading.Timer]()

PG_ADMIN_URL = os.environ.get("RELAYDESK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def run_sync(coro):
    """Run a coroutine to completion even when called from inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _pg_available() -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        except Exception:
            return False
        await conn.close()
        return True

    return run_sync(probe())


@pytest.fixture
def respx_mock(request):
    """respx's fixture, mocking at the httpx client: the platform clients send through
    aiohttp's pool (bot/channels/shared/http.py), which respx's default (httpcore) never sees."""
    import respx

    marker = request.node.get_closest_marker("respx")
    # As the plugin's own fixture (respx's global router): unused routes are no failure.
    kwargs = {"using": "httpx", "assert_all_called": False, **(marker.kwargs if marker else {})}
    with respx.mock(**kwargs) as router:
        yield router


@pytest.fixture(scope="session")
def pg_database_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    import asyncpg

    if not _pg_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (required under CI)")
        pytest.skip("PostgreSQL not reachable")
    name = f"relaydesk_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_sync(admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    run_sync(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def reset_postgres(url: str) -> None:
    """Empty every table (TRUNCATE fires no row triggers, so the audit log can go too)."""
    from storage.db import Database
    from sqlmodel import SQLModel

    db = Database(url)
    await db.init()
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    async with db.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await db.dispose()


async def fresh_database_url(request, tmp_path) -> str:
    """For a fixture parametrized "sqlite" / "postgres": a fresh SQLite file, or the emptied test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/relaydesk.db"
    url = request.getfixturevalue("pg_database_url")
    await reset_postgres(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request, tmp_path):
    """Runs the test once on SQLite and once on the real PostgreSQL."""
    return await fresh_database_url(request, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/relaydesk.db"


@pytest.fixture
def make_config(tmp_path):
    """The embedded demo config pointed at a database URL, with optional overrides."""

    def make(database_url: str | None = None, **env):
        environ = {"RELAYDESK_DATABASE_URL": database_url or f"sqlite+aiosqlite:///{tmp_path}/relaydesk.db"}
        environ.update({k: str(v) for k, v in env.items()})
        return load_config(None, env=environ)

    return make
