"""The storage contract, run against every backend.

The broker rebuilds all its state from Store.recover(), so every backend must
agree exactly on ids, deduplication, what is pending and what survives a
restart.  Each test runs on memory://, on a SQLite file and on MySQL (tables
under a prefix of their own, see mysql_support).  A model-based test at the
end replays random batches on each durable backend and on MemoryStore and
demands identical answers.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbmq.store import (
    AckRecord,
    Batch,
    DeliveryRecord,
    GroupRecord,
    MemoryStore,
    MySQLStore,
    NewMessage,
    RecoveredMessage,
    SchemaVersionError,
    SQLiteStore,
    Store,
    StoredId,
    open_store,
)
from bbmq.store import schema as schema_module

from .mysql_support import connect, drop_tables, require_mysql, unique_table_prefix

WINDOW_MS = 1000
#: When a batch is committed, as the store thread passes it (a store reads no clock).
NOW_MS = 5_000


# ----------------------------------------------------------------- backends


@dataclass
class Storage:
    """One empty database (file, table prefix or nothing at all for memory)."""

    kind: str
    make: Callable[..., Store]
    #: Runs SQL on the database behind the store's back (SQL backends only).
    raw_sql: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]] | None = None
    stores: list[Store] = field(default_factory=list)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (written for SQLite, with ``?`` and table prefix ``bbmq_``)."""
        assert self.raw_sql is not None, "memory:// has no SQL"
        return self.raw_sql(sql, params)

    def store(self, **options: Any) -> Store:
        """A new, unopened store object on this storage."""
        store = self.make(**options)
        self.stores.append(store)
        return store

    def opened(self, **options: Any) -> Store:
        store = self.store(**options)
        store.open()
        return store


