"""Helpers for the API tests: a bot with the demo directory, tokens made by the
real command line, and an authorised client."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot.config import DEFAULT_CONFIG_PATH, load_config

ROOT = Path(__file__).resolve().parents[1]


def demo_config(tmp_path: Path, database_url: str, extra: str = "", **env):
    """The embedded demo config plus `extra` TOML, on `database_url`."""
    path = tmp_path / "relaydesk.toml"
    path.write_text(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8") + "\n" + extra, encoding="utf-8")
    environ = {"RELAYDESK_DATABASE_URL": database_url, **{k: str(v) for k, v in env.items()}}
    return load_config(path, env=environ), path


def cli(config_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess:
    """`python run_bot.py api-token ...` as a user runs it."""
    env = {**os.environ, "RELAYDESK_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, str(ROOT / "run_bot.py"), "api-token", *args, "--config", str(config_path)],
                          capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def new_token(config_path: Path, database_url: str, name: str, scopes: str) -> str:
    """A token made by the command line, as an administrator makes one."""
    r = cli(config_path, database_url, "create", "--name", name, "--scopes", scopes)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("rdk_") and "\n" not in token
    return token


async def quick_token(db, name: str, scopes: str) -> str:
    """The same token made in-process (the command line costs a second of start-up)."""
    from api.tokens import create_token, parse_scopes

    secret, _ = await create_token(db, name, parse_scopes(scopes))
    return secret


def auth(token: str, **headers) -> dict:
    return {"Authorization": f"Bearer {token}", **headers}
