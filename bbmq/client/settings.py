"""The connection settings the blocking and the asyncio clients share."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from typing import Any, Final

from bbmq.client.cluster import Cluster, ConnectPlan, format_address, seed_brokers
from bbmq.client.inbox import Inbox

#: How long a client waits for a broker that went silent (an ack, a handshake answer),
#: when ``timeout`` is not given: a single broker may be busy or restarting, worth waiting
#: for; of several, the topic is taken over by another one once the silent broker's
#: lease expires (5 s by default), so the client goes looking soon after.
SINGLE_BROKER_TIMEOUT_S: Final = 30.0
CLUSTER_TIMEOUT_S: Final = 6.0


class ConnectionSettings:
    """Where a client connects and how it introduces itself: what the blocking and the
    asyncio clients share before any socket is opened.

    ``brokers`` (``["h1:p1", "h2:p2"]`` or ``"h1:p1,h2:p2"``) lists the brokers of a
    cluster; ``host``/``port`` name a single one.  Unset, they come from
    BBMQ_BROKERS, then BBMQ_HOST and BBMQ_PORT, then the defaults; BBMQ_TOKEN
    gives the token.  ``topic`` is the topic the client's handshake opens (None
    for the admin client): a cluster redirects it to the broker that serves it.
    ``timeout`` (None: 30 s for one broker, 6 s once several are known) bounds
    every wait on a broker that went silent.
    """

    def __init__(self, host: str | None, port: int | None, *, name: str | None,
                 token: str | None, tls: bool | ssl.SSLContext, ca_file: str | None,
                 timeout: float | None, brokers: str | Iterable[str] | None = None,
                 topic: str | None = None) -> None:
        self.cluster = Cluster(seed_brokers(brokers, host, port))
        #: The broker of the current (or the last) connection; the first listed before any.
        self.host, self.port = self.cluster.seeds[0]
        self.name = name
        self.token = token if token is not None else os.environ.get("BBMQ_TOKEN")
        self.tls = tls
        self.ca_file = ca_file
        self._timeout = timeout
        self._cluster_topic = topic
        #: What the broker said of itself in its SERVER_ACKNOWLEDGEMENT.
        self.server_info: dict[str, Any] = {}
        #: A handshake has succeeded once: a connection that fails from now on was lost
        #: (worth retrying), while one that never opened is the caller's to hear of at once.
        self.was_connected = False

    @property
    def timeout(self) -> float:
        """Seconds to wait for a silent broker (see CLUSTER_TIMEOUT_S)."""
        if self._timeout is not None:
            return self._timeout
        return CLUSTER_TIMEOUT_S if len(self.cluster.brokers) > 1 else SINGLE_BROKER_TIMEOUT_S

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    @property
    def brokers(self) -> list[str]:
        """Every broker this client knows of (``host:port``): those it was given, then
        those the cluster told it of."""
        return [format_address(address) for address in self.cluster.brokers]

    def _options(self) -> dict[str, Any]:
        """The handshake's options: this client's name and token, where given."""
        return {key: value for key, value in (("name", self.name), ("token", self.token))
                if value is not None}

    def _connect_plan(self, ended: Inbox | None, now: float) -> ConnectPlan:
        """The walk of one connect over the brokers; ``ended`` is the inbox of the last
        connection (None: there was none, or it was closed on purpose): its REDIRECT says
        where to go first, or else its broker is tried last."""
        redirect = None if ended is None else ended.redirect
        lost = None if ended is None or redirect is not None else (self.host, self.port)
        return ConnectPlan(self.cluster, self._cluster_topic, now=now, patience=self.timeout,
                           ended_by=redirect, lost=lost)

    def _granted(self, plan: ConnectPlan, address: tuple[str, int],
                 info: dict[str, Any]) -> None:
        """The handshake at ``address`` was granted with ``info``."""
        plan.connected(address, info)
        self.host, self.port = address
        self.server_info = info
        self.was_connected = True
