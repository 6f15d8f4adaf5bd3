"""End-to-end load: reports in through all three platforms, ticket numbers out.

    .venv/bin/python bench/pipeline.py --rate 100 --seconds 10
    .venv/bin/python bench/pipeline.py --burst 40
    .venv/bin/python bench/pipeline.py --rate 100 --seconds 10 --postgres postgresql://postgres@127.0.0.1:5432/postgres --worker inbox --worker outbox,escalation

What it does, all on 127.0.0.1:
  1. serves one fake API for WeCom, Feishu and DingTalk together (the routes of
     bench/platforms/*.py, each answering after --api-latency) and records
     every request it receives with its time;
  2. starts `run_bot.py` with all three platforms configured against it, the
     engineers' group on each platform, the platforms' own per-recipient limits
     (nothing lifted), and its own database (SQLite in a temporary directory,
     or a fresh PostgreSQL database with --postgres); with worker processes
     (--workers N, or one --worker ROLES per process) the serving process
     answers and runs the workers named by --serve (default none: `[server]
     workers = []`) and the worker processes run the others (`--roles`);
  3. sends signed, encrypted text reports, each from a distinct new customer,
     round-robin over the three platforms, open loop at --rate for --seconds;
  4. waits until every customer got a message carrying their ticket number
     (or --drain seconds) and prints ack p50/p99, the rate achieved, report ->
     customer-number p50/p99 and how many arrived, and the CPU seconds the bot
     used for them. CPU does not count time spent waiting for the machine, but it
     still changes from run to run: a bot that falls further behind does more
     work per report (more sweeps, more folding), so compare medians of runs.

The last line is `rate=<r> ack_p99_ms=<x> number_p99_s=<y> numbers=<got>/<sent>`.

`--burst N` sends N reports about one place at once ("3号线停电", distinct
customers) and prints how many tickets resulted (distinct numbers the customers
were told), and the cards and messages each engineer, lead, director and
engineers' group received.

Bounded: at most 1000 reports/s, 60 s, 1000 in a burst, loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.callbacks import HOST, drive, free_port, pct, pg_admin, start_bot, wait_healthy  # noqa: E402
from bench.platforms import dingtalk, feishu, wecom  # noqa: E402
from bot.config import WORKER_ROLES, worker_roles  # noqa: E402

MAX_RATE, MAX_SECONDS, MAX_BURST = 1000, 60, 1000
NUMBER = re.compile(r"SRV-\d{8}-\d{5}-[0-9A-Z]{3}")
PLATFORMS = (wecom, feishu, dingtalk)
BURST_TEXTS = ("3号线停电了，整条线都停了", "3号线突然停电，设备全停", "3号线没电了，赶紧来人",
               "3号线停电，配电柜跳闸了")

# Staff ids per platform (the same people on all three).
STAFF = {
    "eng_zhang": ("张工", "engineer", {"wecom": "zhangsan", "feishu": "ou_bench_zhang", "dingtalk": "u_zhang"}),
    "eng_li": ("李工", "engineer", {"wecom": "lisi", "feishu": "ou_bench_li", "dingtalk": "u_li"}),
    "lead_zhao": ("赵组长", "lead", {"wecom": "zhaozz", "feishu": "ou_bench_lead", "dingtalk": "u_zhao"}),
    "director_sun": ("孙总监", "director", {"wecom": "sunzj", "feishu": "ou_bench_sun", "dingtalk": "u_sun"}),
}


def config_toml(fake: str, db_url: str, *, workers: tuple[str, ...]) -> str:
    """All three platforms against the fake API; the platforms' own limits stay in force."""
    sections = []
    for module in PLATFORMS:
        text = module.config_toml(fake, db_url)
        name = module.__name__.rsplit(".", 1)[1]
        start = text.index(f"[{name}]")
        sections.append(text[start:text.index("[[teams]]", start)].strip())
    people = []
    for pid, (name, role, ids) in STAFF.items():
        lines = ["[[people]]", f'id = "{pid}"', f'name = "{name}"', f'role = "{role}"', 'team = "maint"',
                 'region = "华东"']
        if role == "engineer":
            lines.append('skills = ["泵", "电气", "变频器", "空压机", "PLC"]')
        lines.append("identities = { " + ", ".join(f'{k} = "{v}"' for k, v in ids.items()) + " }")
        people.append("\n".join(lines))
    return f'''database_url = "{db_url}"
allow_unknown_reporters = true

[server]
host = "127.0.0.1"
workers = {json.dumps(list(workers))}

[playground]
enabled = false

[outbox]
poll_interval = "200ms"

''' + "\n\n".join(sections) + f'''

[[teams]]
id = "maint"
name = "维修一组"
region = "华东"
skills = ["泵", "电气", "变频器", "空压机", "PLC"]
lead = "lead_zhao"
director = "director_sun"
groups = {{ wecom = "{wecom.ENGINEERS_CHAT}", feishu = "{feishu.ENGINEERS_CHAT}", dingtalk = "{dingtalk.ENGINEERS_CHAT}" }}

''' + "\n\n".join(people) + "\n"


