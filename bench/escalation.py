"""Escalation sweep benchmark: N open tickets falling due over a minute.

    .venv/bin/python bench/escalation.py [--tickets 10000] [--spread 60] [--database-url URL]

Seeds N open P0 tickets (default 10 000) whose first escalation step falls due
evenly over `--spread` seconds, runs the real engine with its APScheduler
sweep (every second) until every step fired, and prints the lateness of each
step (commit time minus due time) p50/p99/max, the sweep cost, and checks that
every step fired exactly once. Without --database-url it uses a fresh SQLite
file; a postgresql+asyncpg:// URL runs on a scratch database created on that
server and dropped afterwards (--keep to keep it). The outbox is not
delivered (it would measure the channels, not the sweep).

Last line: p99_lateness_s=<x> tickets=<n>
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from bot.config import load_config  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def run(args) -> int:
    from app.runtime import Runtime
    from escalation.seed import seed_due_tickets
    from storage.models import OutboxMessage, TicketEvent

    scratch_pg = None
    tmp = None
    url = args.database_url
    if not url:
        tmp = tempfile.TemporaryDirectory(prefix="relaydesk-bench-")
        url = f"sqlite+aiosqlite:///{tmp.name}/bench.db"
    elif url.startswith("postgresql") and not args.no_scratch:
        base, _, _db = url.rpartition("/")
        admin = base.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
        scratch_pg = (admin, f"relaydesk_bench_{uuid.uuid4().hex[:8]}")
        await _admin(admin, f'CREATE DATABASE "{scratch_pg[1]}"')
        url = f"{base}/{scratch_pg[1]}"
    env = {"RELAYDESK_DATABASE_URL": url}
    if args.batch:
        env["RELAYDESK_ESCALATION__BATCH_SIZE"] = str(args.batch)
    config = load_config(args.config, env=env)
    config.playground.enabled = True
    rt = Runtime(config)
    try:
        await rt.start(workers=False)
        engine = rt.escalation
        lateness: list[float] = []
        engine.recorder = lateness.append
        sweeps: list[tuple[float, int]] = []
        real_sweep = engine.sweep

        async def timed_sweep() -> int:
            t0 = time.perf_counter()
            n = await real_sweep()
            sweeps.append((time.perf_counter() - t0, n))
            return n

        engine.sweep = timed_sweep  # type: ignore[method-assign]

        n = args.tickets
        margin = max(5.0, 4.0 + n / 1500)
        first_due = datetime.now(timezone.utc) + timedelta(seconds=margin)
        t0 = time.perf_counter()
        await seed_due_tickets(rt.db, config, n, first_due=first_due, spread=timedelta(seconds=args.spread))
        seeded = time.perf_counter() - t0
        print(f"database: {rt.db.dialect}  tickets: {n}  due over {args.spread:.0f}s  "
              f"batch: {rt.escalation.batch_size}  seeded in {seeded:.1f}s", flush=True)
        if datetime.now(timezone.utc) > first_due:
            print("warning: seeding took longer than the margin; early steps start late", flush=True)
        await engine.start()
        deadline = time.monotonic() + margin + args.spread + 120
        while len(lateness) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await engine.stop()
        async with rt.db.session() as s:
            events = (await s.exec(select(func.count()).select_from(TicketEvent)
                                   .where(TicketEvent.action == "escalation"))).one()[0]
            per_ticket = (await s.exec(select(func.count(func.distinct(TicketEvent.ticket_id)))
                                       .where(TicketEvent.action == "escalation"))).one()[0]
            outbox = (await s.exec(select(func.count()).select_from(OutboxMessage))).one()[0]
        busy = [d for d, k in sweeps if k]
        fired_total = sum(k for _, k in sweeps)
        print(f"fired: {len(lateness)}/{n}  escalation events: {events} on {per_ticket} tickets  "
              f"outbox rows: {outbox}")
        print(f"lateness s: p50={pct(lateness, 50):.3f} p99={pct(lateness, 99):.3f} max={max(lateness or [0]):.3f}")
        if busy:
            print(f"sweeps: {len(sweeps)} ({len(busy)} firing)  duration s: p50={pct(busy, 50):.3f} "
                  f"p99={pct(busy, 99):.3f} max={max(busy):.3f}  cost per step: "
                  f"{1000 * sum(busy) / max(1, fired_total):.2f} ms  mean fired/sweep: "
                  f"{statistics.mean(k for _, k in sweeps if k):.0f}")
        if args.verbose:
            print("sweeps (s, fired):", [(round(d, 2), k) for d, k in sweeps])
        ok = len(lateness) == n and events == n and per_ticket == n
        if not ok:
            print("ERROR: not every step fired exactly once", file=sys.stderr)
        print(f"p99_lateness_s={pct(lateness, 99):.3f} tickets={n}")
        return 0 if ok else 1
    finally:
        await rt.stop()
        if scratch_pg and not args.keep:
            await _admin(scratch_pg[0], f'DROP DATABASE IF EXISTS "{scratch_pg[1]}" WITH (FORCE)')
        if tmp is not None:
            tmp.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tickets", type=int, default=10_000)
    p.add_argument("--spread", type=float, default=60.0, help="seconds over which the steps fall due")
    p.add_argument("--database-url", default=os.environ.get("RELAYDESK_BENCH_DATABASE_URL"))
    p.add_argument("--config", help="a RelayDesk config (default: the embedded demo)")
    p.add_argument("--batch", type=int, help="[escalation] batch_size (default: 25 SQLite, 50 PostgreSQL)")
    p.add_argument("--no-scratch", action="store_true", help="use the PostgreSQL database as given")
    p.add_argument("--keep", action="store_true", help="keep the scratch PostgreSQL database")
    p.add_argument("--verbose", action="store_true", help="print every sweep")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
