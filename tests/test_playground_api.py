"""The playground channel and its HTTP API, against a temporary SQLite database."""
from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
from aiohttp import web
from sqlmodel import select

from bot.channel import DeliveryError, HandleResult, current_outbox_id
from bot.channels.playground.adapter import PlaygroundChannel
from bot.config import load_config
from bot.events import Address, CardMessage, Image, InboundEvent, Text
from bot.inbound import guard
from bot.channels.playground.routes import playground_routes
from cards.model import Button, Card
from storage.db import Database
from storage.models import PlaygroundMessage

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a5d3a9c10000000049454e44ae426082"
)


class FakeSink:
    """Records events; checks the sender's own bubble was written before the core is called."""

    def __init__(self, db: Database):
        self.db = db
        self.events: list[InboundEvent] = []
        self.rows_at_call: list[int] = []
        self.seen: set[str] = set()
        self.fail = False

    async def __call__(self, event: InboundEvent) -> HandleResult:
        if self.fail:
            raise RuntimeError("core exploded")
        self.events.append(event)
        async with self.db.session() as s:
            self.rows_at_call.append(len((await s.exec(select(PlaygroundMessage))).all()))
        duplicate = event.event_id in self.seen
        self.seen.add(event.event_id)
        return HandleResult(duplicate=duplicate, toast="已认领" if event.kind == "action" else None)


