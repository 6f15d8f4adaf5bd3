"""The API's aiohttp routes: every module's operations, plus the document and docs page."""
from __future__ import annotations

from aiohttp import web

from api import hub, photos, report, report_pdf, tickets, webhooks  # noqa: F401  (each registers its operations)
from api.operations import API
from api.spec import Runtime


def api_routes(runtime: Runtime) -> list[web.RouteDef]:
    """Mounts the API on the bot's server; webhooks hear of every change from here on."""
    runtime.notifier.listeners.append(webhooks.on_change)
    return API.routes(runtime)
