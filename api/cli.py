"""`python run_bot.py api-token create|list|revoke`: API tokens from the shell.

    api-token create --name crm --scopes tickets:read,tickets:write   # prints the token once
    api-token list
    api-token revoke <id | name | prefix>
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from api.tokens import SCOPES, TokenError, create_token, list_tokens, parse_scopes, revoke_token
from storage.db import Database


def add_parser(sub) -> None:
    p = sub.add_parser("api-token", help="create, list or revoke API tokens")
    actions = p.add_subparsers(dest="action", required=True)
    c = actions.add_parser("create", help="create a token and print it (once)")
    c.add_argument("--name", required=True, help="the system it is for, e.g. crm")
    c.add_argument("--scopes", required=True, help="comma-separated: " + ", ".join(SCOPES))
    actions.add_parser("list", help="list tokens (never their secrets)")
    r = actions.add_parser("revoke", help="revoke by id, name (all of its tokens) or prefix")
    r.add_argument("ref")
    for q in (c, r, actions.choices["list"]):
        q.add_argument("--config", help="TOML config file (default: the embedded demo setup)")
        q.add_argument("--log-level", default="WARNING")
        q.add_argument("--host", help=argparse.SUPPRESS)
        q.add_argument("--port", type=int, help=argparse.SUPPRESS)


def run(args, config) -> int:
    return asyncio.run(_run(args, Database(config.database_url)))


async def _run(args, db: Database) -> int:
    try:
        await db.init()
        if args.action == "create":
            try:
                secret, row = await create_token(db, args.name, parse_scopes(args.scopes))
            except TokenError as e:
                print(f"relaydesk: api-token: {e}", file=sys.stderr)
                return 2
            print(secret)
            print(f"token {row.id} for {row.name} ({', '.join(row.scopes)}); it is not shown again", file=sys.stderr)
            return 0
        if args.action == "list":
            for row in await list_tokens(db):
                state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
                print(f"{row.id}\t{row.name}\t{row.prefix}…\t{','.join(row.scopes)}\t"
                      f"created {row.created_at:%Y-%m-%d %H:%M}\t{state}")
            return 0
        revoked = await revoke_token(db, args.ref)
        if not revoked:
            print(f"relaydesk: api-token: no active token matches {args.ref!r}", file=sys.stderr)
            return 1
        for row in revoked:
            print(f"revoked {row.id} {row.name} {row.prefix}…")
        return 0
    finally:
        await db.dispose()
