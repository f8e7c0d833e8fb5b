"""What the SQLite and MySQL backends share: transactions, the batch writer, recovery.

The two differ only in the driver, the placeholder, column types, upsert
syntax and which errors mean "the database is unreachable", so
:class:`SQLStore` holds every algorithm once and a subclass supplies those few
dialect pieces.  The tables and their versions are in :mod:`bbmq.store.schema`,
the SQL text of every statement in :mod:`bbmq.store.statements`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar, Final, TypeVar

from bbmq.store import schema, sql_reads
from bbmq.store.base import (
    Batch,
    Fence,
    GroupRecord,
    NewMessage,
    RecoveredMessage,
    StoreConflict,
    StoredId,
    StoreUnavailable,
)
from bbmq.store.dbapi import Connection, Cursor, in_list_chunks
from bbmq.store.fencing import check_fence
from bbmq.store.id_blocks import DEFAULT_ID_BLOCK, IdBlocks
from bbmq.store.schema import Column, SchemaVersionError, Table
from bbmq.store.statements import Statements

DEFAULT_DEDUP_WINDOW_MS: Final = 24 * 3600 * 1000

_PREFIX_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_SEQUENCE: Final = "message"

T = TypeVar("T")


class SQLStore(ABC):
    """A :class:`~bbmq.store.base.Store` over a DB-API connection.

    Every public method runs in one transaction.  An error that means the
    database is unreachable rolls it back, drops the connection and raises
    StoreUnavailable; the next call connects again.
    """

    durable = True
    #: Whether write() takes a Fence: only a store a cluster can share (MySQL).
    FENCES: ClassVar[bool] = False

    #: The DB-API placeholder (``?`` or ``%s``); the statements are written with ``?``.
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
        self._q = Statements(table_prefix, self.PLACEHOLDER, self._upsert_clause)
        #: Ids in blocks (cluster mode); None: reserved in each batch's transaction.
        self._id_blocks: IdBlocks | None = None

    # ------------------------------------------------------------------ dialect

    @abstractmethod
    def _connect(self) -> Connection:
        """A new connection with autocommit off (or under explicit transactions)."""

    @abstractmethod
    def _unavailable(self, error: BaseException) -> bool:
        """Whether ``error`` means the database cannot be reached (retry later)."""

    def _conflict(self, error: BaseException) -> bool:
        """Whether ``error`` means the transaction lost a conflict (see StoreConflict)."""
        return False

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

    def create_table(self, table: Table) -> list[str]:
        """The statements that create ``table`` if it is missing (for schema upgrades)."""
        return self._create_table(table)

    def add_column(self, table: str, column: Column) -> str:
        """The ALTER TABLE that adds ``column`` (nullable, for rows that predate it)."""
        return f"ALTER TABLE {self.prefix}{table} ADD COLUMN {self._column(column)}"

    @abstractmethod
    def _upsert_clause(self, key: Sequence[str], update: Sequence[str]) -> str:
        """What follows ``INSERT ... VALUES (...)`` to update ``update`` on a key
        conflict, or to do nothing when ``update`` is empty."""

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
            conflict = unavailable and self._conflict(error)
            if conn is not None:
                self._abandon(conn, drop=unavailable and not conflict)
            if conflict:
                raise StoreConflict(f"{self.description}: {error}") from error
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
        for statement in self._create_table(schema.TABLES[0]):
            cursor.execute(statement)
        cursor.execute(self._q.select_version, ("schema_version",))
        row = cursor.fetchone()
        if row is None:
            for table in schema.TABLES[1:]:
                for statement in self._create_table(table):
                    cursor.execute(statement)
            cursor.execute(self._q.insert_sequence, (_SEQUENCE, 0))
            # Last: a version row promises that every table exists.
            cursor.execute(self._q.insert_meta, ("schema_version", str(schema.SCHEMA_VERSION)))
            return
        version = int(row[0])
        if version > schema.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.description} has bbmq schema version {version} but this bbmq only "
                f"knows versions up to {schema.SCHEMA_VERSION}: upgrade bbmq"
            )
        while version < schema.SCHEMA_VERSION:
            for statement in schema.UPGRADES[version](self):
                try:
                    cursor.execute(statement)
                except Exception as error:
                    # MySQL commits each ALTER at once: an upgrade cut short (or run by two
                    # brokers at the same moment) may have added this column already.
                    if not self._duplicate_column(error):
                        raise
            version += 1
            cursor.execute(self._q.set_version, (str(version), "schema_version"))

    # ------------------------------------------------------------------- writes

    def write(self, batch: Batch, now_ms: int, fence: Fence | None = None) -> list[StoredId]:
        """Commit ``batch`` atomically; see :meth:`bbmq.store.base.Store.write`.

        If the connection breaks while the COMMIT is in flight the batch may
        have been written although StoreUnavailable is raised; publishing with
        a msgid makes the retry harmless.  With a ``fence``, the transaction
        begins with the lease check of :mod:`bbmq.store.fencing`.
        """
        if fence is not None and not self.FENCES:
            raise ValueError(f"{self.description} cannot be shared by a cluster of brokers, "
                             "so it takes no fence; a cluster needs a mysql:// store")
        if self._id_blocks is not None and batch.messages:
            # Twice: a batch whose msgids repeat may reserve its ids a second time.
            self._id_blocks.make_room(2 * len(batch.messages))
        if fence is None:
            return self._run(lambda cursor: self._write(cursor, batch, now_ms), write=True)

        def fenced(cursor: Cursor) -> list[StoredId]:
            check_fence(cursor, self._q.fence, fence, batch.topics)
            return self._write(cursor, batch, now_ms)
        return self._run(fenced, write=True)

    def _write(self, cursor: Cursor, batch: Batch, now_ms: int) -> list[StoredId]:
        stored = self._store_messages(cursor, batch.messages)
        if batch.groups:
            cursor.executemany(
                self._q.insert_group,
                [(g.topic, g.group, g.start_id, g.created_ms) for g in batch.groups],
            )
        # Without retention, a message finished in this batch is deleted below with its
        # delivery rows: writing its deliveries and acks first would be wasted work (and
        # on a busy consumer that is most of them, delivered and acked between commits).
        gone = set(batch.done) if batch.done and not self.retention_ms else set()
        deliveries = [(d.message_id, d.group, d.attempts, d.delivered_ms, None, d.retry_at_ms)
                      for d in batch.deliveries if d.message_id not in gone]
        if deliveries:
            cursor.executemany(self._q.upsert_delivery, deliveries)
        acks = [(a.message_id, a.group, 0, None, a.acked_ms, None)
                for a in batch.acks if a.message_id not in gone]
        if acks:
            cursor.executemany(self._q.upsert_ack, acks)
        for chunk in in_list_chunks(batch.done):
            if self.retention_ms:
                cursor.execute(self._q.mark_done(len(chunk)), (now_ms, *chunk))
            else:
                cursor.execute(self._q.delete_deliveries_of(len(chunk)), chunk)
                cursor.execute(self._q.delete_messages(len(chunk)), chunk)
        for topic, group in batch.deleted_groups:
            cursor.execute(self._q.delete_group, (topic, group))
            cursor.execute(self._q.delete_group_deliveries, (group, topic))
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
                self._q.insert_message,
                [(first + i, m.topic, m.body, m.sender, m.published_ms, m.deliver_at_ms,
                  m.expires_at_ms, json.dumps(m.meta, separators=(",", ":")) if m.meta else None,
                  m.group)
                 for i, m in enumerate(fresh)],
            )
            keyed = [(m.topic, m.msgid, first + i, m.published_ms)
                     for i, m in enumerate(fresh) if m.msgid is not None]
            if keyed:
                cursor.executemany(self._q.upsert_msgid, keyed)
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
            for chunk in in_list_chunks(sorted(msgids)):
                cursor.execute(self._q.msgids_of(len(chunk)), (topic, *chunk))
                for msgid, message_id, published_ms in cursor.fetchall():
                    known[topic, msgid] = (message_id, False, published_ms)
        return known

    def _reserve_ids(self, cursor: Cursor, n: int) -> int:
        """Reserve ``n`` consecutive ids: from the block (cluster mode), else from the
        sequence row in the cursor's transaction, whose row lock serialises writers."""
        if self._id_blocks is not None:
            first = self._id_blocks.take(n)
            if first is not None:
                return first
            # Too few left (not expected after make_room): from the sequence row after all.
        cursor.execute(self._q.reserve, (n, _SEQUENCE))
        cursor.execute(self._q.last_id, (_SEQUENCE,))
        last: int = cursor.fetchone()[0]
        return last - n + 1

    # ----------------------------------------------------------- id blocks

    def use_id_blocks(self, size: int = DEFAULT_ID_BLOCK) -> None:
        """Reserve ids ``size`` at a time, each block in a short transaction of its own
        (cluster mode; see :mod:`bbmq.store.id_blocks`).  Ids left in a block are never
        used: gaps, never reuse."""
        self._id_blocks = IdBlocks(size, self._reserve_block)

    def fresh_id_block(self) -> None:
        """Give up the rest of the current block and reserve a new one now, so that the
        next id exceeds every id any store had reserved before this call."""
        if self._id_blocks is None:
            raise RuntimeError("fresh_id_block() needs use_id_blocks() first")
        self._id_blocks.fresh()

    def _reserve_block(self, size: int) -> int:
        """Reserve ``size`` ids in a transaction of their own; the last of them."""
        def work(cursor: Cursor) -> int:
            cursor.execute(self._q.reserve, (size, _SEQUENCE))
            cursor.execute(self._q.last_id, (_SEQUENCE,))
            last: int = cursor.fetchone()[0]
            return last
        return self._run(work, write=True)

    # -------------------------------------------------------------------- reads

    def groups(self, topic: str | None = None) -> list[GroupRecord]:
        """The groups of ``topic`` (None: of every topic), by topic and name."""
        return self._run(lambda cursor: sql_reads.read_groups(cursor, self._q, topic),
                         write=False)

    def count_pending(self, topic: str | None = None) -> int:
        """Exactly how many messages :meth:`recover` will yield (one COUNT query)."""
        return self._run(lambda cursor: sql_reads.count_pending(cursor, self._q, topic),
                         write=False)

    def recover(self, topic: str | None = None) -> Iterator[RecoveredMessage]:
        """Stream the pending messages of ``topic`` (None: of every topic) by id, a page
        (one short transaction) at a time.

        No transaction stays open while the caller consumes a page, so the
        database keeps no old snapshot.  Pages start small and grow to at most
        5,000 rows while they hold under about 16 MiB of bodies, so memory
        stays bounded by one page.
        """
        owed: dict[str, dict[str, int]] = {}
        for group in self.groups(topic):
            owed.setdefault(group.topic, {})[group.group] = group.start_id
        after, limit = 0, sql_reads.FIRST_PAGE_ROWS
        while True:
            page, read, last_id, body_bytes = self._run(
                functools.partial(sql_reads.read_page, q=self._q, owed=owed, after=after,
                                  limit=limit, topic=topic), write=False
            )
            yield from page
            if read < limit:
                return
            after = last_id
            limit = sql_reads.next_page_rows(limit, body_bytes)

    # ------------------------------------------------------------------ pruning

    def prune(self, now_ms: int) -> int:
        """Delete done messages past retention and msgids past the dedup window.

        Returns the rows deleted: messages, their delivery rows and msgids.
        """
        def work(cursor: Cursor) -> int:
            deleted = 0
            cutoff = now_ms - self.retention_ms
            for query, value in (
                (self._q.prune_deliveries, cutoff),
                (self._q.prune_messages, cutoff),
                (self._q.prune_msgids, now_ms - self.dedup_window_ms),
            ):
                cursor.execute(query, (value,))
                deleted += max(cursor.rowcount, 0)
            return deleted
        return self._run(work, write=True)
