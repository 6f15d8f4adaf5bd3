"""Signed links and the console's refusals, in process (the browser test covers the pages)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from app.web import RUNTIME, create_app
from console.links import CONSOLE, TRACK, LinkRefused, Links


class Clock:
    def __init__(self):
        self.at = datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.at


def test_links_expire_and_are_bound_to_their_kind_and_subject():
    clock = Clock()
    links = Links("http://x", clock=clock, secret="s3cret")
    token = links.token(CONSOLE, "lead_zhao", timedelta(hours=12))
    assert links.check(CONSOLE, token).subject == "lead_zhao"
    with pytest.raises(LinkRefused) as e:
        links.check(TRACK, token)  # another kind of page
    assert e.value.reason == "forged"
    with pytest.raises(LinkRefused) as e:
        Links("http://x", clock=clock, secret="other").check(CONSOLE, token)  # another installation
    assert e.value.reason == "forged"
    tampered = token.replace(token.split(".")[0], links.token(CONSOLE, "director_sun", timedelta(hours=12)).split(".")[0])
    with pytest.raises(LinkRefused):
        links.check(CONSOLE, tampered)  # somebody else's payload under this signature
    clock.at += timedelta(hours=12)
    with pytest.raises(LinkRefused) as e:
        links.check(CONSOLE, token)
    assert e.value.reason == "expired"


@pytest.fixture
async def client(make_config, aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.setenv("RELAYDESK_DATA_DIR", str(tmp_path / "data"))
    app = create_app(make_config(), workers=False)
    client = await aiohttp_client(app)
    client.rt = app[RUNTIME]
    return client


async def test_console_refuses_expired_customer_and_bad_filters(client):
    rt = client.rt
    clock = Clock()
    rt.service.clock = clock
    ok = rt.links.token(CONSOLE, "lead_zhao", timedelta(hours=12))
    r = await client.get("/console", params={"t": ok})
    assert r.status == 200 and "赵组长" in await r.text()
    r = await client.get("/console", params={"t": ok, "priority": "P9"})
    assert r.status == 400 and "筛选条件不正确" in await r.text()
    customer = rt.links.token(CONSOLE, "cust_wang", timedelta(hours=12))
    r = await client.get("/console", params={"t": customer})
    assert r.status == 403  # a link signed for a customer opens nothing
    clock.at += timedelta(hours=13)
    r = await client.get("/console", params={"t": ok})
    assert r.status == 403 and "链接已过期" in await r.text()
    r = await client.get("/console/ticket/SRV-20261203-00001-0AA", params={"t": ok})
    assert r.status == 403
    r = await client.get("/track/nonsense")
    assert r.status == 403 and "链接无效" in await r.text()
    assert r.headers["Cache-Control"] == "no-store"


async def test_the_secret_is_shared_through_the_database(client, make_config):
    rt = client.rt
    other = Links("http://x")
    await other.load(rt.db)
    token = other.token(TRACK, "SRV-1", timedelta(hours=1))
    assert rt.links.check(TRACK, token).subject == "SRV-1"
