"""Fault campaign: how the bot recovers from crashes, outages and hostile bytes, before and after.

    .venv/bin/python bench/faults.py                         # this checkout, a 10 s outage
    .venv/bin/python bench/faults.py --vs OLD_CHECKOUT --outage 60
    .venv/bin/python bench/faults.py --only 1,3

Each fault runs a fresh `run_bot.py` of the checkout at `--root` (default: this
one) as a subprocess, its own SQLite database in a temporary directory, all
three platforms configured against one fake platform API on loopback (the
config and the fake API of bench/pipeline.py, the platforms' own limits in
force). With `--vs DIR` the same faults also run against the checkout at DIR,
at the same time, and a side-by-side table ends the output. One line per fault
and build:

1. kill -9 while the engineers' cards of a report are being sent (the fake API
   holds those requests), a second report queued behind them; restart: seconds
   from the restart until each platform's engineers' group gets the second
   report's card, and duplicates of the cards that were mid-send. The fake API
   de-duplicates as the platforms do (WeCom app messages with
   `enable_duplicate_check`, Feishu's `uuid`; DingTalk has no such field).
2. the UPDATE that marks one report's messages sent aborts (a SQLite trigger),
   after the platform accepted them; 10 other reports right after it: how
   many of the others' cards were delivered, "outbox sweep failed" lines and
   error lines in the log; then the write works again: deliveries and
   duplicates after --settle-dups seconds (past the 60 s lease). Cards folded
   into a digest card show in the outbox row counts, not as that report's card.
3. the fake API answers 502 to every send for `--outage` seconds while reports
   arrive, then recovers: seconds from recovery until every held card is
   delivered, and duplicates.
4. every write refused (triggers on every table): /healthz status; then again
   once writes work.
5. hostile input to /callbacks/wecom, /callbacks/feishu, /callbacks/dingtalk and
   /playground/api/send: deep nesting (unsigned; DingTalk signed), a declared
   10^12-byte body, a body trickling 1 byte / 2 s: status and seconds to
   answer (capped at --cap), and whether a traceback was logged.
6. memory: the bot's RSS before and after reports from --recipients distinct
   customers (each gets replies: one per-recipient entry each). RSS also holds
   caches and the database's pages: an upper bound, not the structures alone.
7. one report's ticket cannot be written (a trigger) until it is given up after
   5 attempts: is it dropped or a dead letter, and does `run_bot.py inbox retry`
   then apply it once (one ticket, one number told to the customer)?

Bounded: loopback only, at most 5000 recipients and a 300 s outage.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.callbacks import HOST, free_port, start_bot, wait_healthy  # noqa: E402
from bench.pipeline import NUMBER, PLATFORMS, Api, config_toml  # noqa: E402
from bench.platforms import dingtalk, feishu, report_key  # noqa: E402
from bot.channels.dingtalk.crypto import robot_sign  # noqa: E402

NAMES = tuple(m.__name__.rsplit(".", 1)[1] for m in PLATFORMS)  # wecom, feishu, dingtalk
# Requests that create a message (updates of a card in place, tokens and uploads are not deliveries).
NOT_DELIVERIES = ("token", "/gettoken", "update_template_card", "/media/", "/images", "/user/get", "/bot/v3/info")
MAX_RECIPIENTS, MAX_OUTAGE = 5000, 300


# ---- the fake platform API -------------------------------------------------------------


@dataclass
class Request:
    at: float
    method: str
    path: str
    path_qs: str
    text: str
    ok: bool = False  # answered with success (the platform took it)


class FaultyApi:
    """The three platforms' fake API (bench/platforms), recording every request.

    `down`: every call but the token answers 502. `hold`: requests whose body
    contains this text are held (not answered) until `release()`; the platform
    is taken to have received them.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.down = False
        self.hold: str | None = None
        self._released = asyncio.Event()
        self.who = Api()  # bench/pipeline.py's recipient recognition
        self.numbers: dict[int, set[str]] = {}  # customer index -> ticket numbers they were told

    def release(self) -> None:
        self.hold = None
        self._released.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        body = await request.read()
        req = Request(time.monotonic(), request.method, request.path, request.path_qs,
                      body.decode("utf-8", "replace"))
        self.requests.append(req)
        if self.down and "token" not in request.path.lower():
            return web.json_response({"errcode": -1, "code": -1, "msg": "fault: platform down"}, status=502)
        if self.hold and self.hold in req.text:
            await self._released.wait()
        response = await handler(request)
        req.ok = response.status == 200
        if req.ok and req.method == "POST":
            self._note_numbers(req)
        return response

    def _note_numbers(self, req: Request) -> None:
        try:
            doc = json.loads(req.text or "{}")
        except ValueError:
            return
        if isinstance(doc, dict):
            i = self.who.customer(req.path_qs, doc)
            if i is not None:
                self.numbers.setdefault(i, set()).update(NUMBER.findall(req.text))

    def recipient(self, req: Request) -> str:
        try:
            doc = json.loads(req.text or "{}")
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if self.who.customer(req.path_qs, doc) is not None:
            return "customer"
        return self.who.staff(req.path_qs, doc) or "other"

    def deliveries(self, key: str) -> Counter:
        """Messages about report `key` the platforms delivered, per (path, recipient), after
        the platforms' own de-duplication of resends."""
        seen_wecom: set[str] = set()
        seen_uuid: set[str] = set()
        out: Counter = Counter()
        for req in self.requests:
            if not req.ok or req.method != "POST" or any(p in req.path for p in NOT_DELIVERIES):
                continue
            if key not in req.text:
                continue
            with contextlib.suppress(ValueError, AttributeError):
                doc = json.loads(req.text)
                if req.path == "/cgi-bin/message/send":
                    plain = {k: v for k, v in doc.items() if k not in ("enable_duplicate_check",
                                                                     "duplicate_check_interval")}
                    fp = json.dumps(plain, sort_keys=True)
                    if doc.get("enable_duplicate_check") and fp in seen_wecom:
                        continue
                    seen_wecom.add(fp)
                if doc.get("uuid"):
                    if doc["uuid"] in seen_uuid:
                        continue
                    seen_uuid.add(doc["uuid"])
            out[(req.path, self.recipient(req))] += 1
        return out

    def group_card_at(self, key: str, platform: str) -> float | None:
        for req in self.requests:
            if (req.ok and req.method == "POST" and key in req.text and not any(p in req.path for p in NOT_DELIVERIES)
                    and self.recipient(req) == f"group:{platform}"):
                return req.at
        return None

    def got_any(self, key: str, platform: str) -> bool:
        return any(key in r.text and self.recipient(r) == f"group:{platform}" for r in self.requests)


