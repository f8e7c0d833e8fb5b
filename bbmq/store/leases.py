"""The cluster's brokers and topic leases, in the MySQL database they share.

A :class:`LeaseTable` is the membership thread's view of the ``brokers`` and
``leases`` tables (schema version 3, :mod:`bbmq.store.schema`).  The database is
the arbiter: every decision is one conditional write whose affected-row count
says who won, and every time is the database's own clock, read inside the
statement (``UTC_TIMESTAMP(6)``: NOW(6) would step with daylight saving time), never
a broker's.  A broker measures its own deadlines with its monotonic clock from when
it sent the renew (docs/CLUSTER.md).

The connection must count matched rows, not changed ones
(``client_flag=CLIENT.FOUND_ROWS``): a renew that writes the value a row already
has would otherwise report 0.  Each operation is one short transaction.  On Galera,
row locks are local to a node and a conflict shows at COMMIT as a deadlock (1213);
for acquire, take-over and hand-off that means "not won", after one retry.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import pymysql
from pymysql.constants import CLIENT

from bbmq.store.base import StoreUnavailable

T = TypeVar("T")

MODES: Final = ("single", "cluster")
_PREFIX_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
#: The database's clock; every comparison and deadline uses it inside the statement.
_NOW: Final = "UTC_TIMESTAMP(6)"
#: ER_LOCK_DEADLOCK (also Galera's certification failure), ER_LOCK_WAIT_TIMEOUT, and
#: ER_UNKNOWN_COM_ERROR (a Galera node outside the primary component refusing work):
#: the transaction was rolled back; trying again (there or later) may win.
_LOST_RACE: Final = frozenset({1213, 1205, 1047})
#: ER_UNKNOWN_SYSTEM_VARIABLE: not MariaDB/Galera, so no wsrep_sync_wait to set.
_UNKNOWN_VARIABLE: Final = 1193
#: The row whose update serialises registrations (in ``meta``).
_MEMBERSHIP: Final = "membership"
#: A broker row whose heartbeat is this many TTLs old is deleted at the next register.
_FORGET_AFTER_TTLS: Final = 20


class BrokerConflict(Exception):
    """Registering was refused: another live broker uses the database in a way that
    cannot mix with this one.  The message says which broker and what to do."""


@dataclass(frozen=True, slots=True)
class BrokerRow:
    """A registered broker; ``heartbeat_age_ms`` by the database's clock."""

    id: str
    address: str
    mode: str
    heartbeat_age_ms: int
    draining: bool


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """A topic's lease: ``owner`` '' for nobody; ``owner_address`` None when the owner has
    no broker row; ``remaining_ms`` by the database's clock (<= 0: expired)."""

    topic: str
    owner: str
    owner_address: str | None
    epoch: int
    remaining_ms: int


