"""Which topics a cluster broker serves, and the handshakes waiting for one it does not.

In a cluster (``BrokerConfig.cluster``, docs/CLUSTER.md) each topic is served by
one broker at a time: the holder of its lease in the database.  The membership
thread (bbmq/cluster/member.py) takes, renews and loses leases, and tells the
core through :class:`~bbmq.core.broker.Broker` (``topic_acquired``,
``topic_elsewhere``, ``topic_lost``).  This module keeps the core's side of it:

- ``served``: the topics this broker serves, with the epoch of its lease;
- ``waiting``: publisher and subscriber handshakes for a topic it does not
  serve.  Such a handshake is left unanswered until the topic is loaded
  (SERVER_ACKNOWLEDGEMENT) or found elsewhere (REDIRECT), so its connection
  stays paused and the frames behind it wait in its ``ServerConnection``.  The
  topic is asked of the membership once (:meth:`TopicOwnership.take_requests`);
  a handshake that waits longer than ``topic_wait_ms`` gets REDIRECT with
  ``retry_ms`` instead;
- the REDIRECT answers, and how many went out.

A dead-letter topic has no lease of its own: ``<t>.dlq`` is served, loaded and
fenced with ``<t>`` (:func:`bbmq.defaults.lease_topic`), because its dead
letters are written in the same transaction as the acks that retire the
originals.  Every key here is such a lease topic.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from bbmq import protocol
from bbmq.core.config import BrokerConfig
from bbmq.core.outbox import Outboxes
from bbmq.core.records import Session
from bbmq.core.snapshot import ClusterCounters

#: The handshakes that wait for their topic (an admin's never does).
TopicHandshake = protocol.ClientPublisher | protocol.ClientSubscriber


@dataclass(eq=False, slots=True)
class Waiting:
    """A handshake left unanswered until its topic is loaded or found elsewhere."""

    session: Session
    handshake: TopicHandshake
    #: When it is answered REDIRECT(retry_ms) if nothing came before.
    deadline_ms: int


class TopicOwnership:
    """The topics served, the handshakes waiting, the topics to ask for, the redirects sent."""

    def __init__(self, config: BrokerConfig, outboxes: Outboxes) -> None:
        self.config = config
        self.outboxes = outboxes
        #: Lease topic -> the epoch of this broker's lease on it.
        self.served: dict[str, int] = {}
        #: Lease topic -> the handshakes waiting for it, by session id, oldest first.
        self.waiting: dict[str, dict[int, Waiting]] = {}
        #: Topics asked of the membership and not answered yet (not asked twice meanwhile).
        self._asked: set[str] = set()
        self._requests: list[str] = []
        #: (deadline, seq, entry) of every handshake parked; answered ones are skipped when due.
        self._deadlines: list[tuple[int, int, Waiting]] = []
        self._seq = itertools.count()
        #: The cluster's live brokers, for SERVER_ACKNOWLEDGEMENT and REDIRECT bodies.
        self.brokers: tuple[str, ...] = ()
        #: The last owner the membership named per topic: where a draining broker sends clients.
        self.owners: dict[str, tuple[str, int | None]] = {}
        self.draining = False
        self.redirects_sent = 0

    def counters(self) -> ClusterCounters:
        return ClusterCounters(self.redirects_sent, len(self.served), len(self.waiting))

    # ------------------------------------------------------------------ waiting handshakes

    def park(self, session: Session, handshake: TopicHandshake, now_ms: int) -> None:
        """Leave ``handshake`` unanswered until its topic is loaded or found elsewhere."""
        lease = session.lease
        entry = Waiting(session, handshake, now_ms + self.config.topic_wait_ms)
        self.waiting.setdefault(lease, {})[session.id] = entry
        heapq.heappush(self._deadlines, (entry.deadline_ms, next(self._seq), entry))
        if lease not in self._asked:
            self._asked.add(lease)
            self._requests.append(lease)

    def take_requests(self) -> list[str]:
        """The topics to ask of the membership since the last call (each once until answered)."""
        requests, self._requests = self._requests, []
        return requests

    def answered(self, lease: str) -> list[Waiting]:
        """The handshakes waiting for ``lease``, which the caller answers now; after this,
        a new handshake for it asks the membership again."""
        self._asked.discard(lease)
        if lease in self._requests:  # answered before the transport passed the request on
            self._requests.remove(lease)
        return list(self.waiting.pop(lease, {}).values())

    def unpark(self, session: Session) -> None:
        """The connection of a waiting handshake is gone."""
        entries = self.waiting.get(session.lease)
        if entries is not None and entries.pop(session.id, None) is not None and not entries:
            self.answered(session.lease)  # nobody waits: a later handshake asks again

    def overdue(self, now_ms: int) -> list[Waiting]:
        """The handshakes that waited ``topic_wait_ms`` in vain, taken out of ``waiting``.

        When the last one waiting for a topic goes, the topic may be asked again by
        the next handshake: the membership may have dropped the request.
        """
        due = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now_ms:
            entry = heapq.heappop(deadlines)[2]
            session = entry.session
            entries = self.waiting.get(session.lease)
            if entries is not None and entries.get(session.id) is entry:
                del entries[session.id]
                if not entries:
                    self.answered(session.lease)
                due.append(entry)
        return due

    def next_deadline(self) -> int | None:
        """When :meth:`overdue` may next have a handshake to answer."""
        return self._deadlines[0][0] if self._deadlines else None

    # ------------------------------------------------------------------ answers

    def redirect(self, session: Session, owner: str | None, epoch: int | None,
                 retry_ms: int | None, reason: str) -> None:
        """Send REDIRECT for the session's topic and close the connection after it.

        Without an owner the client is told to try again after ``retry_ms`` (or
        BrokerConfig.topic_retry_ms): a REDIRECT must name one or the other.
        """
        if owner is None and retry_ms is None:
            retry_ms = self.config.topic_retry_ms
        self.outboxes.send(session, protocol.Redirect(
            session.topic, owner, epoch, retry_ms, self.brokers, reason))
        self.outboxes.close(session)
        session.closed = True  # whatever it sends after this is ignored
        self.redirects_sent += 1

    def redirect_to_owner(self, session: Session, reason: str) -> None:
        """REDIRECT to the owner the membership last named for the session's topic, or else
        (none known) to try again later."""
        owner, epoch = self.owners.get(session.lease, (None, None))
        self.redirect(session, owner, epoch, None, reason)
