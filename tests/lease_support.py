"""A MySQL database (a table prefix of the test server) for the cluster's store tests.

One schema per test module (creating it is most of a test's time); each test
starts with no brokers and no leases.  Tests set ages and expiries by writing the
database's own times behind the code's back, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from bbmq.store import MySQLStore
from bbmq.store.leases import LeaseTable

from .mysql_support import connect, drop_tables, require_mysql, unique_table_prefix

TTL_MS = 5000


class Database:
    """One prefix of the test server, with the bbmq schema, and raw SQL on it."""

    def __init__(self) -> None:
        self.url = require_mysql()
        self.prefix = unique_table_prefix()
        self.store = MySQLStore(self.url, table_prefix=self.prefix)
        self.store.open()
        self.tables: list[LeaseTable] = []
        self._conn: pymysql.connections.Connection | None = None

    def table(self, ttl_ms: int = TTL_MS) -> LeaseTable:
        """A lease table on a connection of its own."""
        table = LeaseTable(self.store.connector(), self.prefix, ttl_ms)
        self.tables.append(table)
        return table

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``query``, written with ``p_`` for the prefix."""
        if self._conn is None:  # one connection: making one takes a good part of a test
            self._conn = connect(self.url)
        with self._conn.cursor() as cursor:
            cursor.execute(query.replace("p_", self.prefix), params)
            return list(cursor.fetchall())

    def age_heartbeat(self, broker_id: str, ms: int) -> None:
        self.sql("UPDATE p_brokers SET heartbeat_at = UTC_TIMESTAMP(6) - INTERVAL %s "
                 "MICROSECOND WHERE id = %s", ms * 1000, broker_id)

    def expire(self, topic: str) -> None:
        self.sql("UPDATE p_leases SET lease_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND"
                 " WHERE topic = %s", topic)

    def clear(self) -> None:
        """Back to no brokers and no leases, for the next test."""
        for table in self.tables:
            table.close()
        self.tables.clear()
        self.sql("DELETE FROM p_brokers")
        self.sql("DELETE FROM p_leases")

    def close(self) -> None:
        self.clear()
        if self._conn is not None:
            self._conn.close()
        self.store.close()
        drop_tables(self.url, self.prefix)


@pytest.fixture(scope="module", name="shared_db")
def shared_db_fixture() -> Iterator[Database]:
    """One schema for the module (creating it is most of a test's time)."""
    database = Database()
    yield database
    database.close()


@pytest.fixture(name="db")
def db_fixture(shared_db: Database) -> Iterator[Database]:
    """The module's database, emptied of brokers and leases after the test.

    Import both fixtures into a test module: ``db_fixture, shared_db_fixture``."""
    yield shared_db
    shared_db.clear()
