"""The API docs page in a real browser: the bot as a user starts it, the page in headless chromium."""
from __future__ import annotations

import json

import pytest

from test_playground_browser import TIMEOUT_MS, bot, page  # noqa: F401  (fixtures: the real bot, a chromium page)

pytestmark = pytest.mark.browser


def test_docs_page_shows_every_operation_and_links_to_schemas(bot, page):  # noqa: F811
    from playwright.sync_api import expect

    page.set_default_timeout(TIMEOUT_MS)
    failed: list[str] = []  # what the page asked for and did not get (the browser's own favicon aside)
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.goto(bot + "/api/v1/docs")
    expect(page.locator("h1")).to_contain_text("RelayDesk API")
    create = page.locator("#create_ticket")
    expect(create).to_contain_text("POST")
    expect(create).to_contain_text("/api/v1/tickets")
    expect(create).to_contain_text("urn:relaydesk:problem:idempotency-key-reused")
    for op in ("claim_ticket", "external_status", "ticket_report_pdf", "create_webhook", "consistency"):
        expect(page.locator(f"#{op}")).to_be_visible()
    create.get_by_role("link", name="CreateTicket").click()
    expect(page.locator("#schema-CreateTicket")).to_be_in_viewport()
    expect(page.locator("#schema-CreateTicket + pre")).to_contain_text('"reporter_phone"')
    page.get_by_role("link", name="openapi.json").click()
    spec = json.loads(page.locator("body").inner_text())
    assert spec["openapi"] == "3.1.0" and "/api/v1/tickets/{number}/claim" in spec["paths"]
    assert not page.errors and not failed  # type: ignore[attr-defined]
