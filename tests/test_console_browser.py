"""The console and the tracking page in a real browser, reached the way people reach them:
the lead sends 看板 in the playground and opens the link; the customer opens the link
in the receipt on a phone-sized screen; a changed link is refused.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_playground_browser import CHROMIUM_ARGS, _chromium_or_skip, _free_port  # noqa: F401

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 20_000


@pytest.fixture
def bot(tmp_path):
    """The real bot on a free port, its public URL pointing at itself."""
    import subprocess
    import sys

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, RELAYDESK_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/c.db",
               RELAYDESK_DATA_DIR=str(tmp_path), RELAYDESK_SERVER__PUBLIC_URL=base, PYTHONUNBUFFERED="1")
    python = ROOT / ".venv" / "bin" / "python"
    log = open(tmp_path / "bot.log", "wb")
    proc = subprocess.Popen([str(python if python.exists() else sys.executable), "run_bot.py", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the bot exited:\n{(tmp_path / 'bot.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the bot did not answer /healthz in 30 s")
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


_n = iter(range(1, 10_000))


def say(base: str, person: str, text: str) -> None:
    body = json.dumps({"conversation": f"user:{person}", "sender_id": person, "text": text,
                       "client_id": f"b{next(_n)}"}).encode()
    req = urllib.request.Request(base + "/playground/api/send", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def wait_for(base: str, conversation: str, pattern: str) -> re.Match:
    """The first bot text in `conversation` matching `pattern` (waits for the outbox)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with urllib.request.urlopen(base + "/playground/api/messages?after=0", timeout=10) as r:
            for m in json.load(r)["messages"]:
                if m["conversation"] == conversation and m["sender_id"] is None and m["kind"] == "text":
                    found = re.search(pattern, m["payload"]["html"])
                    if found:
                        return found
        time.sleep(0.3)
    raise AssertionError(f"nothing like {pattern!r} in {conversation}")


def send_photo(base: str, person: str, tmp_path: Path) -> None:
    """A picture sent in the person's chat (a chart drawn for the purpose: a real PNG)."""
    from reports import charts

    png = charts.text_sample(tmp_path / "photo.png", "现场照片").read_bytes()
    query = f"conversation=user:{person}&sender_id={person}&client_id=p{next(_n)}"
    req = urllib.request.Request(f"{base}/playground/api/photo?{query}", png, {"content-type": "image/png"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def keep(shot: Path) -> None:
    folder = os.environ.get("RELAYDESK_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)
    assert shot.stat().st_size > 5_000


@pytest.fixture
def browser():
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_console_tracking_page_and_forged_links(bot, browser, tmp_path):
    from playwright.sync_api import expect

    say(bot, "cust_wang", "3号线水泵漏水停机了")
    number = wait_for(bot, "user:cust_wang", r"SRV-\d{8}-\d{5}-[0-9A-Z]{3}").group(0)
    track = wait_for(bot, "user:cust_wang", re.escape(bot) + r"/track/[A-Za-z0-9_.\-]+").group(0)
    say(bot, "cust_wang", "2号配电柜跳闸了，全线停电")
    say(bot, "eng_zhang", f"认领 {number}")
    say(bot, "eng_zhang", f"出发 {number}")
    say(bot, "eng_zhang", f"备注 {number} 内部：密封圈库存不足")
    send_photo(bot, "eng_zhang", tmp_path)
    say(bot, "lead_zhao", "看板")
    console = wait_for(bot, "user:lead_zhao", re.escape(bot) + r"/console\?t=[A-Za-z0-9_.\-]+").group(0)

    wide = browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    page = wide.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(console)
    expect(page.locator("header")).to_contain_text("赵组长")
    rows = page.locator("table.tickets tbody tr")
    expect(rows).to_have_count(2)
    row = page.locator(f'tr[data-number="{number}"]')
    expect(row).to_contain_text("张工")
    expect(row).to_contain_text("工程师已出发")
    # Filter by state: only the ticket on its way is left.
    page.select_option("select[name=state]", "on_the_way")
    page.click("button[type=submit]")
    expect(rows).to_have_count(1)
    shot = tmp_path / "console-tickets.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot)
    # The ticket page: timeline, audit trail with the internal note.
    row.locator("a").click()
    expect(page.locator("h1")).to_have_text(number)
    expect(page.locator("ol.timeline li.done")).to_have_count(1)  # 已接单
    expect(page.locator("ol.timeline li.current")).to_contain_text("工程师出发")
    audit = page.locator("table.audit")
    expect(audit).to_contain_text("认领")
    expect(audit).to_contain_text("密封圈库存不足")
    photo = page.locator(".photos img")
    expect(photo).to_have_count(1)
    assert photo.evaluate("img => img.complete && img.naturalWidth > 0")  # the picture loads
    shot = tmp_path / "console-ticket.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot)
    page.click("header nav a >> nth=1")
    expect(page.locator("section.chart")).to_have_count(2)
    expect(page.locator("section.chart img").first).to_be_visible()
    shot = tmp_path / "console-charts.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot)

    # The customer's tracking page on a phone: six nodes, engineer's name, nothing internal.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                has_touch=True, locale="zh-CN")
    mobile = phone.new_page()
    mobile.set_default_timeout(TIMEOUT_MS)
    mobile.goto(track)
    expect(mobile.locator("ol.timeline li")).to_have_count(6)
    expect(mobile.locator("ol.timeline li.done")).to_have_count(1)
    expect(mobile.locator("ol.timeline li.current")).to_contain_text("工程师出发")
    expect(mobile.locator("dl.fields")).to_contain_text("张工")
    expect(mobile.locator("body")).not_to_contain_text("密封圈库存不足")
    expect(mobile.locator("body")).not_to_contain_text("2号配电柜")
    width = mobile.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling on a phone
    shot = tmp_path / "tracking-phone.png"
    mobile.screenshot(path=str(shot), full_page=True)
    keep(shot)

    # One changed character: refused with a page that says why.
    forged = console[:-3] + ("A" if console[-3] != "A" else "B") + console[-2:]
    response = page.goto(forged)
    assert response.status == 403
    expect(page.locator("h1")).to_have_text("无法打开此链接")
    expect(page.locator("p[data-reason=forged]")).to_be_visible()
    # A tracking token is no console token, and the other way round.
    token = track.rsplit("/", 1)[1]
    assert page.goto(f"{bot}/console?t={token}").status == 403
    assert page.goto(f"{bot}/track/{console.split('t=', 1)[1]}").status == 403
    assert page.goto(f"{bot}/console").status == 403
    shot = tmp_path / "console-forged.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot)
    wide.close()
    phone.close()
