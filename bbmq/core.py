"""The broker core: topics, groups, queues, leases and timers, with no I/O at all.

Nothing here touches a socket, a database or the clock.  The transport feeds
it typed frames together with ``now_ms``; the core answers by appending bytes
to each connection's outbox and changes to a store batch, which the transport
collects with :meth:`Broker.take_output` and :meth:`Broker.take_store_work`.
Publishes are two-phase: a PUBLISH becomes a pending :class:`NewMessage`; only
when the store reports it committed (:meth:`Broker.stored`) is the publisher
acked and the message queued.  Time-driven work (ack timeouts, long-poll
deadlines, delayed messages) runs in :meth:`Broker.tick`, and
:meth:`Broker.next_deadline` tells the transport when to call it.

All mutable state lives here, in one place: the tables ``sessions`` and
``topics``, and the timer heap.
"""

from __future__ import annotations

import base64
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Final

from bbmq import protocol as p
from bbmq.auth import Authorizer, Permission
from bbmq.defaults import DLQ_SUFFIX
from bbmq.protocol import ErrorCode, ProtocolError
from bbmq.store.base import (
    AckRecord,
    Batch,
    DeliveryRecord,
    GroupRecord,
    NewMessage,
    RecoveredMessage,
    ReplySlot,
    StoredId,
    WriteRequest,
)

