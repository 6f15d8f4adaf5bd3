"""The API against its own OpenAPI document, with generated requests.

A bot runs on a local port (SQLite, then PostgreSQL) with a token holding every scope; every
operation of /api/v1/openapi.json gets a bounded number of generated
requests (the same ones every time under CI), and every answer must be no
server error and match the document: status, content type, headers, body.
"""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.operations import API
from api.routes import api_routes  # noqa: F401  (fills the operation table)
from api.tokens import SCOPES
from api_support import demo_config, quick_token
from app.web import RUNTIME, create_app
from conftest import IN_CI, reset_postgres, run_sync

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


class LiveBot:
    """The bot on its own loop in a thread, like `python run_bot.py` serving."""

    def __init__(self, config):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.app = create_app(self.config)
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.token = await quick_token(self.app[RUNTIME].db, "crm", ",".join(SCOPES))

    def start(self) -> "LiveBot":
        self.thread.start()
        assert self.ready.wait(60), "the bot did not start"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live_bot(request, tmp_path_factory):
    """The bot on SQLite, then on the real PostgreSQL (types and limits differ)."""
    tmp = tmp_path_factory.mktemp("schema")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp}/relaydesk.db"
    else:
        url = request.getfixturevalue("pg_database_url")
        run_sync(reset_postgres(url))
    config, _ = demo_config(tmp, url, RELAYDESK_API__BURST=100_000)
    bot = LiveBot(config).start()
    yield bot
    bot.stop()


# The document the bot serves at /api/v1/openapi.json (checked equal below): generated
# from the code, so it is there at collection time, before any bot runs.
schema = schemathesis.openapi.from_dict(API.openapi())


def test_the_served_document_is_the_one_tested(live_bot):
    import json
    import urllib.request

    with urllib.request.urlopen(live_bot.base + "/api/v1/openapi.json") as r:
        assert json.load(r) == json.loads(json.dumps(API.openapi()))


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=IN_CI)
def test_every_operation_matches_the_document(case, live_bot):
    case.call_and_validate(base_url=live_bot.base, headers={"Authorization": f"Bearer {live_bot.token}"},
                           checks=CHECKS)
