"""The lease check a clustered store's transaction begins with.

A broker of a cluster writes a batch only under the leases it holds
(:class:`~bbmq.store.base.Fence`).  The first statements of the transaction
are, per lease topic of the batch, ``UPDATE leases SET writes = writes + 1
WHERE topic = ? AND owner = ? AND epoch = ?``.  It is a write that really
changes the row, on purpose: MySQL skips the storage engine for an UPDATE that
changes nothing (``SET epoch = epoch``), so Galera would get no key of the row
to certify, and a stale owner on another node could commit past a take-over.
As a real write, the lease row conflicts with any change of owner: on one
server the row lock orders them, on Galera the later one fails at COMMIT
(1213).  A check that matches no row means the topic moved: nothing of the
batch is written.

The dead letters of ``<t>`` (topic ``<t>.dlq``) are written under ``<t>``'s
lease (:func:`bbmq.defaults.lease_topic`).  Lease rows are checked in topic
order, the order in which a renew (``WHERE owner = ?``, by the owner index)
locks them, so the two cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable

from bbmq.defaults import lease_topic
from bbmq.store.base import Fence, Fenced
from bbmq.store.dbapi import Cursor


def check_fence(cursor: Cursor, statement: str, fence: Fence, topics: Iterable[str]) -> None:
    """Check (and mark) every lease ``topics`` are written under; raise Fenced with the
    topics whose lease ``fence.owner`` no longer holds at the fence's epoch.

    ``statement`` is the fence UPDATE above, with parameters (topic, owner, epoch).
    """
    by_lease: dict[str, list[str]] = {}
    for topic in topics:
        by_lease.setdefault(lease_topic(topic), []).append(topic)
    fenced: set[str] = set()
    for leased in sorted(by_lease):
        names = by_lease[leased]
        epoch = fence.epochs.get(leased)
        if epoch is None:  # a fence given per written topic: the dead letters' own name
            epoch = next((fence.epochs[name] for name in names if name in fence.epochs), None)
        if epoch is None:
            fenced.update(names)
            continue
        cursor.execute(statement, (leased, fence.owner, epoch))
        if cursor.rowcount != 1:
            fenced.update(names)
    if fenced:
        raise Fenced(frozenset(fenced))
