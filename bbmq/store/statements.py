"""Every statement the SQL stores run, written once for SQLite and MySQL alike.

Statements are written with ``?`` and get the dialect's placeholder here.
Values always travel as query parameters; only table names (a validated
prefix plus fixed suffixes) are formatted into SQL.  What runs them, and when,
is :class:`bbmq.store.sql.SQLStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: Given the key columns and the columns to update, what follows ``INSERT ... VALUES (...)``
#: in the dialect to update those on a key conflict (to do nothing when there are none).
UpsertClause = Callable[[Sequence[str], Sequence[str]], str]


class Statements:
    """The fixed statements, for one table prefix and one dialect, built once per store."""

    def __init__(self, prefix: str, placeholder: str, upsert_clause: UpsertClause) -> None:
        self.prefix = prefix
        self.placeholder = placeholder
        self._upsert_clause = upsert_clause
        p = prefix
        self.select_version = self.sql(f"SELECT value FROM {p}meta WHERE name = ?")
        self.set_version = self.sql(f"UPDATE {p}meta SET value = ? WHERE name = ?")
        self.insert_meta = self.insert(f"{p}meta", ("name", "value"), ("name",))
        self.insert_sequence = self.insert(f"{p}sequence", ("name", "last_id"), ("name",))
        self.reserve = self.sql(
            f"UPDATE {p}sequence SET last_id = last_id + ? WHERE name = ?"
        )
        self.last_id = self.sql(f"SELECT last_id FROM {p}sequence WHERE name = ?")
        self.insert_message = self.insert(
            f"{p}messages",
            ("id", "topic", "body", "sender", "published_ms", "deliver_at_ms", "expires_at_ms",
             "meta", "only_group"),
        )
        self.upsert_msgid = self.insert(
            f"{p}msgids", ("topic", "msgid", "message_id", "published_ms"), ("topic", "msgid"),
            update=("message_id", "published_ms"),
        )
        self.insert_group = self.insert(
            f"{p}groups", ("topic", "grp", "start_id", "created_ms"), ("topic", "grp")
        )
        deliveries = ("message_id", "grp", "attempts", "delivered_ms", "acked_ms", "retry_at_ms")
        self.upsert_delivery = self.insert(
            f"{p}deliveries", deliveries, ("message_id", "grp"),
            update=("attempts", "delivered_ms", "retry_at_ms"),
        )
        self.upsert_ack = self.insert(
            f"{p}deliveries", deliveries, ("message_id", "grp"), update=("acked_ms",)
        )
        self.delete_group = self.sql(f"DELETE FROM {p}groups WHERE topic = ? AND grp = ?")
        self.delete_group_deliveries = self.sql(
            f"DELETE FROM {p}deliveries WHERE grp = ? AND EXISTS (SELECT 1 FROM {p}messages m"
            f" WHERE m.id = {p}deliveries.message_id AND m.topic = ?)"
        )
        # Each read comes for every topic and for one (``..._of_topic``: its first
        # parameter is the topic), which a cluster's broker loads when it takes the topic.
        groups = f"SELECT topic, grp, start_id, created_ms FROM {p}groups"
        self.groups = self.sql(f"{groups} ORDER BY topic, grp")
        self.groups_of_topic = self.sql(f"{groups} WHERE topic = ? ORDER BY grp")
        page = (f"SELECT id, topic, body, sender, published_ms, deliver_at_ms, expires_at_ms,"
                f" meta, only_group FROM {p}messages WHERE")
        self.page = self.sql(f"{page} done_ms IS NULL AND id > ? ORDER BY id LIMIT ?")
        self.page_of_topic = self.sql(
            f"{page} topic = ? AND done_ms IS NULL AND id > ? ORDER BY id LIMIT ?")
        self.page_deliveries = self.sql(
            f"SELECT message_id, grp, attempts, acked_ms, retry_at_ms FROM {p}deliveries"
            f" WHERE message_id BETWEEN ? AND ?"
        )
        # Mirrors the filter in SQLStore._page(): a message of a topic with no group is
        # backlog (unless it is for one group only), one with groups is pending
        # while a group that should get it has not acked.
        pending = (
            f"SELECT COUNT(*) FROM {p}messages m WHERE m.done_ms IS NULL AND ("
            f"(m.only_group IS NULL AND NOT EXISTS"
            f" (SELECT 1 FROM {p}groups g WHERE g.topic = m.topic))"
            f" OR EXISTS (SELECT 1 FROM {p}groups g WHERE g.topic = m.topic"
            f" AND (m.only_group IS NULL OR g.grp = m.only_group)"
            f" AND g.start_id < m.id AND NOT EXISTS (SELECT 1 FROM {p}deliveries d"
            f" WHERE d.message_id = m.id AND d.grp = g.grp AND d.acked_ms IS NOT NULL)))"
        )
        self.count_pending = self.sql(pending)
        self.count_pending_of_topic = self.sql(
            pending.replace(" WHERE ", " WHERE m.topic = ? AND ", 1))
        # The lease check a clustered store's transaction begins with (bbmq.store.fencing).
        self.fence = self.sql(f"UPDATE {p}leases SET writes = writes + 1"
                              f" WHERE topic = ? AND owner = ? AND epoch = ?")
        self.prune_deliveries = self.sql(
            f"DELETE FROM {p}deliveries WHERE message_id IN"
            f" (SELECT id FROM {p}messages WHERE done_ms <= ?)"
        )
        self.prune_messages = self.sql(f"DELETE FROM {p}messages WHERE done_ms <= ?")
        self.prune_msgids = self.sql(f"DELETE FROM {p}msgids WHERE published_ms < ?")

    def sql(self, query: str) -> str:
        return query.replace("?", self.placeholder)

    def insert(
        self, table: str, columns: Sequence[str], key: Sequence[str] = (),
        update: Sequence[str] = (),
    ) -> str:
        # Exactly "INSERT INTO t (...) VALUES (?, ...)[ ON ...]": PyMySQL turns
        # executemany() of that form into one multi-row INSERT.
        values = ", ".join([self.placeholder] * len(columns))
        query = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
        if key:
            query += " " + self._upsert_clause(key, update)
        return query

    def in_list(self, n: int) -> str:
        return "(" + ", ".join([self.placeholder] * n) + ")"

    # Statements over a list of ``n`` values (ids or msgids), in chunks of the caller's size.

    def mark_done(self, n: int) -> str:
        """Keep finished messages for retention: done_ms first, then the ids."""
        return self.sql(f"UPDATE {self.prefix}messages SET done_ms = ? WHERE done_ms IS NULL"
                        f" AND id IN {self.in_list(n)}")

    def delete_deliveries_of(self, n: int) -> str:
        return f"DELETE FROM {self.prefix}deliveries WHERE message_id IN {self.in_list(n)}"

    def delete_messages(self, n: int) -> str:
        return f"DELETE FROM {self.prefix}messages WHERE id IN {self.in_list(n)}"

    def msgids_of(self, n: int) -> str:
        """The stored msgid records of one topic: the topic first, then the msgids."""
        return self.sql(f"SELECT msgid, message_id, published_ms FROM {self.prefix}msgids"
                        f" WHERE topic = ? AND msgid IN {self.in_list(n)}")
