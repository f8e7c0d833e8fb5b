"""The tables of the SQL stores, in dialect-neutral terms, and the versions of that schema.

The tables (``<prefix>`` defaults to ``bbmq_``):

* ``meta`` -- ``schema_version`` and nothing else yet;
* ``sequence`` -- the last message id handed out.  Ids are reserved by an
  ``UPDATE ... SET last_id = last_id + n`` inside the batch's transaction, so
  they are never reused, even by several brokers sharing one MySQL database;
* ``messages`` -- one row per stored message; ``done_ms`` marks a message kept
  for retention after every group finished with it; ``only_group`` names the
  one group that receives it (a DLQ replay), NULL for every group;
* ``msgids`` -- ``(topic, msgid) -> message_id`` for idempotent publishing.  It
  outlives the message and goes only when :meth:`bbmq.store.sql.SQLStore.prune` finds it
  older than the dedup window;
* ``groups`` -- consumer groups and the id after which they receive messages;
* ``deliveries`` -- ``(message_id, group) -> attempts`` and whether acked.
  A group that never saw a message has no row: it owes it with 0 attempts;
* ``brokers`` -- the brokers using the database (cluster or not): id, advertised
  address, mode, when they started and last heartbeated (the database's clock), draining;
* ``leases`` -- which broker serves each topic in a cluster: owner ('' for nobody),
  epoch (grows on every change of owner), lease_until (the database's clock), and
  ``writes``, which every fenced transaction increments (see bbmq.store.fencing).
  Only a MySQL store uses these two (:mod:`bbmq.store.leases`); SQLite has them
  too so that every database has one schema.

A database records the version of the schema it has (``meta.schema_version``);
:meth:`bbmq.store.sql.SQLStore.open` creates the tables of an empty one and
brings an older one up to :data:`SCHEMA_VERSION` with :data:`UPGRADES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol


class SchemaVersionError(Exception):
    """The database was written by a newer bbmq; this one must not touch it."""


@dataclass(frozen=True, slots=True)
class Column:
    """A column; ``kind`` is a key of the dialect's type map."""

    name: str
    kind: str
    nullable: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    """A table without its prefix, in dialect-neutral terms."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()


ONLY_GROUP: Final = Column("only_group", "name", nullable=True)
RETRY_AT: Final = Column("retry_at_ms", "int", nullable=True)
BROKERS: Final = Table(
    "brokers",
    (
        Column("id", "key"),
        Column("address", "name"),
        Column("mode", "key"),
        Column("started_at", "time"),
        Column("heartbeat_at", "time"),
        Column("draining", "int"),
    ),
    ("id",),
)
LEASES: Final = Table(
    "leases",
    (
        Column("topic", "name"),
        Column("owner", "key"),
        Column("epoch", "int"),
        Column("lease_until", "time"),
        Column("writes", "int"),
    ),
    ("topic",),
    indexes=(("owner",),),
)

TABLES: Final = (
    Table("meta", (Column("name", "key"), Column("value", "text")), ("name",)),
    Table("sequence", (Column("name", "key"), Column("last_id", "int")), ("name",)),
    Table(
        "messages",
        (
            Column("id", "int"),
            Column("topic", "name"),
            Column("body", "blob"),
            Column("sender", "text", nullable=True),
            Column("published_ms", "int"),
            Column("deliver_at_ms", "int"),
            Column("expires_at_ms", "int", nullable=True),
            Column("meta", "text", nullable=True),
            Column("done_ms", "int", nullable=True),
            ONLY_GROUP,
        ),
        ("id",),
        indexes=(("done_ms",),),
    ),
    Table(
        "msgids",
        (
            Column("topic", "name"),
            Column("msgid", "msgid"),
            Column("message_id", "int"),
            Column("published_ms", "int"),
        ),
        ("topic", "msgid"),
        indexes=(("published_ms",),),
    ),
    Table(
        "groups",
        (
            Column("topic", "name"),
            Column("grp", "name"),
            Column("start_id", "int"),
            Column("created_ms", "int"),
        ),
        ("topic", "grp"),
    ),
    Table(
        "deliveries",
        (
            Column("message_id", "int"),
            Column("grp", "name"),
            Column("attempts", "int"),
            Column("delivered_ms", "int", nullable=True),
            Column("acked_ms", "int", nullable=True),
            RETRY_AT,
        ),
        ("message_id", "grp"),
    ),
    BROKERS,
    LEASES,
)


class Dialect(Protocol):
    """What an upgrade needs to know of the database it writes statements for."""

    #: Of every table name (``bbmq_`` unless configured).
    prefix: str

    def add_column(self, table: str, column: Column) -> str:
        """The ALTER TABLE that adds ``column`` to ``table`` (given without the prefix)."""
        ...

    def create_table(self, table: Table) -> list[str]:
        """``CREATE TABLE IF NOT EXISTS`` (and index) statements for ``table``."""
        ...


#: The schema this code writes.  Bump it together with an entry in UPGRADES.
SCHEMA_VERSION = 3
#: ``UPGRADES[v](dialect)`` returns the statements that take a schema from version
#: ``v`` to ``v + 1``; open() runs them in order.  Version 1 is the first.
UPGRADES: dict[int, Callable[[Dialect], list[str]]] = {
    # 2: messages.only_group, for messages published to one group (dlq replay), and
    # deliveries.retry_at_ms, for NACK delays that survive a restart.
    1: lambda dialect: [dialect.add_column("messages", ONLY_GROUP),
                        dialect.add_column("deliveries", RETRY_AT)],
    # 3: the cluster's brokers and topic leases (IF NOT EXISTS: harmless to repeat).
    2: lambda dialect: [*dialect.create_table(BROKERS), *dialect.create_table(LEASES)],
}
