"""The records the core's state is made of: sessions, queued messages, leases, groups, topics.

They sit in one module, below everything else in the core, because they point
at each other (a lease names its session, a session holds its leases, a group
its waiting sessions) and every part of the core reads them.  They are plain
slotted records with no behaviour beyond their own queues: a broker holds
millions of :class:`QueuedMessage` and :class:`Lease` objects, so each is as
small as Python allows (``__slots__``, no per-message dict, tuples only where
a heap needs them).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from bbmq import protocol
from bbmq.defaults import lease_topic
from bbmq.protocol import Role
from bbmq.store.base import ReplySlot, WriteRequest


@dataclass(slots=True)
class FetchRequest:
    """An open FETCH: how many are still wanted, and the long-poll deadline if any."""

    wanted: int
    deadline_ms: int | None
    delivered: int = 0


@dataclass(eq=False, slots=True)
class Session:
    """One connection's state, from handshake to close."""

    id: int
    #: Granted by the handshake (the protocol's table says what each role may send).
    role: Role = Role.NONE
    topic: str = ""
    #: The topic whose cluster lease covers ``topic`` (bbmq.defaults.lease_topic).
    lease: str = ""
    group: str = ""
    sender: str | None = None
    requests: deque[FetchRequest] = field(default_factory=deque)
    leases: dict[int, Lease] = field(default_factory=dict)
    replies: deque[Reply] = field(default_factory=deque)
    #: Frames to send, encoded by the transport when it flushes.
    outbox: list[protocol.TypedFrame] = field(default_factory=list)
    #: Estimated encoded bytes in ``outbox`` (see bbmq.core.outbox): deliveries pause past
    #: BrokerConfig.max_output_bytes until flushed.
    outbox_bytes: int = 0
    #: False while the transport's send buffer is over its cap: no deliveries then.
    writable: bool = True
    #: Close once the outbox is flushed.
    closing: bool = False
    #: CLIENT_SHUTDOWN_SIGNAL came: close once every reply owed has been sent.
    closing_after_replies: bool = False
    #: Released (goodbye, or its group deleted): whatever it still sends is ignored.
    closed: bool = False


#: A PUBLISH on its way to the store; its requester is the publishing session.  (For
#: annotations only: calling a subscripted generic costs a microsecond, so the core makes
#: them with the plain classes, WriteRequest and ReplySlot.)
PendingPublish = WriteRequest[Session, protocol.TypedFrame]
#: A publisher's answer slot: PUBLISH replies go out in PUBLISH order.
Reply = ReplySlot[protocol.TypedFrame]


class QueuedMessage:
    """A stored message, shared by every group that owes it an ack."""

    __slots__ = ("body", "deliver_at_ms", "expires_at_ms", "id", "meta", "published_ms",
                 "refs", "sender", "topic")

    def __init__(self, id: int, topic: str, body: bytes, sender: str | None, published_ms: int,
                 *, deliver_at_ms: int = 0, expires_at_ms: int | None = None,
                 meta: dict[str, str] | None = None) -> None:
        self.id = id
        self.topic = topic
        self.body = body
        self.sender = sender
        self.published_ms = published_ms
        self.deliver_at_ms = deliver_at_ms
        self.expires_at_ms = expires_at_ms
        #: Extra MESSAGE keys (dead letters); None rather than an empty dict per message.
        self.meta = meta or None
        #: How many groups still owe this message an ack.
        self.refs = 0

    def frame(self, attempt: int) -> protocol.Message:
        """The MESSAGE frame of one delivery."""
        return protocol.Message(
            self.id, attempt, self.body, self.sender, self.published_ms, self.meta
        )


class Lease:
    """A delivered, not yet acked message: who has it and until when."""

    __slots__ = ("attempts", "deadline_ms", "message", "session")

    def __init__(
        self, message: QueuedMessage, attempts: int, session: Session, deadline_ms: int
    ) -> None:
        self.message = message
        self.attempts = attempts
        self.session = session
        self.deadline_ms = deadline_ms


@dataclass(eq=False, slots=True)
class Counters:
    """Running totals kept per topic and per group."""

    published: int = 0
    delivered: int = 0
    redelivered: int = 0
    acked: int = 0
    expired: int = 0
    dead_lettered: int = 0


@dataclass(eq=False, slots=True)
class Group:
    """A consumer group: its consumers share its messages; every group gets every message."""

    topic: str
    name: str
    #: Its topic's counters, which every group's count goes to as well (held here so that a
    #: delivery or an ack needs no topic lookup).
    topic_counters: Counters
    #: First deliveries in id order (attempts 0, so no tuple: it saves 64 B per message).
    fresh: deque[QueuedMessage] = field(default_factory=deque)
    #: Redeliveries, a heap by id: they go ahead of newer messages.
    retry: list[tuple[int, QueuedMessage, int]] = field(default_factory=list)
    #: Deferred messages, a heap by due time.
    delayed: list[tuple[int, int, QueuedMessage, int]] = field(default_factory=list)
    inflight: dict[int, Lease] = field(default_factory=dict)
    #: Subscribers with an open FETCH, in round-robin order.
    waiting: deque[Session] = field(default_factory=deque)
    consumers: set[Session] = field(default_factory=set)
    counters: Counters = field(default_factory=Counters)
    #: When the sweep for expired (TTL) queued messages is due, if one is scheduled.
    expiry_due_ms: int | None = None
    #: When it last ran: sweeps are at least EXPIRY_SWEEP_MS apart.
    swept_ms: int = 0
    #: The topic whose cluster lease covers this group's rows (what a batch is fenced on).
    lease: str = field(init=False)

    def __post_init__(self) -> None:
        self.lease = lease_topic(self.topic)

    @property
    def ready(self) -> int:
        return len(self.fresh) + len(self.retry)

    def has_ready(self) -> bool:
        return bool(self.fresh or self.retry)

    def pop_ready(self) -> tuple[QueuedMessage, int]:
        if self.retry:
            _, message, attempts = heapq.heappop(self.retry)
            return message, attempts
        return self.fresh.popleft(), 0

    def entries(self) -> Iterator[tuple[QueuedMessage, int]]:
        """Everything queued (ready first, in delivery order, then delayed), without changing it."""
        yield from ((m, a) for _, m, a in sorted(self.retry, key=lambda e: e[0]))
        yield from ((m, 0) for m in self.fresh)
        yield from ((m, a) for _, _, m, a in sorted(self.delayed, key=lambda e: e[:2]))


@dataclass(eq=False, slots=True)
class Topic:
    """A named stream; messages published before any group exists wait in ``backlog``."""

    name: str
    groups: dict[str, Group] = field(default_factory=dict)
    backlog: deque[QueuedMessage] = field(default_factory=deque)
    last_id: int = 0
    publishers: int = 0
    counters: Counters = field(default_factory=Counters)
