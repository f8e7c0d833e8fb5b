"""What the HTTP side reads and runs, handed in by the composition root (bbmq/app.py).

The dashboard never reaches into the server or the core: it gets the core's
snapshot, the transport's list of connections and a way to run the core's own
ADMIN commands, so a purge from the browser is the very purge ``bbmq purge``
asks for.  DLQ replay is :func:`bbmq.dlq_replay.replay_dead_letters`, the
code ``bbmq dlq replay`` runs, pointed at the broker's own port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bbmq.auth import Authorizer
from bbmq.core import BrokerSnapshot
from bbmq.dlq_replay import ReplayOutcome
from bbmq.metrics import MetricsSources


@dataclass(frozen=True, slots=True)
class DashboardSources:
    """Everything the dashboard shows or does, as callables on the broker's loop thread."""

    version: str
    #: Counters and queue sizes now (:meth:`bbmq.core.Broker.snapshot`).
    snapshot: Callable[[], BrokerSnapshot]
    #: The server's facts: pid, address, store, uptime, connections (``ADMIN stats``'s own).
    status: Callable[[], dict[str, Any]]
    #: Every open connection as JSON-ready rows (peer, role, topic, since, bytes ...).
    connections: Callable[[], list[dict[str, Any]]]
    #: Run one of the core's ADMIN commands (peek, purge, group_delete); a bad request
    #: raises :class:`bbmq.protocol.ProtocolError` with the text to show.
    admin_command: Callable[[str, dict[str, Any]], Any]
    #: ``replay(topic, group, token)``: the DLQ replay; blocking, so run on a thread.
    replay: Callable[[str, str, str | None], ReplayOutcome]
    #: Who may log in: a token with the admin permission (no tokens: the broker is open).
    authorizer: Authorizer
    #: Refuse every change (purge, group delete, replay) from the dashboard.
    read_only: bool
    #: What ``/metrics`` reads.
    metrics: MetricsSources
