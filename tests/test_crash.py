"""kill -9 with a real bot process: the interrupted send goes again within seconds of the
restart (not after the 60 s lease), and after a crash in the middle of a burst every
acknowledged report is a ticket or a linked report and every customer gets their number.

The bot runs as `run_bot.py` against a fake WeCom API on loopback (bench/platforms/wecom.py),
on SQLite and on the real PostgreSQL.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from sqlmodel import select

from bench.callbacks import free_port
from bench.platforms import wecom
from storage.db import Database
from storage.models import InboxEvent, LinkedReport, Ticket

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"SRV-\d{8}-\d{5}-[0-9A-Z]{3}")


class FakeWeCom:
    """The WeCom API: records what each user was sent; `hold` keeps requests to one user hanging."""

    def __init__(self):
        self.sent: dict[str, list[tuple[float, dict]]] = {}
        self.hold: str | None = None
        self.holding = asyncio.Event()
        self.closing = asyncio.Event()

    @web.middleware
    async def middleware(self, request, handler):
        body = await request.read()
        if request.path == "/cgi-bin/message/send":
            doc = json.loads(body)
            user = doc.get("touser", "")
            if user == self.hold:
                self.holding.set()
                await self.closing.wait()  # the bot dies while waiting for this answer
                raise web.HTTPServiceUnavailable()
            self.sent.setdefault(user, []).append((time.monotonic(), doc))
        return await handler(request)

    def numbers(self, user: str) -> list[str]:
        return [m.group(0) for _, doc in self.sent.get(user, ())
                if (m := NUMBER.search(json.dumps(doc, ensure_ascii=False)))]


@pytest.fixture
async def fake():
    api = FakeWeCom()
    app = web.Application(middlewares=[api.middleware])
    app.add_routes(wecom.fake_api_routes(lambda path, body: None))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    api.base = f"http://127.0.0.1:{port}"
    yield api
    api.closing.set()
    await runner.cleanup()


class Bot:
    def __init__(self, tmp_path: Path, fake: FakeWeCom, db_url: str):
        self.dir = tmp_path
        self.port = free_port()
        self.config = tmp_path / "bot.toml"
        self.config.write_text(wecom.config_toml(fake.base, db_url), encoding="utf-8")
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    async def start(self, session: aiohttp.ClientSession) -> float:
        env = {**os.environ, "RELAYDESK_DATA_DIR": str(self.dir / "data")}
        env.pop("RELAYDESK_DATABASE_URL", None)
        with open(self.dir / "bot.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "run_bot.py"), "--config", str(self.config),
                                          "--port", str(self.port), "--log-level", "WARNING"], cwd=self.dir,
                                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir / "bot.log").read_text()[-3000:]
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(self.base + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.monotonic()
            await asyncio.sleep(0.1)
        raise AssertionError("the bot did not start")

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    async def report(self, session: aiohttp.ClientSession, i: int) -> int:
        path, headers, body = wecom.make_report(i)
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.post(self.base + path, data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=10)) as r:
                return r.status
        return 0


async def _until(check, seconds: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            return float("inf")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def test_kill9_during_a_send_the_message_goes_within_5s_of_the_restart(tmp_path, fake, database_url):
    bot = Bot(tmp_path, fake, database_url)
    async with aiohttp.ClientSession() as session:
        try:
            await bot.start(session)
            fake.hold = "bench_cust_1"
            assert await bot.report(session, 1) == 200
            await asyncio.wait_for(fake.holding.wait(), 30)  # the receipt is being sent ...
            bot.kill9()  # ... when the process dies
            fake.hold = None
            started = await bot.start(session)
            arrived = await _until(lambda: fake.numbers("bench_cust_1"), 30)
            assert arrived - started < 5.0, f"receipt {arrived - started:.1f} s after the restart"
            # The repeat asks WeCom to drop it if the interrupted send had arrived after all.
            (receipt,) = [doc for _, doc in fake.sent["bench_cust_1"] if doc["msgtype"] == "text"]
            assert NUMBER.search(receipt["text"]["content"]) and receipt.get("enable_duplicate_check") == 1
        finally:
            bot.stop()


async def test_kill9_during_a_burst_loses_no_acknowledged_report(tmp_path, fake, database_url):
    bot = Bot(tmp_path, fake, database_url)
    async with aiohttp.ClientSession() as session:
        try:
            await bot.start(session)
            statuses: dict[int, int] = {}

            async def report(i: int) -> None:
                statuses[i] = await bot.report(session, i)

            tasks = []
            for i in range(60):
                tasks.append(asyncio.create_task(report(i)))
                await asyncio.sleep(0.03)
                if bot.proc.poll() is None and sum(st == 200 for st in statuses.values()) >= 15:
                    bot.kill9()  # in the middle of the burst: reports in flight, messages being sent
            await asyncio.gather(*tasks)
            acked = [i for i, st in sorted(statuses.items()) if st == 200]
            assert bot.proc.poll() is not None and len(acked) >= 15
            await bot.start(session)
            done = await _until(lambda: all(fake.numbers(f"bench_cust_{i}") for i in acked), 60)
            missing = [i for i in acked if not fake.numbers(f"bench_cust_{i}")]
            assert done != float("inf"), f"no number for customers {missing}"
        finally:
            bot.stop()
    db = Database(database_url)
    try:
        async with db.session() as s:
            events = (await s.exec(select(InboxEvent))).all()
            tickets = (await s.exec(select(Ticket))).all()
            links = (await s.exec(select(LinkedReport))).all()
    finally:
        await db.dispose()
    # Acknowledged reports are applied; none is parked (reports recorded just before the
    # kill but never answered may still be on their way when the bot was stopped).
    assert not [e for e in events if e.status == "dead"]
    applied = {e.payload["sender_id"] for e in events if e.status == "done"}
    assert {f"bench_cust_{i}" for i in acked} <= applied
    reporters = {t.reporter_conv_id for t in tickets} | {lr.conv_id for lr in links}
    assert {f"bench_cust_{i}" for i in acked} <= reporters
