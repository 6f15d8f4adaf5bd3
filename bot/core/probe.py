"""The resolution check: an HTTP probe that must pass before a ticket counts as resolved.

"已解决只代表操作完成，不代表业务结果达成": for a team or category with a
`[[probes]]` entry, 完工 puts the ticket in 待验证 and bot/core/verify.py then
runs a GET of the entry's URL (a template filled with the ticket's fields),
outside any transaction, expecting its status; timeouts and other statuses are
retried `retries` times. The config bounds the whole check to a minute.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from bot.config import PROBE_FIELDS, Config, ProbeConfig
from storage.models import Ticket


def probe_for(config: Config, ticket: Ticket) -> ProbeConfig | None:
    """The check of the ticket's team, else of its category, else none."""
    for probe in config.probes:
        if probe.team is not None and probe.team == ticket.team and probe.category in (None, ticket.category):
            return probe
    for probe in config.probes:
        if probe.team is None and probe.category == ticket.category:
            return probe
    return None


def probe_url(probe: ProbeConfig, ticket: Ticket) -> str:
    values = {name: quote(str(getattr(ticket, name, None) or ""), safe="") for name in PROBE_FIELDS}
    return probe.url.format(**values)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    url: str
    status: int | None  # the last answer's status; None: no answer
    error: str | None
    attempts: int
    ms: int

    def detail(self) -> dict:
        return {"ok": self.ok, "url": self.url, "status": self.status, "error": self.error,
                "attempts": self.attempts, "ms": self.ms}


async def run(probe: ProbeConfig, url: str) -> ProbeResult:
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    attempts = 0
    timeout = aiohttp.ClientTimeout(total=probe.timeout.total_seconds())
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for attempt in range(probe.retries + 1):
            if attempt:
                await asyncio.sleep(probe.retry_delay.total_seconds())
            attempts += 1
            try:
                async with http.get(url, allow_redirects=False) as resp:
                    status, error = resp.status, None
                    if resp.status == probe.expect_status:
                        break
            except TimeoutError:
                status, error = None, "timeout"
            except aiohttp.ClientError as e:
                status, error = None, type(e).__name__
    ok = status == probe.expect_status
    return ProbeResult(ok, url, status, error, attempts, int((time.monotonic() - started) * 1000))
