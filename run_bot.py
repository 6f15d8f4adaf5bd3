"""RelayDesk command line: serve the bot, classify reports, prepare the database.

    python run_bot.py [serve] [--config relaydesk.toml] [--host H] [--port N]
    python run_bot.py classify [--explain] [--taxonomy FILE] < reports.txt
    python run_bot.py init-db [--config relaydesk.toml]
    python run_bot.py check-config [--config relaydesk.toml]
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

    from bot.app import create_app
    from bot.server import serve_forever
    from storage.db import SchemaVersionError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler logs every run of the one-second sweep at INFO.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
    app = create_app(config)
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "classify":
        from nlp.cli import main as classify_main

        return classify_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "init-db":
        return init_db(args)
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
