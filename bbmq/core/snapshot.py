"""One read of the broker's counters and queue sizes, as immutable values.

``ADMIN stats`` and the Prometheus collector (bbmq/metrics.py) both read the
core through :meth:`bbmq.core.Broker.snapshot`, so the core is walked in one
place only, and neither reader holds on to (or could change) its live records.
The counters are not kept twice: the core's running totals
(:class:`~bbmq.core.records.Counters`) are copied when a snapshot is taken,
which is only when someone asks.  Topics and groups come sorted by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bbmq.core.records import Counters, Group, Session, Topic


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    """Running totals of a topic or a group, in the order ``stats`` lists them."""

    published: int
    delivered: int
    redelivered: int
    acked: int
    expired: int
    dead_lettered: int

    @classmethod
    def of(cls, counters: Counters) -> CounterSnapshot:
        return cls(counters.published, counters.delivered, counters.redelivered,
                   counters.acked, counters.expired, counters.dead_lettered)


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    """A consumer group's queue sizes and consumers, and its counters."""

    name: str
    #: Deliverable now (first deliveries and retries).
    ready: int
    #: Waiting for a delay (a delayed publish or a NACK with delay) to pass.
    delayed: int
    #: Delivered, not yet acked.
    inflight: int
    consumers: int
    counters: CounterSnapshot

    @classmethod
    def of(cls, group: Group) -> GroupSnapshot:
        return cls(group.name, group.ready, len(group.delayed), len(group.inflight),
                   len(group.consumers), CounterSnapshot.of(group.counters))


@dataclass(frozen=True, slots=True)
class TopicSnapshot:
    """A topic's counters, its backlog (kept until its first group), publishers and groups."""

    name: str
    counters: CounterSnapshot
    publishers: int
    backlog: int
    groups: tuple[GroupSnapshot, ...]

    @classmethod
    def of(cls, topic: Topic) -> TopicSnapshot:
        return cls(topic.name, CounterSnapshot.of(topic.counters), topic.publishers,
                   len(topic.backlog),
                   tuple(GroupSnapshot.of(group) for _, group in sorted(topic.groups.items())))

    def group(self, name: str) -> GroupSnapshot:
        """The group called ``name`` (KeyError if there is none)."""
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ClusterCounters:
    """A cluster broker's part in the cluster (bbmq/core/ownership.py), as counted now."""

    #: REDIRECT frames sent since the start (handshakes and moved topics alike).
    redirects_sent: int = 0
    #: Topics whose lease this broker holds and serves (a ``.dlq`` topic counts with its parent).
    topics_served: int = 0
    #: Topics that handshakes wait for (being loaded, or asked of the membership).
    topics_waiting: int = 0


@dataclass(frozen=True, slots=True)
class BrokerSnapshot:
    """The whole core at one moment: the bytes it holds, and every topic.

    ``topics`` lists what the broker holds in memory: in a cluster, the topics it serves
    (and their ``.dlq`` topics), never those it lost.
    """

    #: Message bytes held in memory: queued, and on their way to the store.
    queued_bytes: int
    topics: tuple[TopicSnapshot, ...]
    #: A cluster broker's counters; None for a single broker (BrokerConfig.cluster False).
    cluster: ClusterCounters | None = None

    def topic(self, name: str) -> TopicSnapshot:
        """The topic called ``name`` (KeyError if there is none)."""
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """What the core knows of one connection: its role once handshaken, where it works, how
    many messages it holds unacked (the transport adds address, age and bytes)."""

    #: The protocol role's name ("publisher", "subscriber", "admin"; "none" before the
    #: handshake).
    role: str
    topic: str
    #: The consumer group of a subscriber ("" for other roles).
    group: str
    #: The name the client gave in its handshake, if any.
    name: str | None
    inflight: int

    @classmethod
    def of(cls, session: Session) -> SessionSnapshot:
        return cls(session.role.name.lower(), session.topic, session.group, session.sender,
                   len(session.leases))


def take_snapshot(topics: Mapping[str, Topic], queued_bytes: int,
                  cluster: ClusterCounters | None = None) -> BrokerSnapshot:
    """Copy what the core counts into a :class:`BrokerSnapshot` (``cluster``: None for a
    single broker)."""
    return BrokerSnapshot(queued_bytes, tuple(TopicSnapshot.of(topic)
                                              for _, topic in sorted(topics.items())), cluster)
