"""Bugs that mutation testing showed no other test would catch (issue 16).

Each test here is named after the bug it stops: an ADMIN command from a
connection that never did a handshake, an ACK that retires the wrong lease, a
COMMIT whose failure is swallowed, and a dead letter lost when the store fails
while the ack that retires its original is kept for the retry.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from bbmq import protocol
from bbmq.protocol import ErrorCode
from bbmq.store import (
    AckRecord,
    Batch,
    GroupRecord,
    MySQLStore,
    NewMessage,
    SQLiteStore,
    StoreUnavailable,
)
from bbmq.store.base import WriteRequest
from bbmq.store.sql import Cursor
from bbmq.store.worker import StoreWorker
from bbmq.testing import wait_for

from .core_harness import CoreHarness, messages
from .mysql_support import connect, isolated_mysql_url


@pytest.mark.parametrize("role", ["none", "publisher", "subscriber"])
def test_admin_commands_are_refused_on_every_connection_but_an_admin_one(role: str) -> None:
    """Without the role check, any connection (even one that never sent a token) could purge."""
    h = CoreHarness()
    pub = h.publisher("orders")
    h.subscriber("orders", "billing")
    h.publish(pub, b"a", b"b")
    session = {"none": h.connect, "publisher": lambda: h.publisher("orders"),
               "subscriber": lambda: h.subscriber("orders", "other")}[role]()
    h.send(session, protocol.AdminCommand("purge", {"topic": "orders"}))
    [refused] = h.take(session)
    assert isinstance(refused, protocol.Error) and refused.code == ErrorCode.NOT_ALLOWED, refused
    admin = h.connect()
    h.send(
        admin,
        protocol.ClientAdmin(),
        protocol.AdminCommand("peek", {"topic": "orders", "group": "billing"}),
    )
    [_, peeked] = h.take(admin)
    assert isinstance(peeked, protocol.AdminResult) and len(peeked.result) == 2, peeked


def test_an_ack_retires_the_lease_it_names_and_no_other() -> None:
    h = CoreHarness(ack_timeout_ms=1_000)
    sub = h.subscriber("t")
    first, second = h.publish(h.publisher("t"), b"first", b"second")
    h.send(sub, protocol.Fetch(2))
    assert [m[0] for m in messages(h.take(sub))] == [first, second]
    h.send(sub, protocol.Ack((second,)))
    assert h.take(sub) == []
    h.commit()
    assert [ack.message_id for ack in h.stored.acks] == [second]
    h.advance(1_001)  # the first, never acked, comes back; the second does not
    h.send(sub, protocol.Fetch(2, 0))
    assert messages(h.take(sub)) == [(first, 2, b"first")]


class KillsItsConnectionBeforeCommit(MySQLStore):
    """Kills its own MySQL session (from another connection) just before COMMIT: the rows
    were sent, the commit cannot succeed."""

    def _write(self, cursor: Cursor, batch: Batch, now_ms: int) -> Any:
        result = super()._write(cursor, batch, now_ms)
        thread_id = cursor.connection.thread_id()  # type: ignore[attr-defined]
        killer = connect(self.url)
        try:
            with killer.cursor() as other:
                other.execute(f"KILL {int(thread_id)}")
        finally:
            killer.close()
        return result


@pytest.mark.mysql
def test_a_commit_that_fails_is_never_reported_as_stored() -> None:
    with isolated_mysql_url() as url:
        store = KillsItsConnectionBeforeCommit(url)
        store.url = url  # type: ignore[attr-defined]
        store.open()
        with pytest.raises(StoreUnavailable):
            store.write(Batch(messages=[NewMessage("t", b"lost", None, 1)]), 2)
        store.close()
        plain = MySQLStore(url)
        plain.open()
        assert plain.count_pending() == 0
        plain.close()


@pytest.mark.slow  # waits out SQLite's 5 s busy timeout
def test_a_dead_letter_survives_a_store_failure_with_the_ack_of_its_original(
    tmp_path: Path,
) -> None:
    """The dead letter and the ack that retires its original are retried together, or a store
    outage while dead-lettering loses the message."""
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    # No watchdog before the write fails for real (SQLite's 5 s busy timeout).
    worker = StoreWorker(store, clock=lambda: 5_000, fail_fast_after_s=60)
    stored: list[int] = []
    done = threading.Lock()

    def on_stored(publishes: list[Any], ids: list[Any]) -> None:
        with done:
            stored.extend(i.id for i in ids)

    worker.start(lambda fn, *args: fn(*args), on_stored, lambda *args: None).result(10)
    worker.submit(
        [WriteRequest(object(), NewMessage("t", b"original", None, 1_000))],
        Batch(groups=[GroupRecord("t", "g", 0, 1_000)]),
    )
    wait_for(lambda: len(stored) == 1, "the original to be stored")
    [original] = stored
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the store is busy, for real
    dead_letter = NewMessage("t.dlq", b"original", None, 3_000, meta={"reason": "test"})
    worker.submit(
        [WriteRequest(None, dead_letter)],
        Batch(acks=[AckRecord(original, "g", 3_000)], done=[original]),
    )
    wait_for(lambda: not worker.available, "the write to fail on the locked database", 20)
    blocker.execute("ROLLBACK")
    blocker.close()
    wait_for(lambda: worker.available and worker.idle(), "the retry to commit", 20)
    assert worker.stop(10)
    check = SQLiteStore(path)
    check.open()
    topics = [message.topic for message in check.recover()]
    check.close()
    assert topics == ["t.dlq"], topics


# ---------------------------------------------------------------- survivors of `mutmut run`
# (bbmq.core, 2026-12-02): mutants no test killed that a real bug could look like.


def test_a_message_that_expires_while_delayed_is_expired_once_and_never_delivered() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    h.publish(h.publisher("t"), b"late", delay_ms=5_000, ttl_ms=1_000)
    h.advance(1_000)
    group = h.broker.snapshot().topic("t").group("default")
    assert (group.delayed, group.counters.expired) == (0, 1)
    h.advance(5_000)
    h.send(sub, protocol.Fetch(1, 0))
    assert h.take(sub) == [protocol.QueueEmpty(0)]
    assert h.broker.snapshot().topic("t").counters.expired == 1


def test_an_ack_after_the_lease_timed_out_is_unknown_and_the_message_comes_back() -> None:
    h = CoreHarness(ack_timeout_ms=1_000)
    sub = h.subscriber("t")
    [mid] = h.publish(h.publisher("t"), b"slow")
    h.send(sub, protocol.Fetch(1))
    h.take(sub)
    h.advance(1_001)
    h.send(sub, protocol.Ack((mid,)))
    [error] = h.take(sub)
    assert isinstance(error, protocol.Error) and error.code == ErrorCode.UNKNOWN_MESSAGE
    h.send(sub, protocol.Fetch(1, 0))
    assert messages(h.take(sub)) == [(mid, 2, b"slow")]
    counters = h.broker.snapshot().topic("t").group("default").counters
    assert (counters.redelivered, counters.acked) == (1, 0)


def test_a_leased_message_whose_ttl_passes_is_expired_when_its_lease_ends() -> None:
    h = CoreHarness(ack_timeout_ms=2_000)
    sub = h.subscriber("t")
    h.publish(h.publisher("t"), b"brief", ttl_ms=1_000)
    h.send(sub, protocol.Fetch(1))
    h.take(sub)
    h.advance(2_001)  # the lease times out after the TTL: expired, not redelivered
    h.send(sub, protocol.Fetch(1, 0))
    assert h.take(sub) == [protocol.QueueEmpty(0)]
    counters = h.broker.snapshot().topic("t").group("default").counters
    assert (counters.expired, counters.redelivered) == (1, 0)
