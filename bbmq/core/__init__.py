"""The broker core: all broker state and rules, with no I/O at all.

The transport talks to :class:`Broker` only (bbmq/core/broker.py says how it
is driven); the other modules each own one job behind it.  What the rest of
bbmq needs is re-exported here.
"""

from bbmq.core.broker import Broker
from bbmq.core.config import SERVER_NAME, BrokerConfig
from bbmq.core.engine import LEASE_FIFO_MIN
from bbmq.core.records import PendingPublish, QueuedMessage, Reply, Role, Session
from bbmq.core.snapshot import BrokerSnapshot, CounterSnapshot, GroupSnapshot, TopicSnapshot

__all__ = [
    "LEASE_FIFO_MIN",
    "SERVER_NAME",
    "Broker",
    "BrokerConfig",
    "BrokerSnapshot",
    "CounterSnapshot",
    "GroupSnapshot",
    "PendingPublish",
    "QueuedMessage",
    "Reply",
    "Role",
    "Session",
    "TopicSnapshot",
]
