"""A clustered MySQL store: writes fenced by the topic leases, ids in blocks.

On the real MariaDB: a broker that lost a topic's lease must not get one row of
a batch into the database, and brokers sharing the sequence must never hand out
one id twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bbmq.defaults import lease_topic
from bbmq.store import (
    AckRecord,
    Batch,
    GroupRecord,
    MemoryStore,
    MySQLStore,
    NewMessage,
    SQLiteStore,
    Store,
)
from bbmq.store.base import Fence, Fenced
from bbmq.store.id_blocks import IdBlocks

from .lease_support import Database, db_fixture, shared_db_fixture  # noqa: F401

NOW_MS = 5_000


def msg(topic: str, body: bytes = b"x", msgid: str | None = None) -> NewMessage:
    return NewMessage(topic, body, None, 1_000, msgid)


def batch(*messages: NewMessage, groups: list[GroupRecord] | None = None) -> Batch:
    written = Batch(messages=list(messages), groups=groups or [])
    written.topics = {m.topic for m in messages} | {g.topic for g in written.groups}
    return written


@pytest.fixture
def stores(db: Database) -> Iterator[list[MySQLStore]]:
    """Stores on the module's database, closed after the test (its rows deleted)."""
    opened: list[MySQLStore] = []
    yield opened
    for store in opened:
        store.close()
    for table in ("messages", "msgids", "groups", "deliveries"):
        db.sql(f"DELETE FROM p_{table}")


def opened(db: Database, stores: list[MySQLStore]) -> MySQLStore:
    store = MySQLStore(db.url, table_prefix=db.prefix)
    store.open()
    stores.append(store)
    return store


def counts(db: Database) -> dict[str, int]:
    return {table: db.sql(f"SELECT COUNT(*) FROM p_{table}")[0][0]
            for table in ("messages", "msgids", "groups", "deliveries")}


# ------------------------------------------------------------------ fencing


@pytest.mark.mysql
def test_a_stale_owners_write_is_fenced_and_stores_nothing(
        db: Database, stores: list[MySQLStore]) -> None:
    table = db.table()
    old_epoch = table.acquire("t", "old")
    assert old_epoch == 1
    stale, owner = opened(db, stores), opened(db, stores)
    stale.write(batch(msg("t", b"before")), NOW_MS, Fence("old", {"t": old_epoch}))
    new_epoch = table.take_over("t", "new", "old", old_epoch)
    assert new_epoch == 2
    before = counts(db)
    sequence = db.sql("SELECT last_id FROM p_sequence")
    with pytest.raises(Fenced) as fenced:
        stale.write(batch(msg("t", b"stale", msgid="m1"), groups=[GroupRecord("t", "g", 0, 1)]),
                    NOW_MS, Fence("old", {"t": old_epoch}))
    assert fenced.value.topics == {"t"}
    assert counts(db) == before
    assert db.sql("SELECT last_id FROM p_sequence") == sequence
    assert db.sql("SELECT body FROM p_messages") == [(b"before",)]
    # The new owner writes, and the stale one is fenced again with a later batch.
    (stored,) = owner.write(batch(msg("t", b"new", msgid="m1")), NOW_MS, Fence("new", {"t": 2}))
    assert not stored.duplicate
    with pytest.raises(Fenced):
        stale.write(batch(msg("t", b"stale again")), NOW_MS, Fence("old", {"t": old_epoch}))
    assert sorted(body for (body,) in db.sql("SELECT body FROM p_messages")) == [b"before",
                                                                                b"new"]


@pytest.mark.mysql
def test_one_fenced_topic_fences_the_whole_batch_and_is_named(
        db: Database, stores: list[MySQLStore]) -> None:
    table = db.table()
    kept, lost = table.acquire("kept", "me"), table.acquire("lost", "me")
    assert kept and lost
    db.expire("lost")
    assert table.acquire("lost", "thief") == lost + 1
    store = opened(db, stores)
    (first,) = store.write(batch(msg("kept")), NOW_MS, Fence("me", {"kept": kept}))
    with pytest.raises(Fenced) as fenced:
        store.write(
            Batch(messages=[msg("kept", b"a"), msg("lost", b"b")],
                  acks=[AckRecord(first.id, "g", 2)], topics={"kept", "lost"}),
            NOW_MS, Fence("me", {"kept": kept, "lost": lost}))
    assert fenced.value.topics == {"lost"}
    assert counts(db) == {"messages": 1, "msgids": 0, "groups": 0, "deliveries": 0}
    # Without the lost topic, the rest goes through: the worker's retry.
    store.write(Batch(messages=[msg("kept", b"a")], acks=[AckRecord(first.id, "g", 2)],
                      topics={"kept"}), NOW_MS, Fence("me", {"kept": kept}))
    assert counts(db) == {"messages": 2, "msgids": 0, "groups": 0, "deliveries": 1}


@pytest.mark.mysql
def test_dead_letters_are_written_under_their_parent_topics_lease(
        db: Database, stores: list[MySQLStore]) -> None:
    table = db.table()
    epoch = table.acquire("t", "me")
    assert epoch is not None
    store = opened(db, stores)
    dead = batch(msg("t.dlq", b"dead"), msg("t"))
    store.write(dead, NOW_MS, Fence("me", {"t": epoch}))
    assert table.lease("t.dlq") is None, "no lease of its own"
    store.write(batch(msg("t.dlq")), NOW_MS, Fence("me", {"t.dlq": epoch}))
    db.expire("t")
    table.acquire("t", "other")
    with pytest.raises(Fenced) as fenced:
        store.write(batch(msg("t.dlq"), msg("t")), NOW_MS, Fence("me", {"t": epoch}))
    assert fenced.value.topics == {"t", "t.dlq"}
    assert lease_topic("t.dlq.dlq") == lease_topic("t") == "t"
    assert lease_topic(".dlq") == ".dlq"


