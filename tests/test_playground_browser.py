"""End to end in a real browser: the bot as a subprocess, the playground in headless chromium.

A customer reports a fault in the customer pane, the ticket number comes back,
the engineers' group gets the card, 张工 claims it there, the card updates in
place and the customer is told. The closing story goes on to the end: stages,
photos (file picker and paste), 完工 with a note checked by a probe, a low
rating, the lead's follow-up and 回访完成.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    yield from _run_bot(tmp_path)


def _run_bot(tmp_path, *args: str):
    """Start run_bot.py (with `args`), wait for /healthz, yield its base URL, stop it."""
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
        [str(python if python.exists() else sys.executable), "run_bot.py", "--port", str(port), *args],
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


# ---- the whole story, to the follow-up -------------------------------------------


class _Health(BaseHTTPRequestHandler):
    """The probe target: a health endpoint that answers 200 and records what was asked."""

    asked: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).asked.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def probe_target():
    _Health.asked = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def story_bot(tmp_path, probe_target):
    """The demo config plus a resolution probe for leaks, pointed at the local target."""
    from bot.config import DEFAULT_CONFIG_PATH

    config = tmp_path / "relaydesk.toml"
    config.write_text(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8") + f"""
[[probes]]
category = "water_leak"
url = "{probe_target}/health/{{number}}"
expect_status = 200
timeout = "3s"
retries = 1
""", encoding="utf-8")
    yield from _run_bot(tmp_path, "--config", str(config))


def _jpeg(path: Path, color: tuple[int, int, int]) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 240), color)
    ImageDraw.Draw(img).rectangle((40, 40, 280, 200), outline=(255, 255, 255), width=6)
    img.save(path, "JPEG")
    return path


def test_the_whole_story_with_photos_probe_and_follow_up(story_bot, page, tmp_path):
    from playwright.sync_api import expect

    page.set_default_timeout(TIMEOUT_MS)
    page.goto(story_bot + "/playground")
    customer = page.locator('section[data-pane="customer"]')
    group = page.locator('section[data-pane="group"]')
    lead = page.locator('section[data-pane="lead"]')
    expect(page.locator("#conn")).to_have_attribute("data-state", "online")

    def say(pane, text):
        pane.locator(".composer-input").fill(text)
        pane.locator(".composer-input").press("Enter")
        expect(pane.locator(".msg.mine .bubble", has_text=text).last).to_be_visible()

    # Report.
    say(customer, "3号线水泵漏水停机了")
    reply = customer.locator(".msg.from-bot .bubble", has_text=NUMBER_RE)
    expect(reply.first).to_be_visible()
    number = NUMBER_RE.search(reply.first.inner_text()).group(0)

    # The group card suggests 张工 and says why; 张工 claims, then 出发 and 到达 by button.
    group.locator(".speaker-select").select_option("eng_zhang")
    card = group.locator(".msg-list:not([hidden]) .rd-card[data-kind=engineer]", has_text=number).first
    expect(card).to_contain_text("建议指派")
    expect(card).to_contain_text("擅长漏水渗水")
    track_key = card.get_attribute("data-track-key")
    card = group.locator(f'.msg-list:not([hidden]) .rd-card[data-track-key="{track_key}"]')
    for label, state in (("认领", "已认领"), ("出发", "工程师已出发"), ("到达", "已到达现场"),
                         ("开始维修", "维修中")):
        card.locator(".rd-btn", has_text=label).click()
        expect(card).to_contain_text(state)
    expect(card).to_contain_text("负责人")

    # 完工 too early: refused, and the refusal says how many photos are missing.
    say(group, "完工 更换了机封，试机正常")
    expect(group.locator(".msg.from-bot .bubble", has_text="还差 2 张").last).to_be_visible()

    # Two photos: one by the file picker, one pasted into the input.
    group.locator("#file-group").set_input_files(str(_jpeg(tmp_path / "seal.jpg", (40, 110, 200))))
    expect(group.locator(".msg.mine .bubble-image img")).to_have_count(1)
    expect(group.locator(".msg.from-bot .bubble", has_text="还差 1 张").last).to_be_visible()
    data = list(_jpeg(tmp_path / "test-run.jpg", (30, 160, 90)).read_bytes())
    group.locator(".composer-input").evaluate(
        """(input, bytes) => {
            const file = new File([new Uint8Array(bytes)], "test-run.jpg", { type: "image/jpeg" });
            const dt = new DataTransfer();
            dt.items.add(file);
            input.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
        }""",
        data,
    )
    expect(group.locator(".msg.mine .bubble-image img")).to_have_count(2)
    expect(group.locator(".msg.from-bot .bubble", has_text="可以完工").last).to_be_visible()
    expect(card.locator(".rd-thumb img")).to_have_count(2)

    # 完工 with a note: 待验证 until the probe passes, then resolved and the customer asked to rate.
    say(group, "完工 更换了机封，试机正常")
    expect(group.locator(".msg.from-bot .bubble", has_text="正在进行完工验证").last).to_be_visible()
    expect(card).to_contain_text("已完工待评价")
    status = customer.locator(".rd-card[data-kind=status]").last
    expect(status.locator(".rd-thumb img")).to_have_count(2)
    expect(customer.locator(".rd-card[data-kind=rating]")).to_be_visible()
    assert any(p == f"/health/{number}" for p in _Health.asked)
    card.scroll_into_view_if_needed()
    status.scroll_into_view_if_needed()
    _screenshot(page, tmp_path / "playground-closing-resolved.png")

    # A rating of 1 with a comment: the lead gets a follow-up task, its own card.
    say(customer, "评价 1 太慢了")
    followup = lead.locator(".rd-card[data-kind=followup]")
    expect(followup).to_have_count(1)
    expect(followup).to_contain_text("太慢了")
    expect(customer.locator(".rd-card[data-kind=rating]")).to_contain_text("★")
    say(lead, "我的工单")
    board = lead.locator(".msg.from-bot .bubble", has_text="待回访").last
    expect(board).to_contain_text(number)
    expect(board).to_contain_text("太慢了")

    # 回访完成 closes it; the same card shows the outcome.
    say(lead, f"回访完成 {number} 已电话致歉，说明了备件到货慢的原因")
    expect(followup).to_contain_text("已完成回访")
    expect(followup).to_contain_text("备件到货慢")
    expect(lead.locator(".msg.from-bot .bubble", has_text="回访已完成").last).to_be_visible()

    _screenshot(page, tmp_path / "playground-closing-story.png")
    assert page.errors == []  # type: ignore[attr-defined]


def _screenshot(page, shot: Path) -> None:
    """Save the page (kept in $RELAYDESK_SCREENSHOT_DIR when set)."""
    page.screenshot(path=str(shot), full_page=True)
    keep = os.environ.get("RELAYDESK_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    assert shot.stat().st_size > 10_000
