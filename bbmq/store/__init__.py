"""Storage backends behind one interface, chosen by a URL.

The broker only ever sees :class:`~bbmq.store.base.Store`; :func:`open_store`
turns the ``--store`` setting into one of the backends below, so adding a
backend means adding a branch here and nothing in the broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from bbmq.store.base import (
    AckRecord,
    Batch,
    DeliveryRecord,
    Fence,
    Fenced,
    GroupRecord,
    NewMessage,
    RecoveredMessage,
    Store,
    StoreConflict,
    StoredId,
    StoreUnavailable,
)
from bbmq.store.memory import MemoryStore
from bbmq.store.mysql import MySQLStore, redact_url
from bbmq.store.schema import SchemaVersionError
from bbmq.store.sql import DEFAULT_DEDUP_WINDOW_MS
from bbmq.store.sqlite import SQLiteStore

__all__ = [
    "DEFAULT_DEDUP_WINDOW_MS",
    "DEFAULT_SQLITE_FILE",
    "AckRecord",
    "Batch",
    "DeliveryRecord",
    "Fence",
    "Fenced",
    "GroupRecord",
    "MemoryStore",
    "MySQLStore",
    "NewMessage",
    "RecoveredMessage",
    "SQLiteStore",
    "SchemaVersionError",
    "Store",
    "StoreConflict",
    "StoreUnavailable",
    "StoredId",
    "open_store",
]

DEFAULT_SQLITE_FILE: Final = "bbmq.sqlite3"

_FORMS: Final = (
    '"" or "sqlite" (the file bbmq.sqlite3 in the data directory), '
    "sqlite:///absolute/path.db, sqlite://path/relative/to/data_dir.db, "
    "mysql://user[:password]@host[:port]/database, memory://"
)


def open_store(
    url: str,
    data_dir: str | Path,
    *,
    retention_ms: int = 0,
    dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS,
    password: str | None = None,
    connect_timeout_s: float | None = None,
    io_timeout_s: float | None = None,
) -> Store:
    """The store ``url`` names, not yet opened.

    A relative ``sqlite://`` path is taken from ``data_dir``, not from the
    working directory, which a daemon changes to ``/``.  ``password``, when
    given, is a mysql:// store's password as is, in place of one in the URL; the
    timeouts, when given, a mysql:// store's in place of the URL's options.
    """
    if url in ("", "sqlite"):
        return SQLiteStore(
            Path(data_dir) / DEFAULT_SQLITE_FILE,
            retention_ms=retention_ms,
            dedup_window_ms=dedup_window_ms,
        )
    scheme, separator, rest = url.partition("://")
    if separator and scheme == "sqlite" and rest:
        return SQLiteStore(
            Path(data_dir) / rest, retention_ms=retention_ms, dedup_window_ms=dedup_window_ms
        )
    if separator and scheme == "mysql":
        try:
            return MySQLStore(url, retention_ms=retention_ms, dedup_window_ms=dedup_window_ms,
                              password=password, connect_timeout_s=connect_timeout_s,
                              io_timeout_s=io_timeout_s)
        except ValueError as error:
            raise ValueError(f"{error}; accepted stores: {_FORMS}") from None
    if url == "memory://":
        return MemoryStore(retention_ms=retention_ms, dedup_window_ms=dedup_window_ms)
    raise ValueError(f"unknown store {redact_url(url)!r}; accepted stores: {_FORMS}")
