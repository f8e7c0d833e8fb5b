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

In a cluster (``BrokerConfig(cluster=True)``, docs/CLUSTER.md) the broker
serves only the topics whose lease it holds (ownership.py).  A handshake for
another topic waits, and the topic goes to the membership thread through
:meth:`Broker.take_topic_requests` (the transport passes them on after each
turn, as it passes store work to the store thread); the membership answers
on the event loop with :meth:`Broker.topic_acquired` or
:meth:`Broker.topic_elsewhere`, and takes a topic away with
:meth:`Broker.topic_lost` (eviction.py forgets it).  In single mode none of
this is used and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from bbmq import protocol
from bbmq.core.admin_commands import AdminCommands
from bbmq.core.config import BrokerConfig
from bbmq.core.engine import QueueEngine
from bbmq.core.eviction import evict
from bbmq.core.outbox import Outboxes
from bbmq.core.ownership import TopicOwnership
from bbmq.core.records import PendingPublish, Session
from bbmq.core.recovery import recover
from bbmq.core.roles import Roles
from bbmq.core.snapshot import BrokerSnapshot, SessionSnapshot, take_snapshot
from bbmq.defaults import lease_topic
from bbmq.protocol import ErrorCode, Role
from bbmq.store.base import Batch, GroupRecord, RecoveredMessage, StoredId


