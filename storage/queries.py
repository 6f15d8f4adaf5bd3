"""Statements whose SQL differs between SQLite and PostgreSQL."""
from __future__ import annotations

from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import DailyCounter


def _insert(session: AsyncSession, table):
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


# insert_ignore's statements by table, dialect and columns, with the values bound as
# parameters: every callback and report runs some, and building one cost as much as
# running it.
_IGNORING: dict[tuple, object] = {}


async def insert_ignore(session: AsyncSession, model, **values) -> bool:
    """Insert a row unless its key exists; True when this call inserted it.

    Atomic on both backends: of two concurrent callers exactly one wins.
    """
    key = (model.__table__, session.bind.dialect.name, tuple(values))
    stmt = _IGNORING.get(key)
    if stmt is None:
        table = model.__table__
        stmt = _IGNORING[key] = (_insert(session, table)
                                 .values({k: bindparam(k, type_=table.c[k].type) for k in values})
                                 .on_conflict_do_nothing())
    result = await session.exec(stmt, params=values)
    return result.rowcount == 1


async def next_sequence(session: AsyncSession, day: str) -> int:
    """The next daily ticket sequence number, atomically."""
    table = DailyCounter.__table__
    stmt = _insert(session, table).values(day=day, last=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.day], set_={"last": table.c.last + 1}
    ).returning(table.c.last)
    return (await session.exec(stmt)).scalar_one()
