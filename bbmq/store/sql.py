"""What the SQLite and MySQL backends share: the schema, the batch writer, recovery.

The two differ only in the driver, the placeholder, column types, upsert
syntax and which errors mean "the database is unreachable", so
:class:`SQLStore` holds every query and algorithm once and a subclass supplies
those few dialect pieces.  Values always travel as query parameters; only
table names (a validated prefix plus fixed suffixes) are formatted into SQL.

The tables (``<prefix>`` defaults to ``bbmq_``):

* ``meta`` -- ``schema_version`` and nothing else yet;
* ``sequence`` -- the last message id handed out.  Ids are reserved by an
  ``UPDATE ... SET last_id = last_id + n`` inside the batch's transaction, so
  they are never reused, even by several brokers sharing one MySQL database;
* ``messages`` -- one row per stored message; ``done_ms`` marks a message kept
  for retention after every group finished with it; ``only_group`` names the
  one group that receives it (a DLQ replay), NULL for every group;
* ``msgids`` -- ``(topic, msgid) -> message_id`` for idempotent publishing.  It
  outlives the message and goes only when :meth:`SQLStore.prune` finds it
  older than the dedup window;
* ``groups`` -- consumer groups and the id after which they receive messages;
* ``deliveries`` -- ``(message_id, group) -> attempts`` and whether acked.
  A group that never saw a message has no row: it owes it with 0 attempts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, TypeVar

from bbmq.store.base import (
    Batch,
    GroupRecord,
    NewMessage,
    RecoveredMessage,
    StoredId,
    StoreUnavailable,
)

DEFAULT_DEDUP_WINDOW_MS: Final = 24 * 3600 * 1000

_PREFIX_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
#: Rows per IN (...) list: far below SQLite's and MySQL's parameter limits.
_CHUNK: Final = 500
#: Recovery reads pages of at most this many messages ...
_PAGE_ROWS: Final = 5000
#: ... and shrinks pages so that one holds about this many body bytes.
_PAGE_BYTES: Final = 16 * 1024 * 1024
_SEQUENCE: Final = "message"

T = TypeVar("T")


class SchemaVersionError(Exception):
    """The database was written by a newer bbmq; this one must not touch it."""


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use (sqlite3 and PyMySQL both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, operation: str, parameters: Sequence[Any] = ..., /) -> object: ...

    def executemany(self, operation: str, parameters: Iterable[Sequence[Any]], /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the stores use."""

    def cursor(self) -> Cursor: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


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


_ONLY_GROUP: Final = Column("only_group", "name", nullable=True)
_RETRY_AT: Final = Column("retry_at_ms", "int", nullable=True)

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
            _ONLY_GROUP,
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
            _RETRY_AT,
        ),
        ("message_id", "grp"),
    ),
)


#: The schema this code writes.  Bump it together with an entry in UPGRADES.
SCHEMA_VERSION = 2
#: ``UPGRADES[v](store)`` returns the statements that take a schema from version
#: ``v`` to ``v + 1``; open() runs them in order.  Version 1 is the first.
UPGRADES: dict[int, Callable[[SQLStore], list[str]]] = {
    # 2: messages.only_group, for messages published to one group (dlq replay), and
    # deliveries.retry_at_ms, for NACK delays that survive a restart.
    1: lambda store: [store._add_column("messages", _ONLY_GROUP),
                      store._add_column("deliveries", _RETRY_AT)],
}


