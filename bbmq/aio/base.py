"""What every asyncio client connection shares: the address, TLS, the token, connect and
close, ``async with``.

The asyncio twin of bbmq/client/base.py, with the same defaults (BBMQ_HOST,
BBMQ_PORT, BBMQ_TOKEN) and the same handshake options.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from types import TracebackType
from typing import Any, Self

from bbmq.aio.channel import AsyncChannel
from bbmq.client.arguments import default_address
from bbmq.client.errors import BrokerError
from bbmq.client.retry import comes_back, first_connect_failed
from bbmq.protocol import TypedFrame


class AsyncClient:
    """One role's connection to the broker, opened on first use and again after a loss."""

    def __init__(self, host: str | None, port: int | None, *, name: str | None,
                 token: str | None, tls: bool | ssl.SSLContext, ca_file: str | None,
                 timeout: float) -> None:
        default_host, default_port = default_address()
        self.host = host or default_host
        self.port = port or default_port
        self.name = name
        self.token = token if token is not None else os.environ.get("BBMQ_TOKEN")
        self.tls = tls
        self.ca_file = ca_file
        self.timeout = timeout
        self.server_info: dict[str, Any] = {}
        self._channel: AsyncChannel | None = None
        #: A handshake has succeeded once: a connection that fails from now on was lost
        #: (worth retrying), while one that never opened is the caller's to hear of at once.
        self.was_connected = False
        #: One connect at a time: tasks sharing a client wait for the same connection.
        self._connecting = asyncio.Lock()

    def _options(self) -> dict[str, Any]:
        """The handshake's options: this client's name and token, where given."""
        return {key: value for key, value in (("name", self.name), ("token", self.token))
                if value is not None}

    def _handshake_frame(self) -> TypedFrame:
        raise NotImplementedError

    def _gives_up(self, error: BrokerError) -> bool:
        """``error`` is not for retrying: it does not pass, or the broker was never reached."""
        return not comes_back(error) or first_connect_failed(
            error, was_connected=self.was_connected)

    def _connected(self) -> None:
        """A new connection is up: whatever state belonged to the old one is void."""

    async def connect(self) -> Self:
        """Open the connection and do the handshake (idempotent)."""
        await self.channel()
        return self

    async def channel(self) -> AsyncChannel:
        """The open connection, opened (again) if there is none."""
        channel = self._channel
        if channel is not None and not channel.closed:
            return channel
        async with self._connecting:
            if self._channel is None or self._channel.closed:
                channel = await AsyncChannel.open(self.host, self.port, timeout=self.timeout,
                                                  tls=self.tls, ca_file=self.ca_file)
                self.server_info = await channel.handshake(self._handshake_frame(),
                                                           self.timeout)
                self._channel = channel
                self.was_connected = True
                self._connected()
            return self._channel

    async def close(self) -> None:
        """Say goodbye to the broker and close the connection."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.goodbye()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
