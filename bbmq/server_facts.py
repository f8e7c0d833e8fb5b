"""What the transport tells about itself: its connections as the dashboard lists them, where
its log goes (``ADMIN stats``' server part), whether it listens on loopback only; what it is
told (:class:`TransportConfig`); and how it drives a cluster member (:class:`Membership`).

Plain values, kept apart from bbmq/server.py so that the transport module holds only the
work of moving bytes between sockets, the core and the store thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
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


def log_destination() -> str:
    """Where this process's log lines go: the log file, or stderr (a foreground run)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return "stderr"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (listening there needs no authentication)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    """A broker's seat in a cluster (bbmq/cluster/member.py), as the transport drives it; the
    topics handshakes wait for go to it through BrokerServer's ``topic_requests``."""

    def join(self) -> None:
        """Register (blocking); raises if another broker forbids this one to start."""

    def start(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        """Begin renewing and answering topic requests; core calls go through ``loop``."""

    def stop(self) -> None:
        """End the member's thread (blocking); leases stay held until :meth:`leave`."""

    def leave(self) -> None:
        """Give back every lease and deregister (blocking), after the store's last write."""
