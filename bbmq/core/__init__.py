"""The broker core: all broker state and rules, with no I/O at all.

The transport talks to :class:`Broker` only (bbmq/core/broker.py says how it
is driven, and which module behind it owns which job).  What the rest of bbmq
needs is re-exported here: the facade and its settings, the write request the
store hands back, and the snapshot types :meth:`Broker.snapshot` returns.
"""

from bbmq.core.broker import Broker
from bbmq.core.config import BrokerConfig
from bbmq.core.engine import LEASE_FIFO_MIN
from bbmq.core.records import PendingPublish, Session
from bbmq.core.snapshot import (
    BrokerSnapshot,
    ClusterCounters,
    CounterSnapshot,
    GroupSnapshot,
    SessionSnapshot,
    TopicSnapshot,
)

__all__ = [
    "LEASE_FIFO_MIN",
    "Broker",
    "BrokerConfig",
    "BrokerSnapshot",
    "ClusterCounters",
    "CounterSnapshot",
    "GroupSnapshot",
    "PendingPublish",
    "Session",
    "SessionSnapshot",
    "TopicSnapshot",
]
