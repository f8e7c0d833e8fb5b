"""What a connection may send, by role, and what each frame does.

A connection starts with no role; its handshake (CLIENT_PUBLISHER,
CLIENT_SUBSCRIBER or CLIENT_ADMIN), once bbmq/auth.py allows its token, makes
it a publisher of one topic, a subscriber of one group, or an admin.  From
then on only that role's frames are accepted: PUBLISH for a publisher (answered
once the store commits, in PUBLISH order, see :meth:`Roles.stored`), FETCH,
ACK and NACK for a subscriber, ADMIN for an admin, PING and the goodbye for
all.  This module turns those frames into calls on the queue engine and puts
the answers in the outboxes; it keeps no state of its own beyond whether new
publishes are still accepted.  In a cluster, a publisher's or subscriber's
handshake for a topic this broker does not serve is left to ownership.py
(it waits, or a draining broker redirects it at once), and answered by
:meth:`Roles.accept_handshake` once the topic is loaded.
"""

from __future__ import annotations

from typing import Any

from bbmq import protocol
from bbmq.auth import Permission
from bbmq.core.admin_commands import AdminCommands
from bbmq.core.config import SERVER_NAME, BrokerConfig
from bbmq.core.engine import MESSAGE_OVERHEAD_BYTES, QueueEngine
from bbmq.core.outbox import Outboxes
from bbmq.core.ownership import TopicOwnership
from bbmq.core.records import FetchRequest, PendingPublish, Session, Topic
from bbmq.defaults import lease_topic
from bbmq.protocol import ErrorCode, ProtocolError, Role
from bbmq.store.base import NewMessage, ReplySlot, StoredId, WriteRequest

#: The frames that open a session and decide its role.
Handshake = protocol.ClientPublisher | protocol.ClientSubscriber | protocol.ClientAdmin