@pytest.fixture
async def db(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    await database.init()
    yield database
    await database.dispose()


@pytest.fixture
def config():
    return load_config(env={})


@pytest.fixture
def sink(db):
    return FakeSink(db)


@pytest.fixture
def channel(db, sink, config, tmp_path):
    return PlaygroundChannel(sink, db, config.people, teams=config.teams, media_dir=tmp_path / "media")


@pytest.fixture
async def client(aiohttp_client, channel):
    app = web.Application(middlewares=[guard(1_048_576, 1.0)])  # as app.runtime serves it
    app.add_routes(playground_routes(channel))
    return await aiohttp_client(app)


async def rows(db: Database) -> list[PlaygroundMessage]:
    async with db.session() as s:
        return list((await s.exec(select(PlaygroundMessage).order_by(PlaygroundMessage.id))).all())


def card(track_key="t1:eng", title="【P0】水泵故障", **kw) -> Card:
    return Card(kind="engineer", title=title, color="red", buttons=(Button("认领", "tok1", "primary"),),
                track_key=track_key, **kw)


async def send_as_outbox(channel, outbox_id, to, message, ref=None):
    token = current_outbox_id.set(outbox_id)
    try:
        return await channel.send(to, message, ref)
    finally:
        current_outbox_id.reset(token)


CUSTOMER = Address("playground", "user", "cust_wang")
GROUP = Address("playground", "group", "engineers")


# ---- the page and its files ------------------------------------------------


async def test_page_static_files_and_root_redirect(client):
    r = await client.get("/playground")
    assert r.status == 200
    assert r.content_type == "text/html"
    html = await r.text()
    assert "/playground/static/app.js" in html and "/playground/static/style.css" in html
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        r = await client.get(f"/playground/static/{name}")
        assert r.status == 200 and ctype in r.content_type
    r = await client.get("/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/playground"
    r = await client.get("/playground/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/playground"


@pytest.mark.parametrize(
    "path",
    [
        "/playground/static/..%2Froutes.py",
        "/playground/static/..%2F..%2Fchannel.py",
        "/playground/static/%2E%2E%2Froutes.py",
        "/playground/static/.hidden.js",
        "/playground/static/routes.py",
        "/playground/static/nope.js",
        "/playground/static/%2Fetc%2Fpasswd",
        "/playground/media/..%2F..%2Froutes.py",
        "/playground/media/0123.png",
    ],
)
async def test_path_traversal_refused(client, path):
    r = await client.get(path)
    assert r.status == 404
    body = await r.read()
    assert b"import" not in body and b"root:" not in body


@pytest.mark.parametrize("raw", ["/playground/static/../routes.py", "/playground/static/..%2Froutes.py",
                                 "/playground/static/%2e%2e/routes.py", "/playground/static/..\\routes.py"])
async def test_raw_dotdot_path_does_not_escape(client, raw):
    # Sent as is, by a client that does not normalise the path.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert response.split(b"\r\n", 1)[0].split(b" ")[1] in (b"404", b"400")
    assert b"playground_routes" not in response


# ---- state -----------------------------------------------------------------


async def test_state_from_default_config(client):
    r = await client.get("/playground/api/state")
    assert r.status == 200
    data = await r.json()
    people = {p["id"]: p for p in data["people"]}
    assert people["cust_wang"]["name"] == "王经理" and people["cust_wang"]["role"] == "customer"
    assert people["eng_zhang"]["role"] == "engineer"
    panes = [{k: p[k] for k in ("conversation", "title", "speakers")} for p in data["panes"]]
    assert panes == [
        {"conversation": "user:cust_wang", "title": "客户 · 王经理", "speakers": ["cust_wang"]},
        {"conversation": "group:engineers", "title": "工程师群 · 维修一组",
         "speakers": ["eng_zhang", "eng_li", "lead_zhao"]},
        {"conversation": "user:lead_zhao", "title": "组长 · 赵组长", "speakers": ["lead_zhao", "director_sun"]},
    ]
    lead = data["panes"][2]
    assert lead["conversations"] == {"lead_zhao": "user:lead_zhao", "director_sun": "user:director_sun"}
    assert lead["titles"]["director_sun"] == "总监 · 孙总监"
    assert data["panes"][1]["direct"]["eng_zhang"] == "user:eng_zhang"
    assert [p["key"] for p in data["panes"]] == ["customer", "group", "lead"]


async def test_state_follows_the_configuration(aiohttp_client, db, sink, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        """
[[teams]]
id = "it"
name = "IT 支持"
lead = "boss"
director = "bigboss"
groups = { wecom = "x", playground = "helpdesk" }
[[people]]
id = "c1"
name = "刘主任"
role = "customer"
[[people]]
id = "e1"
name = "小周"
role = "engineer"
team = "it"
[[people]]
id = "boss"
name = "钱组长"
role = "lead"
team = "it"
[[people]]
id = "bigboss"
name = "吴总监"
role = "director"
""",
        encoding="utf-8",
    )
    cfg = load_config(toml, env={})
    channel = PlaygroundChannel(sink, db, cfg.people, teams=cfg.teams, media_dir=tmp_path / "m")
    app = web.Application(middlewares=[guard(1_048_576, 1.0)])  # as app.runtime serves it
    app.add_routes(playground_routes(channel))
    client = await aiohttp_client(app)
    data = await (await client.get("/playground/api/state")).json()
    assert [(p["conversation"], p["title"], p["speakers"]) for p in data["panes"]] == [
        ("user:c1", "客户 · 刘主任", ["c1"]),
        ("group:helpdesk", "工程师群 · IT 支持", ["e1", "boss"]),
        ("user:boss", "组长 · 钱组长", ["boss", "bigboss"]),
    ]
    # The director is not in the team but belongs in its group.
    assert channel.may_speak("bigboss", "group:helpdesk")
    assert not channel.may_speak("c1", "group:helpdesk")


async def test_state_without_teams_still_has_three_panes(db, sink, config, tmp_path):
    channel = PlaygroundChannel(sink, db, config.people, media_dir=tmp_path)
    assert [(p.conversation, p.speakers) for p in channel.panes] == [
        ("user:cust_wang", ("cust_wang",)),
        ("group:engineers", ("eng_zhang", "eng_li", "lead_zhao")),
        ("user:lead_zhao", ("lead_zhao", "director_sun")),
    ]


# ---- send ------------------------------------------------------------------


async def test_send_records_bubble_then_calls_core(client, db, sink):
    r = await client.post("/playground/api/send", json={
        "conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "  3号线水泵漏水停机了 ", "client_id": "c-1"})
    assert r.status == 200
    assert await r.json() == {"ok": True, "duplicate": False}
    [row] = await rows(db)
    assert (row.conversation, row.sender_id, row.sender_name, row.kind) == ("user:cust_wang", "cust_wang", "王经理", "text")
    assert row.payload["html"] == "3号线水泵漏水停机了"
    assert sink.rows_at_call == [1]  # the bubble was there before the core ran
    [event] = sink.events
    assert event == InboundEvent(platform="playground", event_id="c-1", sender_id="cust_wang", sender_name="王经理",
                                 conversation=CUSTOMER, kind="text", text="3号线水泵漏水停机了")


async def test_send_in_group_as_engineer_with_mentions(client, sink):
    r = await client.post("/playground/api/send", json={
        "conversation": "group:engineers", "sender_id": "eng_li", "text": "转交 @张工", "client_id": "c-2"})
    assert r.status == 200
    [event] = sink.events
    assert event.conversation == GROUP
    assert event.sender_id == "eng_li" and event.sender_name == "李工"
    assert event.mentions == ("eng_zhang",)


async def test_send_again_with_same_client_id(client, db, sink):
    body = {"conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "进度", "client_id": "same"}
    assert (await (await client.post("/playground/api/send", json=body)).json())["duplicate"] is False
    assert (await (await client.post("/playground/api/send", json=body)).json())["duplicate"] is True
    assert len(await rows(db)) == 1


async def test_text_is_escaped(client, db):
    await client.post("/playground/api/send", json={
        "conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "<img src=x onerror=alert(1)>\n好", "client_id": "x"})
    [row] = await rows(db)
    assert row.payload["html"] == "&lt;img src=x onerror=alert(1)&gt;<br>好"


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"conversation": "user:nobody", "sender_id": "nobody", "text": "hi", "client_id": "a"}, 400, "unknown person"),
        ({"conversation": "group:engineers", "sender_id": "cust_wang", "text": "hi", "client_id": "a"}, 403, "may not"),
        ({"conversation": "user:eng_zhang", "sender_id": "cust_wang", "text": "hi", "client_id": "a"}, 403, "may not"),
        ({"conversation": "group:other", "sender_id": "eng_zhang", "text": "hi", "client_id": "a"}, 403, "may not"),
        ({"conversation": "planet:x", "sender_id": "cust_wang", "text": "hi", "client_id": "a"}, 400, "conversation"),
        ({"sender_id": "cust_wang", "text": "hi", "client_id": "a"}, 400, "conversation"),
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "   ", "client_id": "a"}, 400, "empty"),
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "client_id": "a"}, 400, "empty"),
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "text": 5, "client_id": "a"}, 400, "empty"),
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "长" * 2001, "client_id": "a"}, 400, "2000"),
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "hi"}, 400, "client_id"),
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "hi", "client_id": 7}, 400, "client_id"),
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "hi", "client_id": "a b"}, 400, "client_id"),
        ({"conversation": "user:cust_wang", "sender_id": ["cust_wang"], "text": "hi", "client_id": "a"}, 400, "sender_id"),
    ],
)
async def test_send_refusals_write_nothing(client, db, sink, body, status, needle):
    r = await client.post("/playground/api/send", json=body)
    assert r.status == status
    assert needle in (await r.json())["error"]
    assert await rows(db) == [] and sink.events == []


