"""The one small interface every storage backend implements.

A store is blocking and single-threaded: the broker owns exactly one thread per
store (see :mod:`bbmq.store.worker`) and only that thread calls these methods,
``open`` included, so sqlite3 and PyMySQL connections never cross threads.

Everything the broker changes reaches the store as a :class:`Batch` that the
backend writes in ONE transaction (group commit): new messages, groups created,
delivery attempts, acks, messages finished by every group.  The broker keeps
no state that it cannot rebuild from :meth:`Store.recover`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

AnswerT = TypeVar("AnswerT")
RequesterT = TypeVar("RequesterT")


class StoreUnavailable(Exception):
    """The backing database cannot be reached right now; the batch was not written.

    The caller retries later; the backend must be usable again (reconnecting
    on its own) once the database is back.
    """


class StoreConflict(StoreUnavailable):
    """The transaction lost a conflict with another one and was rolled back: a deadlock
    or lock wait timeout, or on Galera a certification failure at COMMIT (1213).

    Nothing was written and the database is up: trying again at once may well work.
    """


class Fenced(Exception):
    """This broker no longer holds the lease of some topics of the batch; nothing was written.

    Only a clustered store raises it (docs/CLUSTER.md): the transaction began
    with a lease check per topic (a write, so that Galera certifies it), and the
    check found another owner or a newer epoch for ``topics``.  The caller drops
    those topics' changes, confirms none of their publishes, and may write the
    rest of the batch again.
    """

    def __init__(self, topics: frozenset[str]) -> None:
        super().__init__(f"lease lost for {', '.join(sorted(topics))}")
        self.topics = topics


@dataclass(frozen=True, slots=True)
class Fence:
    """The leases a clustered broker writes under: its id and the epoch it holds per topic.

    A dead-letter topic ``<t>.dlq`` has no lease of its own: it is written under the
    lease of ``<t>`` (:func:`bbmq.defaults.lease_topic`), so ``epochs`` needs ``<t>``'s epoch.
    """

    owner: str
    epochs: Mapping[str, int]


@dataclass(slots=True)  # not frozen: one is made per PUBLISH, and frozen init is slower
class NewMessage:
    """A message to store. Ids are assigned by the store, in batch order."""

    topic: str
    body: bytes
    sender: str | None
    published_ms: int
    msgid: str | None = None
    deliver_at_ms: int = 0
    expires_at_ms: int | None = None
    #: Extra MESSAGE keys (dead letters carry their origin); None, not a dict per message.
    meta: dict[str, str] | None = None
    #: Only this consumer group of the topic receives the message (a DLQ replay); None: all.
    group: str | None = None


class ReplySlot(Generic[AnswerT]):
    """Where the answer to one request goes once it is known.

    A connection keeps its slots in request order and sends answers from the
    front only, so replies leave in the order the requests came, even when a
    later one is answered first (an error behind a publish still in the store).
    """

    __slots__ = ("answer",)

    def __init__(self, answer: AnswerT | None = None) -> None:
        self.answer = answer


class WriteRequest(ReplySlot[AnswerT], Generic[RequesterT, AnswerT]):
    """A new message on its way to the store, and the slot its publisher's answer goes into.

    One object per PUBLISH, so the request is its own reply slot (no second
    allocation on the hot path).  ``requester`` is who waits for the answer;
    None for the broker's own messages (dead letters), which the store thread
    keeps and retries through an outage instead of failing them.  The store
    never looks inside ``requester`` or ``answer``: it only says what became of
    ``message``.
    """

    __slots__ = ("message", "requester")

    def __init__(self, requester: RequesterT | None, message: NewMessage) -> None:
        super().__init__()
        self.requester = requester
        self.message = message


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A consumer group of a topic; it receives the messages whose id > ``start_id``."""

    topic: str
    group: str
    start_id: int
    created_ms: int


@dataclass(slots=True)  # not frozen, like the others made per message: frozen init is 3x slower
class DeliveryRecord:
    """A message was delivered to a group for the ``attempts``-th time.

    ``retry_at_ms``: the group gave it back with a delay (NACK delay=...) and wants it
    again no sooner than this; None once it is delivered again, or without a delay.
    """

    message_id: int
    group: str
    attempts: int
    delivered_ms: int
    retry_at_ms: int | None = None