class LeaseTable:
    """The ``brokers`` and ``leases`` tables under ``prefix``; see the module docstring.

    ``connect`` makes a new PyMySQL connection with ``client_flag=CLIENT.FOUND_ROWS``
    (:meth:`bbmq.store.mysql.MySQLStore.connector` makes one); one connection is kept
    and made again after an error.  Blocking: use it from one thread.  A database that
    cannot be reached raises :class:`~bbmq.store.base.StoreUnavailable`; when that
    happens to a change of owner, the change may have committed all the same (the
    connection broke after the COMMIT was sent): read :meth:`lease` again.
    """

    def __init__(self, connect: Callable[[], pymysql.connections.Connection], prefix: str,
                 ttl_ms: int) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"table prefix {prefix!r} must be a letter or '_' then up to 39 "
                             "letters, digits or '_'")
        if ttl_ms <= 0:
            raise ValueError(f"the lease TTL must be above 0 ms, got {ttl_ms}")
        self._connect = connect
        self.ttl_ms = ttl_ms
        self._conn: pymysql.connections.Connection | None = None
        self._brokers = f"{prefix}brokers"
        self._leases = f"{prefix}leases"
        self._meta = f"{prefix}meta"
        #: What register() was told, to put a broker's row back if it went missing.
        self._registered: dict[str, tuple[str, str]] = {}
        ttl_us = ttl_ms * 1000
        self._until = f"{_NOW} + INTERVAL {ttl_us} MICROSECOND"
        self._live = f"heartbeat_at >= {_NOW} - INTERVAL {ttl_us} MICROSECOND"

    def close(self) -> None:
        """Drop the connection; the next call makes a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # ---------------------------------------------------------------- brokers

    def register(self, broker_id: str, address: str, mode: str) -> None:
        """Add (or refresh) this broker's row, unless a live broker forbids it.

        A ``single`` broker is refused when any other broker is live (heartbeat within
        the TTL); a ``cluster`` broker when a live ``single`` one is.  Registrations
        are serialised by an update of one row, so two brokers starting at the same
        moment cannot both miss each other (on Galera one gets a deadlock: retried).
        """
        if mode not in MODES:
            raise ValueError(f"broker mode must be one of {MODES}, got {mode!r}")
        self._run(lambda c: c.execute(
            f"INSERT IGNORE INTO {self._meta} (name, value) VALUES (%s, '0')", (_MEMBERSHIP,)))

        def work(cursor: Any) -> None:
            cursor.execute(f"UPDATE {self._meta} SET value = CAST(value AS UNSIGNED) + 1"
                           " WHERE name = %s", (_MEMBERSHIP,))
            cursor.execute(f"SELECT id, address, mode FROM {self._brokers}"
                           f" WHERE id <> %s AND {self._live} ORDER BY id", (broker_id,))
            for other_id, other_address, other_mode in cursor.fetchall():
                refusal = _refusal(mode, other_id, other_address, other_mode)
                if refusal:
                    raise BrokerConflict(refusal)
            cursor.execute(f"DELETE FROM {self._brokers} WHERE heartbeat_at < {_NOW}"
                           f" - INTERVAL {self.ttl_ms * 1000 * _FORGET_AFTER_TTLS} MICROSECOND")
            self._insert_broker(cursor, broker_id, address, mode)

        self._run(work, retry_lost_race=True)
        self._registered[broker_id] = (address, mode)

    def _insert_broker(self, cursor: Any, broker_id: str, address: str, mode: str) -> None:
        cursor.execute(
            f"INSERT INTO {self._brokers} (id, address, mode, started_at, heartbeat_at,"
            f" draining) VALUES (%s, %s, %s, {_NOW}, {_NOW}, 0) ON DUPLICATE KEY UPDATE"
            " address = VALUES(address), mode = VALUES(mode), heartbeat_at = VALUES(heartbeat_at),"
            " draining = 0", (broker_id, address, mode))

    def deregister(self, broker_id: str) -> None:
        """Delete this broker's row (a clean stop); its leases expire or were handed off."""
        self._registered.pop(broker_id, None)
        self._run(lambda c: c.execute(f"DELETE FROM {self._brokers} WHERE id = %s",
                                      (broker_id,)))

    def set_draining(self, broker_id: str, draining: bool) -> None:
        """Mark this broker draining (it takes no topics; others take its own)."""
        self._run(lambda c: c.execute(f"UPDATE {self._brokers} SET draining = %s WHERE id = %s",
                                      (int(draining), broker_id)))

    def brokers(self) -> list[BrokerRow]:
        """Every registered broker, live or not, by id."""
        def work(cursor: Any) -> list[BrokerRow]:
            cursor.execute(
                f"SELECT id, address, mode, TIMESTAMPDIFF(MICROSECOND, heartbeat_at, {_NOW}),"
                f" draining FROM {self._brokers} ORDER BY id")
            return [BrokerRow(id_, address, mode, int(age_us) // 1000, bool(draining))
                    for id_, address, mode, age_us, draining in cursor.fetchall()]
        return self._run(work)

    # ----------------------------------------------------------------- leases

    def renew(self, broker_id: str) -> dict[str, int]:
        """Heartbeat, extend every lease this broker holds; return them (topic -> epoch).

        A topic another broker took over is neither extended nor returned: it is lost.
        A broker row deleted while this broker was away (paused) is written again.
        """
        def work(cursor: Any) -> dict[str, int]:
            cursor.execute(f"UPDATE {self._brokers} SET heartbeat_at = {_NOW} WHERE id = %s",
                           (broker_id,))
            if cursor.rowcount == 0 and broker_id in self._registered:
                self._insert_broker(cursor, broker_id, *self._registered[broker_id])
            cursor.execute(f"UPDATE {self._leases} SET lease_until = {self._until}"
                           " WHERE owner = %s", (broker_id,))
            cursor.execute(f"SELECT topic, epoch FROM {self._leases} WHERE owner = %s",
                           (broker_id,))
            return {topic: int(epoch) for topic, epoch in cursor.fetchall()}
        return self._run(work)

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Blank lease rows (no owner, epoch 0) for topics that have none."""
        rows = [(topic,) for topic in sorted(set(topics))]
        if rows:
            self._run(lambda c: c.executemany(
                f"INSERT IGNORE INTO {self._leases} (topic, owner, epoch, lease_until, writes)"
                f" VALUES (%s, '', 0, {_NOW}, 0)", rows))

    def acquire(self, topic: str, broker_id: str) -> int | None:
        """Take ``topic`` if nobody holds it or its lease expired: the new epoch, or None.

        The holder itself may re-acquire its expired lease (with a new epoch, which
        fences its own writes of the old one); a live lease, even its own, is not taken.
        """
        self.ensure_topics([topic])
        return self._change_owner(
            f"UPDATE {self._leases} SET owner = %s, epoch = epoch + 1, lease_until ="
            f" {self._until} WHERE topic = %s AND (owner = '' OR lease_until < {_NOW})",
            (broker_id, topic), topic)

    def take_over(self, topic: str, broker_id: str, dead_owner: str, epoch: int) -> int | None:
        """Take ``topic`` from ``dead_owner`` (its port refused a connection) at once, if it
        still holds it at ``epoch``: the new epoch, or None."""
        return self._change_owner(
            f"UPDATE {self._leases} SET owner = %s, epoch = epoch + 1, lease_until ="
            f" {self._until} WHERE topic = %s AND owner = %s AND epoch = %s",
            (broker_id, topic, dead_owner, epoch), topic)

    def hand_off(self, topic: str, broker_id: str, epoch: int, target_id: str) -> int | None:
        """Give ``topic``, held by ``broker_id`` at ``epoch``, to ``target_id``: the target's
        epoch, or None (this broker no longer held it)."""
        return self._change_owner(
            f"UPDATE {self._leases} SET owner = %s, epoch = epoch + 1, lease_until ="
            f" {self._until} WHERE topic = %s AND owner = %s AND epoch = %s",
            (target_id, topic, broker_id, epoch), topic)

    def release(self, topic: str, broker_id: str, epoch: int) -> bool:
        """Give ``topic`` up (nobody owns it; the next acquire bumps the epoch)."""
        def work(cursor: Any) -> bool:
            cursor.execute(f"UPDATE {self._leases} SET owner = '', lease_until = {_NOW}"
                           " WHERE topic = %s AND owner = %s AND epoch = %s",
                           (topic, broker_id, epoch))
            return bool(cursor.rowcount == 1)
        return self._run(work, retry_lost_race=True)

    def lease(self, topic: str) -> LeaseRow | None:
        """The lease of ``topic``, or None if it has no row."""
        rows = self._select_leases(" WHERE l.topic = %s", (topic,))
        return rows[0] if rows else None

    def leases(self) -> list[LeaseRow]:
        """Every lease row, by topic."""
        return self._select_leases("", ())

    def _select_leases(self, where: str, params: tuple[str, ...]) -> list[LeaseRow]:
        def work(cursor: Any) -> list[LeaseRow]:
            cursor.execute(
                f"SELECT l.topic, l.owner, b.address, l.epoch,"
                f" TIMESTAMPDIFF(MICROSECOND, {_NOW}, l.lease_until) FROM {self._leases} l"
                f" LEFT JOIN {self._brokers} b ON b.id = l.owner AND l.owner <> ''"
                f"{where} ORDER BY l.topic", params)
            return [LeaseRow(topic, owner, address, int(epoch), int(remaining_us) // 1000)
                    for topic, owner, address, epoch, remaining_us in cursor.fetchall()]
        return self._run(work)

    def _change_owner(self, update: str, params: tuple[object, ...], topic: str) -> int | None:
        """Run a conditional owner change; the new epoch if it matched, None if not (or if
        it lost a race twice)."""
        def work(cursor: Any) -> int | None:
            cursor.execute(update, params)
            if cursor.rowcount != 1:
                return None
            cursor.execute(f"SELECT epoch FROM {self._leases} WHERE topic = %s", (topic,))
            return int(cursor.fetchone()[0])
        try:
            return self._run(work, retry_lost_race=True)
        except _LostRace:
            return None

    # ----------------------------------------------------------- transactions

    def _connection(self) -> pymysql.connections.Connection:
        if self._conn is not None:
            return self._conn
        conn = self._connect()
        try:
            if not conn.client_flag & CLIENT.FOUND_ROWS:
                raise ValueError("LeaseTable needs a connection made with "
                                 "client_flag=CLIENT.FOUND_ROWS (see MySQLStore.connector)")
            conn.autocommit(False)
            with conn.cursor() as cursor:
                # Each statement sees what others committed before it, not a snapshot.
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                try:  # Galera: reads wait until this node applied what the cluster certified
                    cursor.execute("SET SESSION wsrep_sync_wait = 1")
                except pymysql.err.MySQLError as error:
                    if error.args[:1] != (_UNKNOWN_VARIABLE,):
                        raise
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self._conn = conn
        return conn

    def _run(self, work: Callable[[Any], T], *, retry_lost_race: bool = False) -> T:
        """``work`` in one transaction; a lost race is tried once more when asked (then
        raises _LostRace), an unreachable database raises StoreUnavailable."""
        for attempt in (1, 2):
            try:
                conn = self._connection()
                with conn.cursor() as cursor:
                    result = work(cursor)
                conn.commit()
                return result
            except pymysql.err.MySQLError as error:
                code = error.args[0] if error.args else None
                self._abandon(drop=not isinstance(error, pymysql.err.IntegrityError)
                              and code not in _LOST_RACE)
                if code in _LOST_RACE:
                    if retry_lost_race and attempt == 1:
                        continue
                    raise _LostRace(str(error)) from error
                if isinstance(error, pymysql.err.OperationalError | pymysql.err.InterfaceError):
                    raise StoreUnavailable(f"lease table: {error}") from error
                raise
            except OSError as error:
                self._abandon(drop=True)
                raise StoreUnavailable(f"lease table: {error}") from error
            except BaseException:
                self._abandon(drop=False)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _abandon(self, *, drop: bool) -> None:
        conn = self._conn
        if conn is None:
            return
        if not drop:
            try:
                conn.rollback()
            except Exception:
                drop = True
        if drop:
            self.close()


class _LostRace(StoreUnavailable):
    """A transaction lost a race (deadlock, lock wait timeout, Galera certification)."""


def _refusal(mode: str, other_id: str, other_address: str, other_mode: str) -> str | None:
    """Why a ``mode`` broker may not join while ``other`` is live, or None if it may."""
    other = f"another broker (id {other_id}, address {other_address}, {other_mode} mode)"
    if mode == "single":
        return (f"{other} uses this database; stop it, or start every broker with --cluster"
                + ("" if other_mode == "cluster" else
                   " (or give this one a store of its own: another database or table_prefix)"))
    if other_mode == "single":
        return (f"{other} uses this database without --cluster; stop it, then start every "
                "broker with --cluster")
    return None
