"""What is left of a transaction's work once some of its topics lost their lease.

A broker of a cluster writes each transaction under its topic leases; when the
store (or the broker's own deadline) says some are lost, the store thread
writes the rest again at once.  The lost topics' publishes are answered with a
failure (never confirmed), and their changes are dropped: the topic's new owner
loads it from what was committed and redelivers what those changes recorded.
A dead-letter topic ``<t>.dlq`` goes with ``<t>`` (:func:`bbmq.defaults.lease_topic`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from bbmq.defaults import lease_topic
from bbmq.store.base import Batch, WriteRequest

log = logging.getLogger("bbmq.store")

RequestT = TypeVar("RequestT", bound=WriteRequest[Any, Any])


def split_lost(publishes: list[RequestT], changes: list[Batch], topics: frozenset[str]
               ) -> tuple[list[RequestT], list[Batch], dict[str, list[RequestT]]]:
    """The publishes and changes to write again, and the client publishes of lost
    ``topics`` to fail, by topic (the broker's own publishes of them are dropped).

    Acks, deliveries and finished ids carry no topic, so a submit that mixed a lost
    topic with others loses those of the others too: they are redelivered, at least once.
    """
    lost = {lease_topic(topic) for topic in topics}

    def is_lost(topic: str) -> bool:
        return lease_topic(topic) in lost

    failed: dict[str, list[RequestT]] = {}
    kept: list[RequestT] = []
    for publish in publishes:
        if not is_lost(publish.message.topic):
            kept.append(publish)
        elif publish.requester is not None:
            failed.setdefault(publish.message.topic, []).append(publish)
    kept_changes = [change for change in (_without(change, is_lost) for change in changes)
                    if change is not None]
    return kept, kept_changes, failed


def _without(changes: Batch, is_lost: Callable[[str], bool]) -> Batch | None:
    """``changes`` without what belongs to lost topics; None if nothing is left.

    Changed in place: a barrier knows the batch by its identity.
    """
    lost = {topic for topic in changes.topics if is_lost(topic)}
    if not lost:
        return changes
    if lost == changes.topics:
        return None
    dropped = len(changes.deliveries) + len(changes.acks) + len(changes.done)
    if dropped:
        log.warning("dropped %d acks, deliveries and finished ids written together with a "
                    "topic whose lease was lost (%s); they are redelivered after a failover",
                    dropped, ", ".join(sorted(changes.topics - lost)))
    changes.messages = [m for m in changes.messages if not is_lost(m.topic)]
    changes.groups = [g for g in changes.groups if not is_lost(g.topic)]
    changes.deleted_groups = [d for d in changes.deleted_groups if not is_lost(d[0])]
    changes.deliveries, changes.acks, changes.done = [], [], []
    changes.topics -= lost
    return changes if len(changes) else None