async def test_text_of_exactly_2000_characters_is_fine(client, db):
    r = await client.post("/playground/api/send", json={
        "conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "长" * 2000, "client_id": "a"})
    assert r.status == 200


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b"", b'"text"'])
async def test_malformed_json_refused(client, db, sink, raw):
    for path in ("/playground/api/send", "/playground/api/click"):
        r = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        assert r.status == 400
        assert "JSON" in (await r.json())["error"]
    assert await rows(db) == [] and sink.events == []


async def test_oversized_body_refused(client, db, sink):
    text = "x" * (65 * 1024)
    body = json.dumps({"conversation": "user:cust_wang", "sender_id": "cust_wang", "text": text, "client_id": "a"})
    r = await client.post("/playground/api/send", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 413
    assert "64 KiB" in (await r.json())["error"]

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(70):
            yield b"x" * 1024

    r = await client.post("/playground/api/send", data=chunks(), headers={"Content-Type": "application/json"})
    assert r.status == 413
    assert await rows(db) == [] and sink.events == []


async def test_core_failure_is_a_clear_500(client, sink):
    sink.fail = True
    r = await client.post("/playground/api/send", json={
        "conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "hi", "client_id": "a"})
    assert r.status == 500
    assert "failed" in (await r.json())["error"]


# ---- click -----------------------------------------------------------------


async def test_click_passes_token_and_returns_toast(client, db, sink):
    r = await client.post("/playground/api/click", json={
        "conversation": "group:engineers", "sender_id": "eng_zhang", "token": "tok-claim", "client_id": "k-1"})
    assert r.status == 200
    assert await r.json() == {"ok": True, "toast": "已认领", "duplicate": False}
    [event] = sink.events
    assert event.kind == "action" and event.action_token == "tok-claim" and event.event_id == "k-1"
    assert event.sender_id == "eng_zhang" and event.sender_name == "张工" and event.conversation == GROUP
    assert await rows(db) == []  # the core answers through the outbox


@pytest.mark.parametrize(
    "body, status",
    [
        ({"conversation": "group:engineers", "sender_id": "eng_zhang", "client_id": "k"}, 400),
        ({"conversation": "group:engineers", "sender_id": "eng_zhang", "token": "t"}, 400),
        ({"conversation": "group:engineers", "sender_id": "cust_wang", "token": "t", "client_id": "k"}, 403),
        ({"conversation": "user:lead_zhao", "sender_id": "director_sun", "token": "t", "client_id": "k"}, 403),
        ({"conversation": "group:engineers", "sender_id": "ghost", "token": "t", "client_id": "k"}, 400),
    ],
)
async def test_click_refusals(client, sink, body, status):
    r = await client.post("/playground/api/click", json=body)
    assert r.status == status
    assert (await r.json())["error"]
    assert sink.events == []


async def test_director_speaks_in_own_chat(client, sink):
    r = await client.post("/playground/api/click", json={
        "conversation": "user:director_sun", "sender_id": "director_sun", "token": "t", "client_id": "k"})
    assert r.status == 200
    assert sink.events[0].conversation == Address("playground", "user", "director_sun")


# ---- the channel's send ----------------------------------------------------


async def test_send_text_card_and_update(channel, db):
    assert await send_as_outbox(channel, 1, CUSTOMER, Text("工单号 SRV-20260126-00872-0J5\n请稍候")) is None
    ref = await send_as_outbox(channel, 2, GROUP, CardMessage(card(), mentions=("eng_zhang",)))
    assert ref == {"conversation": "group:engineers"}
    await send_as_outbox(channel, 3, GROUP, CardMessage(card(title="已认领"), update=True), ref)
    # An update of a card this conversation never showed is a new card.
    await send_as_outbox(channel, 4, CUSTOMER, CardMessage(card(), update=True))
    got = await rows(db)
    assert [(r.conversation, r.kind, r.outbox_id, r.sender_id, r.sender_name) for r in got] == [
        ("user:cust_wang", "text", 1, None, "RelayDesk"),
        ("group:engineers", "card", 2, None, "RelayDesk"),
        ("group:engineers", "card_update", 3, None, "RelayDesk"),
        ("user:cust_wang", "card", 4, None, "RelayDesk"),
    ]
    assert got[0].payload["html"] == '工单号 <code class="rd-ticket-no">SRV-20260126-00872-0J5</code><br>请稍候'
    assert got[1].payload["track_key"] == "t1:eng" and 'data-token="tok1"' in got[1].payload["html"]
    assert "@张工" in got[1].payload["html"]
    assert "已认领" in got[2].payload["html"] and got[2].payload["track_key"] == "t1:eng"


async def test_repeated_delivery_of_one_outbox_row_is_a_no_op(channel, db):
    for _ in range(3):
        await send_as_outbox(channel, 42, CUSTOMER, Text("已收到"))
        await send_as_outbox(channel, 43, GROUP, CardMessage(card()))
    got = await rows(db)
    assert [(r.outbox_id, r.kind) for r in got] == [(42, "text"), (43, "card")]


async def test_sends_without_outbox_id_are_all_kept(channel, db):
    await channel.send(CUSTOMER, Text("a"), None)
    await channel.send(CUSTOMER, Text("a"), None)
    assert len(await rows(db)) == 2


async def test_text_mentions_show_names(channel, db):
    await channel.send(GROUP, Text("已认领", mentions=("eng_zhang", "unknown_id")), None)
    [row] = await rows(db)
    assert row.payload["html"] == '<span class="rd-mention">@张工</span> <span class="rd-mention">@unknown_id</span> 已认领'


async def test_image_is_published_under_media(channel, client, db, tmp_path):
    src = tmp_path / "heat.png"
    src.write_bytes(PNG)
    await send_as_outbox(channel, 7, GROUP, Image(str(src), caption="本月<热力图>"))
    [row] = await rows(db)
    assert row.kind == "image"
    assert row.payload["url"].startswith("/playground/media/") and row.payload["url"].endswith(".png")
    assert row.payload["caption"] == "本月&lt;热力图&gt;"
    r = await client.get(row.payload["url"])
    assert r.status == 200 and await r.read() == PNG and r.content_type == "image/png"


async def test_bad_images_and_addresses_are_not_retried(channel, tmp_path):
    with pytest.raises(DeliveryError) as e:
        await channel.send(GROUP, Image(str(tmp_path / "missing.png")), None)
    assert not e.value.retryable
    (tmp_path / "x.svg").write_text("<svg/>")
    with pytest.raises(DeliveryError) as e:
        await channel.send(GROUP, Image(str(tmp_path / "x.svg")), None)
    assert not e.value.retryable
    with pytest.raises(DeliveryError) as e:
        await channel.send(Address("wecom", "user", "x"), Text("hi"), None)
    assert not e.value.retryable


# ---- long-poll -------------------------------------------------------------


async def test_messages_after_id(client, channel):
    await channel.send(CUSTOMER, Text("一"), None)
    await channel.send(GROUP, CardMessage(card()), None)
    data = await (await client.get("/playground/api/messages?after=0")).json()
    assert [m["kind"] for m in data["messages"]] == ["text", "card"]
    first = data["messages"][0]
    assert set(first) == {"id", "conversation", "sender_id", "sender_name", "kind", "payload", "at"}
    assert first["conversation"] == "user:cust_wang" and first["sender_id"] is None
    assert first["sender_name"] == "RelayDesk" and first["at"].endswith("Z")
    assert data["last_id"] == data["messages"][-1]["id"]
    data2 = await (await client.get(f"/playground/api/messages?after={first['id']}")).json()
    assert [m["kind"] for m in data2["messages"]] == ["card"]
    empty = await (await client.get(f"/playground/api/messages?after={data['last_id']}")).json()
    assert empty == {"messages": [], "last_id": data["last_id"], "more": False}
    # A page that remembers a newer database: last_id below `after` tells it to start over.
    stale = await (await client.get("/playground/api/messages?after=999")).json()
    assert stale["last_id"] == data["last_id"] < 999


async def test_long_poll_wakes_on_new_message(client, channel):
    async def later():
        await asyncio.sleep(0.3)
        await channel.send(CUSTOMER, Text("来了"), None)

    task = asyncio.create_task(later())
    start = time.monotonic()
    r = await client.get("/playground/api/messages?after=0&wait=10")
    elapsed = time.monotonic() - start
    await task
    data = await r.json()
    assert [m["payload"]["html"] for m in data["messages"]] == ["来了"]
    assert 0.25 <= elapsed < 3


async def test_long_poll_wakes_on_a_person_typing(client):
    async def later():
        await asyncio.sleep(0.2)
        await client.post("/playground/api/send", json={
            "conversation": "user:cust_wang", "sender_id": "cust_wang", "text": "你好", "client_id": "z"})

    task = asyncio.create_task(later())
    data = await (await client.get("/playground/api/messages?after=0&wait=10")).json()
    await task
    assert [m["sender_id"] for m in data["messages"]] == ["cust_wang"]


async def test_long_poll_times_out_empty(client):
    start = time.monotonic()
    data = await (await client.get("/playground/api/messages?after=0&wait=0.5")).json()
    assert data["messages"] == [] and data["last_id"] == 0
    assert 0.45 <= time.monotonic() - start < 3


async def test_long_poll_sees_rows_written_by_another_process(client, db):
    async def later():
        await asyncio.sleep(0.2)
        async with db.session() as s:  # not through the channel: no wake-up
            s.add(PlaygroundMessage(conversation="user:cust_wang", sender_name="RelayDesk", kind="text",
                                    payload={"html": "x"}))

    task = asyncio.create_task(later())
    start = time.monotonic()
    data = await (await client.get("/playground/api/messages?after=0&wait=10")).json()
    await task
    assert len(data["messages"]) == 1 and time.monotonic() - start < 3


async def test_close_releases_waiters(client, channel):
    async def later():
        await asyncio.sleep(0.2)
        await channel.close()

    task = asyncio.create_task(later())
    start = time.monotonic()
    data = await (await client.get("/playground/api/messages?after=0&wait=20")).json()
    await task
    assert data["messages"] == [] and time.monotonic() - start < 3


@pytest.mark.parametrize(
    "query",
    ["after=-1", "after=abc", "after=1.5", "after=", "wait=abc", "wait=26", "wait=-1", "wait=nan", "wait=inf",
     "after=99999999999999999999"],
)
async def test_bad_poll_parameters(client, query):
    r = await client.get(f"/playground/api/messages?{query}")
    assert r.status == 400
    assert (await r.json())["error"]


async def test_paging(client, channel, db):
    for i in range(205):
        await channel.send(CUSTOMER, Text(str(i)), None)
    data = await (await client.get("/playground/api/messages?after=0")).json()
    assert len(data["messages"]) == 200 and data["more"] is True
    rest = await (await client.get(f"/playground/api/messages?after={data['last_id']}")).json()
    assert len(rest["messages"]) == 5 and rest["more"] is False


def test_static_folder_has_the_page():
    static = Path(__file__).resolve().parents[1] / "bot" / "channels" / "playground" / "static"
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in static.iterdir()}
    for p in static.iterdir():
        text = p.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, f"{p.name} must not load from the network"


async def test_long_poll_ends_when_the_server_shuts_down(channel, unused_tcp_port):
    """As under `run_app`: no handler cancellation, shutdown waits for running handlers."""
    import aiohttp

    app = web.Application(middlewares=[guard(1_048_576, 1.0)])  # as app.runtime serves it
    app.add_routes(playground_routes(channel))
    runner = web.AppRunner(app, shutdown_timeout=15)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{unused_tcp_port}/playground/api/messages?after=0&wait=20"
        poll = asyncio.create_task(session.get(url))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - start < 4
        try:
            (await poll).release()
        except aiohttp.ClientError:
            pass


async def test_phone_messages_are_refused_for_good(channel):
    from bot.events import Sms

    with pytest.raises(DeliveryError) as e:
        await channel.send(CUSTOMER, Sms("+8613800000001", "hi"), None)
    assert not e.value.retryable


# ---- pictures people send ----------------------------------------------------


JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x00" * 64


async def test_a_picture_is_stored_shown_and_handed_to_the_core(client, sink, db, tmp_path):
    query = {"conversation": "user:cust_wang", "sender_id": "cust_wang", "client_id": "p-1"}
    r = await client.post("/playground/api/photo", params=query, data=JPEG, headers={"Content-Type": "image/jpeg"})
    assert r.status == 200 and (await r.json())["ok"] is True
    [row] = await rows(db)
    assert (row.kind, row.sender_id) == ("image", "cust_wang")
    assert row.payload["url"].startswith("/playground/media/") and row.payload["url"].endswith(".jpg")
    [event] = sink.events
    assert event.kind == "image" and event.event_id == "p-1" and sink.rows_at_call == [1]
    path = Path(event.image_ref)
    assert path.parent == (tmp_path / "media").resolve() and path.read_bytes() == JPEG
    r = await client.get(row.payload["url"])
    assert r.status == 200 and await r.read() == JPEG
    # The same upload again (a retry): one bubble, and the core sees a duplicate.
    r = await client.post("/playground/api/photo", params=query, data=JPEG, headers={"Content-Type": "image/jpeg"})
    assert (await r.json())["duplicate"] is True and len(await rows(db)) == 1


@pytest.mark.parametrize(
    ("query", "ctype", "body", "status", "message"),
    [
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "client_id": "x"}, "text/plain", b"hi", 415,
         "send a picture"),
        ({"conversation": "user:cust_wang", "sender_id": "cust_wang", "client_id": "x"}, "image/png", b"", 400,
         "empty picture"),
        ({"conversation": "user:cust_wang", "sender_id": "nobody", "client_id": "x"}, "image/png", JPEG, 400,
         "unknown person"),
        ({"conversation": "user:eng_zhang", "sender_id": "cust_wang", "client_id": "x"}, "image/png", JPEG, 403,
         "may not write"),
    ],
)
async def test_bad_pictures_are_refused_and_change_nothing(client, sink, db, query, ctype, body, status, message):
    r = await client.post("/playground/api/photo", params=query, data=body, headers={"Content-Type": ctype})
    assert r.status == status and message in (await r.json())["error"]
    assert await rows(db) == [] and sink.events == []


async def test_a_picture_too_large_is_refused(client, sink, db):
    from bot.channels.playground.routes import MAX_PHOTO

    query = {"conversation": "user:cust_wang", "sender_id": "cust_wang", "client_id": "big"}
    r = await client.post("/playground/api/photo", params=query, data=io.BytesIO(b"\xff" * (MAX_PHOTO + 1)),
                          headers={"Content-Type": "image/jpeg"})
    assert r.status == 413 and await rows(db) == [] and sink.events == []


async def test_card_photos_show_as_thumbnails_when_the_page_can_show_them(channel, db, tmp_path):
    local = tmp_path / "site.jpg"
    local.write_bytes(JPEG)
    c = card(images=(str(local), "wecom:MEDIA1"))
    await send_as_outbox(channel, 1, GROUP, CardMessage(c))
    [row] = await rows(db)
    html = row.payload["html"]
    assert html.count('class="rd-thumb"') == 1 and "/playground/media/" in html and "wecom:" not in html
