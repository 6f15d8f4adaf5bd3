"""Statements whose SQL differs between SQLite and PostgreSQL."""
from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import DailyCounter


def _insert(session: AsyncSession, table):
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def insert_ignore(session: AsyncSession, model, **values) -> bool:
    """Insert a row unless its key exists; True when this call inserted it.

    Atomic on both backends: of two concurrent callers exactly one wins.
    """
    stmt = _insert(session, model.__table__).values(**values).on_conflict_do_nothing()
    result = await session.exec(stmt)
    return result.rowcount == 1


async def next_sequence(session: AsyncSession, day: str) -> int:
    """The next daily ticket sequence number, atomically."""
    table = DailyCounter.__table__
    stmt = _insert(session, table).values(day=day, last=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.day], set_={"last": table.c.last + 1}
    ).returning(table.c.last)
    return (await session.exec(stmt)).scalar_one()
