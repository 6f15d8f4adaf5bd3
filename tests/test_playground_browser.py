"""End to end in a real browser: the bot as a subprocess, the playground in headless chromium.

A customer reports a fault in the customer pane, the ticket number comes back,
the engineers' group gets the card, 张工 claims it there, the card updates in
place and the customer is told.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
NUMBER_RE = re.compile(r"SRV-\d{8}-\d{5}-[0-9A-Z]{3}")
TIMEOUT_MS = 20_000


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing; under CI the browser test must run (apt-get install -y chromium)")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bot(tmp_path):
    """The real bot, started the way a user starts it; its base URL."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        RELAYDESK_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/pg.db",
        RELAYDESK_DATA_DIR=str(tmp_path),
        PYTHONUNBUFFERED="1",
    )
    python = ROOT / ".venv" / "bin" / "python"
    log = open(tmp_path / "bot.log", "wb")
    proc = subprocess.Popen(
        [str(python if python.exists() else sys.executable), "run_bot.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                log.flush()
                pytest.fail(f"the bot exited with {proc.returncode}:\n{(tmp_path / 'bot.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the bot did not answer /healthz in 30 s:\n{(tmp_path / 'bot.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def page(tmp_path):
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1560, "height": 940}, locale="zh-CN",
                                      timezone_id="Asia/Shanghai")
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors  # type: ignore[attr-defined]
        try:
            yield pg
        finally:
            context.close()
            browser.close()


def test_report_and_claim_in_the_browser(bot, page, tmp_path):
    from playwright.sync_api import expect

    page.set_default_timeout(TIMEOUT_MS)
    page.goto(bot + "/playground")
    customer = page.locator('section[data-pane="customer"]')
    group = page.locator('section[data-pane="group"]')
    expect(customer).to_have_attribute("data-conversation", "user:cust_wang")
    expect(group).to_have_attribute("data-conversation", "group:engineers")
    expect(page.locator("#conn")).to_have_attribute("data-state", "online")

    # The customer reports a fault; Enter sends.
    customer.locator(".composer-input").fill("3号线水泵漏水停机了")
    customer.locator(".composer-input").press("Enter")
    expect(customer.locator(".msg.mine .bubble", has_text="3号线水泵漏水停机了")).to_be_visible()
    reply = customer.locator(".msg.from-bot .bubble", has_text=NUMBER_RE)
    expect(reply.first).to_be_visible()
    number = NUMBER_RE.search(reply.first.inner_text()).group(0)

    # The engineers' group gets the card with its buttons.
    eng_card = group.locator(".msg-list:not([hidden]) .rd-card", has_text=number).first
    expect(eng_card).to_be_visible()
    claim = eng_card.locator(".rd-btn", has_text="认领")
    expect(claim).to_be_visible()
    track_key = eng_card.get_attribute("data-track-key")
    assert track_key

    # 张工 claims it there.
    group.locator(".speaker-select").select_option("eng_zhang")
    expect(group).to_have_attribute("data-speaker", "eng_zhang")
    claim.click()
    updated = group.locator(f'.msg-list:not([hidden]) .rd-card[data-track-key="{track_key}"]')
    expect(updated).to_have_count(1)
    expect(updated).to_contain_text("张工")
    expect(updated.locator(".rd-btn", has_text="认领")).to_have_count(0)
    expect(updated.locator(".rd-btn", has_text="出发")).to_be_visible()

    # The customer is told that 张工 took the ticket.
    expect(customer.locator(".msg.from-bot .bubble", has_text="张工").first).to_be_visible()
    expect(customer.locator(".msg.from-bot .bubble", has_text="张工").first).to_contain_text(number)

    shot = tmp_path / "playground-claimed.png"
    page.screenshot(path=str(shot), full_page=True)
    keep = os.environ.get("RELAYDESK_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    assert shot.stat().st_size > 10_000
    assert page.errors == []  # type: ignore[attr-defined]
