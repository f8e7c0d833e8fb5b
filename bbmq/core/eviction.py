"""Forgetting a topic a cluster broker no longer serves: all it held in memory for it.

When a broker loses a topic's lease or hands it off (``Broker.topic_lost``),
its clients of that topic are redirected and their connections close
(bbmq/core/broker.py).  This module then drops the topic's state without
turning any of it into store work: the new owner loads the topic from the
store, where a delivery of the old epoch is redeliverable at once, so nothing
here is given back, redelivered or dead-lettered; it is only forgotten:

- the topic and its dead-letter topic (which travels with it,
  :func:`bbmq.defaults.lease_topic`): groups, queues, backlog, leases,
  counters, and what their messages cost in memory;
- the redirected sessions' leases, open FETCHes (long polls included) and the
  PUBLISH replies they were owed: the client resends those with their msgid
  (PROTOCOL.md 4.7).  A publish already in the store thread is marked
  :data:`NOT_CONFIRMED`, so that when the store answers it later the core only
  lets its bytes go (``Roles.stored``); one not yet handed over is dropped;
- the timers and ack deadlines of its groups and sessions.

The dead letters the topic's groups made stay on their way to the store: they
belong to the same transaction as the acks that retired their originals.  One
that commits after the topic is lost is only let go (``Roles.stored`` finds
its topic not served); one whose commit is read by a reload of the topic and
whose answer comes after that reload would be queued twice (a second delivery
of one dead letter): the store thread schedules the answer right after the
commit, before the membership can even read the topic, so this stays a
theoretical window.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection
from typing import Any, Final

from bbmq import protocol
from bbmq.core.engine import QueueEngine
from bbmq.core.records import Group, QueuedMessage, Session
from bbmq.defaults import lease_topic
from bbmq.protocol import ErrorCode
from bbmq.store.base import WriteRequest

#: The answer that marks a publish whose topic was lost before the store answered it: never
#: sent (the publisher got REDIRECT and its owed replies were dropped), only recognised.
NOT_CONFIRMED: Final = protocol.Error(
    ErrorCode.STORE_UNAVAILABLE, "topic moved to another broker; publish it there again")


def evict(engine: QueueEngine, lease: str, sessions: Collection[Session]) -> None:
    """Forget the topics under ``lease`` and what the (redirected) ``sessions`` of them owe."""
    for session in sessions:
        for slot in session.replies:
            if isinstance(slot, WriteRequest) and slot.answer is None:
                slot.answer = NOT_CONFIRMED
        session.replies.clear()
        session.requests.clear()
        session.leases.clear()
    kept = []
    for pending in engine.to_store:
        requester = pending.requester
        if requester is not None and requester.lease == lease:
            engine.let_go(pending.message.topic, pending.message.body)
        else:
            kept.append(pending)
    engine.to_store = kept
    dropped: set[Group] = set()
    for name in [name for name in engine.topics if lease_topic(name) == lease]:
        topic = engine.topics.pop(name)
        held: dict[int, QueuedMessage] = {message.id: message for message in topic.backlog}
        for group in topic.groups.values():
            dropped.add(group)
            for message, _ in group.entries():
                held[message.id] = message
            for lease_record in group.inflight.values():
                held[lease_record.message.id] = lease_record.message
            for queue in (group.fresh, group.retry, group.delayed, group.inflight,
                          group.waiting, group.consumers):
                queue.clear()
        for message in held.values():
            engine.let_go(message.topic, message.body)
    _forget_timers(engine, dropped, set(sessions))


def _forget_timers(engine: QueueEngine, groups: set[Group], sessions: set[Session]) -> None:
    """Take the timers and ack deadlines of dropped groups and sessions out of the engine."""
    engine.lease_deadlines = deque(entry for entry in engine.lease_deadlines
                                   if entry[1] not in groups)

    def gone(subject: Any) -> bool:
        owner = subject[0] if isinstance(subject, tuple) else subject
        return owner in groups or owner in sessions

    engine._timers = [timer for timer in engine._timers if not gone(timer[3])]
    heapq.heapify(engine._timers)