SERVER_NAME: Final = "bbmq"
#: Most messages one ADMIN peek returns (its answer is one frame, bodies included).
MAX_PEEK: Final = 1000
#: The ack-deadline FIFO is compacted once it holds this many entries, or twice the
#: live ones after the last compaction.
LEASE_FIFO_MIN: Final = 4096


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The knobs of delivery; the transport-level limits live in the server."""

    version: str = "0"
    max_message_bytes: int = p.DEFAULT_MAX_MESSAGE_BYTES
    ack_timeout_ms: int = 30_000
    #: Deliveries before a message is dead-lettered to ``<topic>.dlq``; 0 = never.
    max_attempts: int = 5
    #: Expired (TTL) messages go to the DLQ instead of being dropped.
    dead_letter_expired: bool = False
    #: Bytes of message bodies held in memory before publishers get SERVER_BUSY.
    max_queued_bytes: int = 512 * 1024 * 1024
    #: Announced in the handshake: silence after which the server closes a connection.
    idle_timeout_ms: int = 0
    #: Bytes of deliveries queued for one connection between two flushes.
    max_output_bytes: int = 4 * 1024 * 1024
    #: Who may do what; the default has no tokens and allows everything.
    authorizer: Authorizer = field(default_factory=lambda: Authorizer([]))


class Role(Enum):
    """What a connection is, decided by its handshake."""

    NEW = auto()
    PUBLISHER = auto()
    SUBSCRIBER = auto()
    ADMIN = auto()
    CLOSED = auto()


class Message:
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

    def header(self, attempt: int) -> bytes:
        """The MESSAGE header line for this delivery (built per delivery: saves memory)."""
        sender = b"" if self.sender is None else b" from=" + self.sender.encode()
        extra = b"" if self.meta is None else "".join(
            f" {key}={value}" for key, value in self.meta.items()).encode()
        return b"HEAD MESSAGE %d %d%s ts=%d%s %d" % (
            self.id, attempt, sender, self.published_ms, extra, len(self.body))


class Lease:
    """A delivered, not yet acked message: who has it and until when."""

    __slots__ = ("attempts", "deadline_ms", "message", "session")

    def __init__(self, message: Message, attempts: int, session: Session, deadline_ms: int):
        self.message = message
        self.attempts = attempts
        self.session = session
        self.deadline_ms = deadline_ms


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
    role: Role = Role.NEW
    topic: str = ""
    group: str = ""
    sender: str | None = None
    requests: deque[FetchRequest] = field(default_factory=deque)
    leases: dict[int, Lease] = field(default_factory=dict)
    replies: deque[Reply] = field(default_factory=deque)
    outbox: list[bytes] = field(default_factory=list)
    #: Bytes in ``outbox``: deliveries pause past BrokerConfig.max_output_bytes until flushed.
    outbox_bytes: int = 0
    #: False while the transport's send buffer is over its cap: no deliveries then.
    writable: bool = True
    #: Close once the outbox is flushed.
    closing: bool = False
    #: CLIENT_SHUTDOWN_SIGNAL came: close once every reply owed has been sent.
    closing_after_replies: bool = False


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
    #: First deliveries in id order (attempts 0, so no tuple: it saves 64 B per message).
    fresh: deque[Message] = field(default_factory=deque)
    #: Redeliveries, a heap by id: they go ahead of newer messages.
    retry: list[tuple[int, Message, int]] = field(default_factory=list)
    #: Deferred messages, a heap by due time.
    delayed: list[tuple[int, int, Message, int]] = field(default_factory=list)
    inflight: dict[int, Lease] = field(default_factory=dict)
    #: Subscribers with an open FETCH, in round-robin order.
    waiting: deque[Session] = field(default_factory=deque)
    consumers: set[Session] = field(default_factory=set)
    counters: Counters = field(default_factory=Counters)

    @property
    def ready(self) -> int:
        return len(self.fresh) + len(self.retry)

    def has_ready(self) -> bool:
        return bool(self.fresh or self.retry)

    def pop_ready(self) -> tuple[Message, int]:
        if self.retry:
            _, message, attempts = heapq.heappop(self.retry)
            return message, attempts
        return self.fresh.popleft(), 0

    def entries(self) -> Iterator[tuple[Message, int]]:
        """Everything queued (ready first, in delivery order, then delayed), without changing it."""
        yield from ((m, a) for _, m, a in sorted(self.retry, key=lambda e: e[0]))
        yield from ((m, 0) for m in self.fresh)
        yield from ((m, a) for _, _, m, a in sorted(self.delayed, key=lambda e: e[:2]))


@dataclass(eq=False, slots=True)
class Topic:
    """A named stream; messages published before any group exists wait in ``backlog``."""

    name: str
    groups: dict[str, Group] = field(default_factory=dict)
    backlog: deque[Message] = field(default_factory=deque)
    last_id: int = 0
    publishers: int = 0
    counters: Counters = field(default_factory=Counters)


class TimerKind(Enum):
    LEASE = auto()  # only for a lease out of order in the FIFO (the clock stepped back)
    POLL = auto()
    DELAYED = auto()


#: A PUBLISH on its way to the store; its requester is the publishing session.
PendingPublish = WriteRequest["Session", bytes]
#: A publisher's answer slot: PUBLISH replies go out in PUBLISH order.
Reply = ReplySlot[bytes]


class Broker:
    """The broker's state machine; see the module docstring for how it is driven."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.sessions: dict[int, Session] = {}
        self.topics: dict[str, Topic] = {}
        self._timers: list[tuple[int, int, TimerKind, Any]] = []
        self._timer_seq = itertools.count()
        #: Ack deadlines as (deadline, group, message id).  Every lease gets the same
        #: timeout, so they come due in delivery order: a FIFO, not the timer heap.
        #: An entry outlives its lease's ack (it holds no message); the entries of acked
        #: leases are dropped whenever the FIFO has doubled, so it stays within twice
        #: the leases in flight.
        self._lease_deadlines: deque[tuple[int, Group, int]] = deque()
        self._compact_leases_at = LEASE_FIFO_MIN
        self._batch = Batch()
        self._to_store: list[PendingPublish] = []
        self._dirty: dict[int, Session] = {}
        #: Subscribers whose outbox filled up: they get more once it is flushed.
        self._throttled: set[Session] = set()
        #: Message bytes held in memory: queued, and on their way to the store.
        self.queued_bytes = 0
        self.accepting = True
        #: Server-level facts (uptime, store, connections) for ``ADMIN stats``; set by the server.
        self.status_provider: Callable[[], dict[str, Any]] = dict

    # ------------------------------------------------------------------ transport API

    def connect(self, session_id: int) -> None:
        self.sessions[session_id] = Session(session_id)

    def receive(self, session_id: int, frame: p.Frame, now_ms: int) -> None:
        """Handle one whole frame from a connection."""
        session = self.sessions[session_id]
        if session.role is Role.CLOSED:
            return
        try:
            typed = p.parse(frame)
            self._dispatch_frame(session, typed, now_ms)
        except ProtocolError as error:
            if frame.verb == p.Publish.VERB and session.role is Role.PUBLISHER:
                # One reply per PUBLISH, in order: the error waits behind earlier acks.
                session.replies.append(Reply(p.Error(error.code, error.text).encode()))
                self._send_replies(session)
            else:
                self.send_error(session_id, error.code, error.text, close=error.fatal)

    def send_error(self, session_id: int, code: ErrorCode, text: str, *, close: bool) -> None:
        """Queue an ERROR frame; with ``close``, the connection ends after it."""
        session = self.sessions[session_id]
        self._send(session, p.Error(code, text).encode())
        if close:
            self._close(session)

    def disconnect(self, session_id: int, now_ms: int) -> None:
        """The connection is gone: give its leases back, forget its requests."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        self._release_session(session, now_ms)
        self._dirty.pop(session_id, None)

    def set_writable(self, session_id: int, writable: bool, now_ms: int) -> None:
        """Flow control from the transport: stop or resume deliveries to a slow reader."""
        session = self.sessions.get(session_id)
        if session is None or session.writable == writable:
            return
        session.writable = writable
        if writable and session.role is Role.SUBSCRIBER:
            self._dispatch(self._group_of(session), now_ms)

    def take_output(self) -> list[tuple[int, bytes, bool]]:
        """Bytes to send per connection, and whether to close it after them."""
        out = []
        for session in self._dirty.values():
            out.append((session.id, b"".join(session.outbox), session.closing))
            session.outbox.clear()
            session.outbox_bytes = 0
        self._dirty.clear()
        return out

    def resume_throttled(self, now_ms: int) -> bool:
        """After a flush: deliver more to subscribers whose full outbox held them back.

        Returns True if that produced output (flush again).
        """
        throttled, self._throttled = self._throttled, set()
        for session in throttled:
            if session.role is Role.SUBSCRIBER and session.writable:
                self._dispatch(self._group_of(session), now_ms)
        return bool(self._dirty)

    def take_store_work(self) -> tuple[list[PendingPublish], Batch]:
        """New messages to store (acked on commit) and the other changes since last time."""
        publishes, batch = self._to_store, self._batch
        self._to_store, self._batch = [], Batch()
        return publishes, batch

    def stored(self, publishes: list[PendingPublish], ids: list[StoredId], now_ms: int) -> None:
        """The store committed these publishes: ack the publishers, queue the messages."""
        touched: set[Topic] = set()
        publishers: dict[int, Session] = {}
        for pending, stored_id in zip(publishes, ids, strict=True):
            if (session := pending.requester) is not None:
                pending.answer = p.ProducerAckMessage(stored_id.id).encode()
                publishers[session.id] = session
            if stored_id.duplicate:
                self.queued_bytes -= len(pending.message.body)
            else:
                touched.add(self._accept(pending.message, stored_id.id, now_ms))
        self._send_replies_to(publishers)
        for topic in touched:
            for group in topic.groups.values():
                self._dispatch(group, now_ms)

    def store_failed(self, publishes: list[PendingPublish], reason: str) -> None:
        """These publishes were not stored: each publisher gets STORE_UNAVAILABLE in its place."""
        error = p.Error(
            ErrorCode.STORE_UNAVAILABLE,
            f"message not stored ({reason}); it was not acknowledged, publish it again",
        ).encode()
        publishers: dict[int, Session] = {}
        for pending in publishes:
            self.queued_bytes -= len(pending.message.body)
            if (session := pending.requester) is not None:
                pending.answer = error
                publishers[session.id] = session
        self._send_replies_to(publishers)

    def _send_replies_to(self, publishers: dict[int, Session]) -> None:
        for session_id, session in publishers.items():
            if self.sessions.get(session_id) is session:  # not gone meanwhile
                self._send_replies(session)

    def _send_replies(self, session: Session) -> None:
        replies = session.replies
        while replies and (data := replies[0].answer) is not None:
            replies.popleft()
            self._send(session, data)
        if session.closing_after_replies and not replies:
            self._close(session)

    def next_deadline(self) -> int | None:
        """When :meth:`tick` next has work, in the same milliseconds as ``now_ms``."""
        deadlines = [queue[0][0] for queue in (self._timers, self._lease_deadlines) if queue]
        return min(deadlines) if deadlines else None

    def tick(self, now_ms: int) -> None:
        """Run every timer that is due: ack timeouts, long-poll ends, delayed messages."""
        leases = self._lease_deadlines
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
            else:
                self._promote_delayed(subject, now_ms)

    def _compact_lease_deadlines(self) -> None:
        """Drop the FIFO entries of leases that ended (acked, nacked, ...), keeping the order."""
        self._lease_deadlines = deque(
            entry for entry in self._lease_deadlines if self._lease_of(*entry) is not None)
        self._compact_leases_at = max(LEASE_FIFO_MIN, 2 * len(self._lease_deadlines))

    @staticmethod
    def _lease_of(deadline: int, group: Group, message_id: int) -> Lease | None:
        """The lease this deadline belongs to, unless it ended (acked, taken back, its group
        deleted) or the message was delivered again (a later deadline)."""
        lease = group.inflight.get(message_id)
        return lease if lease is not None and lease.deadline_ms == deadline else None

    def _lease_due(self, deadline: int, group: Group, message_id: int, now_ms: int) -> None:
        """An ack deadline passed: take the message back if its lease is still on."""
        if (lease := self._lease_of(deadline, group, message_id)) is not None:
            self._take_back(group, lease, now_ms, "ack timeout")
            self._dispatch(group, now_ms)

    def recover(self, records: Iterable[RecoveredMessage], groups: Iterable[GroupRecord],
                now_ms: int) -> int:
        """Rebuild the queues from the store at start; returns how many messages were loaded."""
        for record in groups:
            topic = self._topic(record.topic)
            topic.groups.setdefault(record.group, Group(record.topic, record.group))
        loaded = 0
        for rec in records:
            message = Message(rec.id, rec.topic, rec.body, rec.sender, rec.published_ms,
                              deliver_at_ms=rec.deliver_at_ms, expires_at_ms=rec.expires_at_ms,
                              meta=rec.meta)
            topic = self._topic(rec.topic)
            topic.last_id = max(topic.last_id, rec.id)
            self.queued_bytes += len(rec.body)
            loaded += 1
            if not rec.pending:
                topic.backlog.append(message)
                continue
            exhausted = []
            for name, attempts in rec.pending.items():
                group = topic.groups.setdefault(name, Group(rec.topic, name))
                message.refs += 1
                if self._out_of_attempts(group, attempts):  # its last delivery was cut short
                    exhausted.append((group, attempts))
                elif (due := rec.retry_at.get(name, 0)) > now_ms:  # a NACK delay still running
                    self._delay(group, message, attempts, due)
                else:
                    self._enqueue(group, message, attempts, now_ms)
            for group, attempts in exhausted:  # once every group holds its reference
                self._dead_letter(group, message, attempts, "unacked when the broker stopped",
                                  now_ms)
        return loaded

    # ------------------------------------------------------------------ frames

    def _dispatch_frame(self, session: Session, frame: p.TypedFrame, now_ms: int) -> None:
        match frame:
            case p.Publish():
                self._on_publish(session, frame, now_ms)
            case p.Ack():
                self._on_ack(session, frame.ids, now_ms)
            case p.Fetch():
                self._on_fetch(session, frame, now_ms)
            case p.Nack():
                self._on_nack(session, frame, now_ms)
            case p.Ping():
                self._send(session, p.Pong().encode())
            case p.ClientShutdownSignal():
                self._on_shutdown(session, now_ms)
            case p.ClientPublisher() | p.ClientSubscriber() | p.ClientAdmin():
                self._on_handshake(session, frame, now_ms)
            case p.AdminCommand():
                self._require(session, Role.ADMIN, "ADMIN")
                result = self._admin(frame.command, frame.params, now_ms)
                self._send(session, p.AdminResult(result).encode())
            case _:
                raise ProtocolError(ErrorCode.NOT_ALLOWED,
                                    f"{frame.VERB} is not handled on this connection")

    def _require(self, session: Session, role: Role, verb: str) -> None:
        if session.role is not role:
            if session.role is Role.NEW:
                hint = "send CLIENT_PUBLISHER, CLIENT_SUBSCRIBER or CLIENT_ADMIN first"
            else:
                hint = f"this is a {session.role.name.lower()} connection"
            raise ProtocolError(ErrorCode.NOT_ALLOWED, f"{verb} not allowed: {hint}")

    def _on_handshake(self, session: Session,
                      frame: p.ClientPublisher | p.ClientSubscriber | p.ClientAdmin,
                      now_ms: int) -> None:
        if session.role is not Role.NEW:
            raise ProtocolError(ErrorCode.NOT_ALLOWED,
                                "handshake already done; open a new connection for another role")
        self._authorize(frame)
        name = frame.options.get("name")
        if name is not None and not isinstance(name, str):
            raise ProtocolError(ErrorCode.BAD_NAME, "handshake 'name' must be a JSON string")
        session.sender = p.check_sender(name) if name is not None else None
        match frame:
            case p.ClientPublisher():
                session.role, session.topic = Role.PUBLISHER, frame.topic
                self._topic(frame.topic).publishers += 1
            case p.ClientSubscriber():
                session.role, session.topic, session.group = (
                    Role.SUBSCRIBER, frame.topic, frame.group)
                self._ensure_group(frame.topic, frame.group, now_ms).consumers.add(session)
            case p.ClientAdmin():
                session.role = Role.ADMIN
        self._send(session, p.ServerAcknowledgement(self.server_info()).encode())

    def _authorize(self, frame: p.ClientPublisher | p.ClientSubscriber | p.ClientAdmin) -> None:
        topic: str | None
        match frame:
            case p.ClientPublisher():
                permission, topic = Permission.PUBLISH, frame.topic
            case p.ClientSubscriber():
                permission, topic = Permission.SUBSCRIBE, frame.topic
            case p.ClientAdmin():
                permission, topic = Permission.ADMIN, None
        if not self.config.authorizer.allows(frame.options.get("token"), permission, topic):
            where = f" on topic {topic!r}" if topic else ""
            raise ProtocolError(ErrorCode.UNAUTHORIZED,
                                f"token missing or not allowed to {permission}{where}; "
                                "send a valid 'token' in the handshake body", fatal=True)

    def server_info(self) -> dict[str, Any]:
        config = self.config
        return {
            "server": SERVER_NAME,
            "version": config.version,
            "max_message_bytes": config.max_message_bytes,
            "ack_timeout_ms": config.ack_timeout_ms,
            "max_attempts": config.max_attempts,
            "idle_timeout_ms": config.idle_timeout_ms,
        }

    def _on_shutdown(self, session: Session, now_ms: int) -> None:
        """Goodbye: CLOSE_CONNECTION_SIGNAL goes after the replies still owed, then close."""
        session.replies.append(Reply(p.CloseConnectionSignal().encode()))
        session.closing_after_replies = True
        self._release_session(session, now_ms)
        self._send_replies(session)

    def _on_publish(self, session: Session, frame: p.Publish, now_ms: int) -> None:
        if session.role is not Role.PUBLISHER:
            self._require(session, Role.PUBLISHER, "PUBLISH")
        if not self.accepting:
            raise ProtocolError(ErrorCode.SERVER_CLOSING,
                                "server is shutting down; publish again after it restarts")
        if self.queued_bytes + len(frame.body) > self.config.max_queued_bytes:
            raise ProtocolError(ErrorCode.SERVER_BUSY,
                                "broker memory limit reached; retry after consumers catch up")
        if frame.group is not None:  # created now, so it is stored with (or before) the message
            self._ensure_group(session.topic, frame.group, now_ms)
        self.queued_bytes += len(frame.body)
        expires = now_ms + frame.ttl_ms if frame.ttl_ms is not None else None
        pending = PendingPublish(session, NewMessage(
            session.topic, frame.body, session.sender, now_ms, frame.msgid,
            now_ms + frame.delay_ms if frame.delay_ms else 0, expires, group=frame.group))
        session.replies.append(pending)
        self._to_store.append(pending)

    def _on_fetch(self, session: Session, frame: p.Fetch, now_ms: int) -> None:
        self._require(session, Role.SUBSCRIBER, "FETCH")
        deadline = None if frame.wait_ms is None else now_ms + frame.wait_ms
        request = FetchRequest(frame.count, deadline)
        session.requests.append(request)
        if len(session.requests) == 1:
            self._start_request(session, now_ms)

    def _on_ack(self, session: Session, ids: tuple[int, ...], now_ms: int) -> None:
        self._require(session, Role.SUBSCRIBER, "ACK")
        group = self._group_of(session)
        unknown = []
        for message_id in ids:
            lease = session.leases.pop(message_id, None)
            if lease is None:
                unknown.append(message_id)
                continue
            del group.inflight[message_id]
            group.counters.acked += 1
            self._topic(group.topic).counters.acked += 1
            self._finish(group, lease.message, now_ms)
        if unknown:
            raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE,
                                f"not in flight on this connection: {' '.join(map(str, unknown))}"
                                " (already acked, timed out, or delivered to another consumer)")

    def _on_nack(self, session: Session, frame: p.Nack, now_ms: int) -> None:
        self._require(session, Role.SUBSCRIBER, "NACK")
        lease = session.leases.get(frame.id)
        if lease is None:
            raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE,
                                f"not in flight on this connection: {frame.id}")
        group = self._group_of(session)
        self._take_back(group, lease, now_ms, frame.reason or "nacked", frame.delay_ms)
        self._dispatch(group, now_ms)

    # ------------------------------------------------------------------ admin

    def _admin(self, command: str, params: dict[str, Any], now_ms: int) -> Any:
        match command:
            case "stats":
                return {"server": self.status_provider(), "queued_bytes": self.queued_bytes,
                        "topics": {name: self._topic_stats(topic)
                                   for name, topic in sorted(self.topics.items())}}
            case "topics":
                return sorted(self.topics)
            case "purge":
                topic = self._param_topic(params)
                group = self._param_group(topic, params).name if "group" in params else None
                return {"purged": self.purge(topic.name, group, now_ms)}
            case "group_delete":
                topic = self._param_topic(params)
                self.delete_group(topic.name, self._param_group(topic, params).name, now_ms)
                return {"deleted": True}
            case "peek":
                count = params.get("n", 10)
                if isinstance(count, bool) or not isinstance(count, int) or not (
                        0 <= count <= MAX_PEEK):
                    raise ProtocolError(ErrorCode.INVALID_PROTOCOL,
                                        f"peek: 'n' must be a whole number from 0 to {MAX_PEEK}")
                topic = self._param_topic(params)
                group = self._param_group(topic, params).name if "group" in params else None
                return self.peek(topic.name, group, count)
        raise ProtocolError(ErrorCode.INVALID_PROTOCOL,
                            f"unknown admin command {command[:40]!r} "
                            "(known: stats, topics, purge, group_delete, peek)")

    @staticmethod
    def _param_text(params: dict[str, Any], key: str) -> str:
        value = params.get(key, "")
        if not isinstance(value, str):
            raise ProtocolError(ErrorCode.BAD_NAME, f"admin parameter {key!r} must be a string")
        return value

    def _param_topic(self, params: dict[str, Any]) -> Topic:
        name = p.check_name("topic", self._param_text(params, "topic"))
        topic = self.topics.get(name)
        if topic is None:
            raise ProtocolError(ErrorCode.INVALID_PROTOCOL,
                                f"no topic {name!r}; 'bbmq topics' lists them")
        return topic

    @staticmethod
    def _param_group(topic: Topic, params: dict[str, Any]) -> Group:
        name = p.check_name("group", Broker._param_text(params, "group"))
        group = topic.groups.get(name)
        if group is None:
            known = ", ".join(sorted(topic.groups)) or "none yet"
            raise ProtocolError(ErrorCode.INVALID_PROTOCOL,
                                f"topic {topic.name!r} has no group {name!r} (groups: {known})")
        return group

    @staticmethod
    def _counter_stats(counters: Counters) -> dict[str, int]:
        return {"published": counters.published, "delivered": counters.delivered,
                "redelivered": counters.redelivered, "acked": counters.acked,
                "expired": counters.expired, "dead_lettered": counters.dead_lettered}

    def _topic_stats(self, topic: Topic) -> dict[str, Any]:
        return {
            **self._counter_stats(topic.counters),
            "publishers": topic.publishers,
            "backlog": len(topic.backlog),
            "groups": {name: {"ready": group.ready, "delayed": len(group.delayed),
                              "inflight": len(group.inflight),
                              "consumers": len(group.consumers),
                              **self._counter_stats(group.counters)}
                       for name, group in sorted(topic.groups.items())},
        }

    def purge(self, topic_name: str, group_name: str | None, now_ms: int) -> int:
        """Drop queued (not in-flight) messages of one group, or of every group and the backlog.

        Returns how many distinct messages were dropped from at least one queue.
        """
        topic = self.topics[topic_name]
        groups = ([self._param_group(topic, {"group": group_name})] if group_name
                  else list(topic.groups.values()))
        purged: set[int] = set()
        for group in groups:
            entries = list(group.entries())
            group.fresh.clear()
            group.retry.clear()
            group.delayed.clear()
            for message, _ in entries:
                self._finish(group, message, now_ms)
                purged.add(message.id)
        if not group_name:
            for message in topic.backlog:
                purged.add(message.id)
                self._batch.done.append(message.id)
                self.queued_bytes -= len(message.body)
            topic.backlog.clear()
        return len(purged)

    def delete_group(self, topic_name: str, group_name: str, now_ms: int) -> None:
        """Remove a group with everything it owes; its consumers are disconnected."""
        topic = self.topics[topic_name]
        group = topic.groups[group_name]
        for session in list(group.consumers):
            self.send_error(session.id, ErrorCode.NOT_ALLOWED,
                            f"group {group_name!r} was deleted by an administrator", close=True)
            session.role = Role.CLOSED
            session.leases.clear()
        for message, _ in list(group.entries()):
            self._finish(group, message, now_ms)
        for lease in group.inflight.values():
            self._finish(group, lease.message, now_ms)
        # Nothing is left for a timer (ack deadline, delayed message) to find later, and
        # finish a second time: the other groups may still owe those messages.
        for queue in (group.fresh, group.retry, group.delayed, group.inflight, group.waiting,
                      group.consumers):
            queue.clear()
        del topic.groups[group_name]
        self._batch.deleted_groups.append((topic_name, group_name))

    def peek(self, topic_name: str, group_name: str | None, count: int) -> list[dict[str, Any]]:
        """The next ``count`` messages a group (or the backlog) would deliver; changes nothing."""
        topic = self.topics[topic_name]
        if group_name is None and not topic.groups:
            entries: Iterable[tuple[Message, int]] = ((m, 0) for m in topic.backlog)
        else:
            if group_name is None:
                group_name = "default" if "default" in topic.groups else min(topic.groups)
            entries = self._param_group(topic, {"group": group_name}).entries()
        result = []
        for message, attempts in itertools.islice(entries, max(0, count)):
            try:
                body, encoding = message.body.decode(), "utf-8"
            except UnicodeDecodeError:
                body, encoding = base64.b64encode(message.body).decode(), "base64"
            result.append({"id": message.id, "attempts": attempts, "body": body,
                           "encoding": encoding, "published_ms": message.published_ms,
                           "deliver_at_ms": message.deliver_at_ms,
                           "expires_at_ms": message.expires_at_ms,
                           "sender": message.sender, "meta": message.meta or {}})
        return result

    # ------------------------------------------------------------------ queues

    def _topic(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic(name)
        return topic

    def _group_of(self, session: Session) -> Group:
        return self.topics[session.topic].groups[session.group]

    def _ensure_group(self, topic_name: str, name: str, now_ms: int) -> Group:
        topic = self._topic(topic_name)
        group = topic.groups.get(name)
        if group is not None:
            return group
        group = topic.groups[name] = Group(topic_name, name)
        # The first group inherits the backlog; later ones start from now.
        start_id = 0 if len(topic.groups) == 1 else topic.last_id
        self._batch.groups.append(GroupRecord(topic_name, name, start_id, now_ms))
        while topic.backlog:
            message = topic.backlog.popleft()
            message.refs += 1
            group.counters.published += 1
            self._enqueue(group, message, 0, now_ms)
        return group

    def _accept(self, new: NewMessage, message_id: int, now_ms: int) -> Topic:
        message = Message(message_id, new.topic, new.body, new.sender, new.published_ms,
                          deliver_at_ms=new.deliver_at_ms, expires_at_ms=new.expires_at_ms,
                          meta=new.meta)
        topic = self._topic(new.topic)
        topic.last_id = max(topic.last_id, message_id)
        topic.counters.published += 1
        if new.group is not None:  # for one group only (made at PUBLISH time, unless deleted)
            groups = [topic.groups[new.group]] if new.group in topic.groups else []
            if not groups:
                self._batch.done.append(message_id)
                self.queued_bytes -= len(new.body)
        else:
            groups = list(topic.groups.values())
            if not groups:
                topic.backlog.append(message)
        for group in groups:
            message.refs += 1
            group.counters.published += 1
            self._enqueue(group, message, 0, now_ms)
        return topic

    def _enqueue(self, group: Group, message: Message, attempts: int, now_ms: int) -> None:
        """Queue a message for a group: a first delivery if it never had one, else a retry."""
        if message.deliver_at_ms > now_ms:
            self._delay(group, message, attempts, message.deliver_at_ms)
        elif not attempts:
            group.fresh.append(message)
        else:
            heapq.heappush(group.retry, (message.id, message, attempts))

    def _delay(self, group: Group, message: Message, attempts: int, due_ms: int) -> None:
        heapq.heappush(group.delayed, (due_ms, message.id, message, attempts))
        self._schedule(due_ms, TimerKind.DELAYED, group)

    def _promote_delayed(self, group: Group, now_ms: int) -> None:
        while group.delayed and group.delayed[0][0] <= now_ms:
            _, _, message, attempts = heapq.heappop(group.delayed)
            heapq.heappush(group.retry, (message.id, message, attempts))
        self._dispatch(group, now_ms)

    def _take_back(self, group: Group, lease: Lease, now_ms: int, reason: str,
                   delay_ms: int = 0) -> None:
        """A lease ends without an ack: redeliver, or dead-letter when out of attempts."""
        message = lease.message
        del group.inflight[message.id]
        lease.session.leases.pop(message.id, None)
        if self._expired(message, now_ms):
            self._expire(group, message, lease.attempts, now_ms)
            return
        if self._out_of_attempts(group, lease.attempts):
            self._dead_letter(group, message, lease.attempts, reason, now_ms)
            return
        group.counters.redelivered += 1
        self._topic(group.topic).counters.redelivered += 1
        if delay_ms:
            due = now_ms + delay_ms
            self._delay(group, message, lease.attempts, due)
            # Stored, so that the delay outlives a restart (the next delivery clears it).
            delivered_ms = lease.deadline_ms - self.config.ack_timeout_ms
            self._batch.deliveries.append(DeliveryRecord(
                message.id, group.name, lease.attempts, delivered_ms, retry_at_ms=due))
        else:
            heapq.heappush(group.retry, (message.id, message, lease.attempts))

    def _out_of_attempts(self, group: Group, attempts: int) -> bool:
        """Delivered as often as allowed: the next step is the dead-letter topic."""
        max_attempts = self.config.max_attempts
        return bool(max_attempts) and attempts >= max_attempts and not group.topic.endswith(
            DLQ_SUFFIX)

    @staticmethod
    def _expired(message: Message, now_ms: int) -> bool:
        return message.expires_at_ms is not None and message.expires_at_ms <= now_ms

    def _expire(self, group: Group, message: Message, attempts: int, now_ms: int) -> None:
        group.counters.expired += 1
        self._topic(group.topic).counters.expired += 1
        if self.config.dead_letter_expired and not group.topic.endswith(DLQ_SUFFIX):
            self._dead_letter(group, message, attempts, "expired", now_ms)
        else:
            self._finish(group, message, now_ms)

    def _dead_letter(self, group: Group, message: Message, attempts: int, reason: str,
                     now_ms: int) -> None:
        group.counters.dead_lettered += 1
        self._topic(group.topic).counters.dead_lettered += 1
        meta = {"original_topic": group.topic, "original_group": group.name,
                "original_id": str(message.id), "original_ts": str(message.published_ms),
                "attempts": str(attempts),
                "reason": reason.replace(" ", "_")[:200]}
        self._to_store.append(PendingPublish(None, NewMessage(
            group.topic + DLQ_SUFFIX, message.body, message.sender, now_ms, meta=meta)))
        self.queued_bytes += len(message.body)
        self._finish(group, message, now_ms)

    def _finish(self, group: Group, message: Message, now_ms: int) -> None:
        """``group`` is done with ``message``; the store forgets it once every group is."""
        self._batch.acks.append(AckRecord(message.id, group.name, now_ms))
        message.refs -= 1
        if message.refs == 0:
            self._batch.done.append(message.id)
            self.queued_bytes -= len(message.body)

    # ------------------------------------------------------------------ delivery

    def _start_request(self, session: Session, now_ms: int) -> None:
        """The head FETCH of a session becomes active."""
        request = session.requests[0]
        group = self._group_of(session)
        group.waiting.append(session)
        self._dispatch(group, now_ms)
        if session.requests and session.requests[0] is request and request.deadline_ms is not None:
            if not group.has_ready() and (request.delivered or request.deadline_ms <= now_ms):
                self._finish_request(session, now_ms)
            else:
                self._schedule(request.deadline_ms, TimerKind.POLL, (session, request))

    def _finish_request(self, session: Session, now_ms: int) -> None:
        """End the head FETCH (QUEUE_EMPTY if it got fewer than asked) and start the next."""
        request = session.requests.popleft()
        if request.delivered < request.wanted:
            self._send(session, p.QueueEmpty(request.delivered).encode())
        group = self._group_of(session)
        if session in group.waiting:
            group.waiting.remove(session)
        if session.requests:
            self._start_request(session, now_ms)

    def _dispatch(self, group: Group, now_ms: int) -> None:
        """Hand ready messages to waiting consumers, round robin."""
        waiting = group.waiting
        while waiting and group.has_ready():
            session = waiting[0]
            if not self._can_take(session):
                waiting.rotate(-1)
                if not any(self._can_take(s) for s in waiting):
                    return
                continue
            message, attempts = group.pop_ready()
            if self._expired(message, now_ms):
                self._expire(group, message, attempts, now_ms)
                continue
            self._deliver(group, session, message, attempts + 1, now_ms)
            request = session.requests[0]
            request.delivered += 1
            if request.delivered >= request.wanted:
                waiting.popleft()
                session.requests.popleft()
                if session.requests:
                    self._start_request(session, now_ms)
            else:
                waiting.rotate(-1)
        # Long polls that got something end once nothing more is ready.
        if not group.has_ready():
            for session in [s for s in waiting if s.requests[0].deadline_ms is not None
                            and s.requests[0].delivered]:
                self._finish_request(session, now_ms)

    def _can_take(self, session: Session) -> bool:
        if not session.writable:
            return False  # the transport's buffer is over its limit: resume_writing wakes us
        if session.outbox_bytes >= self.config.max_output_bytes:
            self._throttled.add(session)
            return False
        return True

    def _deliver(self, group: Group, session: Session, message: Message, attempt: int,
                 now_ms: int) -> None:
        deadline = now_ms + self.config.ack_timeout_ms
        lease = Lease(message, attempt, session, deadline)
        group.inflight[message.id] = lease
        session.leases[message.id] = lease
        leases = self._lease_deadlines
        if leases and deadline < leases[-1][0]:  # the wall clock stepped back: keep order
            self._schedule(deadline, TimerKind.LEASE, (group, message.id))
        else:
            leases.append((deadline, group, message.id))
            if len(leases) >= self._compact_leases_at:
                self._compact_lease_deadlines()
        self._batch.deliveries.append(DeliveryRecord(message.id, group.name, attempt, now_ms))
        group.counters.delivered += 1
        self._topic(group.topic).counters.delivered += 1
        self._send(session, b"%s\r\n%sTAIL\r\n" % (message.header(attempt), message.body))

    # ------------------------------------------------------------------ sessions

    def _send(self, session: Session, data: bytes) -> None:
        session.outbox.append(data)
        session.outbox_bytes += len(data)
        self._dirty[session.id] = session

    def _close(self, session: Session) -> None:
        session.closing = True
        self._dirty[session.id] = session

    def _release_session(self, session: Session, now_ms: int) -> None:
        role = session.role
        session.role = Role.CLOSED
        if role is Role.PUBLISHER:
            self._topic(session.topic).publishers -= 1
        if role is not Role.SUBSCRIBER:
            return
        group = self._group_of(session)
        group.consumers.discard(session)
        if session in group.waiting:
            group.waiting.remove(session)
        session.requests.clear()
        for lease in list(session.leases.values()):
            self._take_back(group, lease, now_ms, "consumer disconnected")
        self._dispatch(group, now_ms)

    def _schedule(self, deadline_ms: int, kind: TimerKind, subject: Any) -> None:
        heapq.heappush(self._timers, (deadline_ms, next(self._timer_seq), kind, subject))