class Broker:
    """The broker's state machine; see the module docstring for how it is driven."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.sessions: dict[int, Session] = {}
        self.outboxes = Outboxes(self.config.max_output_bytes)
        self.engine = QueueEngine(self.config, self.outboxes)
        self.ownership = TopicOwnership(self.config, self.outboxes)
        self.admin = AdminCommands(self.engine, self.outboxes, self.snapshot)
        self.roles = Roles(self.config, self.sessions, self.engine, self.outboxes, self.admin,
                           ownership=self.ownership)

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
        if session.role is Role.NONE and session.lease:
            self.ownership.unpark(session)  # its handshake was waiting for its topic
        self.engine.release(session, now_ms)
        self.outboxes.forget(session)

    def set_writable(self, session_id: int, writable: bool, now_ms: int) -> None:
        """Flow control from the transport: stop or resume deliveries to a slow reader."""
        session = self.sessions.get(session_id)
        if session is None or session.writable == writable:
            return
        session.writable = writable
        if writable and session.role is Role.SUBSCRIBER and not session.closed:
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
            if session.role is Role.SUBSCRIBER and session.writable and not session.closed:
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
        deadlines = [deadline for deadline in (self.engine.next_deadline(),
                                               self.ownership.next_deadline())
                     if deadline is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now_ms: int) -> None:
        """Run every timer that is due: ack timeouts, long-poll ends, delayed messages, and in
        a cluster the handshakes that waited ``topic_wait_ms`` for their topic in vain."""
        self.engine.tick(now_ms)
        for entry in self.ownership.overdue(now_ms):
            self.ownership.redirect(entry.session, None, None, self.config.topic_retry_ms,
                                    f"topic {entry.session.topic!r} is not served by any "
                                    "broker yet; try again")

    def snapshot(self) -> BrokerSnapshot:
        """Counters and queue sizes now, as immutable values (``stats`` and metrics read it);
        a cluster broker's counters too (``BrokerSnapshot.cluster``)."""
        return take_snapshot(self.engine.topics, self.engine.queued_bytes,
                             self.ownership.counters() if self.config.cluster else None)

    def describe_session(self, session_id: int) -> SessionSnapshot | None:
        """One connection's role, topic, group, name and unacked count (None if unknown)."""
        session = self.sessions.get(session_id)
        return None if session is None else SessionSnapshot.of(session)

    def admin_command(self, command: str, params: dict[str, Any], now_ms: int) -> Any:
        """Run one ADMIN command outside any connection (the dashboard's actions): the same
        answers, checks and errors (ProtocolError) as an ``ADMIN`` frame gets."""
        return self.admin.answer(command, params, now_ms)

    # ------------------------------------------------------------------ cluster

    @property
    def draining(self) -> bool:
        """Cluster: the broker is handing its topics off before a stop (``bbmq server drain``).

        Set by the membership on the event loop.  A draining broker asks for no
        topic: a handshake for one it does not serve is answered at once with
        REDIRECT to the owner the membership last named (or to try again later),
        and so are the handshakes waiting when draining starts.  The topics it
        still serves keep working until :meth:`topic_lost` hands each one off.
        """
        return self.ownership.draining

    @draining.setter
    def draining(self, draining: bool) -> None:
        self._require_cluster()
        self.ownership.draining = draining
        if draining:
            for lease in list(self.ownership.waiting):
                for entry in self.ownership.answered(lease):
                    self.ownership.redirect_to_owner(entry.session, "this broker is draining")

    def set_cluster_brokers(self, addresses: tuple[str, ...]) -> None:
        """Cluster: the live brokers' addresses (``host:port``), which every
        SERVER_ACKNOWLEDGEMENT and REDIRECT lists.  Called by the membership on the event
        loop whenever its renew finds the list changed."""
        self._require_cluster()
        self.ownership.brokers = tuple(addresses)

    def served_topics(self) -> dict[str, int]:
        """Cluster: the topics this broker serves, with the epoch of its lease on each (a
        ``<t>.dlq`` topic is served with ``<t>`` and not listed).  The membership compares it
        with what its renew found, and the fence of each write is made from it."""
        return dict(self.ownership.served)

    def take_topic_requests(self) -> list[str]:
        """Cluster: the topics handshakes now wait for, each returned once until it is
        answered (:meth:`topic_acquired` or :meth:`topic_elsewhere`) or nobody waits for it
        any more.  The transport calls it after each turn and passes the topics to the
        membership (BrokerServer's ``topic_requests``), as it passes store work on.
        Always empty for a single broker and a draining one."""
        return self.ownership.take_requests()

    def topic_acquired(self, topic: str, epoch: int, groups: Iterable[GroupRecord],
                       messages: Iterable[RecoveredMessage], now_ms: int) -> None:
        """Cluster: this broker now holds the lease of ``topic`` under ``epoch``: serve it.

        Called by the membership on the event loop after it acquired, took over or
        was handed the lease and read the topic's state from the store: the groups
        and unfinished messages of ``topic`` and of its dead-letter topic
        ``<topic>.dlq``, which travels with it (a record of any other topic is a
        ValueError).  They are queued as at a start (recovery.py): a delivery of an
        older epoch is ready again at once.  Then every handshake waiting for the
        topic is answered SERVER_ACKNOWLEDGEMENT, whose info carries ``epoch`` and
        ``brokers``.  For a topic already served under ``epoch`` nothing is loaded
        again; under another epoch its state is dropped (its clients redirected to
        try again) and loaded anew.
        """
        self._require_cluster()
        lease = self._lease_name(topic)
        served = self.ownership.served
        if served.get(lease, epoch) != epoch:
            self._drop(lease, None, None, self.config.topic_retry_ms,
                       f"topic {lease!r} is being reloaded; try again")
        if lease not in served:
            recover(self.engine, _of_lease(lease, messages), _of_lease(lease, groups), now_ms)
        served[lease] = epoch
        self.ownership.owners.pop(lease, None)
        for entry in self.ownership.answered(lease):
            if not entry.session.closing:  # not timed out by the transport meanwhile
                self.roles.accept_handshake(entry.session, entry.handshake, now_ms)

    def topic_elsewhere(self, topic: str, owner: str | None, epoch: int | None,
                        retry_ms: int | None, now_ms: int) -> None:
        """Cluster: another broker serves ``topic`` (``owner``, its address, under ``epoch``),
        or none can yet (``owner`` None: try again after ``retry_ms``).

        Called by the membership on the event loop in answer to a topic requested by
        :meth:`take_topic_requests` that it did not acquire: every handshake waiting
        for the topic is answered REDIRECT and its connection closes.  The owner is
        remembered for a draining broker's answers.  A topic this broker serves is
        not touched (:meth:`topic_lost` takes one away).
        """
        self._require_cluster()
        lease = self._lease_name(topic)
        if owner is not None:
            self.ownership.owners[lease] = (owner, epoch)
        reason = (f"topic {lease!r} is served by {owner}" if owner is not None
                  else f"topic {lease!r} is not served by any broker yet; try again")
        for entry in self.ownership.answered(lease):
            if not entry.session.closing:
                self.ownership.redirect(entry.session, owner, epoch, retry_ms, reason)

    def topic_lost(self, topic: str, owner: str | None, epoch: int | None,
                   retry_ms: int | None, now_ms: int) -> None:
        """Cluster: this broker no longer serves ``topic`` (and its ``.dlq`` topic).

        Called by the membership on the event loop when a renew finds the lease gone
        or under another epoch, its local validity ran out, a write was fenced, or
        before it hands the topic off (``owner`` the target).  Every session of the
        topic gets REDIRECT (to ``owner``/``epoch``, or to try again after
        ``retry_ms``) and is closed; the PUBLISH replies it was owed are dropped (the
        client resends with its msgid, PROTOCOL.md 4.7).  All the topic held in
        memory is forgotten without store work (eviction.py); publishes of it still
        in the store thread are failed there, or if they commit, are only let go
        (``stored``).  Handshakes waiting for it are redirected too.
        """
        self._require_cluster()
        lease = self._lease_name(topic)
        if owner is not None:
            self.ownership.owners[lease] = (owner, epoch)
        reason = (f"topic {lease!r} moved to {owner}" if owner is not None
                  else f"this broker no longer serves topic {lease!r}; try again")
        self._drop(lease, owner, epoch, retry_ms, reason)
        for entry in self.ownership.answered(lease):
            if not entry.session.closing:
                self.ownership.redirect(entry.session, owner, epoch, retry_ms, reason)

    def _drop(self, lease: str, owner: str | None, epoch: int | None, retry_ms: int | None,
              reason: str) -> None:
        """Redirect the sessions of ``lease`` and forget the topic."""
        bound = [session for session in self.sessions.values()
                 if session.lease == lease and not session.closing
                 and session.role in (Role.PUBLISHER, Role.SUBSCRIBER)]
        for session in bound:
            self.ownership.redirect(session, owner, epoch, retry_ms, reason)
        evict(self.engine, lease, bound)
        self.ownership.served.pop(lease, None)

    def _require_cluster(self) -> None:
        if not self.config.cluster:
            raise RuntimeError("topic ownership is for a cluster broker: "
                               "make its BrokerConfig with cluster=True")

    @staticmethod
    def _lease_name(topic: str) -> str:
        if lease_topic(topic) != topic:
            raise ValueError(f"{topic!r} has no lease of its own: it is served with "
                             f"{lease_topic(topic)!r}; name that topic")
        return topic


class _OfTopic(Protocol):
    @property
    def topic(self) -> str: ...


RecordT = TypeVar("RecordT", bound=_OfTopic)


def _of_lease(lease: str, records: Iterable[RecordT]) -> Iterator[RecordT]:
    """``records``, checked to belong to ``lease`` (the topic or its dead-letter topic)."""
    for record in records:
        if lease_topic(record.topic) != lease:
            raise ValueError(f"topic_acquired({lease!r}) was given a record of topic "
                             f"{record.topic!r}: load {lease!r} and {lease + '.dlq'!r} only")
        yield record
