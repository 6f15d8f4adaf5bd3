"""Config scaffolding shared by the tests: the common TOML around a platform section,
the demo directory (team "maint" and its people), written to a temporary file and loaded."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench.platforms import DEMO_PEOPLE, directory_toml  # noqa: E402
from bot.config import Config, load_config  # noqa: E402

__all__ = ["DEMO_PEOPLE", "config_toml", "directory_toml", "load_toml"]


def config_toml(db_url: str, *sections: str, top: str = "", server: str | None = None,
                playground: bool = False) -> str:
    """`database_url` (and the top-level keys in `top`), `[server]` when `server` is given,
    `[playground]`, then `sections` (platform section, directory, ...) in order."""
    parts = [f'database_url = "{db_url}"', top]
    if server is not None:
        parts += ["[server]", server]
    parts += ["[playground]", f"enabled = {'true' if playground else 'false'}", *sections]
    return "\n".join(p for p in parts if p) + "\n"


def load_toml(tmp_path: Path, text: str, name: str = "relaydesk.toml") -> Config:
    """Write `text` as a config file in `tmp_path` and load it (no environment overrides)."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={})
