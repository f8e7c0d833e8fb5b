"""The default store: one SQLite file, no server to run.

WAL journal mode lets readers proceed during a write and makes each commit
one append to the log; ``synchronous=FULL`` (the default here) fsyncs that
log on every commit, so an acknowledged batch survives a power cut.  Batches
take the write lock up front (``BEGIN IMMEDIATE``) so two processes on one
file wait for each other instead of failing with a deadlock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bbmq.store.dbapi import Connection, Cursor
from bbmq.store.schema import Column, Table
from bbmq.store.sql import DEFAULT_DEDUP_WINDOW_MS, SQLStore

_SYNCHRONOUS: Final = ("OFF", "NORMAL", "FULL", "EXTRA")
#: Primary result codes that say "not now" rather than "bug": busy or locked
#: by another process, out of memory, read-only, I/O error, disk full, cannot open.
_UNAVAILABLE_CODES: Final = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
})
#: SQL types of the column kinds in bbmq.store.schema.TABLES.
_TYPES: Final = {
    "int": "INTEGER", "name": "TEXT", "msgid": "TEXT", "key": "TEXT", "text": "TEXT",
    "blob": "BLOB", "time": "TEXT",
}
#: How long to wait for another process's write lock before giving up.
_BUSY_TIMEOUT_S: Final = 5.0


class SQLiteStore(SQLStore):
    """A store in the SQLite file ``path`` (its directory is created if missing)."""

    PLACEHOLDER = "?"

    def __init__(
        self,
        path: str | Path,
        *,
        retention_ms: int = 0,
        dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS,
        synchronous: str = "FULL",
    ) -> None:
        self.synchronous = synchronous.upper()
        if self.synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        self.path = Path(path)
        super().__init__(
            f"sqlite://{self.path}",
            retention_ms=retention_ms,
            dedup_window_ms=dedup_window_ms,
            table_prefix="bbmq_",
        )

    def _connect(self) -> Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the module issues no BEGIN of its own; _begin does.
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _unavailable(self, error: BaseException) -> bool:
        if isinstance(error, sqlite3.OperationalError):
            return error.sqlite_errorcode & 0xFF in _UNAVAILABLE_CODES
        return isinstance(error, OSError)

    def _begin(self, cursor: Cursor, *, write: bool) -> None:
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _create_table(self, table: Table) -> list[str]:
        name = self.prefix + table.name
        columns = [self._column(c) for c in table.columns]
        columns.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
        # An INTEGER primary key is the rowid already; other tables are
        # clustered on their key instead of carrying a hidden rowid.
        rowid = table.primary_key == ("id",)
        statements = [
            f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(columns)})"
            f"{'' if rowid else ' WITHOUT ROWID'}"
        ]
        statements += [
            f"CREATE INDEX IF NOT EXISTS {name}_{'_'.join(cols)} ON {name} ({', '.join(cols)})"
            for cols in table.indexes
        ]
        return statements

    def _duplicate_column(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.OperationalError) and "duplicate column" in str(error)

    def _column(self, column: Column) -> str:
        null = "" if column.nullable else " NOT NULL"
        return f"{column.name} {_TYPES[column.kind]}{null}"

    def _upsert_clause(self, key: Sequence[str], update: Sequence[str]) -> str:
        conflict = f"ON CONFLICT ({', '.join(key)})"
        if not update:
            return f"{conflict} DO NOTHING"
        return f"{conflict} DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)
