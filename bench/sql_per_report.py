"""SQL statements per report: accept (the callback), apply (the inbox), deliver (the outbox).

    .venv/bin/python bench/sql_per_report.py [--reports 50] [--postgres ADMIN_URL]

Runs the bot in-process with the embedded demo setup (playground channel,
SQLite in a temporary directory or a fresh PostgreSQL database), sends
`--reports` text reports from distinct new customers, applies them and
delivers every message, counting the statements each phase sends to the
database (a cursor hook on the engine) and the process's CPU time. Prints
statements and CPU milliseconds per report for each phase (CPU time does not
depend on how busy the machine is); the last line is `statements_per_report=<n>`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402

from app.runtime import Runtime  # noqa: E402
from bot.config import load_config  # noqa: E402
from bot.events import Address, InboundEvent  # noqa: E402

TEXTS = ("3号线水泵漏水停机了，设备编号 P-{i}", "配电柜跳闸了，整个车间没电，编号 D-{i}",
         "空压机压力上不去，报警E203，设备 C-{i}")


async def run(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="relaydesk-sql-"))
    pg_name = None
    if args.postgres:
        from bench.callbacks import pg_admin

        pg_name = f"relaydesk_sql_{os.getpid()}_{int(time.time())}"
        await pg_admin(args.postgres, f'CREATE DATABASE "{pg_name}"')
        url = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + pg_name
    else:
        url = f"sqlite+aiosqlite:///{tmp}/sql.db"
    config = load_config(None, env={"RELAYDESK_DATABASE_URL": url, "RELAYDESK_DATA_DIR": str(tmp),
                                    "RELAYDESK_ALLOW_UNKNOWN_REPORTERS": "true"})
    rt = Runtime(config)
    await rt.start(workers=False)
    rt.bot.defer_inbound = True
    counts = {"n": 0}

    @event.listens_for(rt.db.engine.sync_engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany):
        if not statement.lstrip().upper().startswith(("PRAGMA", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT",
                                                      "RELEASE")):
            counts["n"] += 1

    phases = {}
    cpu = {}
    try:
        # Warm-up report (not counted): first-use queries, caches.
        await rt.bot(InboundEvent(platform="playground", event_id="warm", sender_id="warm",
                                  conversation=Address("playground", "user", "warm"), kind="text",
                                  text=TEXTS[0].format(i="warm")))
        await rt.inbox.drain()
        await rt.outbox.drain()
        n = args.reports
        for phase in ("accept", "apply", "deliver"):
            counts["n"] = 0
            started = time.process_time()
            if phase == "accept":
                for i in range(n):
                    sender = f"c{i}"
                    await rt.bot(InboundEvent(platform="playground", event_id=f"e{i}", sender_id=sender,
                                              conversation=Address("playground", "user", sender), kind="text",
                                              text=TEXTS[i % len(TEXTS)].format(i=i)))
            elif phase == "apply":
                await rt.inbox.drain()
            else:
                await rt.outbox.drain()
            phases[phase] = counts["n"] / n
            cpu[phase] = (time.process_time() - started) * 1000 / n
    finally:
        await rt.stop()
        if pg_name:
            from bench.callbacks import pg_admin

            await pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    total = sum(phases.values())
    print(f"database: {'postgresql' if args.postgres else 'sqlite'}, {args.reports} reports")
    for phase, v in phases.items():
        print(f"{phase:>8}: {v:.1f} statements, {cpu[phase]:.2f} ms CPU per report")
    print(f"statements_per_report={total:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reports", type=int, default=50)
    p.add_argument("--postgres", metavar="ADMIN_URL")
    args = p.parse_args(argv)
    if not 1 <= args.reports <= 2000:
        p.error("--reports must be in [1, 2000]")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