class Api:
    """What the fake API received: per request its time, and who it was for."""

    def __init__(self) -> None:
        self.requests = 0
        self.number_at: dict[int, tuple[float, str]] = {}  # customer index -> (time, number)
        self.to: Counter = Counter()  # (recipient, kind) -> messages
        self.latency = 0.0

    def customer(self, path_qs: str, doc: dict) -> int | None:
        """The customer index a send is addressed to, if it is to a bench customer."""
        blob = path_qs + " " + json.dumps(doc, ensure_ascii=False)
        for pattern in (r"bench_cust_(\d+)", r"ou_bench_c(\d{6})", r"session=bench(\d+)", r"om_bench_(\d{6})_"):
            m = re.search(pattern, blob)
            if m:
                return int(m.group(1))
        return None

    def staff(self, path_qs: str, doc: dict) -> str | None:
        """The engineers' group (first: its posts @ people) or the staff member a send is for."""
        blob = path_qs + " " + json.dumps(doc, ensure_ascii=False)
        for module in PLATFORMS:
            if module.ENGINEERS_CHAT in blob:
                return f"group:{module.__name__.rsplit('.', 1)[1]}"
        for pid, (_, _, ids) in STAFF.items():
            if any(f'"{v}"' in blob or f"={v}" in blob for v in ids.values()):
                return pid
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        body = await request.read()
        now = time.perf_counter()
        self.requests += 1
        if request.method in ("POST", "PUT", "PATCH") and "token" not in request.path.lower():
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                doc = {}
            text = json.dumps(doc, ensure_ascii=False)
            i = self.customer(request.path_qs, doc)
            m = NUMBER.search(text)
            if i is not None and m and i not in self.number_at:
                self.number_at[i] = (now, m.group(0))
            who = self.staff(request.path_qs, doc) if i is None else None
            if who:
                card = any(k in text for k in ("template_card", "interactive", "cardData", "markdown",
                                               "sampleMarkdown", "sampleActionCard"))
                self.to[(who, "card" if card else "message")] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        return await handler(request)


async def start_api(api: Api) -> tuple[web.AppRunner, str]:
    app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[api.middleware])
    for module in PLATFORMS:
        app.add_routes(module.fake_api_routes(lambda path, body: None))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    return runner, f"http://{HOST}:{port}"


def burst_report(i: int) -> tuple[str, dict[str, str], bytes]:
    """Report i of a burst: one place, a distinct customer, round-robin over the platforms."""
    module = PLATFORMS[i % 3]
    text = BURST_TEXTS[i % len(BURST_TEXTS)]
    if module is feishu:
        saved = feishu.report_text
        feishu.report_text = lambda _i: text
        try:
            return feishu.make_report(i)
        finally:
            feishu.report_text = saved
    saved_reports = module.REPORTS
    module.REPORTS = (text,)
    try:
        return module.make_report(i)
    finally:
        module.REPORTS = saved_reports


def start_worker(config_path: Path, slot: int, workdir: Path, roles: tuple[str, ...]) -> subprocess.Popen:
    env = dict(os.environ)
    env["RELAYDESK_DATA_DIR"] = str(workdir / "data")
    env.pop("RELAYDESK_DATABASE_URL", None)
    logf = open(workdir / f"worker{slot}.log", "wb")
    return subprocess.Popen([sys.executable, str(ROOT / "run_bot.py"), "worker", "--config", str(config_path),
                             "--slot", str(slot), "--roles", ",".join(roles), "--log-level", "WARNING"],
                            cwd=str(workdir), env=env,
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)