class Backend:
    """Hands out fresh storages of one kind and cleans them all up."""

    def __init__(self, kind: str, tmp_dir: Path) -> None:
        self.kind = kind
        self.tmp_dir = tmp_dir
        self.durable = kind != "memory"
        self.mysql_url = require_mysql() if kind == "mysql" else ""
        self._storages: list[Storage] = []
        self._prefixes: list[str] = []

    def storage(self) -> Storage:
        if self.kind == "memory":
            storage = Storage("memory", MemoryStore)
        elif self.kind == "sqlite":
            path = self.tmp_dir / f"{uuid.uuid4().hex}" / "bbmq.sqlite3"

            def sqlite_sql(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                with closing(sqlite3.connect(path)) as conn, conn:
                    return conn.execute(query, params).fetchall()

            storage = Storage(
                "sqlite", lambda **options: SQLiteStore(path, **options), sqlite_sql
            )
        else:
            url, prefix = self.mysql_url, unique_table_prefix()
            self._prefixes.append(prefix)

            def mysql_sql(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                conn = connect(url)
                try:
                    with conn.cursor() as cursor:
                        cursor.execute(query.replace("bbmq_", prefix).replace("?", "%s"), params)
                        return list(cursor.fetchall())
                finally:
                    conn.close()

            storage = Storage(
                "mysql",
                lambda **options: MySQLStore(url, table_prefix=prefix, **options),
                mysql_sql,
            )
        self._storages.append(storage)
        return storage

    def cleanup(self) -> None:
        for storage in self._storages:
            for store in storage.stores:
                store.close()
        for prefix in self._prefixes:
            drop_tables(self.mysql_url, prefix)


MYSQL = pytest.param("mysql", marks=pytest.mark.mysql)


@pytest.fixture(params=["memory", "sqlite", MYSQL])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(request.param, tmp_path)
    yield backend
    backend.cleanup()


@pytest.fixture(params=["sqlite", MYSQL])
def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backends that keep data across store objects: the SQL ones."""
    backend = Backend(request.param, tmp_path)
    yield backend
    backend.cleanup()


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.storage()


@pytest.fixture
def store(storage: Storage) -> Store:
    return storage.opened(dedup_window_ms=WINDOW_MS)


# ------------------------------------------------------------------ helpers


def msg(topic: str = "t", body: bytes = b"x", *, msgid: str | None = None,
        published_ms: int = 1_000, **fields: Any) -> NewMessage:
    return NewMessage(topic, body, fields.pop("sender", None), published_ms, msgid, **fields)


def publish(store: Store, *messages: NewMessage) -> list[int]:
    return [stored.id for stored in store.write(Batch(messages=list(messages)), NOW_MS)]


def pending(store: Store) -> dict[int, dict[str, int]]:
    """id -> pending groups of what recover() yields; checks count_pending agrees."""
    recovered = list(store.recover())
    ids = [m.id for m in recovered]
    assert ids == sorted(ids), "recover() must yield by increasing id"
    assert store.count_pending() == len(recovered)
    return {m.id: m.pending for m in recovered}


# ---------------------------------------------------------------------- ids


def test_ids_are_positive_unique_and_increase_in_batch_order(store: Store) -> None:
    first = publish(store, msg(), msg("u"), msg())
    second = publish(store, *(msg(body=bytes([i])) for i in range(50)))
    ids = first + second
    assert ids[0] > 0
    assert ids == sorted(set(ids))


def test_ids_are_not_reused_after_messages_are_deleted(store: Store) -> None:
    ids = publish(store, msg(), msg())
    store.write(Batch(done=ids), NOW_MS)
    assert pending(store) == {}
    assert publish(store, msg())[0] > max(ids)


def test_ids_continue_above_old_ones_after_reopen(durable_backend: Backend) -> None:
    storage = durable_backend.storage()
    store = storage.opened()
    ids = publish(store, msg(), msg())
    store.write(Batch(done=[ids[1]]), NOW_MS)
    store.close()
    assert publish(storage.opened(), msg())[0] > max(ids)


def test_empty_batch_writes_nothing(store: Store) -> None:
    assert store.write(Batch(), NOW_MS) == []
    assert pending(store) == {}


def test_a_closed_store_refuses_work(storage: Storage) -> None:
    store = storage.store()
    with pytest.raises(RuntimeError, match="not open"):
        store.write(Batch(messages=[msg()]), NOW_MS)
    store.open()
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="not open"):
        store.groups()


# ---------------------------------------------------------------- dedup


def test_duplicate_msgid_in_a_later_batch_returns_the_original_id(store: Store) -> None:
    (original,) = publish(store, msg(msgid="m1", published_ms=1_000))
    again = Batch(messages=[msg(body=b"again", msgid="m1", published_ms=1_500)])
    assert store.write(again, NOW_MS) == [StoredId(original, duplicate=True)]
    assert [m.body for m in store.recover()] == [b"x"]


def test_duplicate_msgid_in_the_same_batch(store: Store) -> None:
    stored = store.write(Batch(messages=[
        msg(msgid="a"), msg(msgid="b"), msg(msgid="a"), msg(), msg(msgid="b"),
    ]), NOW_MS)
    a, b, c = stored[0].id, stored[1].id, stored[3].id
    assert stored == [StoredId(a), StoredId(b), StoredId(a, True), StoredId(c),
                      StoredId(b, True)]
    assert a < b < c
    assert list(pending(store)) == [a, b, c]


def test_same_msgid_on_another_topic_is_another_message(store: Store) -> None:
    stored = store.write(Batch(messages=[msg("t1", msgid="m"), msg("t2", msgid="m")]), NOW_MS)
    assert not any(s.duplicate for s in stored)
    assert stored[0].id != stored[1].id


def test_msgid_outside_the_window_is_stored_again_and_becomes_the_reference(
    store: Store,
) -> None:
    (first,) = publish(store, msg(msgid="m", published_ms=1_000))
    at_the_edge = Batch(messages=[msg(msgid="m", published_ms=1_000 + WINDOW_MS)])
    assert store.write(at_the_edge, NOW_MS) == [StoredId(first, duplicate=True)]
    (second,) = publish(store, msg(msgid="m", published_ms=1_001 + WINDOW_MS))
    assert second > first
    in_the_new_window = Batch(messages=[msg(msgid="m", published_ms=1_500 + WINDOW_MS)])
    assert store.write(in_the_new_window, NOW_MS) == [StoredId(second, duplicate=True)]


def test_msgid_outlives_its_finished_message(store: Store) -> None:
    (original,) = publish(store, msg(msgid="m"))
    store.write(Batch(done=[original]), NOW_MS)
    assert store.write(Batch(messages=[msg(msgid="m", published_ms=1_001)]), NOW_MS) == [
        StoredId(original, duplicate=True)
    ]
    assert pending(store) == {}


def test_prune_forgets_msgids_past_the_window_only(store: Store) -> None:
    (original,) = publish(store, msg(msgid="m", published_ms=1_000))
    assert store.prune(1_000 + WINDOW_MS) == 0
    assert store.write(Batch(messages=[msg(msgid="m", published_ms=1_000)]), NOW_MS)[0].duplicate
    assert store.prune(1_001 + WINDOW_MS) == 1
    (again,) = publish(store, msg(msgid="m", published_ms=1_000))
    assert again > original


# --------------------------------------------------------------- groups


def test_groups_lists_every_group_and_keeps_the_first_record(store: Store) -> None:
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1), GroupRecord("t", "g", 9, 2)]), NOW_MS)
    store.write(Batch(groups=[GroupRecord("t", "g", 5, 3), GroupRecord("u", "g", 7, 4),
                              GroupRecord("t", "G", 1, 5)]), NOW_MS)
    assert sorted(store.groups(), key=lambda g: (g.topic, g.group)) == [
        GroupRecord("t", "G", 1, 5), GroupRecord("t", "g", 0, 1), GroupRecord("u", "g", 7, 4),
    ]


def test_deleted_group_takes_its_deliveries_along(store: Store) -> None:
    a, b = publish(store, msg(), msg())
    (other,) = publish(store, msg("u"))
    store.write(Batch(
        groups=[GroupRecord("t", "g", 0, 1), GroupRecord("t", "h", 0, 1),
                GroupRecord("u", "g", 0, 1)],
        deliveries=[DeliveryRecord(a, "g", 3, 5), DeliveryRecord(other, "g", 2, 5)],
    ), NOW_MS)
    store.write(Batch(deleted_groups=[("t", "g")]), NOW_MS)
    assert store.groups() == [GroupRecord("t", "h", 0, 1), GroupRecord("u", "g", 0, 1)]
    assert pending(store) == {a: {"h": 0}, b: {"h": 0}, other: {"g": 2}}
    # A new group of the same name starts from scratch.
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 9)]), NOW_MS)
    assert pending(store)[a] == {"g": 0, "h": 0}


def test_topic_whose_last_group_is_deleted_is_backlog_again(store: Store) -> None:
    (a,) = publish(store, msg())
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1)],
                      deliveries=[DeliveryRecord(a, "g", 1, 2)]), NOW_MS)
    store.write(Batch(deleted_groups=[("t", "g")]), NOW_MS)
    assert pending(store) == {a: {}}


# ------------------------------------------------------- deliveries, acks


def test_deliveries_are_upserted(store: Store) -> None:
    a, b = publish(store, msg(), msg())
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1)],
                      deliveries=[DeliveryRecord(a, "g", 1, 10)]), NOW_MS)
    store.write(Batch(deliveries=[DeliveryRecord(a, "g", 2, 20), DeliveryRecord(b, "g", 1, 20),
                                  DeliveryRecord(b, "g", 4, 21)]), NOW_MS)
    assert pending(store) == {a: {"g": 2}, b: {"g": 4}}


def test_an_acked_message_is_never_pending_for_that_group_again(store: Store) -> None:
    a, b, c = publish(store, msg(), msg(), msg())
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1), GroupRecord("t", "h", 0, 1)],
                      deliveries=[DeliveryRecord(a, "g", 1, 2)],
                      acks=[AckRecord(a, "g", 3), AckRecord(b, "h", 3)]), NOW_MS)
    # A late delivery record does not undo the ack.
    store.write(Batch(deliveries=[DeliveryRecord(a, "g", 5, 4)], acks=[AckRecord(c, "g", 5)]),
                NOW_MS)
    assert pending(store) == {a: {"h": 0}, b: {"g": 0}, c: {"h": 0}}


def test_message_every_group_acked_is_not_recovered_even_if_not_done(store: Store) -> None:
    a, b = publish(store, msg(), msg())
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1)], acks=[AckRecord(a, "g", 2)]), NOW_MS)
    assert pending(store) == {b: {"g": 0}}


# ----------------------------------------------------------- done, prune


def test_done_messages_go_at_once_without_retention(store: Store) -> None:
    a, b = publish(store, msg(), msg())
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1)],
                      deliveries=[DeliveryRecord(a, "g", 1, 2)], acks=[AckRecord(a, "g", 3)],
                      done=[a]), NOW_MS)
    assert pending(store) == {b: {"g": 0}}
    assert store.prune(NOW_MS + 10 * WINDOW_MS) == 0


def test_done_messages_stay_for_the_retention_then_prune_deletes_them(
    storage: Storage,
) -> None:
    store = storage.opened(retention_ms=60_000, dedup_window_ms=10**12)
    a, b = publish(store, msg(), msg())
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1)],
                      deliveries=[DeliveryRecord(a, "g", 1, 2)], acks=[AckRecord(a, "g", 3)]),
                NOW_MS)
    store.write(Batch(done=[a]), NOW_MS)
    assert pending(store) == {b: {"g": 0}}
    assert store.prune(NOW_MS + 60_000 - 1) == 0
    if storage.raw_sql is not None:
        assert storage.query("SELECT COUNT(*) FROM bbmq_messages") == [(2,)]
    assert store.prune(NOW_MS + 60_000) == 2  # the message and its delivery row
    assert store.prune(NOW_MS + 60_000) == 0
    assert pending(store) == {b: {"g": 0}}
    if storage.raw_sql is not None:
        assert storage.query("SELECT COUNT(*) FROM bbmq_deliveries") == [(0,)]


# --------------------------------------------------------------- recover


def test_backlog_of_a_topic_without_groups_has_empty_pending(store: Store) -> None:
    a, b = publish(store, msg("t"), msg("u"))
    store.write(Batch(groups=[GroupRecord("u", "g", 0, 1)]), NOW_MS)
    assert pending(store) == {a: {}, b: {"g": 0}}


def test_a_nack_delay_is_recovered_until_the_next_delivery(store: Store) -> None:
    (m,) = publish(store, msg())
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1), GroupRecord("t", "h", 0, 1)]), NOW_MS)
    store.write(Batch(deliveries=[DeliveryRecord(m, "g", 1, 5),
                                  DeliveryRecord(m, "g", 1, 5, retry_at_ms=9_000)]), NOW_MS)
    [recovered] = store.recover()
    assert (recovered.pending, recovered.retry_at) == ({"g": 1, "h": 0}, {"g": 9_000})
    store.write(Batch(deliveries=[DeliveryRecord(m, "g", 2, 9_001)]), NOW_MS)  # delivered again
    [recovered] = store.recover()
    assert (recovered.pending, recovered.retry_at) == ({"g": 2, "h": 0}, {})


def test_a_message_for_one_group_is_owed_by_that_group_only(store: Store) -> None:
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1), GroupRecord("t", "h", 0, 1)]), NOW_MS)
    both, only_g, nobody = publish(store, msg("t"), msg("t", group="g"), msg("t", group="x"))
    lone = publish(store, msg("no_groups", group="g"))[0]
    assert pending(store) == {both: {"g": 0, "h": 0}, only_g: {"g": 0}}
    store.write(Batch(acks=[AckRecord(only_g, "g", 2)]), NOW_MS)
    assert pending(store) == {both: {"g": 0, "h": 0}}
    assert nobody and lone  # stored, owed by no group, and so never recovered


def test_only_groups_that_started_before_a_message_owe_it(store: Store) -> None:
    a, b, c = publish(store, msg(), msg(), msg())
    store.write(Batch(groups=[GroupRecord("t", "g", c, 1), GroupRecord("t", "h", b, 1)]), NOW_MS)
    assert pending(store) == {c: {"h": 0}}
    store.write(Batch(groups=[GroupRecord("t", "early", a - 1, 1)]), NOW_MS)
    assert pending(store) == {a: {"early": 0}, b: {"early": 0}, c: {"early": 0, "h": 0}}


def test_recover_returns_every_field_unchanged(store: Store) -> None:
    messages = [
        msg("t.1", b"one", sender="alice@127.0.0.1:5000", published_ms=1_700_000_000_123,
            deliver_at_ms=1_700_000_005_000, expires_at_ms=1_700_000_060_000,
            meta={"from": "alice", "ts": "123", "note": "é ✓ \"q\" 'q'"}),
        msg("T_2-x", b"two", published_ms=5, deliver_at_ms=0, expires_at_ms=None),
    ]
    ids = publish(store, *messages)
    recovered = list(store.recover())
    assert recovered == [
        RecoveredMessage(i, m.topic, m.body, m.sender, m.published_ms, m.deliver_at_ms,
                         m.expires_at_ms, m.meta or {}, {})
        for i, m in zip(ids, messages, strict=True)
    ]


def test_topic_and_group_names_are_case_sensitive(store: Store) -> None:
    a, b = publish(store, msg("t"), msg("T"))
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1), GroupRecord("t", "G", 0, 1)],
                      acks=[AckRecord(a, "g", 2)]), NOW_MS)
    assert pending(store) == {a: {"G": 0}, b: {}}


def test_recover_streams_many_pages_in_id_order(store: Store) -> None:
    topics = ["a", "b", "c"]
    ids: list[int] = []
    for start in range(0, 12_000, 3_000):
        ids += publish(store, *(msg(topics[i % 3], str(i).encode())
                                for i in range(start, start + 3_000)))
    store.write(Batch(
        groups=[GroupRecord("a", "g", 0, 1), GroupRecord("b", "g", ids[6_000], 1)],
        acks=[AckRecord(i, "g", 1) for i in ids[:3_000]],
        deliveries=[DeliveryRecord(i, "g", 2, 1) for i in ids[9_000:9_300]],
    ), NOW_MS)
    result = pending(store)
    expected: dict[int, dict[str, int]] = {}
    for n, i in enumerate(ids):
        topic = topics[n % 3]
        attempts = 2 if 9_000 <= n < 9_300 else 0
        if topic == "c":
            expected[i] = {}
        elif (topic == "a" and n >= 3_000) or (topic == "b" and i > ids[6_000]):
            expected[i] = {"g": attempts}
    assert result == expected
    bodies = [m.body for m in store.recover()]
    assert bodies[:3] == [b"2", b"5", b"8"]
    # One topic's pages, as a cluster's broker loads a topic it takes.
    mine = list(store.recover("a"))
    assert [m.id for m in mine] == [i for n, i in enumerate(ids) if n % 3 == 0 and i in expected]
    assert {m.topic for m in mine} == {"a"}
    assert store.count_pending("a") == len(mine) == 3_000


def test_groups_recover_and_count_pending_of_one_topic(store: Store) -> None:
    store.write(Batch(groups=[GroupRecord("b", "h", 0, 1), GroupRecord("a", "g", 0, 1),
                              GroupRecord("b", "g", 0, 1)]), NOW_MS)
    a1, b1, dead, backlog, a2 = publish(store, msg("a"), msg("b"), msg("a.dlq"), msg("c"),
                                        msg("a"))
    store.write(Batch(acks=[AckRecord(a1, "g", 2)], deliveries=[DeliveryRecord(a2, "g", 3, 2)]),
                NOW_MS)
    assert [(g.topic, g.group) for g in store.groups("b")] == [("b", "g"), ("b", "h")]
    assert [(g.topic, g.group) for g in store.groups("a")] == [("a", "g")]
    assert store.groups("c") == [] and store.groups("nothing") == []
    assert len(store.groups()) == 3
    assert [(m.id, m.pending) for m in store.recover("a")] == [(a2, {"g": 3})]
    assert [(m.id, m.pending) for m in store.recover("b")] == [(b1, {"g": 0, "h": 0})]
    assert [(m.id, m.pending) for m in store.recover("a.dlq")] == [(dead, {})]
    assert [(m.id, m.pending) for m in store.recover("c")] == [(backlog, {})]
    assert list(store.recover("nothing")) == []
    counts = {t: store.count_pending(t) for t in ("a", "b", "a.dlq", "c", "nothing")}
    assert counts == {"a": 1, "b": 1, "a.dlq": 1, "c": 1, "nothing": 0}
    assert store.count_pending() == 4


BODIES = {
    "quotes": b"it's \"quoted\" `back` \\ \\' %s %(x)s ?",
    "nul": b"a\x00b\x00\x00",
    "tail": b"TAIL\r\n",
    "head": b"HEAD ",
    "not-utf8": b"\xff\xfe\x80",
    "empty": b"",
    "all-bytes": bytes(range(256)),
    "1MiB": bytes(range(256)) * 4096,
}


def test_bodies_come_back_byte_exact(backend: Backend) -> None:
    storage = backend.storage()
    store = storage.opened()
    names = list(BODIES)
    ids = publish(store, *(msg(body=BODIES[name]) for name in names))
    if backend.durable:
        store.close()
        store = storage.opened()
    recovered = {m.id: m.body for m in store.recover()}
    for name, message_id in zip(names, ids, strict=True):
        assert recovered[message_id] == BODIES[name], name


# ------------------------------------------------------------ durability


def test_a_new_store_object_sees_everything_after_reopen(durable_backend: Backend) -> None:
    storage = durable_backend.storage()
    store = storage.opened(dedup_window_ms=WINDOW_MS)
    a, b, c = publish(store, msg(msgid="m"), msg(), msg("u"))
    groups = [GroupRecord("t", "g", 0, 1), GroupRecord("t", "h", a, 2)]
    store.write(Batch(groups=groups, deliveries=[DeliveryRecord(a, "g", 2, 3)],
                      acks=[AckRecord(b, "g", 4)]), NOW_MS)
    before = list(store.recover())
    store.close()

    again = storage.opened(dedup_window_ms=WINDOW_MS)
    assert again.groups() == groups
    assert list(again.recover()) == before
    assert pending(again) == {a: {"g": 2}, b: {"h": 0}, c: {}}
    assert again.write(Batch(messages=[msg(msgid="m")]), NOW_MS) == [StoredId(a, duplicate=True)]
    assert publish(again, msg())[0] > c


# ---------------------------------------------------------------- schema


@pytest.fixture
def sql_storage(durable_backend: Backend) -> Storage:
    return durable_backend.storage()


def test_schema_is_versioned(sql_storage: Storage) -> None:
    sql_storage.opened()
    assert sql_storage.query("SELECT value FROM bbmq_meta WHERE name = ?", "schema_version") == [
        (str(schema_module.SCHEMA_VERSION),)
    ]


def test_a_newer_schema_is_refused(sql_storage: Storage) -> None:
    sql_storage.opened().close()
    sql_storage.query("UPDATE bbmq_meta SET value = ? WHERE name = ?",
                      str(schema_module.SCHEMA_VERSION + 1), "schema_version")
    store = sql_storage.store()
    with pytest.raises(SchemaVersionError, match="upgrade bbmq"):
        store.open()
    with pytest.raises(RuntimeError, match="not open"):
        store.groups()


def test_a_version_1_database_is_upgraded_and_keeps_its_messages(sql_storage: Storage) -> None:
    """The real upgrade path: a database as bbmq's first schema left it (no
    messages.only_group, no deliveries.retry_at_ms), with a message in it, opened by this bbmq."""
    store = sql_storage.opened()
    store.write(Batch(groups=[GroupRecord("t", "g", 0, 1)]), NOW_MS)
    (kept,) = publish(store, msg(body=b"from v1"))
    store.close()
    sql_storage.query("ALTER TABLE bbmq_messages DROP COLUMN only_group")
    sql_storage.query("ALTER TABLE bbmq_deliveries DROP COLUMN retry_at_ms")
    sql_storage.query("UPDATE bbmq_meta SET value = ? WHERE name = ?", "1", "schema_version")
    store = sql_storage.opened()
    store.close()
    # An upgrade cut short: MySQL commits each ALTER, so one column may be there already
    # while the version still says 1. Opening again must finish the job, not fail.
    sql_storage.query("ALTER TABLE bbmq_deliveries DROP COLUMN retry_at_ms")
    sql_storage.query("UPDATE bbmq_meta SET value = ? WHERE name = ?", "1", "schema_version")
    store = sql_storage.opened()
    assert sql_storage.query("SELECT value FROM bbmq_meta WHERE name = ?", "schema_version") == [
        (str(schema_module.SCHEMA_VERSION),)
    ]
    assert pending(store) == {kept: {"g": 0}}
    (targeted,) = publish(store, msg(body=b"for g", group="g"))
    assert [m.body for m in store.recover()] == [b"from v1", b"for g"]
    assert targeted > kept


def test_a_version_2_database_gets_the_cluster_tables(sql_storage: Storage) -> None:
    store = sql_storage.opened()
    (kept,) = publish(store, msg())
    store.close()
    sql_storage.query("DROP TABLE bbmq_brokers")
    sql_storage.query("DROP TABLE bbmq_leases")
    sql_storage.query("UPDATE bbmq_meta SET value = ? WHERE name = ?", "2", "schema_version")
    store = sql_storage.opened()
    assert sql_storage.query("SELECT value FROM bbmq_meta WHERE name = ?", "schema_version") == [
        ("3",)]
    assert sql_storage.query("SELECT COUNT(*) FROM bbmq_brokers") == [(0,)]
    assert sql_storage.query("SELECT topic, owner, epoch FROM bbmq_leases") == []
    assert list(pending(store)) == [kept]


def test_an_older_schema_is_upgraded(
    sql_storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sql_storage.opened()
    (kept,) = publish(store, msg())
    store.close()
    version = schema_module.SCHEMA_VERSION
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", version + 1)
    monkeypatch.setitem(
        schema_module.UPGRADES, version,
        lambda s: [f"ALTER TABLE {s.prefix}messages ADD COLUMN upgraded INTEGER"],
    )
    store = sql_storage.opened()
    assert sql_storage.query("SELECT value FROM bbmq_meta WHERE name = ?", "schema_version") == [
        (str(version + 1),)
    ]
    assert sql_storage.query("SELECT id, upgraded FROM bbmq_messages") == [(kept, None)]
    assert list(pending(store)) == [kept]


# --------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("url", "kind", "description"),
    [
        ("", SQLiteStore, "sqlite://{data}/bbmq.sqlite3"),
        ("sqlite", SQLiteStore, "sqlite://{data}/bbmq.sqlite3"),
        ("sqlite:///abs/dir/q.db", SQLiteStore, "sqlite:///abs/dir/q.db"),
        ("sqlite://sub/q.db", SQLiteStore, "sqlite://{data}/sub/q.db"),
        ("mysql://bob:s%40cret:x@db.example:3307/bbmq?charset=utf8mb4", MySQLStore,
         "mysql://bob@db.example:3307/bbmq"),
        ("mysql://root@127.0.0.1/test", MySQLStore, "mysql://root@127.0.0.1:3306/test"),
        ("memory://", MemoryStore, "memory://"),
    ],
)
def test_open_store_understands_its_urls(
    url: str, kind: type, description: str, tmp_path: Path
) -> None:
    store = open_store(url, tmp_path, retention_ms=5, dedup_window_ms=7)
    assert isinstance(store, kind)
    assert store.description == description.format(data=tmp_path)
    assert store.durable is (kind is not MemoryStore)


def test_open_store_decodes_mysql_credentials(tmp_path: Path) -> None:
    store = open_store("mysql://b%20ob:s%40cret:x@db:3307/bbmq?table_prefix=x_", tmp_path)
    assert isinstance(store, MySQLStore)
    assert (store.params.user, store.params.password, store.prefix) == ("b ob", "s@cret:x", "x_")
    raw = open_store("mysql://bbmq@db/bbmq", tmp_path, password="p@ss:/#?%40")
    assert isinstance(raw, MySQLStore) and raw.params.password == "p@ss:/#?%40"  # as given


@pytest.mark.mysql
def test_a_store_password_with_url_characters_logs_in_as_given(tmp_path: Path) -> None:
    """--store-password reaches MySQL unencoded: a password full of URL syntax works."""
    server = urlsplit(require_mysql())
    user, password = f"bbmq_pw_{uuid.uuid4().hex[:8]}", "p@ss:/#?%40 x"
    admin = connect(require_mysql())
    try:
        with admin.cursor() as cursor:
            cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            cursor.execute(f"GRANT ALL ON `{server.path.lstrip('/')}`.* TO %s@'%%'", (user,))
        url = f"mysql://{user}@{server.hostname}:{server.port or 3306}{server.path}" \
              f"?table_prefix={unique_table_prefix()}"
        store = open_store(url, tmp_path, password=password)
        store.open()
        try:
            assert publish(store, msg(body=b"logged in"))
        finally:
            store.close()
            drop_tables(require_mysql(), parse_qs(urlsplit(url).query)["table_prefix"][0])
    finally:
        with admin.cursor() as cursor:
            cursor.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        admin.close()


@pytest.mark.parametrize(
    "url",
    ["postgres://u:hunter2@h/db", "sqlite:", "sqlite://", "mysql://h/db", "mysql://u@h",
     "mysql://u:hunter2@h:notaport/db", "memory://x", "memory"],
)
def test_open_store_rejects_other_urls_and_lists_the_accepted_ones(
    url: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="mysql://user") as raised:
        open_store(url, tmp_path)
    assert "hunter2" not in str(raised.value)


# ------------------------------------------------------------ model test


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Batches as recipes; message ids are picked among those already issued."""
    topics, groups, msgids = st.sampled_from("ab"), st.sampled_from(["g", "h"]), \
        st.one_of(st.none(), st.sampled_from(["m1", "m2", "m3"]))
    recipe = st.fixed_dictionaries({
        "messages": st.lists(st.tuples(topics, msgids, st.integers(0, 3 * WINDOW_MS),
                                       st.one_of(st.none(), groups)), max_size=4),
        "groups": st.lists(st.tuples(topics, groups, st.integers(0, 8)), max_size=2),
        "deliveries": st.lists(st.tuples(st.integers(0, 99), groups, st.integers(1, 4),
                                         st.one_of(st.none(), st.integers(0, 10**6))),
                               max_size=3),
        "acks": st.lists(st.tuples(st.integers(0, 99), groups), max_size=3),
        "done": st.lists(st.integers(0, 99), max_size=2),
        "deleted_groups": st.lists(st.tuples(topics, groups), max_size=1),
        "written_ms": st.integers(0, 3 * WINDOW_MS),
        "prune": st.sampled_from([None, None, None, 0, 2 * WINDOW_MS, 10**15]),
    })
    return draw(st.lists(recipe, min_size=1, max_size=12))


def _batch(recipe: dict[str, Any], issued: list[int]) -> Batch:
    def pick(n: int) -> int:
        return issued[n % len(issued)] if issued else 1
    return Batch(
        messages=[msg(t, f"{t}{k}{p}".encode(), msgid=k, published_ms=p, group=g)
                  for t, k, p, g in recipe["messages"]],
        groups=[GroupRecord(t, g, s, 1) for t, g, s in recipe["groups"]],
        deliveries=[DeliveryRecord(pick(n), g, a, 1, r) for n, g, a, r in recipe["deliveries"]],
        acks=[AckRecord(pick(n), g, 1) for n, g in recipe["acks"]],
        done=[pick(n) for n in recipe["done"]],
        deleted_groups=list(recipe["deleted_groups"]),
    )


# Over MySQL, the 40 examples' fresh tables take seconds of DDL: slow, while the
# SQLite run keeps the model check in the fast loop.
@pytest.mark.parametrize(
    "durable_backend",
    ["sqlite", pytest.param("mysql", marks=[pytest.mark.mysql, pytest.mark.slow])],
    indirect=True,
)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recipes=batches(), retention_ms=st.sampled_from([0, 1000]))
def test_every_backend_behaves_like_the_memory_model(
    durable_backend: Backend, recipes: list[dict[str, Any]], retention_ms: int
) -> None:
    options = {"retention_ms": retention_ms, "dedup_window_ms": WINDOW_MS}
    model = MemoryStore(**options)
    model.open()
    store = durable_backend.storage().opened(**options)
    issued: list[int] = []
    for recipe in recipes:
        batch = _batch(recipe, issued)
        stored = store.write(batch, recipe["written_ms"])
        assert stored == model.write(batch, recipe["written_ms"])
        issued += [s.id for s in stored if not s.duplicate]
        if recipe["prune"] is not None:
            assert store.prune(recipe["prune"]) == model.prune(recipe["prune"])
        assert list(store.recover()) == list(model.recover())
        assert store.count_pending() == model.count_pending()
    assert store.groups() == model.groups()


def test_mysql_timeouts_come_from_arguments_else_url_options_else_short_defaults() -> None:
    """Issue 16, defect 2: no longer the hard-coded 30 s read timeout, far above the defaults
    a client can outlive."""
    url = "mysql://u@h/db?io_timeout=7.5&connect_timeout=1"
    assert (MySQLStore(url).connect_timeout_s, MySQLStore(url).io_timeout_s) == (1.0, 7.5)
    store = MySQLStore(url, connect_timeout_s=3, io_timeout_s=4)
    assert (store.connect_timeout_s, store.io_timeout_s) == (3, 4)
    plain = MySQLStore("mysql://u@h/db")
    assert plain.connect_timeout_s <= 2 and plain.io_timeout_s <= 5
    with pytest.raises(ValueError, match="io_timeout"):
        MySQLStore("mysql://u@h/db?io_timeout=0")
    with pytest.raises(ValueError, match="connect_timeout"):
        MySQLStore("mysql://u@h/db?connect_timeout=soon")
