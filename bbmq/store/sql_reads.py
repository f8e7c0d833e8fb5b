"""What the SQL stores read back: the groups, and the pending messages a page at a time.

For every topic (a broker's start) or for one (a broker of a cluster taking a topic
over).  :class:`bbmq.store.sql.SQLStore` runs these in its transactions; they only
turn rows into records.
"""

from __future__ import annotations

import json
from typing import Final

from bbmq.store.base import GroupRecord, RecoveredMessage
from bbmq.store.dbapi import Cursor
from bbmq.store.statements import Statements

#: Recovery reads pages of at most this many messages ...
PAGE_ROWS: Final = 5000
#: ... and shrinks pages so that one holds about this many body bytes.
PAGE_BYTES: Final = 16 * 1024 * 1024
#: The first page, small: the body sizes are not known yet.
FIRST_PAGE_ROWS: Final = 64


def read_groups(cursor: Cursor, q: Statements, topic: str | None) -> list[GroupRecord]:
    """The groups of ``topic`` (None: of every topic), by topic and name."""
    if topic is None:
        cursor.execute(q.groups)
    else:
        cursor.execute(q.groups_of_topic, (topic,))
    return [GroupRecord(*row) for row in cursor.fetchall()]


def count_pending(cursor: Cursor, q: Statements, topic: str | None) -> int:
    """How many messages of ``topic`` (None: of every topic) recovery yields."""
    if topic is None:
        cursor.execute(q.count_pending)
    else:
        cursor.execute(q.count_pending_of_topic, (topic,))
    count: int = cursor.fetchone()[0]
    return count


def next_page_rows(rows: int, body_bytes: int) -> int:
    """The next page's size: about PAGE_BYTES of bodies, at most twice the last one."""
    return max(1, min(PAGE_ROWS, 2 * rows, rows * PAGE_BYTES // max(body_bytes, 1)))


def read_page(
    cursor: Cursor, q: Statements, *, owed: dict[str, dict[str, int]], after: int, limit: int,
    topic: str | None,
) -> tuple[list[RecoveredMessage], int, int, int]:
    """Read up to ``limit`` messages with id > ``after`` (of ``topic``, unless None).

    ``owed`` maps topic -> group -> start id.  Returns the pending messages, how
    many rows were read, the last id read and the body bytes read.
    """
    if topic is None:
        cursor.execute(q.page, (after, limit))
    else:
        cursor.execute(q.page_of_topic, (topic, after, limit))
    rows = cursor.fetchall()
    if not rows:
        return [], 0, after, 0
    states: dict[int, dict[str, tuple[int, bool, int | None]]] = {}
    if owed:
        cursor.execute(q.page_deliveries, (rows[0][0], rows[-1][0]))
        for message_id, group, attempts, acked_ms, retry_at_ms in cursor.fetchall():
            states.setdefault(message_id, {})[group] = (
                attempts, acked_ms is not None, retry_at_ms)
    page: list[RecoveredMessage] = []
    body_bytes = 0
    for (id_, topic_, body, sender, published_ms, deliver_at_ms, expires_at_ms, meta,
         only_group) in rows:
        body_bytes += len(body)
        groups = owed.get(topic_)
        if only_group is not None:  # owed by that one group, or by nobody
            groups = {only_group: groups[only_group]} if groups and only_group in groups \
                else {}
            if not groups:
                continue
        pending: dict[str, int] = {}
        retry_at: dict[str, int] = {}
        if groups:
            state = states.get(id_, {})
            for group, start_id in groups.items():
                attempts, acked, due = state.get(group, (0, False, None))
                if start_id < id_ and not acked:
                    pending[group] = attempts
                    if due is not None:
                        retry_at[group] = due
            if not pending:
                continue
        page.append(RecoveredMessage(
            id_, topic_, bytes(body), sender, published_ms, deliver_at_ms, expires_at_ms,
            json.loads(meta) if meta else {}, pending, retry_at,
        ))
    return page, len(rows), rows[-1][0], body_bytes
