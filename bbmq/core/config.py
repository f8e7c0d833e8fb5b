"""The core's settings: what delivery does, separate from the transport's limits.

A module of its own because every part of the core reads it (the engine its
timeouts and attempts, the roles the memory limit and the authorizer, the
handshake the values it announces) and none of them should import another
just to learn a setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from bbmq import protocol
from bbmq.auth import Authorizer

#: The ``server`` the handshake announces.
SERVER_NAME: Final = "bbmq"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The knobs of delivery; the transport-level limits live in the server."""

    version: str = "0"
    max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES
    ack_timeout_ms: int = 30_000
    #: Deliveries before a message is dead-lettered to ``<topic>.dlq``; 0 = never.
    max_attempts: int = 5
    #: Expired (TTL) messages go to the DLQ instead of being dropped.
    dead_letter_expired: bool = False
    #: What the messages held in memory may cost (bodies plus a measured per-message
    #: overhead, bbmq.core.engine.MESSAGE_OVERHEAD_BYTES) before publishers get SERVER_BUSY.
    max_queued_bytes: int = 512 * 1024 * 1024
    #: Messages one topic may hold in memory before its publishers get SERVER_BUSY; 0: no limit.
    max_messages_per_topic: int = 0
    #: Announced in the handshake: silence after which the server closes a connection.
    idle_timeout_ms: int = 0
    #: Bytes of deliveries queued for one connection between two flushes.
    max_output_bytes: int = 4 * 1024 * 1024
    #: Who may do what; the default has no tokens and allows everything.
    authorizer: Authorizer = field(default_factory=lambda: Authorizer([]))
    #: One broker of a cluster (docs/CLUSTER.md): it serves only the topics whose lease it
    #: holds (bbmq/core/ownership.py); False: a single broker serving every topic.
    cluster: bool = False
    #: Cluster: how long a handshake waits for its topic to be loaded (or found elsewhere)
    #: before it is answered with REDIRECT and ``topic_retry_ms``; keep it under the
    #: transport's handshake timeout (10 s by default), which would answer ERROR TIMEOUT.
    topic_wait_ms: int = 5000
    #: Cluster: the ``retry_ms`` of a REDIRECT that names no owner (none is known yet).
    topic_retry_ms: int = 500