@pytest.mark.mysql
def test_a_topic_without_an_epoch_in_the_fence_is_fenced(
        db: Database, stores: list[MySQLStore]) -> None:
    table = db.table()
    epoch = table.acquire("t", "me")
    assert epoch is not None
    store = opened(db, stores)
    with pytest.raises(Fenced) as fenced:
        store.write(batch(msg("t"), msg("unknown")), NOW_MS, Fence("me", {"t": epoch}))
    assert fenced.value.topics == {"unknown"}
    with pytest.raises(Fenced):
        store.write(batch(msg("t")), NOW_MS, Fence("someone else", {"t": epoch}))
    assert counts(db)["messages"] == 0


@pytest.mark.mysql
def test_every_fenced_transaction_really_writes_its_lease_row(
        db: Database, stores: list[MySQLStore]) -> None:
    """A write that changes the row, so that Galera certifies it (see bbmq.store.fencing)."""
    table = db.table()
    epoch = table.acquire("t", "me")
    store = opened(db, stores)
    for _ in range(3):
        store.write(batch(msg("t")), NOW_MS, Fence("me", {"t": epoch or 0}))
    assert db.sql("SELECT writes FROM p_leases WHERE topic = 't'") == [(3,)]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_stores_a_cluster_cannot_share_refuse_a_fence(kind: str, tmp_path: Path) -> None:
    store: Store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "q.db")
    store.open()
    try:
        with pytest.raises(ValueError, match="mysql://"):
            store.write(batch(msg("t")), NOW_MS, Fence("me", {"t": 1}))
        assert list(store.recover()) == []
    finally:
        store.close()


# ---------------------------------------------------------------- id blocks


@pytest.mark.mysql
def test_two_stores_with_id_blocks_interleaving_writes_give_unique_ids(
        db: Database, stores: list[MySQLStore]) -> None:
    first, second = opened(db, stores), opened(db, stores)
    first.use_id_blocks(7)
    second.use_id_blocks(7)
    given: dict[MySQLStore, list[int]] = {first: [], second: []}
    for n in range(30):
        store = (first, second)[n % 2]
        size = 1 + n % 4
        given[store] += [s.id for s in store.write(batch(*(msg("t") for _ in range(size))),
                                                    NOW_MS)]
    # A batch bigger than a block takes a block of its own size.
    given[first] += [s.id for s in first.write(batch(*(msg("t") for _ in range(20))), NOW_MS)]
    every = given[first] + given[second]
    assert len(every) == len(set(every)) == 73 + 20
    for ids in given.values():
        assert ids == sorted(ids), "ids grow per store"
    assert sorted(every) == sorted(id_ for (id_,) in db.sql("SELECT id FROM p_messages"))


@pytest.mark.mysql
def test_after_a_fresh_block_the_next_id_exceeds_every_stored_id(
        db: Database, stores: list[MySQLStore]) -> None:
    previous, taker = opened(db, stores), opened(db, stores)
    previous.use_id_blocks(100)
    taker.use_id_blocks(100)
    taker.write(batch(msg("other")), NOW_MS)  # the taker's block comes first ...
    previous.write(batch(msg("t"), msg("t")), NOW_MS)  # ... the previous owner's after it
    highest = db.sql("SELECT MAX(id) FROM p_messages")[0][0]
    assert taker.write(batch(msg("t")), NOW_MS)[0].id < highest, "the old block is below"
    taker.fresh_id_block()
    (taken,) = taker.write(batch(msg("t")), NOW_MS)
    assert taken.id > db.sql("SELECT MAX(id) FROM p_messages WHERE id <> %s", taken.id)[0][0]
    assert taken.id > 200


@pytest.mark.mysql
def test_a_duplicate_msgid_with_id_blocks_returns_the_original(
        db: Database, stores: list[MySQLStore]) -> None:
    store = opened(db, stores)
    store.use_id_blocks(10)
    (original,) = store.write(batch(msg("t", msgid="k")), NOW_MS)
    again = store.write(batch(msg("t", msgid="k"), msg("t")), NOW_MS)
    assert (again[0].id, again[0].duplicate) == (original.id, True)
    assert again[1].id > original.id and not again[1].duplicate


def test_id_blocks_are_refused_without_ids_or_before_use(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    with pytest.raises(ValueError, match="at least one id"):
        store.use_id_blocks(0)
    with pytest.raises(RuntimeError, match="use_id_blocks"):
        store.fresh_id_block()


def test_a_short_block_is_given_up_rather_than_used_after_higher_ids() -> None:
    """Ids reserved elsewhere when the block ran short are above it: the block must not
    hand out its lower rest afterwards."""
    sequence = [0]

    def reserve(n: int) -> int:
        sequence[0] += n
        return sequence[0]

    blocks = IdBlocks(5, reserve)
    blocks.make_room(2)
    assert blocks.take(2) == 1
    assert blocks.take(4) is None  # 3 left: the caller reserves elsewhere
    blocks.make_room(1)
    assert blocks.take(1) == 6, "a new block, not the rest of the old one"
    blocks.fresh()
    assert blocks.take(5) == 11 and blocks.take(1) is None
