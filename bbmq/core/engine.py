"""The queue engine: how messages move through topics, groups, leases and timers.

A committed message is queued for every group of its topic (or kept in the
topic's backlog until the first group appears); each group hands its ready
messages to the sessions with an open FETCH, round robin; a delivery becomes a
:class:`~bbmq.core.records.Lease` until it is acked, and a lease that ends
otherwise (NACK, disconnect, ack deadline) puts the message back on the
group's retry heap, its delayed heap, or, out of attempts, in the dead-letter
topic.  Every change for the store goes into ``batch``, its lease topic into ``batch.topics``.

Time comes in as ``now_ms``.  Two structures hold what is due later: the ack
deadlines, a FIFO because every lease gets the same timeout, and a heap for
the rest (long-poll ends, delayed messages, TTL sweeps, and the rare lease
whose deadline is out of order after the wall clock stepped back).

Expired (TTL) messages do not wait for a consumer to reach them: a group with
a queued message that has a TTL gets a sweep timer for its earliest expiry,
which takes every expired message out of the group's queues (counted as
expired, dropped or dead-lettered, and forgotten by the store).  Sweeps of a
group are at least EXPIRY_SWEEP_MS apart, so their cost (one pass over the
group's queues) stays bounded however many expiry times there are.

This is the hot path: the records it moves are slotted (bbmq/core/records.py),
it makes no closures, and a queued message holds nothing for later that can be
made when it is sent (its MESSAGE keys, see ``QueuedMessage.frame``).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from enum import Enum, auto
from typing import Any, Final

from bbmq import protocol
from bbmq.core.config import BrokerConfig
from bbmq.core.outbox import FRAME_OVERHEAD_BYTES, Outboxes
from bbmq.core.records import (
    Group,
    Lease,
    PendingPublish,
    QueuedMessage,
    Session,
    Topic,
)
from bbmq.defaults import DLQ_SUFFIX, lease_topic
from bbmq.protocol import Role
from bbmq.store.base import AckRecord, Batch, DeliveryRecord, GroupRecord, NewMessage, WriteRequest

#: The ack-deadline FIFO is compacted once it holds this many entries, or twice the
#: live ones after the last compaction.
LEASE_FIFO_MIN: Final = 4096
#: What a message held in memory costs beyond its body: the QueuedMessage, its id and
#: timestamp ints, the bytes object's header, its queue slot and its share of the
#: store work.  Measured with tracemalloc on 200,000 queued 100-byte messages: 173 B
#: beyond the body; rounded up for the allocator's own rounding and fragmentation.
MESSAGE_OVERHEAD_BYTES: Final = 200
#: Least time between two sweeps of one group for expired messages.
EXPIRY_SWEEP_MS: Final = 1000


class TimerKind(Enum):
    LEASE = auto()  # only for a lease out of order in the FIFO (the clock stepped back)
    POLL = auto()
    DELAYED = auto()
    EXPIRY = auto()


class QueueEngine:
    """Topics, groups and their queues, leases, timers, and the store work they cause."""

    def __init__(self, config: BrokerConfig, outboxes: Outboxes) -> None:
        self.config = config
        self.outboxes = outboxes
        self.topics: dict[str, Topic] = {}
        self._timers: list[tuple[int, int, TimerKind, Any]] = []
        self._timer_seq = itertools.count()
        #: Ack deadlines as (deadline, group, message id).  Every lease gets the same
        #: timeout, so they come due in delivery order: a FIFO, not the timer heap.
        #: An entry outlives its lease's ack (it holds no message); the entries of acked
        #: leases are dropped whenever the FIFO has doubled, so it stays within twice
        #: the leases in flight.
        self.lease_deadlines: deque[tuple[int, Group, int]] = deque()
        self._compact_leases_at = LEASE_FIFO_MIN
        #: Changes for the store's next transaction, and new messages to store (the
        #: publishes, and the dead letters the broker publishes itself).
        self.batch = Batch()
        self.to_store: list[PendingPublish] = []
        #: What the messages held in memory cost (bodies plus MESSAGE_OVERHEAD_BYTES each):
        #: queued, and on their way to the store.
        self.queued_bytes = 0
        #: Messages held in memory by topic name (a dead letter's topic may not exist yet).
        self.held: dict[str, int] = {}

    def hold(self, topic_name: str, body: bytes) -> None:
        """A message of ``topic_name`` is now held in memory (published, recovered, a dead
        letter): count what it costs."""
        self.queued_bytes += len(body) + MESSAGE_OVERHEAD_BYTES
        self.held[topic_name] = self.held.get(topic_name, 0) + 1

    def let_go(self, topic_name: str, body: bytes) -> None:
        """A held message is gone from memory (finished, refused, a duplicate)."""
        self.queued_bytes -= len(body) + MESSAGE_OVERHEAD_BYTES
        if self.held[topic_name] == 1:
            del self.held[topic_name]
        else:
            self.held[topic_name] -= 1

    def take_store_work(self) -> tuple[list[PendingPublish], Batch]:
        publishes, batch = self.to_store, self.batch
        self.to_store, self.batch = [], Batch()
        return publishes, batch

    # ------------------------------------------------------------------ topics and groups

    def topic(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic(name)
        return topic

    def group_of(self, session: Session) -> Group:
        return self.topics[session.topic].groups[session.group]

    def ensure_group(self, topic_name: str, name: str, now_ms: int) -> Group:
        topic = self.topic(topic_name)
        group = topic.groups.get(name)
        if group is not None:
            return group
        group = topic.groups[name] = Group(topic_name, name, topic.counters)
        # The first group inherits the backlog; later ones start from now.
        start_id = 0 if len(topic.groups) == 1 else topic.last_id
        self.batch.groups.append(GroupRecord(topic_name, name, start_id, now_ms))
        self.batch.topics.add(group.lease)
        while topic.backlog:
            message = topic.backlog.popleft()
            message.refs += 1
            group.counters.published += 1
            self.enqueue(group, message, 0, now_ms)
        return group

    # ------------------------------------------------------------------ queues

    def accept(self, new: NewMessage, message_id: int, now_ms: int) -> Topic:
        """The store committed ``new`` as ``message_id``: queue it for its groups."""
        message = QueuedMessage(message_id, new.topic, new.body, new.sender, new.published_ms,
                                deliver_at_ms=new.deliver_at_ms,
                                expires_at_ms=new.expires_at_ms, meta=new.meta)
        topic = self.topic(new.topic)
        topic.last_id = max(topic.last_id, message_id)
        topic.counters.published += 1
        if new.group is not None:  # for one group only (made at PUBLISH time, unless deleted)
            groups = [topic.groups[new.group]] if new.group in topic.groups else []
            if not groups:
                self.batch.done.append(message_id)
                self.batch.topics.add(lease_topic(new.topic))
                self.let_go(new.topic, new.body)
        else:
            groups = list(topic.groups.values())
            if not groups:
                topic.backlog.append(message)
        for group in groups:
            message.refs += 1
            group.counters.published += 1
            self.enqueue(group, message, 0, now_ms)
        return topic

    def enqueue(self, group: Group, message: QueuedMessage, attempts: int, now_ms: int) -> None:
        """Queue a message for a group: a first delivery if it never had one, else a retry."""
        if message.deliver_at_ms > now_ms:
            self.delay(group, message, attempts, message.deliver_at_ms)
        elif not attempts:
            group.fresh.append(message)
        else:
            heapq.heappush(group.retry, (message.id, message, attempts))
        if message.expires_at_ms is not None:
            self._watch_expiry(group, message.expires_at_ms)

    def _watch_expiry(self, group: Group, expires_at_ms: int) -> None:
        """Make sure a sweep of ``group`` comes soon after ``expires_at_ms``."""
        due = max(expires_at_ms, group.swept_ms + EXPIRY_SWEEP_MS)
        if group.expiry_due_ms is None or due < group.expiry_due_ms:
            group.expiry_due_ms = due  # an earlier sweep supersedes the one scheduled
            self._schedule(due, TimerKind.EXPIRY, group)

    def _sweep_expired(self, group: Group, due_ms: int, now_ms: int) -> None:
        """Take every expired message out of ``group``'s queues; schedule the next sweep."""
        topic = self.topics.get(group.topic)
        live = topic is not None and topic.groups.get(group.name) is group
        if group.expiry_due_ms != due_ms or not live:
            return  # superseded by an earlier sweep, or the group was deleted
        group.expiry_due_ms = None
        group.swept_ms = now_ms
        queued = [(m, 0) for m in group.fresh] + [(m, a) for _, m, a in group.retry] + [
            (m, a) for _, _, m, a in group.delayed]
        expired = [(m, a) for m, a in queued
                   if m.expires_at_ms is not None and m.expires_at_ms <= now_ms]
        if expired:
            gone = {m.id for m, _ in expired}
            group.fresh = deque(m for m in group.fresh if m.id not in gone)
            group.retry = [entry for entry in group.retry if entry[0] not in gone]
            group.delayed = [entry for entry in group.delayed if entry[1] not in gone]
            heapq.heapify(group.retry)
            heapq.heapify(group.delayed)
            for message, attempts in expired:
                self._expire(group, message, attempts, now_ms)
        later = [m.expires_at_ms for m, _ in queued
                 if m.expires_at_ms is not None and m.expires_at_ms > now_ms]
        if later:
            self._watch_expiry(group, min(later))

    def delay(self, group: Group, message: QueuedMessage, attempts: int, due_ms: int) -> None:
        heapq.heappush(group.delayed, (due_ms, message.id, message, attempts))
        self._schedule(due_ms, TimerKind.DELAYED, group)

    def _promote_delayed(self, group: Group, now_ms: int) -> None:
        while group.delayed and group.delayed[0][0] <= now_ms:
            _, _, message, attempts = heapq.heappop(group.delayed)
            heapq.heappush(group.retry, (message.id, message, attempts))
        self.dispatch(group, now_ms)

    def take_back(self, group: Group, lease: Lease, now_ms: int, reason: str,
                  delay_ms: int = 0) -> None:
        """A lease ends without an ack: redeliver, or dead-letter when out of attempts."""
        message = lease.message
        del group.inflight[message.id]
        lease.session.leases.pop(message.id, None)
        if self._expired(message, now_ms):
            self._expire(group, message, lease.attempts, now_ms)
            return
        if self.out_of_attempts(group, lease.attempts):
            self.dead_letter(group, message, lease.attempts, reason, now_ms)
            return
        group.counters.redelivered += 1
        group.topic_counters.redelivered += 1
        if delay_ms:
            due = now_ms + delay_ms
            self.delay(group, message, lease.attempts, due)
            # Stored, so that the delay outlives a restart (the next delivery clears it).
            delivered_ms = lease.deadline_ms - self.config.ack_timeout_ms
            self.batch.deliveries.append(DeliveryRecord(
                message.id, group.name, lease.attempts, delivered_ms, retry_at_ms=due))
            self.batch.topics.add(group.lease)
        else:
            heapq.heappush(group.retry, (message.id, message, lease.attempts))

    def ack(self, session: Session, ids: tuple[int, ...], now_ms: int) -> list[int]:
        """The subscriber acked these messages: its group is done with them.

        Returns the ids that are not in flight on this session (they change nothing).
        """
        group = self.group_of(session)
        leases = session.leases
        unknown = []
        for message_id in ids:
            lease = leases.pop(message_id, None)
            if lease is None:
                unknown.append(message_id)
                continue
            del group.inflight[message_id]
            group.counters.acked += 1
            group.topic_counters.acked += 1
            self.finish(group, lease.message, now_ms)
        return unknown

    def out_of_attempts(self, group: Group, attempts: int) -> bool:
        """Delivered as often as allowed: the next step is the dead-letter topic."""
        max_attempts = self.config.max_attempts
        return bool(max_attempts) and attempts >= max_attempts and not group.topic.endswith(
            DLQ_SUFFIX)

    @staticmethod
    def _expired(message: QueuedMessage, now_ms: int) -> bool:
        return message.expires_at_ms is not None and message.expires_at_ms <= now_ms

    def _expire(self, group: Group, message: QueuedMessage, attempts: int, now_ms: int) -> None:
        group.counters.expired += 1
        group.topic_counters.expired += 1
        if self.config.dead_letter_expired and not group.topic.endswith(DLQ_SUFFIX):
            self.dead_letter(group, message, attempts, "expired", now_ms)
        else:
            self.finish(group, message, now_ms)

    def dead_letter(self, group: Group, message: QueuedMessage, attempts: int, reason: str,
                    now_ms: int) -> None:
        group.counters.dead_lettered += 1
        group.topic_counters.dead_lettered += 1
        meta = {"original_topic": group.topic, "original_group": group.name,
                "original_id": str(message.id), "original_ts": str(message.published_ms),
                "attempts": str(attempts),
                "reason": reason.replace(" ", "_")[:200]}
        self.to_store.append(WriteRequest(None, NewMessage(
            group.topic + DLQ_SUFFIX, message.body, message.sender, now_ms, meta=meta)))
        self.hold(group.topic + DLQ_SUFFIX, message.body)
        self.finish(group, message, now_ms)

    def finish(self, group: Group, message: QueuedMessage, now_ms: int) -> None:
        """``group`` is done with ``message``; the store forgets it once every group is."""
        self.batch.acks.append(AckRecord(message.id, group.name, now_ms))
        self.batch.topics.add(group.lease)
        message.refs -= 1
        if message.refs == 0:
            self.batch.done.append(message.id)
            self.let_go(message.topic, message.body)

    # ------------------------------------------------------------------ delivery

    def start_request(self, session: Session, now_ms: int) -> None:
        """The head FETCH of a session becomes active."""
        request = session.requests[0]
        group = self.group_of(session)
        group.waiting.append(session)
        self.dispatch(group, now_ms)
        if session.requests and session.requests[0] is request and request.deadline_ms is not None:
            if not group.has_ready() and (request.delivered or request.deadline_ms <= now_ms):
                self._finish_request(session, now_ms)
            else:
                self._schedule(request.deadline_ms, TimerKind.POLL, (session, request))

    def _finish_request(self, session: Session, now_ms: int) -> None:
        """End the head FETCH (QUEUE_EMPTY if it got fewer than asked) and start the next."""
        request = session.requests.popleft()
        if request.delivered < request.wanted:
            self.outboxes.send(session, protocol.QueueEmpty(request.delivered))
        group = self.group_of(session)
        if session in group.waiting:
            group.waiting.remove(session)
        if session.requests:
            self.start_request(session, now_ms)

    def dispatch(self, group: Group, now_ms: int) -> None:
        """Hand ready messages to waiting consumers, round robin."""
        # Once per delivery: the group's has_ready() and _expired() are spelled out inline.
        waiting = group.waiting
        has_room = self.outboxes.has_room
        while waiting and (group.fresh or group.retry):
            session = waiting[0]
            if not has_room(session):
                waiting.rotate(-1)
                if not any(has_room(s) for s in waiting):
                    return
                continue
            message, attempts = group.pop_ready()
            if (expires := message.expires_at_ms) is not None and expires <= now_ms:
                self._expire(group, message, attempts, now_ms)
                continue
            self._deliver(group, session, message, attempts + 1, now_ms)
            request = session.requests[0]
            request.delivered += 1
            if request.delivered >= request.wanted:
                waiting.popleft()
                session.requests.popleft()
                if session.requests:
                    self.start_request(session, now_ms)
            else:
                waiting.rotate(-1)
        # Long polls that got something end once nothing more is ready.
        if not group.has_ready():
            for session in [s for s in waiting if s.requests[0].deadline_ms is not None
                            and s.requests[0].delivered]:
                self._finish_request(session, now_ms)

    def _deliver(self, group: Group, session: Session, message: QueuedMessage, attempt: int,
                 now_ms: int) -> None:
        deadline = now_ms + self.config.ack_timeout_ms
        lease = Lease(message, attempt, session, deadline)
        group.inflight[message.id] = lease
        session.leases[message.id] = lease
        leases = self.lease_deadlines
        if leases and deadline < leases[-1][0]:  # the wall clock stepped back: keep order
            self._schedule(deadline, TimerKind.LEASE, (group, message.id))
        else:
            leases.append((deadline, group, message.id))
            if len(leases) >= self._compact_leases_at:
                self._compact_lease_deadlines()
        self.batch.deliveries.append(DeliveryRecord(message.id, group.name, attempt, now_ms))
        self.batch.topics.add(group.lease)
        group.counters.delivered += 1
        group.topic_counters.delivered += 1
        self.outboxes.send(session, message.frame(attempt),
                           len(message.body) + FRAME_OVERHEAD_BYTES)

    def release(self, session: Session, now_ms: int) -> None:
        """A session ends: it stops counting as a publisher; a subscriber's leases go back."""
        if session.closed:
            return
        session.closed = True
        role = session.role
        if role is Role.PUBLISHER:
            self.topic(session.topic).publishers -= 1
        if role is not Role.SUBSCRIBER:
            return
        group = self.group_of(session)
        group.consumers.discard(session)
        if session in group.waiting:
            group.waiting.remove(session)
        session.requests.clear()
        for lease in list(session.leases.values()):
            self.take_back(group, lease, now_ms, "consumer disconnected")
        self.dispatch(group, now_ms)

    # ------------------------------------------------------------------ timers

    def _schedule(self, deadline_ms: int, kind: TimerKind, subject: Any) -> None:
        heapq.heappush(self._timers, (deadline_ms, next(self._timer_seq), kind, subject))

    def next_deadline(self) -> int | None:
        """When :meth:`tick` next has work, in the same milliseconds as ``now_ms``."""
        deadlines = [queue[0][0] for queue in (self._timers, self.lease_deadlines) if queue]
        return min(deadlines) if deadlines else None

    def tick(self, now_ms: int) -> None:
        """Run every timer that is due: ack timeouts, long-poll ends, delayed messages, TTL
        sweeps."""
        leases = self.lease_deadlines
        while leases and leases[0][0] <= now_ms:
            self._lease_due(*leases.popleft(), now_ms)
        while self._timers and self._timers[0][0] <= now_ms:
            deadline, _, kind, subject = heapq.heappop(self._timers)
            if kind is TimerKind.LEASE:
                group, message_id = subject
                self._lease_due(deadline, group, message_id, now_ms)
            elif kind is TimerKind.POLL:
                session, request = subject
                if session.requests and session.requests[0] is request:
                    self._finish_request(session, now_ms)
            elif kind is TimerKind.EXPIRY:
                self._sweep_expired(subject, deadline, now_ms)
            else:
                self._promote_delayed(subject, now_ms)

    def _compact_lease_deadlines(self) -> None:
        """Drop the FIFO entries of leases that ended (acked, nacked, ...), keeping the order."""
        self.lease_deadlines = deque(
            entry for entry in self.lease_deadlines if self._lease_of(*entry) is not None)
        self._compact_leases_at = max(LEASE_FIFO_MIN, 2 * len(self.lease_deadlines))

    @staticmethod
    def _lease_of(deadline: int, group: Group, message_id: int) -> Lease | None:
        """The lease this deadline belongs to, unless it ended (acked, taken back, its group
        deleted) or the message was delivered again (a later deadline)."""
        lease = group.inflight.get(message_id)
        return lease if lease is not None and lease.deadline_ms == deadline else None

    def _lease_due(self, deadline: int, group: Group, message_id: int, now_ms: int) -> None:
        """An ack deadline passed: take the message back if its lease is still on."""
        if (lease := self._lease_of(deadline, group, message_id)) is not None:
            self.take_back(group, lease, now_ms, "ack timeout")
            self.dispatch(group, now_ms)