def per_platform(api: FaultyApi, keys: list[str]) -> str:
    """'wecom 6/6, feishu 6/6, dingtalk 0/6': engineers' group cards delivered per platform."""
    return ", ".join(f"{p} {sum(1 for k in keys if api.group_card_at(k, p))}/{len(keys)}" for p in NAMES)


def excess(got: Counter, control: Counter) -> Counter:
    """Deliveries beyond what a report without the fault got, per (path, recipient)."""
    return Counter({k: n - max(1, control.get(k, 1)) for k, n in got.items() if n > max(1, control.get(k, 1))})


def where(extra: Counter) -> str:
    """Which sends the duplicates were: ' (path -> recipient xN, ...)'."""
    if not extra:
        return ""
    return " (" + ", ".join(f"{path} -> {who} x{n}" for (path, who), n in sorted(extra.items())) + ")"


# ---- one bot instance ------------------------------------------------------------------


def distinct_report(i: int, module) -> tuple[str, dict[str, str], bytes]:
    """Report i through a platform module, about a place of its own: never linked to another
    report's ticket as one incident, so each report gets its own cards."""
    if module is feishu:
        saved = feishu.report_text
        feishu.report_text = lambda n: f"{n}号线水泵不出水了，整条线停着，设备编号 {report_key(n)}"
        try:
            return feishu.make_report(i)
        finally:
            feishu.report_text = saved
    saved_reports = module.REPORTS
    module.REPORTS = (f"{i}号线水泵不出水了，整条线停着，设备编号 {{key}}",)
    try:
        return module.make_report(i)
    finally:
        module.REPORTS = saved_reports