@dataclass(slots=True)
class AckRecord:
    """A group is finished with a message (acked, purged, dead-lettered or expired)."""

    message_id: int
    group: str
    acked_ms: int


@dataclass(slots=True)
class Batch:
    """Changes written in one transaction, applied in the order of the fields."""

    messages: list[NewMessage] = field(default_factory=list)
    groups: list[GroupRecord] = field(default_factory=list)
    deliveries: list[DeliveryRecord] = field(default_factory=list)
    acks: list[AckRecord] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    deleted_groups: list[tuple[str, str]] = field(default_factory=list)
    #: Every topic whose rows the batch changes: what a clustered broker fences.
    topics: set[str] = field(default_factory=set)

    def extend(self, other: Batch) -> None:
        """Append ``other``'s changes after this batch's own."""
        self.topics |= other.topics
        self.messages += other.messages
        self.groups += other.groups
        self.deliveries += other.deliveries
        self.acks += other.acks
        self.done += other.done
        self.deleted_groups += other.deleted_groups

    def __len__(self) -> int:
        return (len(self.messages) + len(self.groups) + len(self.deliveries) + len(self.acks)
                + len(self.done) + len(self.deleted_groups))


@dataclass(slots=True)
class StoredId:
    """Where a new message went: its id, and whether its msgid was already stored."""

    id: int
    duplicate: bool = False


@dataclass(slots=True)
class RecoveredMessage:
    """A stored message with the groups that still owe it an ack.

    ``pending`` maps each such group to the attempts already made (0: never
    delivered).  A message of a topic that has no group yet has an empty
    ``pending`` and is part of that topic's backlog.  ``retry_at`` maps the
    pending groups that asked for it later (a NACK delay) to when.
    """

    id: int
    topic: str
    body: bytes
    sender: str | None
    published_ms: int
    deliver_at_ms: int
    expires_at_ms: int | None
    meta: dict[str, str]
    pending: dict[str, int]
    retry_at: dict[str, int] = field(default_factory=dict)


class Store(Protocol):
    """What the broker needs from a storage backend (see the module docstring)."""

    #: Human-readable description for logs and ``bbmq server status`` (no secrets).
    description: str
    #: False only for ``memory://``, which keeps nothing across restarts.
    durable: bool

    def open(self) -> None:
        """Connect and create or upgrade the schema; raise StoreUnavailable if unreachable."""

    def close(self) -> None:
        """Release the connection; idempotent."""

    def write(self, batch: Batch, now_ms: int, fence: Fence | None = None) -> list[StoredId]:
        """Commit ``batch`` atomically; return one StoredId per ``batch.messages``, in order.

        With a ``fence`` (cluster mode), the transaction first checks, with a write,
        that ``fence.owner`` still holds every topic of ``batch.topics`` at its epoch,
        and raises :class:`Fenced` (nothing written) for the topics it does not.

        ``now_ms`` is the wall-clock time of the commit, from the caller (a store reads
        no clock): with retention, the messages of ``batch.done`` are kept from then on.

        Ids come from the store, increase in batch order, and are never reused.
        A message whose ``(topic, msgid)`` was stored within the dedup window
        (also earlier in the same batch) is not stored again: its StoredId
        carries the original id and ``duplicate=True``.  Raise StoreUnavailable
        (with nothing written) when the database cannot be reached.
        """
        ...

    def groups(self, topic: str | None = None) -> list[GroupRecord]:
        """Every group of ``topic``; with None, of every topic."""
        ...

    def count_pending(self, topic: str | None = None) -> int:
        """How many messages ``recover(topic)`` will yield (for progress reports)."""
        ...

    def recover(self, topic: str | None = None) -> Iterator[RecoveredMessage]:
        """Every message of ``topic`` (None: of every topic) some group still owes an ack,
        or in the topic's backlog; by id.

        A cluster's broker loads one topic when it takes it over; the dead letters
        of ``<topic>.dlq`` are another topic (under the same lease), read on their own.
        """
        ...

    def prune(self, now_ms: int) -> int:
        """Drop finished messages past retention and msgids past the dedup window.

        Returns how many rows went.
        """
        ...
