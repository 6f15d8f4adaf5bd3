"""Shutdown of the real process: SIGTERM in the middle of a stream of reports.

The bot must stop accepting, leave what it had accepted in its tables, exit
within 10 s, and apply every acknowledged report after a restart.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from sqlmodel import select

from bot.server import CLEANUP_BOUND_S, LEFTOVER_BOUND_S
from storage.db import Database
from storage.models import InboxEvent

REPO = Path(__file__).resolve().parent.parent
EXIT_BOUND_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bot:
    """`python run_bot.py` on the embedded default, pointed at a test database."""

    def __init__(self, tmp_path: Path, database_url: str):
        self.port = free_port()
        self.log = tmp_path / f"bot-{self.port}.log"
        env = {**os.environ, "RELAYDESK_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
        with self.log.open("w") as f:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "run_bot.py"), "--port", str(self.port)],
                                         cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.output()
                try:
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"the bot did not start: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def bots():
    started: list[Bot] = []
    yield started
    for bot in started:
        bot.kill()


async def send_reports(url: str, stop: asyncio.Event, acked: list[str], rate: float = 40.0) -> int:
    """Reports from the demo customer at `rate` per second until `stop` (or the bot
    stops answering); the client ids of those answered 200 go to `acked`."""
    sent = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        async def one(i: int) -> None:
            cid = f"term-{i}"
            body = {"conversation": "user:cust_wang", "sender_id": "cust_wang", "client_id": cid,
                    "text": f"{i % 9 + 1}号线水泵漏水了，编号{i}"}
            try:
                async with http.post(f"{url}/playground/api/send", json=body) as r:
                    if r.status == 200:
                        acked.append(cid)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # refused or cut off while stopping: not acknowledged

        pending: set[asyncio.Task] = set()
        while not stop.is_set():
            task = asyncio.create_task(one(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            await asyncio.sleep(1 / rate)
        if pending:
            await asyncio.wait(pending, timeout=20)
    return sent


async def inbox_rows(database_url: str) -> dict[str, InboxEvent]:
    db = Database(database_url)
    try:
        async with db.session() as s:
            return {r.event_id: r for r in (await s.exec(select(InboxEvent))).all()}
    finally:
        await db.dispose()


async def test_sigterm_under_load_exits_within_10s_and_loses_nothing(tmp_path, database_url, bots):
    bot = Bot(tmp_path, database_url)
    bots.append(bot)
    await bot.ready()

    stop, acked = asyncio.Event(), []
    load = asyncio.create_task(send_reports(bot.url, stop, acked))
    await asyncio.sleep(2.0)  # the workers are busy applying and delivering
    assert acked, bot.output()
    term_at = time.monotonic()
    bot.proc.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(bot.proc.wait, EXIT_BOUND_S + 20)
    took = time.monotonic() - term_at
    stop.set()
    sent = await load
    assert took <= EXIT_BOUND_S, f"exit took {took:.1f} s\n{bot.output()}"
    assert exit_code == 0, bot.output()
    assert "Traceback" not in bot.output(), bot.output()

    # Everything acknowledged is in the inbox: applied already, or waiting.
    rows = await inbox_rows(database_url)
    assert set(acked) <= set(rows), "acknowledged reports missing from the inbox"
    assert 0 < len(acked) <= sent

    # A restart applies whatever was left waiting, each exactly once.
    again = Bot(tmp_path, database_url)
    bots.append(again)
    await again.ready()
    deadline = time.monotonic() + 120  # what counts is that each is applied, not how fast (bench/)
    while time.monotonic() < deadline:
        rows = await inbox_rows(database_url)
        if all(rows[cid].status == "done" for cid in acked):
            break
        await asyncio.sleep(0.2)
    assert all(rows[cid].status == "done" for cid in acked), \
        [(cid, rows[cid].status, rows[cid].last_error) for cid in acked if rows[cid].status != "done"]
    again.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(again.proc.wait, EXIT_BOUND_S + 20) == 0, again.output()


# ---- the worker process ---------------------------------------------------------

WORKER_BOUND_S = CLEANUP_BOUND_S + LEFTOVER_BOUND_S + 2.0  # + the lingering-thread wait and exit


async def wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        if text in log.read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {text!r} in the output: {log.read_text(errors='replace')}")


async def test_a_worker_process_exits_within_the_bound_on_sigterm(tmp_path, sqlite_url):
    log = tmp_path / "worker.log"
    env = {**os.environ, "RELAYDESK_DATABASE_URL": sqlite_url, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, str(REPO / "run_bot.py"), "worker", "--slot", "7"],
                                cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        await wait_for_line(proc, log, "worker")
        await wait_for_line(proc, log, "running")
        await asyncio.sleep(1.0)  # its workers are in their loops
        term_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(proc.wait, WORKER_BOUND_S + 20)
        took = time.monotonic() - term_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text(errors="replace")
    assert took <= WORKER_BOUND_S, f"exit took {took:.1f} s\n{output}"
    assert exit_code == 0, output
    assert "stopping" in output and "Traceback" not in output, output


# A process whose stop never finishes (as a driver thread stuck on a torn-down
# connection would): the bound still ends it. asyncio.run would wait forever.
HANGING_STOP = """
import asyncio, os, signal, sys, threading
from bot.server import run_until_signal

async def start():
    threading.Thread(target=threading.Event().wait, name="stuck-driver").start()  # never ends
    asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
    print("started", flush=True)

async def stop():
    await asyncio.Event().wait()

run_until_signal(start, stop)
"""


async def test_a_stop_that_never_finishes_is_cut_at_the_bound(tmp_path):
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HANGING_STOP, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), WORKER_BOUND_S + 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    took = time.monotonic() - start
    assert b"started" in out, out
    assert b"cleanup did not finish" in out, out
    assert proc.returncode == 0, out
    assert CLEANUP_BOUND_S <= took <= WORKER_BOUND_S + 10, f"{took:.1f} s: {out!r}"  # + interpreter start
