"""What the transport (bbmq/server.py) is configured with, reports, and drives beside the core.

Kept apart from the server so that the composition root and the dashboard can
name these without the server's machinery, and so that the server stays one
read: its settings (:class:`TransportConfig`), the rows it reports for the
dashboard (:class:`ConnectionInfo`), and the cluster membership it starts,
feeds topic requests to and stops (:class:`Membership`, bbmq/cluster/member.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from bbmq.core import SessionSnapshot


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One open connection as the dashboard lists it: the transport's facts (address, since
    when, bytes each way) and the core's (role, topic, group, name, unacked)."""

    id: int
    peer: str
    connected_ms: int
    bytes_in: int
    bytes_out: int
    session: SessionSnapshot | None


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """What the transport itself needs to know: where to listen, and its per-connection limits.

    The broker core has its own :class:`bbmq.core.BrokerConfig`; :mod:`bbmq.app`
    derives both from the user's settings.
    """

    host: str
    port: int
    #: The decoder refuses a frame whose body is larger, before buffering it.
    max_message_size: int
    max_connections: int
    #: The write buffer's high-water mark: above it, deliveries to the connection pause.
    max_output_bytes: int
    handshake_timeout: float
    idle_timeout: float
    tls_cert: str | None = None
    tls_key: str | None = None


class Membership(Protocol):
    """A broker's seat in a cluster (bbmq/cluster/member.py), as the transport drives it."""

    @property
    def clustered(self) -> bool:
        """Topics are loaded as their leases are taken, not all recovered at start."""

    def join(self) -> None:
        """Register (blocking); raises if another broker forbids this one to start."""

    def start(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        """Begin renewing and answering topic requests; core calls go through ``loop``."""

    def request_topics(self, topics: Iterable[str]) -> None:
        """Topics that handshakes wait for (from the loop's thread)."""

    def stop(self) -> None:
        """End the member's thread (blocking); leases stay held until :meth:`leave`."""

    def leave(self) -> None:
        """Give back every lease and deregister (blocking), after the store's last write."""


