"""The directory: configured people's identities from memory, refreshed when the config is synced."""
from __future__ import annotations

import pytest
from sqlalchemy import event

from bot.core.directory import Directory
from storage.db import Database
from storage.models import Person


@pytest.fixture
async def db(make_config, database_url):
    config = make_config(database_url, RELAYDESK_ALLOW_UNKNOWN_REPORTERS="true")
    db = Database(config.database_url)
    await db.init()
    yield db, config
    await db.dispose()


@pytest.fixture
async def synced(db):
    """The database and a directory on the playground, the config synced into it."""
    db, config = db
    directory = Directory(config, ["playground"])
    await directory.sync(db)
    return db, directory


def count_identity_reads(db: Database) -> list[str]:
    """Statements that read the identity table, as they are sent."""
    seen: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM identity" in statement:
            seen.append(statement)

    return seen


async def test_configured_people_are_found_without_reading_identities(synced):
    db, directory = synced
    reads = count_identity_reads(db)
    async with db.session() as s:
        person = await directory.resolve(s, "playground", "eng_li", None)
        assert person is not None and person.id == "eng_li"
        assert (await directory.known(s, "playground", "eng_zhang")).id == "eng_zhang"
        assert await directory.identities(s, "lead_zhao") == {"playground": "lead_zhao"}
        assert (await directory.direct_address(s, "director_sun")).id == "director_sun"
    assert reads == []


async def test_a_synced_config_change_is_seen_at_once(db):
    db, config = db
    directory = Directory(config, ["playground", "wecom"])
    await directory.sync(db)
    li = next(p for p in config.people if p.id == "eng_li")
    li.identities["wecom"] = "LiGong"
    await directory.sync(db)
    async with db.session() as s:
        assert await directory.identities(s, "eng_li") == {"playground": "eng_li", "wecom": "LiGong"}
        assert (await directory.resolve(s, "wecom", "LiGong", None)).id == "eng_li"
        assert (await directory.direct_address(s, "eng_li", prefer="wecom")).id == "LiGong"


async def test_someone_who_left_is_refused_although_their_identity_is_cached(synced):
    db, directory = synced
    async with db.session() as s:
        li = await s.get(Person, "eng_li")
        li.active = False
        s.add(li)
    async with db.session() as s:
        assert await directory.resolve(s, "playground", "eng_li", None) is None
        assert (await directory.known(s, "playground", "eng_li")).active is False


async def test_customers_are_still_registered_and_read_from_the_database(synced):
    db, directory = synced
    async with db.session() as s:
        new = await directory.resolve(s, "playground", "stranger1", "路人甲")
        assert new is not None and new.role == "customer"
    async with db.session() as s:
        assert (await directory.resolve(s, "playground", "stranger1", None)).id == new.id
        assert await directory.identities(s, new.id) == {"playground": "stranger1"}


async def test_the_cached_identities_cannot_be_changed_by_a_caller(synced):
    db, directory = synced
    async with db.session() as s:
        ids = await directory.identities(s, "eng_zhang")
        ids["wecom"] = "someone_else"
        assert await directory.identities(s, "eng_zhang") == {"playground": "eng_zhang"}
