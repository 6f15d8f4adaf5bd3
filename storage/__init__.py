"""Persistence: SQLModel tables and the async database handle."""
from storage.db import Database, SchemaVersionError

__all__ = ["Database", "SchemaVersionError"]
