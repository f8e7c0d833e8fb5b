"""MySQLStore when its server goes away and comes back.

The broker relies on two promises here: a write() that raises
StoreUnavailable left nothing behind, and the same store object works again
once the server is back, without being re-created.  A private MariaDB (see
mariadb_server) is stopped between batches and in the middle of one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from bbmq.store import (
    AckRecord,
    Batch,
    DeliveryRecord,
    GroupRecord,
    MySQLStore,
    NewMessage,
    StoreUnavailable,
)
from bbmq.store.sql import Cursor

from .mariadb_server import MariaDBServer, throwaway_mariadb

pytestmark = [pytest.mark.mysql, pytest.mark.slow]  # each test runs a MariaDB server

#: When each batch is committed, as the store thread would pass it.
NOW_MS = 2_000


@pytest.fixture
def server() -> Iterator[MariaDBServer]:
    with throwaway_mariadb() as server:
        yield server


class StopsServerMidBatch(MySQLStore):
    """Stops the server once its ids are reserved, before the rows are inserted."""

    server: MariaDBServer | None = None

    def _reserve_ids(self, cursor: Cursor, n: int) -> int:
        first = super()._reserve_ids(cursor, n)
        if self.server is not None:
            self.server.stop()
            self.server = None
        return first


def batch(*bodies: bytes, msgid: str | None = None) -> Batch:
    return Batch(messages=[NewMessage("t", body, None, 1_000, msgid) for body in bodies])


def test_writes_fail_cleanly_while_the_server_is_down_and_resume_after(
    server: MariaDBServer,
) -> None:
    store = StopsServerMidBatch(server.url, connect_timeout_s=2, io_timeout_s=10)
    store.open()
    acknowledged: dict[int, bytes] = {}

    first = store.write(Batch(
        messages=[NewMessage("t", b"a1", None, 1_000), NewMessage("t", b"a2", None, 1_000)],
        groups=[GroupRecord("t", "g", 0, 1_000)],
    ), NOW_MS)
    acknowledged |= {s.id: body for s, body in zip(first, (b"a1", b"a2"), strict=True)}

    server.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.write(Batch(
            messages=[NewMessage("t", b"lost", None, 1_000, "lost")],
            groups=[GroupRecord("t", "lost", 0, 1_000)],
            deliveries=[DeliveryRecord(first[0].id, "g", 1, 1_001)],
        ), NOW_MS)
    assert time.monotonic() - started < 10, "a dead server must fail fast"
    with pytest.raises(StoreUnavailable):
        next(store.recover())

    server.start()
    (resumed,) = store.write(Batch(
        messages=[NewMessage("t", b"c1", None, 1_000)],
        deliveries=[DeliveryRecord(first[0].id, "g", 2, 1_002)],
        acks=[AckRecord(first[1].id, "g", 1_003)],
    ), NOW_MS)
    acknowledged[resumed.id] = b"c1"
    assert resumed.id > max(acknowledged.keys() - {resumed.id})
    del acknowledged[first[1].id]  # acked by its only group

    # Now the server dies after the batch reserved ids, before it inserted anything.
    store.server = server
    with pytest.raises(StoreUnavailable):
        store.write(Batch(
            messages=[NewMessage("t", b"half", None, 1_000, "half")],
            groups=[GroupRecord("t", "half", 0, 1_000)],
            acks=[AckRecord(first[0].id, "g", 1_004)],
        ), NOW_MS)
    assert not server.running

    server.start()
    (last,) = store.write(batch(b"d1"), NOW_MS)
    acknowledged[last.id] = b"d1"

    fresh = MySQLStore(server.url)
    fresh.open()
    for reader in (store, fresh):
        recovered = list(reader.recover())
        assert {m.id: m.body for m in recovered} == acknowledged
        assert {m.id: m.pending for m in recovered} == {
            first[0].id: {"g": 2}, resumed.id: {"g": 0}, last.id: {"g": 0},
        }
        assert reader.groups() == [GroupRecord("t", "g", 0, 1_000)]
    # The msgids of the failed batches were never stored either.
    again = fresh.write(Batch(messages=[NewMessage("t", b"x", None, 1_000, "lost"),
                                        NewMessage("t", b"y", None, 1_000, "half")]), NOW_MS)
    assert not any(s.duplicate for s in again)
    store.close()
    fresh.close()


def test_open_fails_while_the_server_is_down_and_works_later(server: MariaDBServer) -> None:
    server.stop()
    store = MySQLStore(server.url, connect_timeout_s=2)
    with pytest.raises(StoreUnavailable, match=re.escape(f"root@127.0.0.1:{server.port}")):
        store.open()
    server.start()
    store.open()
    assert store.write(batch(b"z"), NOW_MS)[0].id == 1
    store.close()
