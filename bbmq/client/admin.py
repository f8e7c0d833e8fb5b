"""The administrative connection: stats, topics, purge, group delete, peek.

The ``bbmq stats|topics|purge|group|peek|dlq`` commands (bbmq/admin.py) are
built on it; it lives here, with the other connections, so that it speaks the
protocol through the same Channel.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

from bbmq.client.base import Client
from bbmq.client.errors import BrokerError, ConnectionLost
from bbmq.protocol import AdminCommand, AdminResult, ClientAdmin, Error, TypedFrame


class Admin(Client):
    """An administrative connection: stats, topics, purge, group delete, peek.

    Given ``brokers`` (a cluster), it connects to the first that answers: an admin
    connection is never redirected, and each broker speaks for the topics it serves.
    """

    def __init__(self, host: str | None = None, port: int | None = None, *,
                 brokers: str | Iterable[str] | None = None, name: str | None = None,
                 token: str | None = None, tls: bool | ssl.SSLContext = False,
                 ca_file: str | None = None, timeout: float = 10.0) -> None:
        super().__init__(host, port, name=name, token=token, tls=tls, ca_file=ca_file,
                         timeout=timeout, brokers=brokers)

    def _handshake_frame(self) -> TypedFrame:
        return ClientAdmin(self._options())

    def command(self, name: str, **params: Any) -> Any:
        """Run one ADMIN command and return its JSON result; broker errors raise BrokerError."""
        channel = self.channel
        channel.send(AdminCommand(name, params))
        while True:
            reply = channel.read(self.timeout)
            if isinstance(reply, AdminResult):
                return reply.result
            if isinstance(reply, Error):
                raise BrokerError(reply.code, reply.text)
            if reply is None:
                channel.close()
                raise ConnectionLost(f"no answer to ADMIN {name} within {self.timeout:g} s")

    def stats(self) -> dict[str, Any]:
        """Server facts and, per topic and group, queue sizes and running totals."""
        result: dict[str, Any] = self.command("stats")
        return result

    def topics(self) -> list[str]:
        result: list[str] = self.command("topics")
        return result

    def purge(self, topic: str, group: str | None = None) -> int:
        """Drop the queued (not in-flight) messages of one group, or of the whole topic;
        returns how many."""
        params = {"topic": topic} if group is None else {"topic": topic, "group": group}
        return int(self.command("purge", **params)["purged"])

    def delete_group(self, topic: str, group: str) -> None:
        """Remove a group and what it owes; its consumers are disconnected."""
        self.command("group_delete", topic=topic, group=group)

    def peek(self, topic: str, group: str | None = None, n: int = 10) -> list[dict[str, Any]]:
        """The next ``n`` messages the group would deliver, without changing anything."""
        params: dict[str, Any] = {"topic": topic, "n": n}
        if group is not None:
            params["group"] = group
        result: list[dict[str, Any]] = self.command("peek", **params)
        return result