class Roles:
    """Handles each frame a session sends, as its role allows."""

    def __init__(self, config: BrokerConfig, sessions: dict[int, Session], engine: QueueEngine,
                 outboxes: Outboxes, admin: AdminCommands, *, ownership: TopicOwnership) -> None:
        self.config = config
        self.sessions = sessions
        self.engine = engine
        self.outboxes = outboxes
        self.admin = admin
        self.ownership = ownership
        #: False once the server is shutting down: new publishes get SERVER_CLOSING.
        self.accepting = True

    def receive(
        self, session: Session, event: protocol.TypedFrame | protocol.Rejected, now_ms: int
    ) -> None:
        """Handle one frame the session's role allows, or answer one the protocol refused."""
        try:
            match event:
                case protocol.Publish():
                    self._on_publish(session, event, now_ms)
                case protocol.Ack():
                    self._on_ack(session, event.ids, now_ms)
                case protocol.Fetch():
                    self._on_fetch(session, event, now_ms)
                case protocol.Nack():
                    self._on_nack(session, event, now_ms)
                case protocol.Ping():
                    self.outboxes.send(session, protocol.Pong())
                case protocol.ClientShutdownSignal():
                    self._on_shutdown(session, now_ms)
                case (
                    protocol.ClientPublisher()
                    | protocol.ClientSubscriber()
                    | protocol.ClientAdmin()
                ):
                    self._on_handshake(session, event, now_ms)
                case protocol.AdminCommand():
                    result = self.admin.answer(event.command, event.params, now_ms)
                    self.outboxes.send(session, protocol.AdminResult(result))
                case protocol.Rejected():
                    self._refuse(session, event.verb, event.error)
                case _:
                    raise ProtocolError(
                        ErrorCode.NOT_ALLOWED, f"{event.VERB} is not handled on this connection"
                    )
        except ProtocolError as error:
            self._refuse(
                session, event.VERB if isinstance(event, protocol.TypedFrame) else event.verb, error
            )

    def _refuse(self, session: Session, verb: str | None, error: ProtocolError) -> None:
        """Answer a refused frame with ERROR.

        A publisher gets one reply per PUBLISH, in order, so an error about a
        PUBLISH waits behind the acks still owed to earlier ones; so does a
        framing error (its frame may have been a PUBLISH), and the connection
        closes once every reply before it has gone out.
        """
        answer = protocol.Error(error.code, error.text)
        if session.role is Role.PUBLISHER and verb in (protocol.Publish.VERB, None):
            session.replies.append(ReplySlot(answer))
            if error.fatal:
                session.closing_after_replies = True
            self.outboxes.send_replies(session)
            return
        self.outboxes.send(session, answer)
        if error.fatal:
            self.outboxes.close(session)

    # ------------------------------------------------------------------ handshake

    def _on_handshake(self, session: Session, frame: Handshake, now_ms: int) -> None:
        self._authorize(frame)
        name = frame.options.get("name")
        if name is not None and not isinstance(name, str):
            raise ProtocolError(ErrorCode.BAD_NAME, "handshake 'name' must be a JSON string")
        session.sender = protocol.check_sender(name) if name is not None else None
        if self.config.cluster and not isinstance(frame, protocol.ClientAdmin):
            session.topic, session.lease = frame.topic, lease_topic(frame.topic)
            ownership = self.ownership
            if session.lease not in ownership.served:  # answered once the membership knows
                if ownership.draining:
                    ownership.redirect_to_owner(
                        session, f"this broker is draining and does not serve {frame.topic!r}")
                else:
                    ownership.park(session, frame, now_ms)
                return
        self.accept_handshake(session, frame, now_ms)

    def accept_handshake(self, session: Session, frame: Handshake, now_ms: int) -> None:
        """Grant the role the handshake asked for and answer SERVER_ACKNOWLEDGEMENT (authorized
        already; in a cluster, the topic is served)."""
        match frame:
            case protocol.ClientPublisher():
                session.role, session.topic = Role.PUBLISHER, frame.topic
                session.lease = lease_topic(frame.topic)
                self.engine.topic(frame.topic).publishers += 1
            case protocol.ClientSubscriber():
                session.role, session.topic, session.group = (
                    Role.SUBSCRIBER,
                    frame.topic,
                    frame.group,
                )
                session.lease = lease_topic(frame.topic)
                self.engine.ensure_group(frame.topic, frame.group, now_ms).consumers.add(session)
            case protocol.ClientAdmin():
                session.role = Role.ADMIN
        self.outboxes.send(session, protocol.ServerAcknowledgement(self.server_info(session)))

    def _authorize(self, frame: Handshake) -> None:
        topic: str | None
        match frame:
            case protocol.ClientPublisher():
                permission, topic = Permission.PUBLISH, frame.topic
            case protocol.ClientSubscriber():
                permission, topic = Permission.SUBSCRIBE, frame.topic
            case protocol.ClientAdmin():
                permission, topic = Permission.ADMIN, None
        if not self.config.authorizer.allows(frame.options.get("token"), permission, topic):
            where = f" on topic {topic!r}" if topic else ""
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED,
                f"token missing or not allowed to {permission}{where}; "
                "give a token that allows it (token= in the client library, "
                "--token or BBMQ_TOKEN for the bbmq tools)",
                fatal=True,
            )

    def server_info(self, session: Session | None = None) -> dict[str, Any]:
        """What the handshake's SERVER_ACKNOWLEDGEMENT tells a client about this broker; in a
        cluster also the live brokers and, for a topic's session, the epoch it is served
        under (PROTOCOL.md 4.7)."""
        config = self.config
        info: dict[str, Any] = {
            "server": SERVER_NAME,
            "version": config.version,
            "max_message_bytes": config.max_message_bytes,
            "ack_timeout_ms": config.ack_timeout_ms,
            "max_attempts": config.max_attempts,
            "idle_timeout_ms": config.idle_timeout_ms,
        }
        if config.cluster:
            info["brokers"] = list(self.ownership.brokers)
            if session is not None and session.lease in self.ownership.served:
                info["epoch"] = self.ownership.served[session.lease]
        return info

    def _on_shutdown(self, session: Session, now_ms: int) -> None:
        """Goodbye: CLOSE_CONNECTION_SIGNAL goes after the replies still owed, then close."""
        session.replies.append(ReplySlot(protocol.CloseConnectionSignal()))
        session.closing_after_replies = True
        self.engine.release(session, now_ms)
        self.outboxes.send_replies(session)

    # ------------------------------------------------------------------ publisher

    def _on_publish(self, session: Session, frame: protocol.Publish, now_ms: int) -> None:
        if not self.accepting:
            raise ProtocolError(
                ErrorCode.SERVER_CLOSING, "server is shutting down; publish again after it restarts"
            )
        engine = self.engine
        if (
            engine.queued_bytes + len(frame.body) + MESSAGE_OVERHEAD_BYTES
            > self.config.max_queued_bytes
        ):
            raise ProtocolError(
                ErrorCode.SERVER_BUSY, "broker memory limit reached; retry after consumers catch up"
            )
        limit = self.config.max_messages_per_topic
        if limit and engine.held.get(session.topic, 0) >= limit:
            raise ProtocolError(
                ErrorCode.SERVER_BUSY,
                f"topic holds {limit} messages, its limit; retry after consumers catch up",
            )
        if frame.group is not None:  # created now, so it is stored with (or before) the message
            engine.ensure_group(session.topic, frame.group, now_ms)
        engine.hold(session.topic, frame.body)
        engine.batch.topics.add(session.lease)
        expires = now_ms + frame.ttl_ms if frame.ttl_ms is not None else None
        pending: PendingPublish = WriteRequest(
            session,
            NewMessage(
                session.topic,
                frame.body,
                session.sender,
                now_ms,
                frame.msgid,
                now_ms + frame.delay_ms if frame.delay_ms else 0,
                expires,
                group=frame.group,
            ),
        )
        session.replies.append(pending)
        engine.to_store.append(pending)

    def stored(self, publishes: list[PendingPublish], ids: list[StoredId], now_ms: int) -> None:
        """The store committed these publishes: ack the publishers, queue the messages."""
        engine = self.engine
        touched: set[Topic] = set()
        publishers: dict[int, Session] = {}
        served = self.ownership.served if self.config.cluster else None
        for pending, stored_id in zip(publishes, ids, strict=True):
            if pending.answer is not None or (
                    served is not None and lease_topic(pending.message.topic) not in served):
                # Its topic was lost meanwhile (bbmq/core/eviction.py): the publisher was
                # redirected and resends it; the topic's new owner loads it from the store.
                engine.let_go(pending.message.topic, pending.message.body)
                continue
            if (session := pending.requester) is not None:
                pending.answer = protocol.ProducerAckMessage(stored_id.id)
                publishers[session.id] = session
            if stored_id.duplicate:
                engine.let_go(pending.message.topic, pending.message.body)
            else:
                touched.add(engine.accept(pending.message, stored_id.id, now_ms))
        self._send_replies_to(publishers)
        for topic in touched:
            for group in topic.groups.values():
                engine.dispatch(group, now_ms)

    def store_failed(self, publishes: list[PendingPublish], reason: str) -> None:
        """These publishes were not stored: each publisher gets STORE_UNAVAILABLE in its place."""
        error = protocol.Error(
            ErrorCode.STORE_UNAVAILABLE,
            f"message not stored ({reason}); it was not acknowledged, publish it again",
        )
        publishers: dict[int, Session] = {}
        for pending in publishes:
            self.engine.let_go(pending.message.topic, pending.message.body)
            if (session := pending.requester) is not None:
                pending.answer = error
                publishers[session.id] = session
        self._send_replies_to(publishers)

    def _send_replies_to(self, publishers: dict[int, Session]) -> None:
        for session_id, session in publishers.items():
            if self.sessions.get(session_id) is session:  # not gone meanwhile
                self.outboxes.send_replies(session)

    # ------------------------------------------------------------------ subscriber

    def _on_fetch(self, session: Session, frame: protocol.Fetch, now_ms: int) -> None:
        deadline = None if frame.wait_ms is None else now_ms + frame.wait_ms
        session.requests.append(FetchRequest(frame.count, deadline))
        if len(session.requests) == 1:
            self.engine.start_request(session, now_ms)

    def _on_ack(self, session: Session, ids: tuple[int, ...], now_ms: int) -> None:
        # An id named twice in one ACK is acked once, not refused the second time: an id is
        # unknown only if every mention of it was (checked on this error path only).
        unknown = self.engine.ack(session, ids, now_ms)
        if unknown := [i for i in dict.fromkeys(unknown) if unknown.count(i) == ids.count(i)]:
            raise ProtocolError(
                ErrorCode.UNKNOWN_MESSAGE,
                _unknown_ids_text(unknown)
                + " (already acked, timed out, or delivered to another consumer)",
            )

    def _on_nack(self, session: Session, frame: protocol.Nack, now_ms: int) -> None:
        lease = session.leases.get(frame.id)
        if lease is None:
            raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, _unknown_ids_text([frame.id]))
        group = self.engine.group_of(session)
        self.engine.take_back(group, lease, now_ms, frame.reason or "nacked", frame.delay_ms)
        self.engine.dispatch(group, now_ms)


def _unknown_ids_text(ids: list[int]) -> str:
    """UNKNOWN_MESSAGE's text: ``ids=<id>,<id>...`` first, the one part of an error text meant
    to be parsed (docs/PROTOCOL.md 9), then words for people."""
    return f"ids={','.join(map(str, ids))} not in flight on this connection"
