"""Platform modules for bench/callbacks.py.

Each module `bench/platforms/<platform>.py` provides:

    config_toml(fake_api_base: str, db_url: str) -> str
        The whole bot config for a run: the platform's section with `api_base`
        pointing at the fake API, `[playground] enabled = false`, a team whose
        engineers' group is on this platform, and people. Generous outbox
        limits are fine: the fake API has none.
    make_report(i: int) -> tuple[str, dict[str, str], bytes]
        Path + query, headers and body of a callback carrying a text report
        from customer i (a distinct sender per i), signed and encrypted exactly
        as the platform does. The report text must contain `report_key(i)`.
    is_card_send(path: str, body: bytes) -> str | None
        For a request the fake API received: the `report_key` of the report it
        is the engineer card for, else None (the harness times report -> card).
    fake_api_routes(record) -> list[aiohttp.web.RouteDef]
        The token endpoint and the send endpoints, answering success;
        `record(path, body)` is called for every request received.

A module may also define `WARMUP_TEXT` (unused by the harness otherwise).
"""
from __future__ import annotations

import importlib
from types import ModuleType

PLATFORMS = ("wecom", "feishu", "dingtalk")


def report_key(i: int) -> str:
    """The marker a report carries and its engineer card repeats (a fake device serial)."""
    return f"BX{i:06d}"


def find_report_key(text: str) -> str | None:
    import re

    m = re.search(r"BX\d{6}", text)
    return m.group(0) if m else None


def load(platform: str) -> ModuleType:
    if platform not in PLATFORMS:
        raise SystemExit(f"unknown platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
    return importlib.import_module(f"bench.platforms.{platform}")
