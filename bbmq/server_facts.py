"""What the transport tells about itself: its connections as the dashboard lists them, where
its log goes (``ADMIN stats``' server part), whether it listens on loopback only.

Plain values, kept apart from bbmq/server.py so that the transport module holds only the
work of moving bytes between sockets, the core and the store thread.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

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
