"""The daily health report end to end: tickets typed into the playground over a
simulated day (the clock is injected), the report job, what arrives where.

The chart is checked as a picture: a real PNG whose Chinese labels differ from
the same chart drawn without the CJK font (where every Chinese character is the
same empty box).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from matplotlib.image import imread
from sqlmodel import select, update

from app.web import RUNTIME, create_app
from bot.outbox import SENT
from reports import charts
from storage.models import OutboxMessage, PlaygroundMessage, Ticket

TZ = ZoneInfo("Asia/Shanghai")
_ids = itertools.count(1)
# The managers' group of team maint; 完工 without photos (this is about figures, not evidence).
MANAGERS = {"RELAYDESK_REPORTS__GROUPS__MAINT__PLAYGROUND": "managers", "RELAYDESK_TICKETS__MIN_PHOTOS": "0"}


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def set(self, day: int, hh: int, mm: int = 0) -> None:
        self.at = datetime(2026, 12, day, hh, mm, tzinfo=TZ)


class Page:
    """People typing into the playground page's chats."""

    def __init__(self, client, rt, clock: Clock):
        self.client, self.rt, self.clock = client, rt, clock

    async def say(self, person: str, text: str) -> None:
        r = await self.client.post("/playground/api/send", json={
            "conversation": f"user:{person}", "sender_id": person, "text": text, "client_id": f"c{next(_ids)}"})
        assert r.status == 200, await r.text()

    async def newest(self) -> Ticket:
        async with self.rt.db.session() as s:
            return (await s.exec(select(Ticket).order_by(Ticket.id.desc()))).first()

    async def story(self, day: int, hh: int, mm: int, engineer: str | None, *, wait=10, work=90, stars=5,
                    finish=True) -> None:
        """One ticket: reported at hh:mm, claimed `wait` minutes later, fixed `work` minutes after that."""
        self.clock.set(day, hh, mm)
        await self.say("cust_wang", f"3号线水泵漏水停机了，第{next(_ids)}台")
        number = (await self.newest()).number
        if engineer is None:
            return
        self.clock.at += timedelta(minutes=wait)
        await self.say(engineer, f"认领 {number}")
        if not finish:
            return
        for step in ("出发", "到达", "开始维修"):
            self.clock.at += timedelta(minutes=work / 6)
            await self.say(engineer, f"{step} {number}")
        self.clock.at += timedelta(minutes=work / 2)
        await self.say(engineer, f"完工 {number} 已更换密封圈")
        self.clock.at += timedelta(minutes=20)
        await self.say("cust_wang", f"评价 {number} {stars}")


