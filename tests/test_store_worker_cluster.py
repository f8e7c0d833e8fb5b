"""The store thread of a cluster's broker, on the real MariaDB.

Fenced topics lose their publishes (failed, never confirmed) and nothing else;
a barrier waits for the writes before it; a transaction that loses a deadlock
is tried again; a COMMIT whose answer is lost is never confirmed, and the
publisher's resend with the same msgid leaves one copy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from bbmq.store import Batch, GroupRecord, MySQLStore, NewMessage
from bbmq.store.base import (
    Fence,
    Fenced,
    StoreConflict,
    StoredId,
    StoreUnavailable,
    WriteRequest,
)
from bbmq.store.worker import StoreWorker
from bbmq.testing import wait_for

from .commit_cutter import CommitCuttingProxy
from .lease_support import Database, db_fixture, shared_db_fixture  # noqa: F401
from .mysql_support import connect

pytestmark = pytest.mark.mysql


@dataclass
class Outcomes:
    """What the worker reported, from its thread."""

    stored: dict[str, StoredId] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    fenced: list[frozenset[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_stored(self, requests: list[WriteRequest[Any, Any]], ids: list[StoredId]) -> None:
        with self.lock:
            for request, stored in zip(requests, ids, strict=True):
                self.stored[request.message.body.decode()] = stored

    def on_failed(self, requests: list[WriteRequest[Any, Any]], reason: str) -> None:
        with self.lock:
            for request in requests:
                self.failed[request.message.body.decode()] = reason

    def on_fenced(self, topics: frozenset[str]) -> None:
        with self.lock:
            self.fenced.append(topics)

    def answered(self) -> int:
        with self.lock:
            return len(self.stored) + len(self.failed)


def publish(topic: str, body: str, msgid: str | None = None) -> WriteRequest[Any, Any]:
    return WriteRequest("a client", NewMessage(topic, body.encode(), None, 1_000, msgid))


def changes(topic: str, group: str) -> Batch:
    return Batch(groups=[GroupRecord(topic, group, 0, 1)], topics={topic})


@pytest.fixture
def cleanup(db: Database) -> Iterator[list[StoreWorker]]:
    """Workers to stop after the test; the module's rows deleted."""
    workers: list[StoreWorker] = []
    yield workers
    for worker in workers:
        worker.stop(10)
    for table in ("messages", "msgids", "groups", "deliveries"):
        db.sql(f"DELETE FROM p_{table}")


def start(worker: StoreWorker, outcomes: Outcomes, workers: list[StoreWorker]) -> StoreWorker:
    workers.append(worker)
    worker.start(lambda fn, *args: fn(*args), outcomes.on_stored, outcomes.on_failed).result(10)
    return worker


@pytest.mark.parametrize("fenced_by", ["the fence provider", "the database"])
def test_a_fenced_topics_publishes_fail_and_the_rest_is_written(
        db: Database, cleanup: list[StoreWorker], fenced_by: str) -> None:
    table = db.table()
    epochs = {topic: table.acquire(topic, "me") or 0 for topic in ("kept", "lost")}
    if fenced_by == "the database":
        db.expire("lost")
        assert table.acquire("lost", "thief")

    def fence(topics: set[str]) -> Fence:
        if fenced_by == "the fence provider" and "lost" in topics:
            raise Fenced(frozenset({"lost"}))  # its local validity has passed
        return Fence("me", epochs)

    outcomes = Outcomes()
    worker = start(StoreWorker(MySQLStore(db.url, table_prefix=db.prefix), clock=lambda: 5_000,
                               fence=fence, on_fenced=outcomes.on_fenced), outcomes, cleanup)
    worker.submit([publish("kept", "k1"), publish("lost", "l1"), publish("kept", "k2")],
                  changes("kept", "g"))
    worker.submit([publish("lost", "l2")], changes("lost", "g"))
    wait_for(lambda: outcomes.answered() == 4, "every publish to be answered")
    assert sorted(outcomes.stored) == ["k1", "k2"]
    assert outcomes.failed == {"l1": "lease lost: lost moved to another broker",
                               "l2": "lease lost: lost moved to another broker"}
    assert outcomes.fenced and set().union(*outcomes.fenced) == {"lost"}
    assert sorted(db.sql("SELECT topic, body FROM p_messages")) == [("kept", b"k1"),
                                                                   ("kept", b"k2")]
    assert db.sql("SELECT topic, grp FROM p_groups") == [("kept", "g")]
    assert worker.available
    # The kept topic goes on being written.
    worker.submit([publish("kept", "k3")], Batch())
    wait_for(lambda: "k3" in outcomes.stored, "a later publish of the kept topic")


