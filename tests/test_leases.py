"""The lease table's contract, on the real MariaDB (tables under a prefix of their own).

The database is the arbiter of a cluster: these tests hold it to one winner per
race, epochs that only grow, stale owners that can neither renew nor take over,
and registrations that refuse what cannot mix.  Ages are set by writing the
database's own times behind the table's back, never by sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pymysql
import pytest

from bbmq.store.leases import BrokerConflict, LeaseTable

from .lease_support import TTL_MS, Database, db_fixture, shared_db_fixture  # noqa: F401

pytestmark = pytest.mark.mysql


def race(n: int, attempt: Callable[[int], Any]) -> list[Any]:
    """``attempt(i)`` for i in range(n), on n threads released at the same moment."""
    start = threading.Barrier(n)

    def run(i: int) -> Any:
        start.wait(timeout=10)
        return attempt(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_racing_acquires_have_exactly_one_winner(db: Database) -> None:
    tables = [db.table() for _ in range(8)]
    for topic in ("fresh", "expired"):
        if topic == "expired":
            assert tables[0].acquire(topic, "b0") == 1
            db.expire(topic)
        results = race(8, lambda i, topic=topic: tables[i].acquire(topic, f"b{i}"))  # type: ignore[misc]
        winners = [i for i, epoch in enumerate(results) if epoch is not None]
        assert len(winners) == 1, results
        lease = tables[0].lease(topic)
        assert lease is not None and lease.owner == f"b{winners[0]}"
        assert lease.epoch == results[winners[0]]
        assert lease.epoch == (1 if topic == "fresh" else 2)


def test_racing_take_overs_of_a_dead_owner_have_exactly_one_winner(db: Database) -> None:
    tables = [db.table() for _ in range(6)]
    epoch = tables[0].acquire("t", "dead")
    assert epoch == 1
    results = race(6, lambda i: tables[i].take_over("t", f"b{i}", "dead", epoch))
    assert sorted(results, key=lambda e: e is None)[1:] == [None] * 5
    assert [e for e in results if e is not None] == [2]


def test_a_live_lease_is_not_acquired_not_even_by_its_owner(db: Database) -> None:
    table = db.table()
    assert table.acquire("t", "a") == 1
    assert table.acquire("t", "b") is None
    assert table.acquire("t", "a") is None
    lease = table.lease("t")
    assert lease is not None and (lease.owner, lease.epoch) == ("a", 1)
    assert TTL_MS - 2000 < lease.remaining_ms <= TTL_MS


def test_epochs_only_grow_across_every_change_of_owner(db: Database) -> None:
    table = db.table()
    table.register("a", "h:1", "cluster")
    table.register("b", "h:2", "cluster")
    seen = [table.acquire("t", "a")]
    seen.append(table.hand_off("t", "a", seen[-1] or 0, "b"))
    seen.append(table.take_over("t", "c", "b", seen[-1] or 0))
    assert table.release("t", "c", seen[-1] or 0)
    lease = table.lease("t")
    assert lease is not None and (lease.owner, lease.epoch) == ("", seen[-1])
    seen.append(table.acquire("t", "a"))
    db.expire("t")
    seen.append(table.acquire("t", "a"))  # its own expired lease: a new epoch all the same
    assert seen == [1, 2, 3, 4, 5]


def test_a_hand_off_goes_to_the_target_and_the_target_finds_it_at_its_renew(
        db: Database) -> None:
    a, b = db.table(), db.table()
    a.register("a", "h:1", "cluster")
    b.register("b", "h:2", "cluster")
    epoch = a.acquire("t", "a")
    assert epoch is not None
    assert a.hand_off("t", "b", epoch, "a") is None, "only the owner hands off"
    assert a.hand_off("t", "a", epoch + 5, "b") is None, "only at its own epoch"
    assert a.hand_off("t", "a", epoch, "b") == epoch + 1
    assert a.hand_off("t", "a", epoch, "b") is None, "not twice"
    assert b.renew("b") == {"t": epoch + 1}
    assert a.renew("a") == {}
    lease = a.lease("t")
    assert lease is not None and (lease.owner, lease.owner_address) == ("b", "h:2")


def test_a_stale_renew_neither_extends_nor_returns_the_topic(db: Database) -> None:
    old, new = db.table(), db.table()
    old.register("old", "h:1", "cluster")
    assert old.acquire("kept", "old") == 1
    epoch = old.acquire("t", "old")
    assert epoch == 1
    assert new.take_over("t", "new", "old", epoch) == 2
    db.sql("UPDATE p_leases SET lease_until = UTC_TIMESTAMP(6) + INTERVAL 1 SECOND"
           " WHERE topic = 't'")
    before = db.sql("SELECT lease_until FROM p_leases WHERE topic = 't'")
    assert old.renew("old") == {"kept": 1}
    assert db.sql("SELECT owner, epoch FROM p_leases WHERE topic = 't'") == [("new", 2)]
    assert db.sql("SELECT lease_until FROM p_leases WHERE topic = 't'") == before
    kept = old.lease("kept")
    assert kept is not None and kept.remaining_ms > TTL_MS - 2000


def test_a_renew_extends_what_it_holds_even_to_the_same_time(db: Database) -> None:
    """Rows matched, not changed, count: a renew within the same microsecond still holds."""
    table = db.table()
    table.register("a", "h:1", "cluster")
    table.acquire("t", "a")
    db.sql("UPDATE p_leases SET lease_until = UTC_TIMESTAMP(6) WHERE topic = 't'")
    assert table.renew("a") == {"t": 1}
    lease = table.lease("t")
    assert lease is not None and lease.remaining_ms > TTL_MS - 2000


def test_take_over_with_a_wrong_epoch_or_owner_fails(db: Database) -> None:
    table = db.table()
    epoch = table.acquire("t", "a")
    assert epoch == 1
    assert table.take_over("t", "b", "a", epoch + 1) is None
    assert table.take_over("t", "b", "a", epoch - 1) is None
    assert table.take_over("t", "b", "x", epoch) is None
    assert table.take_over("missing", "b", "a", epoch) is None
    lease = table.lease("t")
    assert lease is not None and (lease.owner, lease.epoch) == ("a", 1)


def test_release_needs_owner_and_epoch(db: Database) -> None:
    table = db.table()
    table.acquire("t", "a")
    assert not table.release("t", "b", 1)
    assert not table.release("t", "a", 2)
    assert table.release("t", "a", 1)
    assert table.acquire("t", "b") == 2


def test_ensure_topics_adds_blank_rows_and_keeps_existing_ones(db: Database) -> None:
    table = db.table()
    table.acquire("held", "a")
    table.ensure_topics(["held", "new", "new"])
    assert [(row.topic, row.owner, row.epoch) for row in table.leases()] == [
        ("held", "a", 1), ("new", "", 0)]
    assert table.acquire("new", "b") == 1


def test_register_refuses_a_single_broker_beside_a_live_one(db: Database) -> None:
    first, second = db.table(), db.table()
    first.register("c1", "h:1", "cluster")
    with pytest.raises(BrokerConflict, match=r"c1.*h:1.*stop it, or start every broker with "
                                             r"--cluster"):
        second.register("s1", "h:2", "single")
    assert [row.id for row in first.brokers()] == ["c1"]
    db.age_heartbeat("c1", TTL_MS + 100)
    second.register("s1", "h:2", "single")
    assert sorted(row.id for row in first.brokers()) == ["c1", "s1"]


def test_register_refuses_a_cluster_broker_beside_a_live_single_one(db: Database) -> None:
    single, member = db.table(), db.table()
    single.register("s1", "h:1", "single")
    with pytest.raises(BrokerConflict, match=r"s1.*h:1.*without --cluster; stop it, then start "
                                             r"every broker with --cluster"):
        member.register("c1", "h:2", "cluster")
    with pytest.raises(BrokerConflict, match="s1"):
        member.register("s2", "h:2", "single")
    db.age_heartbeat("s1", TTL_MS + 100)
    member.register("c1", "h:2", "cluster")
    member.register("c2", "h:3", "cluster")
    single.renew("s1")  # back to life: now it would be refused, but it is registered already
    assert {row.id: row.mode for row in member.brokers()} == {
        "c1": "cluster", "c2": "cluster", "s1": "single"}


def test_racing_single_registrations_admit_exactly_one(db: Database) -> None:
    tables = [db.table() for _ in range(6)]

    def register(i: int) -> bool:
        try:
            tables[i].register(f"s{i}", f"h:{i}", "single")
        except BrokerConflict:
            return False
        return True

    assert sum(race(6, register)) == 1


def test_brokers_report_heartbeat_age_and_draining(db: Database) -> None:
    table = db.table()
    table.register("a", "h:1", "cluster")
    table.register("b", "h:2", "cluster")
    table.set_draining("b", True)
    db.age_heartbeat("a", 3000)
    rows = {row.id: row for row in table.brokers()}
    assert 3000 <= rows["a"].heartbeat_age_ms < 5000 and not rows["a"].draining
    assert rows["b"].heartbeat_age_ms < 2000 and rows["b"].draining
    table.renew("a")
    assert table.brokers()[0].heartbeat_age_ms < 2000
    table.deregister("b")
    assert [row.id for row in table.brokers()] == ["a"]


def test_a_renew_puts_back_a_broker_row_that_went_missing(db: Database) -> None:
    table = db.table()
    table.register("a", "h:1", "cluster")
    db.sql("DELETE FROM p_brokers")
    table.renew("a")
    assert [(row.id, row.address, row.mode) for row in table.brokers()] == [
        ("a", "h:1", "cluster")]


def test_a_connection_that_counts_changed_rows_is_refused(db: Database) -> None:
    params = db.store.params
    table = LeaseTable(lambda: pymysql.connect(
        host=params.host, port=params.port, user=params.user, password=params.password,
        database=params.database), db.prefix, TTL_MS)
    with pytest.raises(ValueError, match="FOUND_ROWS"):
        table.leases()


def test_bad_arguments_are_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="prefix"):
        LeaseTable(db.store.connector(), "bad-prefix", TTL_MS)
    with pytest.raises(ValueError, match="TTL"):
        LeaseTable(db.store.connector(), db.prefix, 0)
    with pytest.raises(ValueError, match="mode"):
        db.table().register("a", "h:1", "solo")
