"""Rebuilding the queues from the store when the broker starts.

The store hands back every message not yet done (bbmq/store/base.py's
:class:`RecoveredMessage`: which groups still owe it and how often each
delivered it) and every group.  Each message goes back where it was: a group's
fresh queue, its retry heap (attempts made), its delayed heap (a NACK delay
still running), or the topic's backlog (no group yet).  A message whose last
allowed attempt was cut short by the stop goes to the dead-letter topic here,
rather than getting one delivery more than ``max_attempts`` allows.
"""

from __future__ import annotations

from collections.abc import Iterable

from bbmq.core.engine import QueueEngine
from bbmq.core.records import Group, QueuedMessage
from bbmq.store.base import GroupRecord, RecoveredMessage


def recover(engine: QueueEngine, records: Iterable[RecoveredMessage],
            groups: Iterable[GroupRecord], now_ms: int) -> int:
    """Queue what the store recovered; returns how many messages were loaded."""
    for record in groups:
        topic = engine.topic(record.topic)
        topic.groups.setdefault(record.group, Group(record.topic, record.group, topic.counters))
    loaded = 0
    for rec in records:
        message = QueuedMessage(rec.id, rec.topic, rec.body, rec.sender, rec.published_ms,
                                deliver_at_ms=rec.deliver_at_ms,
                                expires_at_ms=rec.expires_at_ms, meta=rec.meta)
        topic = engine.topic(rec.topic)
        topic.last_id = max(topic.last_id, rec.id)
        engine.hold(rec.topic, rec.body)
        loaded += 1
        if not rec.pending:
            topic.backlog.append(message)
            continue
        exhausted = []
        for name, attempts in rec.pending.items():
            group = topic.groups.setdefault(name, Group(rec.topic, name, topic.counters))
            message.refs += 1
            if engine.out_of_attempts(group, attempts):  # its last delivery was cut short
                exhausted.append((group, attempts))
            elif (due := rec.retry_at.get(name, 0)) > now_ms:  # a NACK delay still running
                engine.delay(group, message, attempts, due)
            else:
                engine.enqueue(group, message, attempts, now_ms)
        for group, attempts in exhausted:  # once every group holds its reference
            engine.dead_letter(group, message, attempts, "unacked when the broker stopped",
                               now_ms)
    return loaded