def test_a_barrier_runs_after_every_earlier_write(
        db: Database, cleanup: list[StoreWorker]) -> None:
    outcomes = Outcomes()
    worker = start(StoreWorker(MySQLStore(db.url, table_prefix=db.prefix), clock=lambda: 5_000,
                               max_batch=100), outcomes, cleanup)
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def count_now() -> None:  # on the store thread: what had committed by then
        with outcomes.lock:
            confirmed = len(outcomes.stored)
        seen.append((db.sql("SELECT COUNT(*) FROM p_messages")[0][0], confirmed))
        done.set()

    for n in range(10):
        worker.submit([publish("t", f"{n}-{i}") for i in range(100)], changes("t", f"g{n}"))
    worker.barrier(count_now)
    worker.submit([publish("t", "after")], Batch())
    assert done.wait(30)
    assert seen[0] == (1000, 1000) or seen[0] == (1001, 1000), seen
    wait_for(lambda: outcomes.answered() == 1001, "the publish after the barrier")
    # With nothing queued, a barrier runs at once.
    idle = threading.Event()
    worker.barrier(idle.set)
    assert idle.wait(10)
    assert db.sql("SELECT COUNT(*) FROM p_groups") == [(10,)]


def test_a_transaction_that_loses_a_deadlock_is_tried_again(
        db: Database, cleanup: list[StoreWorker], caplog: pytest.LogCaptureFixture) -> None:
    """A real deadlock: another transaction holds lease b and then asks for lease a, which
    the worker's fence check holds while it waits for b.  The other one has written more,
    so InnoDB makes the worker the victim (1213); its retry goes through."""
    table = db.table()
    epochs = {topic: table.acquire(topic, "me") or 0 for topic in ("a", "b")}
    db.sql("CREATE TABLE IF NOT EXISTS p_scratch (n INT PRIMARY KEY) ENGINE=InnoDB")
    db.sql("DELETE FROM p_scratch")
    outcomes = Outcomes()
    worker = start(StoreWorker(MySQLStore(db.url, table_prefix=db.prefix), clock=lambda: 5_000,
                               fence=lambda topics: Fence("me", epochs)), outcomes, cleanup)
    other = connect(db.url)
    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.executemany(f"INSERT INTO {db.prefix}scratch VALUES (%s)",
                               [(n,) for n in range(2000)])  # heavier: not the victim
            cursor.execute(f"UPDATE {db.prefix}leases SET writes = writes + 1 WHERE topic = 'b'")
            worker.submit([publish("a", "one"), publish("b", "two")], Batch())
            wait_for(lambda: db.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                                    " WHERE INFO LIKE %s",
                                    f"UPDATE {db.prefix}leases %topic = 'b'%")[0][0] == 1,
                     "the worker to wait for lease b")
            cursor.execute(f"UPDATE {db.prefix}leases SET writes = writes + 1 WHERE topic = 'a'")
            cursor.execute("COMMIT")
    finally:
        other.close()
    wait_for(lambda: outcomes.answered() == 2, "both publishes to be answered")
    assert sorted(outcomes.stored) == ["one", "two"] and not outcomes.failed
    assert "lost a conflict" in caplog.text and "Deadlock" in caplog.text
    assert worker.available


