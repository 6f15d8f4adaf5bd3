"""RelayDesk command line: serve the bot, classify reports, prepare the database.

    python run_bot.py [serve] [--config relaydesk.toml] [--host H] [--port N]
    python run_bot.py classify [--explain] [--taxonomy FILE] < reports.txt
    python run_bot.py init-db [--config relaydesk.toml]
    python run_bot.py check-config [--config relaydesk.toml]
    python run_bot.py report daily [--date D] [--team T] [--json] [--out DIR]
    python run_bot.py report month [--month YYYY-MM] [--json] [--out DIR]
    python run_bot.py worker [--config relaydesk.toml] [--slot N] [--roles inbox,outbox,escalation]
    python run_bot.py inbox list|retry [ID ...] [--config relaydesk.toml]
    python run_bot.py api-token create --name crm --scopes tickets:read,tickets:write
    python run_bot.py api-token list | revoke <id|name|prefix>
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_bot.py", description="RelayDesk: service tickets inside enterprise IM")
    sub = p.add_subparsers(dest="command")
    for name, help_text in (("serve", "run the bot (the default)"),
                            ("init-db", "create the database tables and exit"),
                            ("check-config", "validate the configuration and exit")):
        sp = sub.add_parser(name, help=help_text)
        _common(sp)
    sp = sub.add_parser("worker", help="apply accepted messages and deliver the outbox, without serving HTTP")
    _common(sp)
    sp.add_argument("--slot", default="1", help="this worker's number on this host (stable across restarts)")
    sp.add_argument("--roles", default="inbox,outbox,escalation", metavar="R[,R]",
                    help="which workers to run: inbox, outbox, escalation (default: all three)")
    sp = sub.add_parser("inbox", help="dead letters: accepted messages that could not be applied")
    _common(sp)
    sp.add_argument("action", choices=("list", "retry"))
    sp.add_argument("ids", nargs="*", type=int, help="retry only these (default: every dead letter)")
    sub.add_parser("classify", help="classify reports: one per line on stdin, JSON lines out", add_help=False)
    from api.cli import add_parser as add_api_token

    add_api_token(sub)
    _common(p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: the embedded demo setup)")
    p.add_argument("--host", help="listen address (overrides [server] host)")
    p.add_argument("--port", type=int, help="listen port (overrides [server] port)")
    p.add_argument("--log-level", default="INFO")


def _load(args):
    from bot.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"relaydesk: configuration error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    return config


def serve(args) -> int:
    config = _load(args)  # before the heavy imports: a bad config starts nothing

    from app.web import create_app
    from bot.server import serve_forever
    from storage.db import SchemaVersionError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler logs every run of the one-second sweep at INFO.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
    from bot.outbox import process_identity

    app = create_app(config, owner=process_identity(f"serve-{config.server.port}"))
    print(f"RelayDesk on http://{config.server.host}:{config.server.port}"
          + (f"  playground: http://{config.server.host}:{config.server.port}/playground"
             if config.playground.enabled else ""), flush=True)
    try:
        serve_forever(app, config.server.host, config.server.port)
    except SchemaVersionError as e:
        print(f"relaydesk: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def init_db(args) -> int:
    from storage.db import Database, SchemaVersionError

    config = _load(args)

    async def run() -> None:
        db = Database(config.database_url)
        try:
            await db.init()
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except SchemaVersionError as e:
        print(f"relaydesk: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"database ready: {config.database_url}")
    return 0


def worker(args) -> int:
    """The inbox and outbox workers and the escalation sweep (all, or those in --roles) in
    their own process, with the serving process running the others (`[server] workers`);
    several on PostgreSQL. SIGTERM or SIGINT stops it within the bounds of bot/server.py."""
    from bot.config import WORKER_ROLES, worker_roles

    roles = worker_roles(args.roles)
    unknown = [r for r in roles if r not in WORKER_ROLES]
    if unknown or not roles:
        print(f"relaydesk: --roles: {', '.join(unknown) or 'none given'}: choose from {', '.join(WORKER_ROLES)}",
              file=sys.stderr)
        return EXIT_CONFIG
    config = _load(args)
    from app.runtime import Runtime
    from bot.outbox import process_identity
    from bot.server import run_until_signal
    from storage.db import SchemaVersionError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
    rt = None

    async def start() -> None:
        nonlocal rt
        rt = Runtime(config, owner=process_identity(f"worker-{args.slot}"))
        if not rt.db.is_postgres:
            logging.getLogger("relaydesk").warning(
                "worker: on SQLite this process and the serving one take turns for the database's one write "
                "lock, and answers wait for it; several processes are for PostgreSQL (database_url)")
        await rt.start(workers=roles)
        print(f"RelayDesk worker {rt.owner} running: {', '.join(roles)}", flush=True)

    async def stop() -> None:
        await rt.stop()

    try:
        run_until_signal(start, stop)
    except SchemaVersionError as e:
        print(f"relaydesk: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def inbox(args) -> int:
    """`list`: the dead letters; `retry [ID ...]`: apply them again (all, or those named)."""
    config = _load(args)
    from app.runtime import Runtime

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> int:
        rt = Runtime(config)
        await rt.start(workers=False)
        try:
            if args.action == "list":
                rows = await rt.inbox.dead_letters()
                for r in rows:
                    print(f"{r.id}\t{r.platform}\t{r.event_id}\t{r.attempts} attempts\t"
                          f"{r.received_at:%Y-%m-%d %H:%M:%S}\t{r.last_error or ''}")
                print(f"{len(rows)} dead letter(s)")
                return 0
            n = await rt.inbox.retry(args.ids or None)
            await rt.inbox.drain()
            left = len(await rt.inbox.dead_letters())
            pending = await rt.inbox.backlog()
            print(f"retried {n} dead letter(s); {pending} waiting for a later attempt, {left} dead letter(s) left")
            return 0 if n and not pending else 1
        finally:
            await rt.stop()

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "classify":
        from nlp.cli import main as classify_main

        return classify_main(argv[1:])
    if argv and argv[0] == "report":
        from reports.cli import main as report_main

        return report_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "init-db":
        return init_db(args)
    if args.command == "worker":
        return worker(args)
    if args.command == "inbox":
        return inbox(args)
    if args.command == "api-token":
        from api.cli import run as api_token

        return api_token(args, _load(args))
    if args.command == "check-config":
        _load(args)
        print("configuration ok")
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