class SQLStore(ABC):
    """A :class:`~bbmq.store.base.Store` over a DB-API connection.

    Every public method runs in one transaction.  An error that means the
    database is unreachable rolls it back, drops the connection and raises
    StoreUnavailable; the next call connects again.
    """

    durable = True

    #: The DB-API placeholder (``?`` or ``%s``); queries below are written with ``?``.
    PLACEHOLDER: ClassVar[str]

    def __init__(
        self,
        description: str,
        *,
        retention_ms: int,
        dedup_window_ms: int,
        table_prefix: str,
    ) -> None:
        if not _PREFIX_RE.fullmatch(table_prefix):
            raise ValueError(
                f"table prefix {table_prefix!r} must be a letter or '_' then up to 39 "
                "letters, digits or '_'"
            )
        if retention_ms < 0 or dedup_window_ms < 0:
            raise ValueError("retention_ms and dedup_window_ms must be >= 0")
        self.description = description
        self.retention_ms = retention_ms
        self.dedup_window_ms = dedup_window_ms
        self.prefix = table_prefix
        self._conn: Connection | None = None
        self._open = False
        p = table_prefix
        self._q_select_version = self._sql(f"SELECT value FROM {p}meta WHERE name = ?")
        self._q_set_version = self._sql(f"UPDATE {p}meta SET value = ? WHERE name = ?")
        self._q_insert_meta = self._insert(f"{p}meta", ("name", "value"), ("name",))
        self._q_insert_sequence = self._insert(f"{p}sequence", ("name", "last_id"), ("name",))
        self._q_reserve = self._sql(
            f"UPDATE {p}sequence SET last_id = last_id + ? WHERE name = ?"
        )
        self._q_last_id = self._sql(f"SELECT last_id FROM {p}sequence WHERE name = ?")
        self._q_insert_message = self._insert(
            f"{p}messages",
            ("id", "topic", "body", "sender", "published_ms", "deliver_at_ms", "expires_at_ms",
             "meta", "only_group"),
        )
        self._q_upsert_msgid = self._insert(
            f"{p}msgids", ("topic", "msgid", "message_id", "published_ms"), ("topic", "msgid"),
            update=("message_id", "published_ms"),
        )
        self._q_insert_group = self._insert(
            f"{p}groups", ("topic", "grp", "start_id", "created_ms"), ("topic", "grp")
        )
        deliveries = ("message_id", "grp", "attempts", "delivered_ms", "acked_ms", "retry_at_ms")
        self._q_upsert_delivery = self._insert(
            f"{p}deliveries", deliveries, ("message_id", "grp"),
            update=("attempts", "delivered_ms", "retry_at_ms"),
        )
        self._q_upsert_ack = self._insert(
            f"{p}deliveries", deliveries, ("message_id", "grp"), update=("acked_ms",)
        )
        self._q_delete_group = self._sql(f"DELETE FROM {p}groups WHERE topic = ? AND grp = ?")
        self._q_delete_group_deliveries = self._sql(
            f"DELETE FROM {p}deliveries WHERE grp = ? AND EXISTS (SELECT 1 FROM {p}messages m"
            f" WHERE m.id = {p}deliveries.message_id AND m.topic = ?)"
        )
        self._q_groups = self._sql(
            f"SELECT topic, grp, start_id, created_ms FROM {p}groups ORDER BY topic, grp"
        )
        self._q_page = self._sql(
            f"SELECT id, topic, body, sender, published_ms, deliver_at_ms, expires_at_ms, meta,"
            f" only_group FROM {p}messages WHERE done_ms IS NULL AND id > ? ORDER BY id LIMIT ?"
        )
        self._q_page_deliveries = self._sql(
            f"SELECT message_id, grp, attempts, acked_ms, retry_at_ms FROM {p}deliveries"
            f" WHERE message_id BETWEEN ? AND ?"
        )
        # Mirrors the filter in _page(): a message of a topic with no group is
        # backlog (unless it is for one group only), one with groups is pending
        # while a group that should get it has not acked.
        self._q_count_pending = self._sql(
            f"SELECT COUNT(*) FROM {p}messages m WHERE m.done_ms IS NULL AND ("
            f"(m.only_group IS NULL AND NOT EXISTS"
            f" (SELECT 1 FROM {p}groups g WHERE g.topic = m.topic))"
            f" OR EXISTS (SELECT 1 FROM {p}groups g WHERE g.topic = m.topic"
            f" AND (m.only_group IS NULL OR g.grp = m.only_group)"
            f" AND g.start_id < m.id AND NOT EXISTS (SELECT 1 FROM {p}deliveries d"
            f" WHERE d.message_id = m.id AND d.grp = g.grp AND d.acked_ms IS NOT NULL)))"
        )
        self._q_prune_deliveries = self._sql(
            f"DELETE FROM {p}deliveries WHERE message_id IN"
            f" (SELECT id FROM {p}messages WHERE done_ms <= ?)"
        )
        self._q_prune_messages = self._sql(f"DELETE FROM {p}messages WHERE done_ms <= ?")
        self._q_prune_msgids = self._sql(f"DELETE FROM {p}msgids WHERE published_ms < ?")

    # ------------------------------------------------------------------ dialect

    @abstractmethod
    def _connect(self) -> Connection:
        """A new connection with autocommit off (or under explicit transactions)."""

    @abstractmethod
    def _unavailable(self, error: BaseException) -> bool:
        """Whether ``error`` means the database cannot be reached (retry later)."""

    @abstractmethod
    def _begin(self, cursor: Cursor, *, write: bool) -> None:
        """Start a transaction, if the driver does not start one by itself."""

    @abstractmethod
    def _create_table(self, table: Table) -> list[str]:
        """``CREATE TABLE IF NOT EXISTS`` (and index) statements for ``table``."""

    @abstractmethod
    def _column(self, column: Column) -> str:
        """A column's definition: name, type, NULL or NOT NULL."""

    @abstractmethod
    def _duplicate_column(self, error: Exception) -> bool:
        """Whether ``error`` says that a column being added is there already."""

    def _add_column(self, table: str, column: Column) -> str:
        """The ALTER TABLE that adds ``column`` (nullable, for rows that predate it)."""
        return f"ALTER TABLE {self.prefix}{table} ADD COLUMN {self._column(column)}"

    @abstractmethod
    def _upsert_clause(self, key: Sequence[str], update: Sequence[str]) -> str:
        """What follows ``INSERT ... VALUES (...)`` to update ``update`` on a key
        conflict, or to do nothing when ``update`` is empty."""

    def _sql(self, query: str) -> str:
        return query.replace("?", self.PLACEHOLDER)

    def _insert(
        self, table: str, columns: Sequence[str], key: Sequence[str] = (),
        update: Sequence[str] = (),
    ) -> str:
        # Exactly "INSERT INTO t (...) VALUES (?, ...)[ ON ...]": PyMySQL turns
        # executemany() of that form into one multi-row INSERT.
        values = ", ".join([self.PLACEHOLDER] * len(columns))
        query = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
        if key:
            query += " " + self._upsert_clause(key, update)
        return query

    def _in_list(self, n: int) -> str:
        return "(" + ", ".join([self.PLACEHOLDER] * n) + ")"

    # -------------------------------------------------------------- transactions

    def _run(self, work: Callable[[Cursor], T], *, write: bool) -> T:
        """Run ``work`` in one transaction, connecting first if need be."""
        if not self._open:
            raise RuntimeError(f"store {self.description} is not open")
        conn = self._conn
        try:
            if conn is None:
                conn = self._conn = self._connect()
            cursor = conn.cursor()
            self._begin(cursor, write=write)
            result = work(cursor)
            conn.commit()
        except BaseException as error:
            unavailable = self._unavailable(error)
            if conn is not None:
                self._abandon(conn, drop=unavailable)
            if unavailable:
                raise StoreUnavailable(f"{self.description}: {error}") from error
            raise
        return result

    def _abandon(self, conn: Connection, *, drop: bool) -> None:
        """Roll back, or drop the connection if it is broken or cannot roll back."""
        if not drop:
            try:
                conn.rollback()
            except Exception:
                drop = True
        if drop:
            self._conn = None
            # A broken connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()

    def open(self) -> None:
        """Connect and create or upgrade the schema; raise StoreUnavailable if unreachable."""
        self._open = True
        try:
            self._run(self._ensure_schema, write=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the connection; idempotent."""
        self._open = False
        conn, self._conn = self._conn, None
        if conn is not None:
            self._abandon(conn, drop=True)

    def _ensure_schema(self, cursor: Cursor) -> None:
        for statement in self._create_table(TABLES[0]):
            cursor.execute(statement)
        cursor.execute(self._q_select_version, ("schema_version",))
        row = cursor.fetchone()
        if row is None:
            for table in TABLES[1:]:
                for statement in self._create_table(table):
                    cursor.execute(statement)
            cursor.execute(self._q_insert_sequence, (_SEQUENCE, 0))
            # Last: a version row promises that every table exists.
            cursor.execute(self._q_insert_meta, ("schema_version", str(SCHEMA_VERSION)))
            return
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.description} has bbmq schema version {version} but this bbmq only "
                f"knows versions up to {SCHEMA_VERSION}: upgrade bbmq"
            )
        while version < SCHEMA_VERSION:
            for statement in UPGRADES[version](self):
                try:
                    cursor.execute(statement)
                except Exception as error:
                    # MySQL commits each ALTER at once: an upgrade cut short (or run by two
                    # brokers at the same moment) may have added this column already.
                    if not self._duplicate_column(error):
                        raise
            version += 1
            cursor.execute(self._q_set_version, (str(version), "schema_version"))

    # ------------------------------------------------------------------- writes

    def write(self, batch: Batch, now_ms: int) -> list[StoredId]:
        """Commit ``batch`` atomically; see :meth:`bbmq.store.base.Store.write`.

        If the connection breaks while the COMMIT is in flight the batch may
        have been written although StoreUnavailable is raised; publishing with
        a msgid makes the retry harmless.
        """
        return self._run(lambda cursor: self._write(cursor, batch, now_ms), write=True)

    def _write(self, cursor: Cursor, batch: Batch, now_ms: int) -> list[StoredId]:
        p = self.prefix
        stored = self._store_messages(cursor, batch.messages)
        if batch.groups:
            cursor.executemany(
                self._q_insert_group,
                [(g.topic, g.group, g.start_id, g.created_ms) for g in batch.groups],
            )
        # Without retention, a message finished in this batch is deleted below with its
        # delivery rows: writing its deliveries and acks first would be wasted work (and
        # on a busy consumer that is most of them, delivered and acked between commits).
        gone = set(batch.done) if batch.done and not self.retention_ms else set()
        deliveries = [(d.message_id, d.group, d.attempts, d.delivered_ms, None, d.retry_at_ms)
                      for d in batch.deliveries if d.message_id not in gone]
        if deliveries:
            cursor.executemany(self._q_upsert_delivery, deliveries)
        acks = [(a.message_id, a.group, 0, None, a.acked_ms, None)
                for a in batch.acks if a.message_id not in gone]
        if acks:
            cursor.executemany(self._q_upsert_ack, acks)
        for chunk in _chunks(batch.done):
            ids = self._in_list(len(chunk))
            if self.retention_ms:
                cursor.execute(
                    self._sql(
                        f"UPDATE {p}messages SET done_ms = ? WHERE done_ms IS NULL AND id IN {ids}"
                    ),
                    (now_ms, *chunk),
                )
            else:
                cursor.execute(f"DELETE FROM {p}deliveries WHERE message_id IN {ids}", chunk)
                cursor.execute(f"DELETE FROM {p}messages WHERE id IN {ids}", chunk)
        for topic, group in batch.deleted_groups:
            cursor.execute(self._q_delete_group, (topic, group))
            cursor.execute(self._q_delete_group_deliveries, (group, topic))
        return stored

    def _store_messages(self, cursor: Cursor, messages: list[NewMessage]) -> list[StoredId]:
        """Insert the new messages and their msgids; return where each one went."""
        if not messages:
            return []
        window = self.dedup_window_ms
        known = self._known_msgids(cursor, messages)
        fresh: list[NewMessage] = []
        # Per message: (value, whether value indexes `fresh` or is a stored id, duplicate).
        plan: list[tuple[int, bool, bool]] = []
        for message in messages:
            if message.msgid is not None:
                key = (message.topic, message.msgid)
                prior = known.get(key)
                if prior is not None and message.published_ms - prior[2] <= window:
                    plan.append((prior[0], prior[1], True))
                    continue
                known[key] = (len(fresh), True, message.published_ms)
            plan.append((len(fresh), True, False))
            fresh.append(message)
        first = 0
        if fresh:
            first = self._reserve_ids(cursor, len(fresh))
            cursor.executemany(
                self._q_insert_message,
                [(first + i, m.topic, m.body, m.sender, m.published_ms, m.deliver_at_ms,
                  m.expires_at_ms, json.dumps(m.meta, separators=(",", ":")) if m.meta else None,
                  m.group)
                 for i, m in enumerate(fresh)],
            )
            keyed = [(m.topic, m.msgid, first + i, m.published_ms)
                     for i, m in enumerate(fresh) if m.msgid is not None]
            if keyed:
                cursor.executemany(self._q_upsert_msgid, keyed)
        return [StoredId(first + value if indexed else value, duplicate)
                for value, indexed, duplicate in plan]

    def _known_msgids(
        self, cursor: Cursor, messages: list[NewMessage]
    ) -> dict[tuple[str, str], tuple[int, bool, int]]:
        """Stored msgid records of ``messages``: key -> (message id, False, published_ms)."""
        by_topic: dict[str, set[str]] = {}
        for message in messages:
            if message.msgid is not None:
                by_topic.setdefault(message.topic, set()).add(message.msgid)
        known: dict[tuple[str, str], tuple[int, bool, int]] = {}
        for topic, msgids in by_topic.items():
            for chunk in _chunks(sorted(msgids)):
                cursor.execute(
                    self._sql(
                        f"SELECT msgid, message_id, published_ms FROM {self.prefix}msgids"
                        f" WHERE topic = ? AND msgid IN {self._in_list(len(chunk))}"
                    ),
                    (topic, *chunk),
                )
                for msgid, message_id, published_ms in cursor.fetchall():
                    known[topic, msgid] = (message_id, False, published_ms)
        return known

    def _reserve_ids(self, cursor: Cursor, n: int) -> int:
        """Reserve ``n`` consecutive ids; the row lock serialises concurrent writers."""
        cursor.execute(self._q_reserve, (n, _SEQUENCE))
        cursor.execute(self._q_last_id, (_SEQUENCE,))
        last: int = cursor.fetchone()[0]
        return last - n + 1

    # -------------------------------------------------------------------- reads

    def groups(self) -> list[GroupRecord]:
        """Every group of every topic, by topic and name."""
        def work(cursor: Cursor) -> list[GroupRecord]:
            cursor.execute(self._q_groups)
            return [GroupRecord(*row) for row in cursor.fetchall()]
        return self._run(work, write=False)

    def count_pending(self) -> int:
        """Exactly how many messages :meth:`recover` will yield (one COUNT query)."""
        def work(cursor: Cursor) -> int:
            cursor.execute(self._q_count_pending)
            count: int = cursor.fetchone()[0]
            return count
        return self._run(work, write=False)

    def recover(self) -> Iterator[RecoveredMessage]:
        """Stream pending messages by id, a page (one short transaction) at a time.

        No transaction stays open while the caller consumes a page, so the
        database keeps no old snapshot.  Pages start small and grow to at most
        5,000 rows while they hold under about 16 MiB of bodies, so memory
        stays bounded by one page.
        """
        owed: dict[str, dict[str, int]] = {}
        for group in self.groups():
            owed.setdefault(group.topic, {})[group.group] = group.start_id
        after, limit = 0, 64
        while True:
            page, read, last_id, body_bytes = self._run(
                functools.partial(self._page, owed=owed, after=after, limit=limit), write=False
            )
            yield from page
            if read < limit:
                return
            after = last_id
            # Aim at _PAGE_BYTES of bodies per page; grow at most twofold.
            limit = max(1, min(_PAGE_ROWS, 2 * limit, limit * _PAGE_BYTES // max(body_bytes, 1)))

    def _page(
        self, cursor: Cursor, *, owed: dict[str, dict[str, int]], after: int, limit: int
    ) -> tuple[list[RecoveredMessage], int, int, int]:
        """Read up to ``limit`` messages with id > ``after``.

        Returns the pending ones, how many rows were read, the last id read and
        the body bytes read.
        """
        cursor.execute(self._q_page, (after, limit))
        rows = cursor.fetchall()
        if not rows:
            return [], 0, after, 0
        states: dict[int, dict[str, tuple[int, bool, int | None]]] = {}
        if owed:
            cursor.execute(self._q_page_deliveries, (rows[0][0], rows[-1][0]))
            for message_id, group, attempts, acked_ms, retry_at_ms in cursor.fetchall():
                states.setdefault(message_id, {})[group] = (
                    attempts, acked_ms is not None, retry_at_ms)
        page: list[RecoveredMessage] = []
        body_bytes = 0
        for (id_, topic, body, sender, published_ms, deliver_at_ms, expires_at_ms, meta,
             only_group) in rows:
            body_bytes += len(body)
            groups = owed.get(topic)
            if only_group is not None:  # owed by that one group, or by nobody
                groups = {only_group: groups[only_group]} if groups and only_group in groups \
                    else {}
                if not groups:
                    continue
            pending: dict[str, int] = {}
            retry_at: dict[str, int] = {}
            if groups:
                state = states.get(id_, {})
                for group, start_id in groups.items():
                    attempts, acked, due = state.get(group, (0, False, None))
                    if start_id < id_ and not acked:
                        pending[group] = attempts
                        if due is not None:
                            retry_at[group] = due
                if not pending:
                    continue
            page.append(RecoveredMessage(
                id_, topic, bytes(body), sender, published_ms, deliver_at_ms, expires_at_ms,
                json.loads(meta) if meta else {}, pending, retry_at,
            ))
        return page, len(rows), rows[-1][0], body_bytes

    # ------------------------------------------------------------------ pruning

    def prune(self, now_ms: int) -> int:
        """Delete done messages past retention and msgids past the dedup window.

        Returns the rows deleted: messages, their delivery rows and msgids.
        """
        def work(cursor: Cursor) -> int:
            deleted = 0
            cutoff = now_ms - self.retention_ms
            for query, value in (
                (self._q_prune_deliveries, cutoff),
                (self._q_prune_messages, cutoff),
                (self._q_prune_msgids, now_ms - self.dedup_window_ms),
            ):
                cursor.execute(query, (value,))
                deleted += max(cursor.rowcount, 0)
            return deleted
        return self._run(work, write=True)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
