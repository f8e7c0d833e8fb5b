"""One broker's membership of the cluster: its own thread, its own database connections.

A :class:`ClusterMember` registers the broker in the brokers table, heartbeats
and renews its leases every TTL/3, answers the core's requests for topics
(acquire, take over a crashed owner, or send the client elsewhere), adopts
leases handed to it, evens out the load, hands topics off, drains, and tells the
store thread which writes it may still make (:meth:`fence`).  It stands where
the store thread stands: beside the event loop, never inside it.  Every call
into the core is handed to the loop (seat.py), and the member never reads
the core's state but through what it was told and what it asked.

Single-mode brokers on a MySQL store run one too, registering and heartbeating
only, so that a second broker on the same database is refused (joining.py).

The decisions themselves are pure functions in decisions.py; what is here is
the I/O around them and the bookkeeping of what this broker holds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from bbmq.cluster.decisions import (
    BalancePlan,
    Verdict,
    assigned_topics,
    decide_request,
    live_brokers,
    lost_topics,
    plan_balance,
    renew_interval_s,
    served_with,
    valid_until,
)
from bbmq.cluster.joining import join, leave
from bbmq.cluster.probe import ProbeResult, probe
from bbmq.cluster.seat import CoreSeat
from bbmq.defaults import lease_topic
from bbmq.store.base import Fence, Fenced, GroupRecord, RecoveredMessage, Store
from bbmq.store.leases import BrokerRow, LeaseRow, LeaseTable

log = logging.getLogger("bbmq.cluster")

#: How long a hand-off waits for the topic's writes in the store thread to commit.
BARRIER_TIMEOUT_S: Final = 5.0
#: How long an acquire waits for the store thread to reserve a fresh block of ids.
ID_BLOCK_TIMEOUT_S: Final = 5.0
#: After a failed cycle (database unreachable), the next try comes this much sooner.
RETRY_AFTER_FAILURE_S: Final = 0.2


@dataclass(slots=True)
class ClusterCounters:
    """What the member did, for Prometheus (bbmq/metrics.py): plain ints, each written by one
    thread and read by another (a torn read is impossible for an int under CPython)."""

    lease_acquisitions: int = 0
    lease_losses: int = 0
    fenced_writes: int = 0


class ClusterMember:
    """The broker's seat in the brokers and leases tables; see the module docstring.

    ``table`` and ``store`` are this member's own (their own connections): the
    store thread's are never touched from here, except through ``fresh_id_block``
    (run on the store thread) and ``barrier``.
    """

    def __init__(self, *, table: LeaseTable, store: Store, seat: CoreSeat, broker_id: str,
                 address: str, mode: Literal["single", "cluster"], ttl_ms: int,
                 fresh_id_block: Callable[[], None] | None = None,
                 prober: Callable[[str], ProbeResult] = probe,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.store = store
        self.seat = seat
        self.broker_id = broker_id
        self.address = address
        self.mode = mode
        self.ttl_ms = ttl_ms
        self._fresh_id_block = fresh_id_block
        self._probe = prober
        self._monotonic = monotonic
        self.counters = ClusterCounters()
        self._cond = threading.Condition()
        #: Guards what the store thread reads in fence(): held epochs and their validity.
        self._lock = threading.Lock()
        #: Lease topic -> epoch, for every lease this broker serves (or is loading).
        self._held: dict[str, int] = {}
        #: Lease topic -> monotonic time until which its lease may be trusted.
        self._valid_until: dict[str, float] = {}
        self._requests: list[str] = []
        self._recheck = False
        self._stopping = False
        self._draining = False
        self._draining_written = False
        #: The last cycle's view of the cluster, for 'bbmq cluster status'.
        self._brokers: list[BrokerRow] = []
        self._leases: list[LeaseRow] = []
        self._thread = threading.Thread(target=self._run, name="bbmq-cluster", daemon=True)

    @property
    def clustered(self) -> bool:
        return self.mode == "cluster"

    # ------------------------------------------------------------------ any thread

    def join(self) -> None:
        """Register in the brokers table (blocking); raises JoinRefused when another broker
        forbids this one, with what to do.  Called before the broker recovers anything."""
        join(self.table, self.broker_id, self.address, self.mode, self._probe)
        if self.clustered:
            self.store.open()  # this member's own connection, for loading topics
            # Topics from before the cluster (or never asked for since) get lease rows, so
            # that the balance spreads them without waiting for a client to ask.
            self.table.ensure_topics({lease_topic(group.topic) for group in self.store.groups()})
        log.info("joined as broker %s at %s (%s mode, lease TTL %d ms)", self.broker_id,
                 self.address, self.mode, self.ttl_ms)

    def start(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        """Start the thread: renewing, and answering topic requests; the core is reached on
        ``loop``, each call followed by the transport's ``flush``."""
        self.seat.attach(loop, flush)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (it finishes the step it is in); leases stay held until leave()."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def leave(self) -> None:
        """After the store thread has written everything: give back every lease and
        deregister, so that the other brokers take the topics at once, not after the TTL."""
        with self._lock:
            held = dict(self._held)
            self._held.clear()
            self._valid_until.clear()
        leave(self.table, self.broker_id, held)
        if self.clustered:
            self.store.close()

    # ------------------------------------------------------------------ the loop's thread

    def request_topics(self, topics: Iterable[str]) -> None:
        """Topics that clients' handshakes wait for (Broker.take_topic_requests)."""
        topics = list(topics)
        if topics:
            with self._cond:
                self._requests += topics
                self._cond.notify()

    def drain(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ADMIN ``drain`` command: start handing every topic off, and say how far it got.

        Asking again is how ``bbmq server drain`` follows the progress.
        """
        if not self.clustered:
            return {"draining": False, "topics": 0,
                    "note": "not a cluster broker (started without --cluster): nothing to drain"}
        with self._cond:
            self._draining = True
            self._cond.notify()
        self.seat.set_draining(True)
        with self._lock:
            topics = sorted(self._held)
        targets = [b.address for b in live_brokers(self._brokers, self.ttl_ms)
                   if not b.draining and b.id != self.broker_id]
        return {"draining": True, "topics": len(topics), "held": topics[:100],
                "targets": targets}

    def status(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ADMIN ``cluster`` command: the brokers and leases as last read, and this broker."""
        return {"me": self.broker_id, "address": self.address, "mode": self.mode,
                "ttl_ms": self.ttl_ms, "draining": self._draining,
                "brokers": [{"id": b.id, "address": b.address, "mode": b.mode,
                             "heartbeat_age_ms": b.heartbeat_age_ms, "draining": b.draining}
                            for b in self._brokers],
                "leases": [{"topic": lease.topic, "owner": lease.owner,
                            "owner_address": lease.owner_address, "epoch": lease.epoch,
                            "remaining_ms": lease.remaining_ms} for lease in self._leases]}

    # ------------------------------------------------------------------ the store thread

    def fence(self, topics: set[str]) -> Fence:
        """The fence of a batch changing ``topics``; raises Fenced for those whose lease this
        broker no longer holds, or no longer trusts (past its local validity)."""
        now = self._monotonic()
        epochs: dict[str, int] = {}
        refused: set[str] = set()
        with self._lock:
            for topic in topics:
                covering = lease_topic(topic)
                epoch = self._held.get(covering)
                if epoch is None or self._valid_until.get(covering, 0.0) <= now:
                    refused.add(topic)
                else:
                    epochs[covering] = epoch
        if refused:
            raise Fenced(frozenset(refused))
        return Fence(self.broker_id, epochs)

    def on_fenced(self, topics: frozenset[str]) -> None:
        """The store thread refused writes of ``topics`` (our fence, or the database's check):
        count them, and look at the leases now, not at the next renew."""
        self.counters.fenced_writes += len(topics)
        log.warning("writes of %s refused: lease lost or no longer trusted",
                    ", ".join(sorted(topics)[:10]))
        with self._cond:
            self._recheck = True
            self._cond.notify()

    # ------------------------------------------------------------------ the member's thread

    def _run(self) -> None:
        interval = renew_interval_s(self.ttl_ms)
        next_cycle = self._monotonic()
        while True:
            with self._cond:
                while not (self._stopping or self._requests or self._recheck
                           or (self._draining and not self._draining_written)):
                    now = self._monotonic()
                    wake = min([next_cycle, *self._valid_until.values()])
                    if now >= wake:
                        break
                    self._cond.wait(wake - now)
                if self._stopping:
                    return
                requests, self._requests = self._requests, []
                recheck, self._recheck = self._recheck, False
            try:
                if recheck or self._draining != self._draining_written or \
                        self._monotonic() >= next_cycle:
                    sent = self._monotonic()
                    self._cycle()
                    next_cycle = sent + interval
                self._expire()
                for topic in dict.fromkeys(requests):
                    self._answer(topic)
            except Exception as error:  # the database is away, or a bug: keep the thread
                log.warning("cluster cycle failed: %s: %s; trying again", type(error).__name__,
                            error, exc_info=log.isEnabledFor(logging.DEBUG))
                next_cycle = self._monotonic() + min(interval, RETRY_AFTER_FAILURE_S)
                for topic in requests:  # unanswered: the clients try again (maybe elsewhere)
                    self.seat.topic_elsewhere(topic, None, None, self.ttl_ms)
                self._expire()

    def _cycle(self) -> None:
        """Heartbeat and renew; find what was lost and what was handed to us; balance."""
        if self._draining and not self._draining_written:
            self.table.set_draining(self.broker_id, True)
            self._draining_written = True
        sent = self._monotonic()
        renewed = self.table.renew(self.broker_id)
        self._brokers = self.table.brokers()
        if not self.clustered:
            return
        self._leases = self.table.leases()
        by_topic = {lease.topic: lease for lease in self._leases}
        with self._lock:
            held = dict(self._held)
            for topic in renewed:
                if held.get(topic) == renewed[topic]:
                    self._valid_until[topic] = valid_until(sent, self.ttl_ms)
        for topic in lost_topics(held, renewed):
            self._lose(topic, by_topic.get(topic))
        for topic in assigned_topics(held, renewed):
            log.info("adopting %r at epoch %d (handed to this broker)", topic, renewed[topic])
            self._load(topic, renewed[topic], sent)
        live = live_brokers(self._brokers, self.ttl_ms)
        self.seat.set_cluster_brokers(tuple(b.address for b in live if not b.draining))
        self._balance(plan_balance(self.broker_id, self._brokers, self._leases, self.ttl_ms,
                                   draining=self._draining))

    def _expire(self) -> None:
        """Stop serving every topic whose lease can no longer be trusted (renews failed)."""
        now = self._monotonic()
        with self._lock:
            expired = [topic for topic, until in self._valid_until.items() if until <= now]
        for topic in expired:
            log.warning("lease of %r not renewed in time: no longer served here", topic)
            self._lose(topic, None)

    def _lose(self, topic: str, now_held_by: LeaseRow | None) -> None:
        with self._lock:
            epoch = self._held.pop(topic, None)
            self._valid_until.pop(topic, None)
        if epoch is None:
            return
        self.counters.lease_losses += 1
        owner = epoch_after = None
        if now_held_by is not None and now_held_by.owner not in ("", self.broker_id):
            owner, epoch_after = now_held_by.owner_address, now_held_by.epoch
        log.warning("lost the lease of %r (epoch %d)%s", topic, epoch,
                    f" to {owner} (epoch {epoch_after})" if owner else "")
        self.seat.topic_lost(topic, owner, epoch_after, None if owner else self.ttl_ms)

    def _answer(self, topic: str) -> None:
        """Answer the core's request for ``topic``: load it, or send its clients elsewhere."""
        covering = lease_topic(topic)
        if not self.clustered:
            return
        with self._lock:
            epoch = self._held.get(covering)
        if epoch is not None:
            # Asked before our topic_acquired reached the core (which loads a topic once per
            # epoch and ignores a repeat), or the core lost it: load it again either way.
            self._load(covering, epoch, None)
            return
        sent = self._monotonic()
        lease = self.table.lease(covering)
        verdict = decide_request(lease, self.broker_id, draining=self._draining,
                                 my_address=self.address)
        if verdict is Verdict.PROBE:
            assert lease is not None and lease.owner_address is not None
            verdict = decide_request(lease, self.broker_id, draining=self._draining,
                                     probed=self._probe(lease.owner_address))
        if verdict is Verdict.ADOPT:
            assert lease is not None
            self._load(covering, lease.epoch, sent)
        elif verdict is Verdict.ACQUIRE:
            self._acquire(covering, asked=True)
        elif verdict is Verdict.TAKE_OVER:
            assert lease is not None
            won = self.table.take_over(covering, self.broker_id, lease.owner, lease.epoch)
            if won is None:
                self._redirect(topic, self.table.lease(covering))
            else:
                log.info("took over %r from broker %s (%s: gone) at epoch %d", covering,
                         lease.owner, lease.owner_address, won)
                self.counters.lease_acquisitions += 1
                self._load(covering, won, sent)
        else:
            self._redirect(topic, lease)

    def _redirect(self, topic: str, lease: LeaseRow | None) -> None:
        if lease is not None and lease.owner and lease.owner != self.broker_id \
                and lease.owner_address is not None and lease.remaining_ms > 0:
            self.seat.topic_elsewhere(topic, lease.owner_address, lease.epoch, None)
        else:
            self.seat.topic_elsewhere(topic, None, None, self.ttl_ms // 5 or 1)

    def _acquire(self, topic: str, *, asked: bool = False) -> None:
        sent = self._monotonic()
        epoch = self.table.acquire(topic, self.broker_id)
        if epoch is None:
            if asked:
                self._redirect(topic, self.table.lease(topic))
            return
        self.counters.lease_acquisitions += 1
        log.info("acquired %r at epoch %d", topic, epoch)
        self._load(topic, epoch, sent)

    def _load(self, topic: str, epoch: int, sent: float | None) -> None:
        """Hold ``topic``'s lease at ``epoch`` and load it (and its dead letters) into the core.

        ``sent``: when the statement that gave us the lease was sent, which the lease's
        local validity counts from (None: held already, the validity stands).  If the
        load fails the topic is not held: the next renew (or request) tries again.
        """
        if sent is not None:
            with self._lock:
                self._held[topic] = epoch
                self._valid_until[topic] = valid_until(sent, self.ttl_ms)
        try:
            if sent is not None and self._fresh_id_block is not None:
                # The ids this broker gives from now on exceed any the previous owner gave.
                self.seat.call_store(self._fresh_id_block, ID_BLOCK_TIMEOUT_S)
            groups: list[GroupRecord] = []
            messages: list[RecoveredMessage] = []
            for name in served_with(topic):
                groups += self.store.groups(topic=name)
                messages += self.store.recover(topic=name)
        except BaseException:
            if sent is not None:
                with self._lock:
                    self._held.pop(topic, None)
                    self._valid_until.pop(topic, None)
            raise
        self.seat.topic_acquired(topic, epoch, groups, messages)

    def _balance(self, plan: BalancePlan) -> None:
        for topic in plan.acquire:
            self._acquire(topic)
        addresses = {b.id: b.address for b in self._brokers}
        for topic, target in plan.hand_off:
            self._hand_off(topic, target, addresses.get(target))

    def _hand_off(self, topic: str, target: str, target_address: str | None) -> None:
        """Stop serving ``topic``, let its writes commit, then give its lease to ``target``."""
        with self._lock:
            epoch = self._held.get(topic)
        if epoch is None:
            return
        committed = threading.Event()
        # The core drops the topic (its clients are redirected to the target), then the
        # barrier, queued behind every write of it already submitted, fires once they ended.
        self.seat.hand_off(topic, target_address, committed.set)
        if not committed.wait(BARRIER_TIMEOUT_S):
            log.warning("writes of %r still not committed after %.0f s; handing off anyway "
                        "(the new owner's epoch fences them)", topic, BARRIER_TIMEOUT_S)
        with self._lock:
            self._held.pop(topic, None)
            self._valid_until.pop(topic, None)
        new_epoch = self.table.hand_off(topic, self.broker_id, epoch, target)
        log.info("handed %r off to broker %s (%s)%s", topic, target, target_address,
                 "" if new_epoch is not None else ": the lease was no longer ours")
