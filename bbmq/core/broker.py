"""The broker core's one door: what the transport calls, and nothing else.

Nothing in the core touches a socket, a database or the clock.  The transport
feeds :class:`Broker` whole frames together with ``now_ms``; the core answers
with typed frames per connection (:meth:`Broker.take_output`, which the
transport encodes) and changes for the store (:meth:`Broker.take_store_work`).
Publishes are two-phase: a PUBLISH becomes a pending
:class:`~bbmq.store.base.NewMessage`; only when the store reports it committed
(:meth:`Broker.stored`) is the publisher acked and the message queued.
Time-driven work (ack timeouts, long-poll deadlines, delayed messages) runs in
:meth:`Broker.tick`, and :meth:`Broker.next_deadline` tells the transport when
to call it.

The work itself is done behind this facade, one job per module: the queue
engine (engine.py), the frames each role may send (roles.py), the admin
commands (admin_commands.py), recovery at start (recovery.py), the outboxes
(outbox.py), over the records they share (records.py).  This class holds
them together with the table of sessions, and answers the transport's few
questions about a session so that it never reads the core's records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bbmq import protocol
from bbmq.core.admin_commands import AdminCommands
from bbmq.core.config import BrokerConfig
from bbmq.core.engine import QueueEngine
from bbmq.core.outbox import Outboxes
from bbmq.core.records import PendingPublish, Session
from bbmq.core.recovery import recover
from bbmq.core.roles import Roles
from bbmq.core.snapshot import BrokerSnapshot, SessionSnapshot
from bbmq.protocol import ErrorCode, Role
from bbmq.store.base import Batch, GroupRecord, RecoveredMessage, StoredId


class Broker:
    """The broker's state machine; see the module docstring for how it is driven."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.sessions: dict[int, Session] = {}
        self.outboxes = Outboxes(self.config.max_output_bytes)
        self.engine = QueueEngine(self.config, self.outboxes)
        self.admin = AdminCommands(self.engine, self.outboxes)
        self.roles = Roles(self.config, self.sessions, self.engine, self.outboxes, self.admin)

    @property
    def accepting(self) -> bool:
        """False once the server is shutting down: new publishes get SERVER_CLOSING."""
        return self.roles.accepting

    @accepting.setter
    def accepting(self, accepting: bool) -> None:
        self.roles.accepting = accepting

    @property
    def status_provider(self) -> Callable[[], dict[str, Any]]:
        """Server-level facts (uptime, store, connections) for ``ADMIN stats``."""
        return self.admin.status_provider

    @status_provider.setter
    def status_provider(self, provider: Callable[[], dict[str, Any]]) -> None:
        self.admin.status_provider = provider

    @property
    def queued_bytes(self) -> int:
        """What the messages held in memory cost (see QueueEngine.queued_bytes)."""
        return self.engine.queued_bytes

    # ------------------------------------------------------------------ connections

    def connect(self, session_id: int) -> None:
        self.sessions[session_id] = Session(session_id)

    def receive(
        self, session_id: int, event: protocol.TypedFrame | protocol.Rejected, now_ms: int
    ) -> None:
        """Handle one event of a connection: a frame its state allows, or one refused.

        The transport's :class:`~bbmq.protocol.ServerConnection` has already checked
        the frame against the protocol's table, so the core never asks whether a
        role may send what it sent.
        """
        session = self.sessions[session_id]
        if not session.closed:
            self.roles.receive(session, event, now_ms)

    def send_error(self, session_id: int, code: ErrorCode, text: str, *, close: bool) -> None:
        """Queue an ERROR frame; with ``close``, the connection ends after it."""
        session = self.sessions[session_id]
        self.outboxes.send(session, protocol.Error(code, text))
        if close:
            self.outboxes.close(session)

    def disconnect(self, session_id: int, now_ms: int) -> None:
        """The connection is gone: give its leases back, forget its requests."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        self.engine.release(session, now_ms)
        self.outboxes.forget(session)

    def set_writable(self, session_id: int, writable: bool, now_ms: int) -> None:
        """Flow control from the transport: stop or resume deliveries to a slow reader."""
        session = self.sessions.get(session_id)
        if session is None or session.writable == writable:
            return
        session.writable = writable
        if writable and session.role is Role.SUBSCRIBER:
            self.engine.dispatch(self.engine.group_of(session), now_ms)

    def handshaken(self, session_id: int) -> bool:
        """Whether the connection's handshake was accepted (it has, or had, a role)."""
        session = self.sessions.get(session_id)
        return session is not None and session.role is not Role.NONE

    def awaiting_answers(self, session_id: int) -> bool:
        """Whether the connection waits on the broker (an open FETCH, a PUBLISH not yet
        answered): such a connection is not idle, however long it stays silent."""
        session = self.sessions.get(session_id)
        return session is not None and bool(session.requests or session.replies)

    def replies_owed(self, session_id: int) -> int:
        """PUBLISH replies the connection is owed (not yet sent): how far it is ahead of the
        store, for the transport's flow control."""
        session = self.sessions.get(session_id)
        return 0 if session is None else len(session.replies)

    # ------------------------------------------------------------------ output

    def take_output(self) -> list[tuple[int, list[protocol.TypedFrame], bool]]:
        """The frames to send per connection, and whether to close it after them."""
        return self.outboxes.take()

    def take_output_of(self, session_id: int) -> tuple[list[protocol.TypedFrame], bool]:
        """One connection's frames to send now, and whether to close it after them (the
        answer to its handshake, which the frames behind it wait for)."""
        return self.outboxes.take_one(self.sessions[session_id])

    def resume_throttled(self, now_ms: int) -> bool:
        """After a flush: deliver more to subscribers whose full outbox held them back.

        Returns True if that produced output (flush again).
        """
        for session in self.outboxes.take_throttled():
            if session.role is Role.SUBSCRIBER and session.writable:
                self.engine.dispatch(self.engine.group_of(session), now_ms)
        return self.outboxes.pending()

    # ------------------------------------------------------------------ store

    def take_store_work(self) -> tuple[list[PendingPublish], Batch]:
        """New messages to store (acked on commit) and the other changes since last time."""
        return self.engine.take_store_work()

    def stored(self, publishes: list[PendingPublish], ids: list[StoredId], now_ms: int) -> None:
        """The store committed these publishes: ack the publishers, queue the messages."""
        self.roles.stored(publishes, ids, now_ms)

    def store_failed(self, publishes: list[PendingPublish], reason: str) -> None:
        """These publishes were not stored: each publisher gets STORE_UNAVAILABLE in its place."""
        self.roles.store_failed(publishes, reason)

    def recover(
        self, records: Iterable[RecoveredMessage], groups: Iterable[GroupRecord], now_ms: int
    ) -> int:
        """Rebuild the queues from the store at start; returns how many messages were loaded."""
        return recover(self.engine, records, groups, now_ms)

    # ------------------------------------------------------------------ time and state

    def next_deadline(self) -> int | None:
        """When :meth:`tick` next has work, in the same milliseconds as ``now_ms``."""
        return self.engine.next_deadline()

    def tick(self, now_ms: int) -> None:
        """Run every timer that is due: ack timeouts, long-poll ends, delayed messages."""
        self.engine.tick(now_ms)

    def snapshot(self) -> BrokerSnapshot:
        """Counters and queue sizes now, as immutable values (``stats`` and metrics read it)."""
        return self.engine.snapshot()

    def describe_session(self, session_id: int) -> SessionSnapshot | None:
        """One connection's role, topic, group, name and unacked count (None if unknown)."""
        session = self.sessions.get(session_id)
        return None if session is None else SessionSnapshot.of(session)

    def admin_command(self, command: str, params: dict[str, Any], now_ms: int) -> Any:
        """Run one ADMIN command outside any connection (the dashboard's actions): the same
        answers, checks and errors (ProtocolError) as an ``ADMIN`` frame gets."""
        return self.admin.answer(command, params, now_ms)