def test_an_ambiguous_commit_is_never_confirmed_and_a_resend_stores_one_copy(
        db: Database, cleanup: list[StoreWorker]) -> None:
    parts = urlsplit(db.url)
    with CommitCuttingProxy((parts.hostname or "127.0.0.1", parts.port or 3306)) as proxy:
        proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        store = MySQLStore(proxied, table_prefix=db.prefix)
        outcomes = Outcomes()
        worker = start(StoreWorker(store, clock=lambda: 5_000), outcomes, cleanup)
        proxy.cut_after_next_commit()
        worker.submit([publish("t", "first try", msgid="m-1")], Batch())
        wait_for(lambda: outcomes.answered() == 1, "the publish to be answered")
        assert proxy.cuts == 1
        assert "first try" in outcomes.failed and not outcomes.stored, "never confirmed"
        # The server did commit: the row is there although nobody was told.
        wait_for(lambda: db.sql("SELECT COUNT(*) FROM p_messages") == [(1,)],
                 "the cut COMMIT to have committed")
        wait_for(lambda: worker.available, "the store to reconnect", 15)
        worker.submit([publish("t", "resend", msgid="m-1")], Batch())
        wait_for(lambda: "resend" in outcomes.stored, "the resend to be confirmed", 15)
        ((stored_id, body),) = db.sql("SELECT id, body FROM p_messages")
        assert body == b"first try"
        assert (outcomes.stored["resend"].id, outcomes.stored["resend"].duplicate) == (
            stored_id, True)


def test_a_store_write_cut_after_commit_raises_unavailable(db: Database) -> None:
    """The same at the store's own level: StoreUnavailable, whatever the server did."""
    parts = urlsplit(db.url)
    with CommitCuttingProxy((parts.hostname or "127.0.0.1", parts.port or 3306)) as proxy:
        proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        store = MySQLStore(proxied, table_prefix=db.prefix)
        store.open()
        try:
            proxy.cut_after_next_commit()
            message = NewMessage("t", b"x", None, 1_000, "m-2")
            with pytest.raises(StoreUnavailable):
                store.write(Batch(messages=[message], topics={"t"}), 5_000)
            (again,) = store.write(Batch(messages=[message], topics={"t"}), 5_000)
            assert again.duplicate
            assert db.sql("SELECT COUNT(*) FROM p_msgids WHERE msgid = 'm-2'") == [(1,)]
        finally:
            store.close()
            for name in ("messages", "msgids"):
                db.sql(f"DELETE FROM p_{name}")


class LosesConflicts(MySQLStore):
    """Its next ``conflicts`` writes lose a conflict, as a Galera COMMIT does (1213): rolled
    back, nothing written; later ones are written."""

    conflicts = 0

    def write(self, batch: Batch, now_ms: int, fence: Fence | None = None) -> list[StoredId]:
        if self.conflicts:
            self.conflicts -= 1
            raise StoreConflict(f"{self.description}: (1213, 'Deadlock found when trying to "
                                "get lock; try restarting transaction')")
        return super().write(batch, now_ms, fence)


@pytest.mark.parametrize("conflicts", [1, 2])
def test_a_conflict_is_retried_once_then_the_store_counts_as_unavailable(
        db: Database, cleanup: list[StoreWorker], conflicts: int) -> None:
    store = LosesConflicts(db.url, table_prefix=db.prefix)
    outcomes = Outcomes()
    worker = start(StoreWorker(store, clock=lambda: 5_000), outcomes, cleanup)
    store.conflicts = conflicts
    worker.submit([publish("t", "p", msgid=f"m-{conflicts}")], changes("t", "g"))
    wait_for(lambda: outcomes.answered() == 1, "the publish to be answered")
    if conflicts == 1:
        assert not outcomes.stored["p"].duplicate
        assert worker.available
    else:
        assert "Deadlock" in outcomes.failed["p"]
        wait_for(lambda: worker.available and worker.idle(), "the group to be retried")
    assert db.sql("SELECT grp FROM p_groups") == [("g",)]
    assert db.sql("SELECT COUNT(*) FROM p_messages") == [(1 if conflicts == 1 else 0,)]
