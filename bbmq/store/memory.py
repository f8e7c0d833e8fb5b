"""A store in plain dicts: ``memory://``, for tests and throwaway brokers.

Nothing survives the process, but within one instance the semantics are those
of the SQL stores (the contract tests run against all of them), so a broker
on ``memory://`` behaves like one on a database until it restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bbmq.store.base import (
    Batch,
    Fence,
    GroupRecord,
    NewMessage,
    RecoveredMessage,
    StoredId,
)
from bbmq.store.sql import DEFAULT_DEDUP_WINDOW_MS


@dataclass(slots=True)
class _Stored:
    message: NewMessage
    done_ms: int | None = None


@dataclass(slots=True)
class _Delivery:
    attempts: int
    acked: bool = False
    retry_at_ms: int | None = None


class MemoryStore:
    """A non-durable store; see the module docstring."""

    description = "memory://"
    durable = False

    def __init__(
        self, *, retention_ms: int = 0, dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS
    ) -> None:
        self.retention_ms = retention_ms
        self.dedup_window_ms = dedup_window_ms
        self._open = False
        self._last_id = 0
        # Ids only grow, so insertion order is id order.
        self._messages: dict[int, _Stored] = {}
        self._msgids: dict[tuple[str, str], tuple[int, int]] = {}
        self._groups: dict[tuple[str, str], GroupRecord] = {}
        self._deliveries: dict[int, dict[str, _Delivery]] = {}

    def open(self) -> None:
        """Make the store usable; what it held before close() is still there."""
        self._open = True

    def close(self) -> None:
        """Refuse further calls until open(); idempotent."""
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"store {self.description} is not open")

    def write(self, batch: Batch, now_ms: int, fence: Fence | None = None) -> list[StoredId]:
        """Apply ``batch``; see :meth:`bbmq.store.base.Store.write`."""
        self._check_open()
        if fence is not None:
            raise ValueError("memory:// keeps one broker's messages in its own process; "
                             "it cannot be shared by a cluster (use mysql://)")
        stored = [self._store(message) for message in batch.messages]
        for group in batch.groups:
            self._groups.setdefault((group.topic, group.group), group)
        for delivery in batch.deliveries:
            state = self._deliveries.setdefault(delivery.message_id, {})
            if delivery.group in state:
                state[delivery.group].attempts = delivery.attempts
                state[delivery.group].retry_at_ms = delivery.retry_at_ms
            else:
                state[delivery.group] = _Delivery(delivery.attempts,
                                                  retry_at_ms=delivery.retry_at_ms)
        for ack in batch.acks:
            state = self._deliveries.setdefault(ack.message_id, {})
            state.setdefault(ack.group, _Delivery(0)).acked = True
        for message_id in batch.done:
            if not self.retention_ms:
                self._messages.pop(message_id, None)
                self._deliveries.pop(message_id, None)
            elif (entry := self._messages.get(message_id)) is not None and entry.done_ms is None:
                entry.done_ms = now_ms
        for topic, name in batch.deleted_groups:
            self._groups.pop((topic, name), None)
            for message_id, state in self._deliveries.items():
                entry = self._messages.get(message_id)
                if entry is not None and entry.message.topic == topic:
                    state.pop(name, None)
        return stored

    def _store(self, message: NewMessage) -> StoredId:
        if message.msgid is not None:
            key = (message.topic, message.msgid)
            prior = self._msgids.get(key)
            if prior is not None and message.published_ms - prior[1] <= self.dedup_window_ms:
                return StoredId(prior[0], duplicate=True)
            self._msgids[key] = (self._last_id + 1, message.published_ms)
        self._last_id += 1
        self._messages[self._last_id] = _Stored(message)
        return StoredId(self._last_id)

    def groups(self, topic: str | None = None) -> list[GroupRecord]:
        """The groups of ``topic`` (None: of every topic), by topic and name."""
        self._check_open()
        return [self._groups[key] for key in sorted(self._groups)
                if topic is None or key[0] == topic]

    def count_pending(self, topic: str | None = None) -> int:
        """Exactly how many messages :meth:`recover` will yield."""
        return sum(1 for _ in self.recover(topic))

    def recover(self, topic: str | None = None) -> Iterator[RecoveredMessage]:
        """Every pending or backlog message of ``topic`` (None: of every topic), by id
        (from a snapshot taken now)."""
        self._check_open()
        owed: dict[str, dict[str, int]] = {}
        for group in self._groups.values():
            owed.setdefault(group.topic, {})[group.group] = group.start_id
        recovered: list[RecoveredMessage] = []
        for message_id, entry in self._messages.items():
            m = entry.message
            if entry.done_ms is not None or (topic is not None and m.topic != topic):
                continue
            state = self._deliveries.get(message_id, {})
            groups = owed.get(m.topic, {})
            if m.group is not None:  # owed by that one group, or by nobody
                groups = {m.group: groups[m.group]} if m.group in groups else {}
                if not groups:
                    continue
            pending = {
                group: state[group].attempts if group in state else 0
                for group, start_id in groups.items()
                if start_id < message_id and not (group in state and state[group].acked)
            }
            if groups and not pending:
                continue
            retry_at = {group: due for group in pending
                        if group in state and (due := state[group].retry_at_ms) is not None}
            recovered.append(RecoveredMessage(
                message_id, m.topic, m.body, m.sender, m.published_ms, m.deliver_at_ms,
                m.expires_at_ms, dict(m.meta or {}), pending, retry_at,
            ))
        return iter(recovered)

    def prune(self, now_ms: int) -> int:
        """Drop done messages past retention and msgids past the dedup window."""
        self._check_open()
        cutoff = now_ms - self.retention_ms
        gone = [
            message_id for message_id, entry in self._messages.items()
            if entry.done_ms is not None and entry.done_ms <= cutoff
        ]
        deleted = len(gone)
        for message_id in gone:
            del self._messages[message_id]
            deleted += len(self._deliveries.pop(message_id, {}))
        stale = [
            key for key, (_, published_ms) in self._msgids.items()
            if published_ms < now_ms - self.dedup_window_ms
        ]
        for key in stale:
            del self._msgids[key]
        return deleted + len(stale)