@pytest.fixture
async def page(make_config, sqlite_url, aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.setenv("RELAYDESK_DATA_DIR", str(tmp_path / "data"))
    clock = Clock(datetime(2026, 12, 2, 9, tzinfo=TZ))
    app = create_app(make_config(sqlite_url, **MANAGERS), workers=False)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    rt.service.clock = clock
    return Page(client, rt, clock)


async def simulate(p: Page) -> None:
    """Two tickets the day before, twenty on Thursday 3 December 2026."""
    await p.story(2, 10, 0, "eng_zhang", wait=5)
    await p.story(2, 15, 0, "eng_li", wait=50, stars=3)
    engineers = ["eng_zhang", "eng_li"]
    for i in range(20):
        hh, mm = divmod(7 * 60 + 40 * i, 60)  # 07:00 .. 19:40, every 40 minutes
        if i in (17, 18):  # claimed, still being worked on at midnight
            await p.story(3, hh, mm, engineers[i % 2], wait=20, finish=False)
        elif i == 19:  # nobody takes it
            await p.story(3, hh, mm, None)
        else:
            await p.story(3, hh, mm, engineers[i % 2], wait=5 if i % 3 else 45, stars=2 if i == 4 else 5)


async def lead_pane(rt) -> list[PlaygroundMessage]:
    async with rt.db.session() as s:
        return list((await s.exec(select(PlaygroundMessage).where(PlaygroundMessage.conversation
                                                                  == "user:lead_zhao").order_by(PlaygroundMessage.id))).all())


async def report_rows(rt) -> list[OutboxMessage]:
    async with rt.db.session() as s:
        rows = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    return [r for r in rows if r.message["type"] == "image" or "服务健康度日报" in r.message.get("text", "")]


def glyph_pixels(path) -> np.ndarray:
    return (imread(str(path))[..., :3].mean(axis=2) < 0.5)


def keep(path: Path, name: str) -> None:
    """Copy an image for people to look at (RELAYDESK_SCREENSHOT_DIR, as the browser tests do)."""
    folder = os.environ.get("RELAYDESK_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)


async def delivered_so_far(rt) -> None:
    """Count everything sent during the day as delivered: only the report is delivered below."""
    async with rt.db.session() as s:
        await s.exec(update(OutboxMessage).values(status=SENT))


async def test_daily_report_after_a_day_of_tickets(page, tmp_path):
    rt = page.rt
    await simulate(page)
    await delivered_so_far(rt)
    page.clock.set(4, 8, 29)
    assert await rt.reports.tick() == 0  # not yet 08:30
    page.clock.set(4, 8, 31)
    assert await rt.reports.tick() == 2  # the lead's pane and the managers' group
    assert await rt.reports.tick() == 0  # once per day per destination
    await rt.outbox.drain()

    rows = await report_rows(rt)
    assert {(r.to_kind, r.to_id) for r in rows} == {("user", "lead_zhao"), ("group", "managers")}
    shown = await lead_pane(rt)
    text = next(m for m in shown if m.kind == "text" and "服务健康度日报" in m.payload["html"]).payload["html"]
    assert "《服务健康度日报》维修一组 · 2026-12-03" in text
    # 20 reported (2 the day before); 17 fixed; open at midnight: the two in work and the unclaimed one.
    assert "报修 20（较前日 +18）" in text and "完工 17（较前日 +15）" in text and "积压 3（较前日 +3）" in text
    # Claims after 5 min (12 of them) and 45 min (5), 20 min (2): response deadline P-dependent,
    # so only check the rates appear as percentages and ratings count the one 2-star.
    assert "评分 4.8（17 条，差评 1）" in text
    assert "一次修复率 100%" in text

    image = next(m for m in shown if m.kind == "image")
    assert image.payload["url"].startswith("/playground/media/")
    png = rt.channels.get("playground").media_dir / image.payload["url"].rsplit("/", 1)[1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep(png, "report-daily.png")

    # The same chart without the CJK font: identical numbers, only the glyphs differ.
    from reports.build import daily_report

    figures = await daily_report(rt.config, rt.db, datetime(2026, 12, 3).date(), "maint")
    with pytest.warns(UserWarning, match="missing from font"):
        tofu = charts.daily_chart(tmp_path / "tofu.png", "《服务健康度日报》维修一组 · 2026-12-03",
                                  figures.figures, figures.before, font=None)
    with_font = charts.daily_chart(tmp_path / "font.png", "《服务健康度日报》维修一组 · 2026-12-03",
                                   figures.figures, figures.before)
    assert glyph_pixels(with_font).shape == glyph_pixels(tofu).shape
    assert (glyph_pixels(with_font) != glyph_pixels(tofu)).sum() > 2000
    assert np.array_equal(glyph_pixels(with_font), glyph_pixels(png))  # what was sent is the CJK rendering


async def test_missed_days_are_not_sent_in_a_flood(page):
    rt = page.rt
    await page.story(3, 10, 0, "eng_zhang")
    page.clock.set(4, 9, 0)
    assert await rt.reports.tick() == 2
    # Down from Friday to Tuesday morning: only Monday's report goes out.
    page.clock.set(8, 8, 45)
    assert await rt.reports.tick() == 2
    rows = [r for r in await report_rows(rt) if r.message["type"] == "text"]
    assert [r.message["text"].split("\n")[0] for r in rows if r.to_kind == "user"] == [
        "《服务健康度日报》维修一组 · 2026-12-03", "《服务健康度日报》维修一组 · 2026-12-07"]


def test_chinese_glyphs_are_real_glyphs(tmp_path):
    """With the bundled font two different characters look different; without it both are the same box."""
    a = glyph_pixels(charts.text_sample(tmp_path / "a.png", "维"))
    b = glyph_pixels(charts.text_sample(tmp_path / "b.png", "修"))
    assert a.sum() > 100 and not np.array_equal(a, b)
    with pytest.warns(UserWarning, match="missing from font"):
        ta = glyph_pixels(charts.text_sample(tmp_path / "ta.png", "维", font=None))
        tb = glyph_pixels(charts.text_sample(tmp_path / "tb.png", "修", font=None))
    assert np.array_equal(ta, tb)


TICK_SCRIPT = """
import asyncio, os, sys
from datetime import datetime
from zoneinfo import ZoneInfo
from app.runtime import Runtime
from bot.config import load_config

async def main():
    rt = Runtime(load_config(None))
    at = datetime(2026, 12, 4, 8, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
    rt.service.clock = lambda: at
    await rt.start(workers=False)
    print("ready", flush=True)
    while not os.path.exists(sys.argv[1]):  # both processes start the tick together
        await asyncio.sleep(0.005)
    print(await rt.reports.tick(), flush=True)
    await rt.stop()

asyncio.run(main())
"""


@pytest.mark.postgres
async def test_two_processes_send_the_report_once(make_config, pg_database_url, tmp_path):
    """Two bot processes on one PostgreSQL run the 08:30 tick at the same moment: one report per destination."""
    from tests.conftest import reset_postgres

    await reset_postgres(pg_database_url)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, RELAYDESK_DATABASE_URL=pg_database_url, RELAYDESK_DATA_DIR=str(tmp_path / "data"),
               **MANAGERS)
    go = tmp_path / "go"
    procs = []
    try:
        # Started one after the other (a first start creates the schema and the people),
        # then both tick at the same moment.
        for _ in range(2):
            p = await asyncio.create_subprocess_exec(sys.executable, "-c", TICK_SCRIPT, str(go), cwd=root, env=env,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            procs.append(p)
            line = await asyncio.wait_for(p.stdout.readline(), 60)
            assert line.strip() == b"ready", (line, await p.stderr.read())
        go.touch()
        outs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert sorted(int(o[0].split()[-1]) for o in outs) in ([0, 2], [1, 1])  # two destinations, once each
    config = make_config(pg_database_url)
    from storage.db import Database

    db = Database(config.database_url)
    try:
        async with db.session() as s:
            rows = (await s.exec(select(OutboxMessage))).all()
    finally:
        await db.dispose()
    assert sorted((r.to_kind, r.to_id, r.message["type"]) for r in rows) == [
        ("group", "managers", "image"), ("group", "managers", "text"),
        ("user", "lead_zhao", "image"), ("user", "lead_zhao", "text")]


async def test_cli_prints_the_same_figures(page, sqlite_url, tmp_path):
    await page.story(3, 23, 30, "eng_zhang", wait=40, work=60, stars=2)  # claimed after midnight
    env = dict(os.environ, RELAYDESK_DATABASE_URL=sqlite_url, RELAYDESK_DATA_DIR=str(tmp_path / "cli"))
    root = Path(__file__).resolve().parents[1]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "run_bot.py", "report", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)

    day = await asyncio.to_thread(run, "daily", "--date", "2026-12-03", "--team", "maint", "--json",
                                  "--out", str(tmp_path / "png"))
    assert day.returncode == 0, day.stderr
    doc = json.loads(day.stdout)
    # Reported 23:30 on the 3rd, claimed 00:10 and fixed on the 4th: on the 3rd only the report counts,
    # and the response deadline that passed unclaimed before midnight (a miss).
    assert {k: doc[k] for k in ("reports", "resolved", "mtta_s", "mttr_s", "sla_response_rate", "fsr",
                                "rating_avg", "low_ratings", "backlog", "per_person")} == {
        "reports": 1, "resolved": 0, "mtta_s": None, "mttr_s": None, "sla_response_rate": 0.0, "fsr": None,
        "rating_avg": None, "low_ratings": 0, "backlog": 1, "per_person": []}
    nxt = json.loads((await asyncio.to_thread(run, "daily", "--date", "2026-12-04", "--json")).stdout)
    assert (nxt["reports"], nxt["resolved"], nxt["mtta_s"], nxt["low_ratings"], nxt["backlog"]) == (0, 1, 40 * 60, 1, 0)
    # The late claim was already counted as a miss on the 3rd, when its deadline passed: not again.
    assert nxt["sla_response_rate"] is None and nxt["sla_resolve_rate"] == 1.0
    assert nxt["per_person"] == [{"person": "张工", "person_id": "eng_zhang", "claimed": 1, "resolved": 1,
                                  "mtta_s": 2400, "fsr": 1.0, "rating_avg": 2.0,
                                  "interruptions": {"business": 0, "off": 0, "sleep": 1}}]
    assert (tmp_path / "png" / "daily-2026-12-03-maint.png").read_bytes()[:4] == b"\x89PNG"
    month = await asyncio.to_thread(run, "month", "--month", "2026-12", "--out", str(tmp_path / "png"))
    assert month.returncode == 0, month.stderr
    assert "《超时归因热力图》2026-12" in month.stdout and "耗时最多" in month.stdout
    keep(tmp_path / "png" / "heatmap-2026-12.png", "report-heatmap.png")
    bad = await asyncio.to_thread(run, "daily", "--team", "nope")
    assert bad.returncode == 2 and "unknown team 'nope'" in bad.stderr
    bad = await asyncio.to_thread(run, "month", "--month", "2026-13")
    assert bad.returncode == 2 and "--month '2026-13': write YYYY-MM" in bad.stderr


async def test_heat_map_goes_out_on_the_first(page):
    rt = page.rt
    await page.story(3, 10, 0, "eng_zhang")
    page.clock.at = datetime(2027, 1, 1, 8, 50, tzinfo=TZ)
    assert await rt.reports.tick() == 2  # the daily report only: the heat map waits for 09:00
    page.clock.at = datetime(2027, 1, 1, 9, 1, tzinfo=TZ)
    assert await rt.reports.tick() == 2  # the heat map of December, to the same two places
    assert await rt.reports.tick() == 0
    rows = [r for r in await report_rows_all(rt) if "超时归因热力图" in r.message.get("text", "")
            or r.message.get("caption") == "2026-12 超时归因热力图"]
    assert sorted((r.to_id, r.message["type"]) for r in rows) == [
        ("lead_zhao", "image"), ("lead_zhao", "text"), ("managers", "image"), ("managers", "text")]


async def report_rows_all(rt) -> list[OutboxMessage]:
    async with rt.db.session() as s:
        return list((await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all())
