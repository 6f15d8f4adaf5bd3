"""Callback load generator: drives a running bot with signed, encrypted platform callbacks.

    .venv/bin/python bench/callbacks.py --platform wecom --rate 200 --seconds 10

What it does, all on 127.0.0.1:
  1. serves a fake platform API (token + send endpoints, from bench/platforms/<p>.py)
     on a free port and records every request it receives;
  2. writes a bot config whose `api_base` points at that fake API and starts
     `run_bot.py --config <tmp.toml> --port <free>` as a subprocess (own SQLite
     database in a temporary directory), waiting for /healthz;
  3. sends text-report callbacks, each from a different customer, at the given
     rate (open loop: request i is due at start + i/rate, whatever happened to
     earlier ones), then waits for the engineer cards to reach the fake API;
  4. prints ack latency (from the moment a callback was due to its HTTP answer)
     p50/p99/max (a callback not answered 200 counts with the time it took to
     fail, at most --timeout), answer statuses, throughput, and report-to-card
     time (from sending a report to the fake API receiving the engineer card).

The last line is `p99_ack_ms=<n> rate=<n>/s` (rate = callbacks answered 200
per second over the sending period). Bounded: at most 2000/s, 120 s, loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.platforms import load  # noqa: E402

HOST = "127.0.0.1"
MAX_RATE = 2000
MAX_SECONDS = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))
    return xs[k]


class Recorder:
    """What the fake API saw: request counts per path and the first engineer card per report."""

    def __init__(self, module):
        self.module = module
        self.paths: dict[str, int] = {}
        self.card_at: dict[str, float] = {}

    def __call__(self, path: str, body: bytes) -> None:
        now = time.perf_counter()
        self.paths[path] = self.paths.get(path, 0) + 1
        key = self.module.is_card_send(path, body)
        if key and key not in self.card_at:
            self.card_at[key] = now


async def start_fake_api(module, recorder: Recorder) -> tuple[web.AppRunner, str]:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.add_routes(module.fake_api_routes(recorder))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    return runner, f"http://{HOST}:{port}"


def start_bot(config_path: Path, port: int, workdir: Path, log_path: Path, *, root: Path = ROOT,
              append: bool = False) -> subprocess.Popen:
    """`run_bot.py` of the checkout at `root` (its own modules first on the path), logging to `log_path`."""
    env = dict(os.environ)
    env["RELAYDESK_DATA_DIR"] = str(workdir / "data")
    env.pop("RELAYDESK_DATABASE_URL", None)
    env["PYTHONPATH"] = str(root)
    logf = open(log_path, "ab" if append else "wb")
    return subprocess.Popen(
        [sys.executable, str(root / "run_bot.py"), "--config", str(config_path), "--host", HOST,
         "--port", str(port), "--log-level", "WARNING"],
        cwd=str(workdir), env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
    )


async def wait_healthy(session: aiohttp.ClientSession, base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the bot exited with status {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.get(f"{base}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the bot did not become healthy within {timeout:.0f}s")


async def drive(session: aiohttp.ClientSession, base: str, requests: list, rate: float,
                timeout: float) -> tuple[list[float], dict, dict[int, float], float, float, float]:
    """Open-loop sending. Returns ack latencies (s), status counts, send time per index, start, end, max lag."""
    latencies: list[float] = []
    statuses: dict = {}
    sent_at: dict[int, float] = {}
    max_lag = 0.0
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def one(i: int, due: float, path: str, headers: dict, body: bytes) -> None:
        nonlocal max_lag
        max_lag = max(max_lag, time.perf_counter() - due)
        sent_at[i] = due
        try:
            async with session.post(base + path, data=body, headers=headers, timeout=client_timeout) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            status = type(e).__name__
        done = time.perf_counter()
        statuses[status] = statuses.get(status, 0) + 1
        # Every callback counts: an error or a timeout is an ack that took at least this long.
        latencies.append(done - due)

    tasks = []
    start = time.perf_counter() + 0.05
    for n, (i, (path, headers, body)) in enumerate(requests):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due, path, headers, body)))
    await asyncio.gather(*tasks)
    end = time.perf_counter()
    return latencies, statuses, sent_at, start, end, max_lag


async def run(args) -> int:
    module = load(args.platform)
    recorder = Recorder(module)
    workdir = Path(tempfile.mkdtemp(prefix=f"relaydesk-bench-{args.platform}-"))
    proc = None
    runner = None
    pg_name = None
    try:
        runner, fake_base = await start_fake_api(module, recorder)
        if args.postgres:
            pg_name = f"relaydesk_bench_{os.getpid()}_{int(time.time())}"
            await pg_admin(args.postgres, f'CREATE DATABASE "{pg_name}"')
            db_url = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + pg_name
        else:
            db_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        print(f"database: {db_url.split('@')[-1]}", flush=True)
        config_path = workdir / "bench.toml"
        config_path.write_text(module.config_toml(fake_base, db_url), encoding="utf-8")
        port = free_port()
        base = f"http://{HOST}:{port}"
        proc = start_bot(config_path, port, workdir, workdir / "bot.log")
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_healthy(session, base, proc, args.startup_timeout)
            total = int(args.rate * args.seconds)
            warm = max(0, args.warmup)
            # Warm-up (not counted): first requests pay for lazy imports, the token, SQLite's cache.
            if warm:
                warm_reqs = [(10**6 + i, module.make_report(10**6 + i)) for i in range(warm)]
                await drive(session, base, warm_reqs, min(args.rate, 50), args.timeout)
                await asyncio.sleep(1.0)
            requests = [(i, module.make_report(i)) for i in range(total)]
            print(f"platform={args.platform} rate={args.rate:g}/s seconds={args.seconds:g} "
                  f"callbacks={total} bot={base} fake_api={fake_base}", flush=True)
            latencies, statuses, sent_at, start, end, max_lag = await drive(
                session, base, requests, args.rate, args.timeout)
            keys = {i: key for i, key in ((i, _key(i)) for i in range(total))}
            deadline = time.monotonic() + args.drain
            while time.monotonic() < deadline:
                if all(k in recorder.card_at for k in keys.values()):
                    break
                await asyncio.sleep(0.2)
        card_times = [recorder.card_at[k] - sent_at[i] for i, k in keys.items()
                      if k in recorder.card_at and i in sent_at]
        ok = statuses.get(200, 0)
        period = max(end - start, 1e-9)
        throughput = ok / period
        ms = [x * 1000 for x in latencies]
        print(f"answers: {dict(sorted(statuses.items(), key=str))}")
        print(f"ack latency ms: p50={pct(ms, 50):.1f} p90={pct(ms, 90):.1f} p99={pct(ms, 99):.1f} "
              f"max={max(ms) if ms else float('nan'):.1f} (client schedule lag max {max_lag * 1000:.1f} ms)")
        print(f"throughput: {throughput:.1f} callbacks/s answered 200 over {period:.2f} s")
        if card_times:
            cms = [x * 1000 for x in card_times]
            print(f"report-to-card ms: p50={pct(cms, 50):.0f} p99={pct(cms, 99):.0f} max={max(cms):.0f} "
                  f"mean={statistics.fmean(cms):.0f} ({len(cms)}/{total} cards seen)")
        else:
            print(f"report-to-card: no engineer card seen (0/{total})")
        print("fake API requests: " + ", ".join(f"{p}={n}" for p, n in sorted(recorder.paths.items())))
        if args.keep:
            print(f"kept: {workdir}")
        print(f"p99_ack_ms={pct(ms, 99):.1f} rate={throughput:.1f}/s")
        return 0 if ok == total else 1
    finally:
        killed = False
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                killed = True
                print("the bot did not stop within 10 s of SIGTERM (still working off its backlog): killed",
                      file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if runner is not None:
            await runner.cleanup()
        if pg_name:
            await pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        if proc is not None and not killed and proc.returncode not in (0, -signal.SIGTERM, None):
            print(f"the bot exited with status {proc.returncode}", file=sys.stderr)
            log = workdir / "bot.log"
            if log.exists():
                tail = log.read_text(errors="replace")[-3000:]
                print(f"bot log (tail):\n{tail}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


async def pg_admin(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _key(i: int) -> str:
    from bench.platforms import report_key

    return report_key(i)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--platform", required=True, help="wecom | feishu | dingtalk")
    p.add_argument("--rate", type=float, default=200.0, help="callbacks per second (default 200)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to send (default 10)")
    p.add_argument("--warmup", type=int, default=20, help="uncounted callbacks sent first (default 20)")
    p.add_argument("--concurrency", type=int, default=512, help="client connection limit")
    p.add_argument("--timeout", type=float, default=10.0, help="per-callback timeout, seconds")
    p.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last cards")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (config, db, bot log)")
    p.add_argument("--postgres", metavar="ADMIN_URL",
                   help="run on a fresh database on this PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432/"
                        "postgres), dropped afterwards; default: SQLite in the temporary directory")
    args = p.parse_args(argv)
    if not 0 < args.rate <= MAX_RATE:
        p.error(f"--rate must be in (0, {MAX_RATE}]")
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if args.postgres:
        from urllib.parse import urlsplit

        if urlsplit(args.postgres).hostname not in ("127.0.0.1", "localhost", "::1"):
            p.error("--postgres must be a server on this machine (loopback only)")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