class Bot:
    """A `run_bot.py` of one checkout with its own fake API, database and log."""

    def __init__(self, root: Path, label: str, *, playground: bool = False):
        self.root = root
        self.label = label
        self.api = FaultyApi()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"relaydesk-faults-{label}-"))
        self.db_path = self.workdir / "bench.db"
        self.log_path = self.workdir / "bot.log"
        self.playground = playground
        self.proc: subprocess.Popen | None = None
        self.runner: web.AppRunner | None = None
        self.base = ""
        self.session: aiohttp.ClientSession | None = None
        self.config_path = self.workdir / "bench.toml"

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[self.api.middleware])
        for module in PLATFORMS:
            app.add_routes(module.fake_api_routes(lambda path, body: None))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, HOST, port).start()
        text = config_toml(f"http://{HOST}:{port}", f"sqlite+aiosqlite:///{self.db_path}", workers=True)
        if self.playground:
            text = text.replace("[playground]\nenabled = false", "[playground]\nenabled = true")
        self.config_path.write_text(text, encoding="utf-8")
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        await self.boot()

    async def boot(self) -> float:
        """Start the process; seconds until /healthz answered 200."""
        port = free_port()
        self.base = f"http://{HOST}:{port}"
        t0 = time.monotonic()
        self.proc = start_bot(self.config_path, port, self.workdir, self.log_path, root=self.root,
                              append=self.proc is not None)
        await wait_healthy(self.session, self.base, self.proc, 90)
        return time.monotonic() - t0

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def close(self, keep: bool) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.api.release()
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def report(self, i: int, platform: int | None = None) -> int | str:
        """Send report i (customer i) through a platform (default round-robin); the HTTP status."""
        path, headers, body = distinct_report(i, PLATFORMS[(i if platform is None else platform) % 3])
        try:
            async with self.session.post(self.base + path, data=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=15)) as r:
                await r.read()
                return r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return type(e).__name__

    def sql(self, *statements: str) -> list:
        """Run statements on the bot's database from outside (as an operator or a failing disk would)."""
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            rows: list = []
            for st in statements:
                rows = con.execute(st).fetchall()
            return rows
        finally:
            con.close()

    def outbox_states(self) -> str:
        """The outbox's rows per status, e.g. 'sent 70, sending 5, folded 4' (folded: into a digest card)."""
        rows = self.sql("SELECT status, count(*) FROM outbox GROUP BY status ORDER BY count(*) DESC")
        return ", ".join(f"{status} {n}" for status, n in rows)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    async def wait_for(self, predicate, timeout: float, step: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(step)
        return bool(predicate())


def ticket_numbers(bot: Bot, i: int) -> set[str]:
    """Ticket numbers the customer of report i was told."""
    return bot.api.numbers.get(i, set())


# ---- the faults ------------------------------------------------------------------------


async def fault_kill(bot: Bot, args) -> str:
    a, b = 1, 2
    ka, kb = report_key(a), report_key(b)
    await bot.report(0)  # warm: tokens, first-send paths
    await bot.wait_for(lambda: all(bot.api.group_card_at(report_key(0), p) for p in NAMES), 30)
    bot.api.hold = ka
    await bot.report(a, platform=0)
    held = await bot.wait_for(lambda: all(bot.api.got_any(ka, p) for p in NAMES), 30)
    await bot.report(b, platform=0)
    await asyncio.sleep(1.5)  # the second report is applied and its cards queued behind the held ones
    before_kill = {p: bot.api.group_card_at(kb, p) for p in NAMES}
    bot.kill9()
    bot.api.release()  # the platform answers the held requests (to nobody): they were delivered
    t0 = time.monotonic()
    healthy = await bot.boot()
    await bot.wait_for(lambda: all(bot.api.group_card_at(kb, p) for p in NAMES), args.cap_kill)
    await asyncio.sleep(2.0)
    waits = []
    for p in NAMES:
        at = bot.api.group_card_at(kb, p)
        if before_kill[p]:
            waits.append(f"{p} sent before the kill")
        else:
            waits.append(f"{p} {at - t0:.1f}s" if at else f"{p} >{args.cap_kill:.0f}s")
    extra = excess(bot.api.deliveries(ka), bot.api.deliveries(kb))
    dups = f"{sum(extra.values())}{where(extra)}"
    note = "" if held else " (not every platform's send was in flight at the kill)"
    return (f"next card to the same group after restart: {', '.join(waits)} (restart->healthy {healthy:.1f}s); "
            f"duplicates of the mid-send cards: {dups}{note}")


async def fault_bookkeeping(bot: Bot, args) -> str:
    poison = 100
    kp = report_key(poison)
    await bot.report(0)  # the control: what one report's messages are when nothing fails
    await bot.wait_for(lambda: all(bot.api.group_card_at(report_key(0), p) for p in NAMES), 30)
    await asyncio.sleep(2.0)
    control = bot.api.deliveries(report_key(0))
    bot.sql(f"""CREATE TRIGGER fault_mark_sent BEFORE UPDATE ON outbox
                WHEN NEW.status = 'sent' AND OLD.status != 'sent' AND instr(OLD.message, '{kp}') > 0
                BEGIN SELECT RAISE(ABORT, 'fault: bookkeeping write refused'); END""")
    log0 = len(bot.log())
    others = list(range(101, 111))
    keys = [report_key(i) for i in others]
    await bot.report(poison)  # first: its sends succeed, marking them sent fails
    await bot.wait_for(lambda: all(bot.api.got_any(kp, p) for p in NAMES), 20)
    await asyncio.gather(*(bot.report(i) for i in others))  # the same recipients' next messages
    await asyncio.sleep(args.settle)
    during = per_platform(bot.api, keys)
    log = bot.log()[log0:]
    sweeps, errors, tracebacks = log.count("outbox sweep failed"), _error_lines(log), log.count("Traceback")
    bot.sql("DROP TRIGGER fault_mark_sent")  # the disk recovers; leases of an aborted pass run out later
    await asyncio.sleep(args.settle_dups)
    extra_others = sum((excess(bot.api.deliveries(k), control) for k in keys), Counter())
    got_poison = bot.api.deliveries(kp)
    extra_poison = excess(got_poison, control)
    log = bot.log()[log0:]
    return (f"while the write fails ({args.settle:.0f}s): other reports' group cards delivered {during}; "
            f"'outbox sweep failed' x{sweeps}, {errors} error lines, {tracebacks} tracebacks. "
            f"{args.settle_dups:.0f}s after it works again: delivered {per_platform(bot.api, keys)} "
            f"(duplicates {sum(extra_others.values())}{where(extra_others)}); 'outbox sweep failed' "
            f"x{log.count('outbox sweep failed')}, {_error_lines(log)} error lines in all; the messages whose "
            f"bookkeeping failed: {sum(got_poison.values())} deliveries to {len(got_poison)} recipients "
            f"(duplicates {sum(extra_poison.values())}{where(extra_poison)}); outbox rows: {bot.outbox_states()}")


def _error_lines(log: str) -> int:
    return sum(1 for line in log.splitlines() if " ERROR " in line or line.startswith("ERROR"))


async def fault_outage(bot: Bot, args) -> str:
    await bot.report(0)
    await bot.wait_for(lambda: all(bot.api.group_card_at(report_key(0), p) for p in NAMES), 30)
    control = bot.api.deliveries(report_key(0))
    bot.api.down = True
    down_at = time.monotonic()
    held = list(range(200, 206))
    for n, i in enumerate(held):  # reports through the outage: early ones have grown back-offs
        await asyncio.sleep(max(0.0, down_at + n * args.outage / len(held) - time.monotonic()))
        await bot.report(i)
    await asyncio.sleep(max(0.0, down_at + args.outage - time.monotonic()))
    bot.api.down = False
    up = time.monotonic()
    done = await bot.wait_for(lambda: all(bot.api.group_card_at(report_key(i), p) for i in held for p in NAMES),
                              args.cap_outage, step=0.2)
    last = max((bot.api.group_card_at(report_key(i), p) or up + args.cap_outage) for i in held for p in NAMES)
    await asyncio.sleep(2.0)
    extra = sum((excess(bot.api.deliveries(report_key(i)), control) for i in held), Counter())
    figure = (f"{last - up:.1f}s" if done else
              f">{args.cap_outage:.0f}s ({per_platform(bot.api, [report_key(i) for i in held])})")
    return (f"outage {args.outage:.0f}s: every held group card delivered {figure} after recovery; "
            f"duplicates {sum(extra.values())}{where(extra)}; outbox rows: {bot.outbox_states()}")


async def fault_healthz(bot: Bot, args) -> str:
    tables = [r[0] for r in bot.sql("SELECT name FROM sqlite_master WHERE type = 'table' "
                                    "AND name NOT LIKE 'sqlite_%'")]
    statements = []
    for t in tables:
        for op in ("INSERT", "UPDATE", "DELETE"):
            statements.append(f'CREATE TRIGGER "fault_ro_{t}_{op}" BEFORE {op} ON "{t}" '
                              f"BEGIN SELECT RAISE(ABORT, 'fault: disk refuses writes'); END")
    bot.sql(*statements)
    await asyncio.sleep(1.0)
    during = await _status(bot, "/healthz")
    bot.sql(*[f'DROP TRIGGER "fault_ro_{t}_{op}"' for t in tables for op in ("INSERT", "UPDATE", "DELETE")])
    await asyncio.sleep(1.5)
    after = await _status(bot, "/healthz")
    return f"/healthz while every write fails: {during}; after writes work again: {after}"


async def _status(bot: Bot, path: str) -> int | str:
    try:
        async with bot.session.get(bot.base + path, timeout=aiohttp.ClientTimeout(total=10)) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return type(e).__name__


def _deep_bodies() -> dict[str, tuple[str, dict[str, str], bytes]]:
    """Deeply nested bodies per endpoint: XML and JSON unsigned; DingTalk's signed (it signs headers)."""
    depth = 10_000  # far past every parser's recursion limit; under the playground's 64 KiB body cap
    xml = ("<xml>" + "<a>" * depth + "</a>" * depth + "</xml>").encode()
    deep_json = ('{"a":' * depth + "1" + "}" * depth).encode()
    ts = str(int(time.time() * 1000))
    return {
        "wecom": ("/callbacks/wecom?msg_signature=0&timestamp=0&nonce=0", {"Content-Type": "text/xml"}, xml),
        "feishu": ("/callbacks/feishu", {"Content-Type": "application/json"}, deep_json),
        "dingtalk": ("/callbacks/dingtalk", {"Content-Type": "application/json", "timestamp": ts,
                                             "sign": robot_sign(ts, dingtalk.APP_SECRET)}, deep_json),
        "playground": ("/playground/api/send", {"Content-Type": "application/json"}, deep_json),
    }


async def _raw(bot: Bot, path: str, head_extra: str, first: bytes, trickle: bool, cap: float) -> tuple[str, float]:
    """Send a request by hand; (status or 'no answer', seconds until the status line)."""
    port = int(bot.base.rsplit(":", 1)[1])
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n{head_extra}\r\n".encode() + first)
        await writer.drain()

        async def trickler() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while trickle:
                    await asyncio.sleep(2.0)
                    writer.write(b" ")
                    await writer.drain()

        feeding = asyncio.create_task(trickler())
        try:
            line = await asyncio.wait_for(reader.readline(), cap)
        except asyncio.TimeoutError:
            return f"no answer in {cap:.0f}s", cap
        finally:
            feeding.cancel()
        parts = line.split()
        return (parts[1].decode() if len(parts) > 1 else "closed"), time.monotonic() - t0
    except (ConnectionError, OSError):
        return "reset", time.monotonic() - t0
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def fault_hostile(bot: Bot, args) -> str:
    out = []
    for name, (path, headers, body) in _deep_bodies().items():
        cells = []
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        for what in ("deep", "1e12", "slow"):
            tb0 = bot.log().count("Traceback")
            if what == "deep":
                t0 = time.monotonic()
                try:
                    async with bot.session.post(bot.base + path, data=body, headers=headers,
                                                timeout=aiohttp.ClientTimeout(total=args.cap)) as r:
                        await r.read()
                        status: str = str(r.status)
                except asyncio.TimeoutError:
                    status = f"no answer in {args.cap:.0f}s"
                except aiohttp.ClientError as e:
                    status = type(e).__name__
                took = time.monotonic() - t0
            elif what == "1e12":
                status, took = await _raw(bot, path, head + "Content-Length: 1000000000000\r\n", b"{", False, args.cap)
            else:
                status, took = await _raw(bot, path, head + "Content-Length: 64\r\n", b"{", True, args.cap)
            await asyncio.sleep(0.5)
            tb = bot.log().count("Traceback") - tb0
            cells.append(f"{what} {status} {took:.1f}s{' +traceback' if tb else ''}")
        out.append(f"{name}: " + ", ".join(cells))
    return "; ".join(out)


async def fault_memory(bot: Bot, args) -> str:
    await bot.report(0)
    await bot.wait_for(lambda: bool(ticket_numbers(bot, 0)), 30)
    await asyncio.sleep(1.0)
    before = bot.rss_mib()
    n = args.recipients
    first = 1000
    for start in range(0, n, 50):  # 50 at a time: a steady stream, not a burst
        await asyncio.gather(*(bot.report(first + i) for i in range(start, min(n, start + 50))))
        await asyncio.sleep(0.5)
    await bot.wait_for(lambda: all(ticket_numbers(bot, first + i) for i in range(n)), args.drain, step=1.0)
    told = sum(1 for i in range(n) if ticket_numbers(bot, first + i))
    await asyncio.sleep(2.0)
    after = bot.rss_mib()
    return (f"RSS {before:.0f} -> {after:.0f} MiB after {n} distinct recipients "
            f"({(after - before) * 1024 / max(n, 1):.1f} KiB each, {told}/{n} told their number; RSS includes "
            f"tickets' caches and SQLite pages: the per-recipient windows alone are not visible from outside)")


async def fault_dead_letter(bot: Bot, args) -> str:
    i = 300
    key = report_key(i)
    bot.sql(f"""CREATE TRIGGER fault_ticket BEFORE INSERT ON ticket
                WHEN instr(NEW.summary || ' ' || coalesce(NEW.serial, ''), '{key}') > 0
                BEGIN SELECT RAISE(ABORT, 'fault: ticket cannot be written'); END""")
    status = await bot.report(i, platform=1)

    def state() -> str | None:
        rows = bot.sql(f"SELECT status, attempts FROM inbox_event WHERE instr(payload, '{key}') > 0")
        return f"{rows[0][0]} after {rows[0][1]} attempts" if rows and rows[0][0] != "pending" else None

    await bot.wait_for(lambda: state() is not None, args.cap_dead, step=0.5)
    parked = state() or "still pending"
    bot.sql("DROP TRIGGER fault_ticket")
    env = dict(os.environ, RELAYDESK_DATA_DIR=str(bot.workdir / "data"), PYTHONPATH=str(bot.root))
    env.pop("RELAYDESK_DATABASE_URL", None)
    run = await asyncio.to_thread(subprocess.run, [sys.executable, str(bot.root / "run_bot.py"), "inbox", "retry",
                                                   "--config", str(bot.config_path), "--log-level", "WARNING"],
                                  cwd=str(bot.workdir), env=env, capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        retry = f"`inbox retry` not available on this build (exit {run.returncode})"
    else:
        await bot.wait_for(lambda: bool(ticket_numbers(bot, i)), 20)
        await asyncio.sleep(3.0)
        tickets = bot.sql(f"SELECT count(*) FROM ticket WHERE instr(summary || ' ' || coalesce(serial, ''), "
                          f"'{key}') > 0")[0][0]
        retry = f"`inbox retry` -> {tickets} ticket(s), customer told {len(ticket_numbers(bot, i))} number(s)"
    told_before = "" if run.returncode == 0 else f", customer told {len(ticket_numbers(bot, i))} number(s)"
    return f"callback {status}; event {parked}{told_before}; {retry}"


FAULTS = {
    1: ("kill -9 mid-send", fault_kill, False),
    2: ("bookkeeping write fails", fault_bookkeeping, False),
    3: ("IM outage", fault_outage, False),
    4: ("/healthz, writes fail", fault_healthz, False),
    5: ("hostile input", fault_hostile, True),
    6: ("memory per recipient", fault_memory, False),
    7: ("event failing 5 times", fault_dead_letter, False),
}


# ---- running and reporting -------------------------------------------------------------


@dataclass
class Build:
    label: str
    root: Path
    results: dict[int, str] = field(default_factory=dict)


def check_config(build: Build) -> str | None:
    """None when the build accepts the bench config, else its complaint."""
    probe = Bot(build.root, build.label)
    try:
        text = config_toml("http://127.0.0.1:9", f"sqlite+aiosqlite:///{probe.db_path}", workers=True)
        probe.config_path.write_text(text.replace("[playground]\nenabled = false", "[playground]\nenabled = true"),
                                     encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=str(build.root), RELAYDESK_DATA_DIR=str(probe.workdir / "data"))
        env.pop("RELAYDESK_DATABASE_URL", None)
        r = subprocess.run([sys.executable, str(build.root / "run_bot.py"), "check-config", "--config",
                            str(probe.config_path)], cwd=str(probe.workdir), env=env, capture_output=True,
                           text=True, timeout=120)
        return None if r.returncode == 0 else (r.stderr.strip() or r.stdout.strip())[-300:]
    finally:
        shutil.rmtree(probe.workdir, ignore_errors=True)


async def run_build(build: Build, args, only: list[int]) -> None:
    problem = await asyncio.to_thread(check_config, build)
    if problem:
        for n in only:
            build.results[n] = f"not measurable on this build: its config check refuses the bench config: {problem}"
        return
    for n in only:
        name, fn, playground = FAULTS[n]
        bot = Bot(build.root, f"{build.label}-{n}", playground=playground)
        try:
            await bot.start()
            build.results[n] = await fn(bot, args)
        except Exception as e:  # a fault that breaks the harness is reported, the others still run
            build.results[n] = f"not measured: {type(e).__name__}: {e}"
        finally:
            await bot.close(args.keep)
            if args.keep:
                build.results[n] += f" [kept {bot.workdir}]"
        print(f"[{build.label}] {n}. {name}: {build.results[n]}", flush=True)


async def run(args) -> int:
    only = sorted({int(x) for x in args.only.split(",")}) if args.only else sorted(FAULTS)
    builds = [Build("after", Path(args.root).resolve())]
    if args.vs:
        builds.insert(0, Build("before", Path(args.vs).resolve()))
    load = os.getloadavg()
    print(f"builds: {', '.join(f'{b.label}={b.root}' for b in builds)}; load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; outage {args.outage:.0f}s", flush=True)
    await asyncio.gather(*(run_build(b, args, only) for b in builds))
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("\n| fault | " + " | ".join(b.label for b in builds) + " |")
    print("|---|" + "---|" * len(builds))
    for n in only:
        cells = [b.results.get(n, "").replace("|", "/") for b in builds]
        print(f"| {n}. {FAULTS[n][0]} | " + " | ".join(cells) + " |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(ROOT), help="checkout whose run_bot.py is measured (default: this one)")
    p.add_argument("--vs", metavar="DIR", help="also measure this checkout (the 'before' build), side by side")
    p.add_argument("--only", help="comma-separated fault numbers (default: all, 1-7)")
    p.add_argument("--outage", type=float, default=10.0, help="fault 3: seconds the platforms fail (default 10)")
    p.add_argument("--recipients", type=int, default=500, help="fault 6: distinct customers (default 500)")
    p.add_argument("--cap", type=float, default=10.0, help="fault 5: seconds to wait for an answer (default 10)")
    p.add_argument("--cap-kill", type=float, default=90.0, help="fault 1: seconds to wait for the next card")
    p.add_argument("--cap-outage", type=float, default=200.0, help="fault 3: seconds to wait after recovery")
    p.add_argument("--cap-dead", type=float, default=90.0, help="fault 7: seconds to wait for the 5th attempt")
    p.add_argument("--settle", type=float, default=30.0, help="fault 2: seconds the write fails (default 30)")
    p.add_argument("--drain", type=float, default=180.0, help="fault 6: seconds to wait for every number")
    p.add_argument("--settle-dups", type=float, default=70.0,
                   help="fault 2: seconds to watch after it works again (default 70: past the 60 s lease)")
    p.add_argument("--keep", action="store_true", help="keep each fault's directory (config, database, bot log)")
    args = p.parse_args(argv)
    if not 0 < args.recipients <= MAX_RECIPIENTS:
        p.error(f"--recipients must be in (0, {MAX_RECIPIENTS}]")
    if not 0 < args.outage <= MAX_OUTAGE:
        p.error(f"--outage must be in (0, {MAX_OUTAGE}]")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