def cpu_seconds(proc: subprocess.Popen) -> float:
    """User + system CPU seconds a running bot process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def run(args) -> int:
    api = Api()
    workdir = Path(tempfile.mkdtemp(prefix="relaydesk-pipeline-"))
    procs: list[subprocess.Popen] = []
    runner = None
    pg_name = None
    try:
        runner, fake = await start_api(api)
        if args.postgres:
            pg_name = f"relaydesk_pipeline_{os.getpid()}_{int(time.time())}"
            await pg_admin(args.postgres, f'CREATE DATABASE "{pg_name}"')
            db_url = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + pg_name
        else:
            db_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        config_path = workdir / "bench.toml"
        serve_roles = worker_roles(args.serve) if args.workers else WORKER_ROLES
        rest = tuple(r for r in WORKER_ROLES if r not in serve_roles)
        worker_sets = [worker_roles(w) for w in args.worker] or [rest] * args.workers
        config_path.write_text(config_toml(fake, db_url, workers=serve_roles), encoding="utf-8")
        port = free_port()
        base = f"http://{HOST}:{port}"
        procs.append(start_bot(config_path, port, workdir, workdir / "bot.log"))
        for slot, roles in enumerate(worker_sets, 1):
            procs.append(start_worker(config_path, slot, workdir, roles))
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_healthy(session, base, procs[0], args.startup_timeout)
            if args.warmup:  # not counted: lazy imports, tokens, caches
                warm = [(10**5 + i, PLATFORMS[i % 3].make_report(10**5 + i)) for i in range(args.warmup)]
                await drive(session, base, warm, 20, args.timeout)
                await asyncio.sleep(3.0)
            api.latency = args.api_latency
            api.to.clear()
            if args.burst:
                total = args.burst
                requests = [(i, burst_report(i)) for i in range(total)]
                rate = float(MAX_RATE)
            else:
                total = int(args.rate * args.seconds)
                requests = [(i, PLATFORMS[i % 3].make_report(i)) for i in range(total)]
                rate = args.rate
            layout = (f"serving process: {', '.join(serve_roles) or 'answers only'}; worker processes: "
                      + "; ".join(", ".join(w) for w in worker_sets)
                      if worker_sets else "workers: in the serving process")
            print(f"database: {db_url.split('@')[-1].split('///')[-1]}  {layout}  "
                  f"api latency: {args.api_latency * 1000:.0f} ms", flush=True)
            print(f"sending {total} reports" + (" at once" if args.burst else f" at {rate:g}/s"), flush=True)
            cpu_start = [cpu_seconds(p) for p in procs]
            latencies, statuses, sent_at, start, end, max_lag = await drive(session, base, requests, rate,
                                                                            args.timeout)
            deadline = time.monotonic() + args.drain
            while time.monotonic() < deadline and len([i for i in sent_at if i in api.number_at]) < total:
                await asyncio.sleep(0.2)
            if args.burst:
                await asyncio.sleep(args.settle)  # let the cards to staff follow
            # The bot's CPU for these reports: until the fake API has heard nothing for a second
            # (the cards to staff follow the numbers). It leaves out time spent waiting for the CPU.
            seen, quiet_since = api.requests, time.monotonic()
            while time.monotonic() < deadline and time.monotonic() - quiet_since < 1.0:
                await asyncio.sleep(0.1)
                if api.requests != seen:
                    seen, quiet_since = api.requests, time.monotonic()
            cpus = [cpu_seconds(p) - c for p, c in zip(procs, cpu_start)]
            cpu = sum(cpus)
        ok = statuses.get(200, 0)
        ms = [x * 1000 for x in latencies]
        numbers = [api.number_at[i][0] - sent_at[i] for i in sent_at if i in api.number_at]
        got = len(numbers)
        throughput = ok / max(end - start, 1e-9)
        print(f"answers: {dict(sorted(statuses.items(), key=str))}")
        print(f"ack ms: p50={pct(ms, 50):.1f} p99={pct(ms, 99):.1f} max={max(ms):.1f} "
              f"(client schedule lag max {max_lag * 1000:.1f} ms)")
        print(f"rate achieved: {throughput:.1f} reports/s answered 200")
        if numbers:
            print(f"report -> customer number s: p50={pct(numbers, 50):.2f} p99={pct(numbers, 99):.2f} "
                  f"max={max(numbers):.2f} ({got}/{total} arrived)")
        else:
            print(f"report -> customer number: none arrived (0/{total})")
        if args.burst:
            tickets = {api.number_at[i][1] for i in sent_at if i in api.number_at}
            print(f"tickets: {len(tickets)} (distinct numbers told to {got} customers)")
            for who in sorted({w for w, _ in api.to}):
                print(f"  {who}: {api.to[(who, 'card')]} cards, {api.to[(who, 'message')]} messages")
        print(f"fake API requests: {api.requests}")
        print(f"bot CPU: {cpu:.2f} s for {total} reports ({cpu * 1000 / total:.2f} ms per report, "
              f"{total / max(cpu, 1e-9):.0f} reports per CPU-second)"
              + (f"; serving {cpus[0]:.2f} s, " + ", ".join(f"worker {i} {c:.2f} s" for i, c in enumerate(cpus[1:], 1))
                 if len(cpus) > 1 else ""))
        p99 = pct(numbers, 99) if numbers else float("nan")
        print(f"rate={throughput:.1f} ack_p99_ms={pct(ms, 99):.1f} number_p99_s={p99:.2f} numbers={got}/{total}")
        return 0 if got == total and ok == total else 1
    finally:
        for proc in procs:
            stop(proc)
        if runner is not None:
            await runner.cleanup()
        if pg_name:
            await pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="reports per second (default 100)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to send (default 10)")
    p.add_argument("--burst", type=int, default=0, metavar="N", help="send N reports about one place at once")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="N worker processes (default: none, every worker in the serving process)")
    p.add_argument("--worker", action="append", default=[], metavar="R[,R]",
                   help="one worker process running these workers (repeat for more; instead of --workers)")
    p.add_argument("--serve", default="", metavar="R[,R]",
                   help="with worker processes: the workers the serving process keeps (e.g. inbox; default none)")
    p.add_argument("--api-latency", type=float, default=0.02, help="fake API answer delay, seconds (default 0.02)")
    p.add_argument("--warmup", type=int, default=30, help="uncounted reports sent first (default 30)")
    p.add_argument("--concurrency", type=int, default=512, help="client connection limit")
    p.add_argument("--timeout", type=float, default=10.0, help="per-callback timeout, seconds")
    p.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last numbers")
    p.add_argument("--settle", type=float, default=5.0, help="burst: seconds to wait for staff messages")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (config, db, logs)")
    p.add_argument("--postgres", metavar="ADMIN_URL", help="a fresh database on this PostgreSQL server (loopback)")
    args = p.parse_args(argv)
    if not 0 < args.rate <= MAX_RATE:
        p.error(f"--rate must be in (0, {MAX_RATE}]")
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 0 <= args.burst <= MAX_BURST:
        p.error(f"--burst must be in [0, {MAX_BURST}]")
    if args.workers and args.worker:
        p.error("give either --workers N or --worker ROLES (repeated)")
    if args.serve and not (args.workers or args.worker):
        p.error("--serve needs worker processes (--workers or --worker)")
    for given in [args.serve, *args.worker]:
        if set(worker_roles(given)) - set(WORKER_ROLES) or (given in args.worker and not worker_roles(given)):
            p.error(f"roles: choose from {', '.join(WORKER_ROLES)} (got {given!r})")
    if args.workers and set(worker_roles(args.serve)) == set(WORKER_ROLES):
        p.error("--serve keeps every worker: nothing is left for --workers")
    if args.worker:
        running = set(worker_roles(args.serve)).union(*(worker_roles(w) for w in args.worker))
        if running != set(WORKER_ROLES):
            p.error(f"nobody runs: {', '.join(r for r in WORKER_ROLES if r not in running)}")
        args.workers = len(args.worker)
    if args.workers and not args.postgres and args.workers > 1:
        p.error("several --workers need --postgres (SQLite is for one process)")
    if args.postgres:
        from urllib.parse import urlsplit

        if urlsplit(args.postgres).hostname not in ("127.0.0.1", "localhost", "::1"):
            p.error("--postgres must be a server on this machine (loopback only)")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
