"""The service report: JSON through the API, and a one-page PDF with Chinese text."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from api_support import auth, demo_config, photo_b64, quick_token
from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent
from conftest import IN_CI


@pytest.fixture
async def resolved(tmp_path, sqlite_url, aiohttp_client):
    config, _ = demo_config(tmp_path, sqlite_url)
    app = create_app(config, workers=False)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    token = await quick_token(rt.db, "finance", "tickets:read,tickets:write")
    r = await client.post("/api/v1/tickets", json={"text": "3号线水泵漏水停机了，设备编号 P-301", "reporter_phone": "13800000001"},
                          headers=auth(token, **{"Idempotency-Key": "r1"}))
    number = (await r.json())["number"]

    async def api(path, body):
        r = await client.post(f"/api/v1/tickets/{number}/{path}", json=body, headers=auth(token))
        assert r.status == 200, await r.text()

    async def chat(i, who, kind, text="", ref=None):
        await rt.bot.handle(InboundEvent(platform="playground", event_id=f"rep{i}", sender_id=who, kind=kind,
                                         conversation=Address("playground", "user", who), text=text, image_ref=ref))

    await api("claim", {"actor": "eng_zhang"})
    await api("stage", {"actor": "eng_zhang", "stage": "depart"})
    await api("stage", {"actor": "eng_zhang", "stage": "arrive"})
    await api("comment", {"actor": "eng_zhang", "text": "机械密封磨损，备件：机械密封 1 套"})
    await api("stage", {"actor": "eng_zhang", "stage": "start_repair"})
    await chat(1, "eng_zhang", "image", ref="media-0001")  # a photo from the site, sent in chat
    await api("photos", {"actor": "eng_zhang", "content_base64": photo_b64(1)})  # one through the API
    await api("resolve", {"actor": "eng_zhang", "note": "更换机械密封和轴承，试机 30 分钟无渗漏"})
    await chat(2, "cust_wang", "text", "评价 5")  # the customer's rating
    return client, token, number, tmp_path


async def test_report_json(resolved):
    client, token, number, _ = resolved
    r = await client.get(f"/api/v1/tickets/{number}/report", headers=auth(token))
    report = await r.json()
    assert r.status == 200 and report["number"] == number and report["state"] == "closed"
    assert report["engineer"] == {"id": "eng_zhang", "name": "张工"} and report["rating"] == 5
    assert report["parts"] == ["机械密封 1 套", "机械密封和轴承"]
    assert [i["action"] for i in report["items"]] == ["report", "claim", "depart", "arrive", "note", "start_repair",
                                                      "photo", "photo", "resolve", "rate"]
    # Photo ids: the platform's media id, and the API picture by its name (never a server path).
    assert report["photos"][0] == "media-0001" and re.fullmatch(r"[0-9a-f]{32}\.png", report["photos"][1])
    assert report["response_minutes"] == 0 and report["resolution"].startswith("更换机械密封")


async def test_report_pdf_is_one_page_with_chinese_text(resolved):
    client, token, number, tmp_path = resolved
    r = await client.get(f"/api/v1/tickets/{number}/report.pdf", headers=auth(token))
    assert r.status == 200 and r.content_type == "application/pdf"
    pdf = await r.read()
    assert pdf.startswith(b"%PDF-") and b"/Count 1" in pdf and b"NotoSansCJKSC" in pdf  # one page, the font embedded
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    if shutil.which("pdftotext") is None:
        if IN_CI:
            pytest.fail("pdftotext (poppler-utils) is required under CI")
        pytest.skip("poppler-utils (pdftotext) not installed: text extraction not checked")
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout
    text = re.sub(r"[ \t]+", " ", text)
    for expected in ("设备维修服务报告", number, "张工", "王经理", "更换机械密封和轴承", "机械密封 1 套", "工作记录",
                     "media-0001"):
        assert expected in text, expected
    assert re.search(r"客户评价\s*5\s*星", text)
    r = await client.get("/api/v1/tickets/SRV-20990101-00001-XXX/report.pdf", headers=auth(token))
    assert r.status == 404


def test_a_long_history_still_fits_one_page(tmp_path):
    from datetime import datetime, timedelta, timezone

    from api.models import PersonRef
    from api.report import ReportItem, ServiceReport
    from api.report_pdf import MAX_LOG_ROWS, render_pdf

    t0 = datetime(2026, 1, 26, 1, 0, tzinfo=timezone.utc)
    items = [ReportItem(at=t0 + timedelta(minutes=i), action="note", action_name="备注", by="张工程师" * 3,
                        text="现场检查发现" * 30) for i in range(40)]
    report = ServiceReport(number="SRV-20260126-00001-ABC", state="resolved", category_name="漏水渗水", priority="P0",
                           summary="漏水" * 300, reporter=PersonRef(id="c", name="王经理"), engineer=None,
                           created_at=t0, resolution="更换" * 400, items=items, parts=["密封圈"] * 80,
                           photos=[f"media-{i}" for i in range(60)])
    pdf = render_pdf(report)
    assert b"/Count 1" in pdf
    if shutil.which("pdftotext"):
        path = tmp_path / "long.pdf"
        path.write_bytes(pdf)
        text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout
        assert f"另有 {40 - MAX_LOG_ROWS} 条记录" in text and "RelayDesk 生成于" in text
