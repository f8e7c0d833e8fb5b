"""What every asyncio client connection shares: the address, TLS, the token, connect and
close, ``async with``.

The asyncio twin of bbmq/client/base.py, with the same defaults (BBMQ_HOST,
BBMQ_PORT, BBMQ_TOKEN) and the same handshake options.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from bbmq.aio.channel import AsyncChannel
from bbmq.client.errors import BrokerError
from bbmq.client.retry import comes_back, first_connect_failed
from bbmq.client.settings import ConnectionSettings
from bbmq.protocol import TypedFrame


class AsyncClient(ConnectionSettings):
    """One role's connection to the broker, opened on first use and again after a loss."""

    def __init__(self, host: str | None, port: int | None, *, name: str | None,
                 token: str | None, tls: bool | ssl.SSLContext, ca_file: str | None,
                 timeout: float | None, brokers: str | Iterable[str] | None = None,
                 topic: str | None = None) -> None:
        super().__init__(host, port, name=name, token=token, tls=tls, ca_file=ca_file,
                         timeout=timeout, brokers=brokers, topic=topic)
        self._channel: AsyncChannel | None = None
        #: One connect at a time: tasks sharing a client wait for the same connection.
        self._connecting = asyncio.Lock()

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
                self._channel = await self._open()
                self._connected()
            return self._channel

    async def _open(self) -> AsyncChannel:
        """Try the brokers in turn, following REDIRECTs to the one that serves the topic
        (the blocking Client.connect's walk, bbmq/client/cluster.py's ConnectPlan)."""
        ended = None if self._channel is None else self._channel.inbox
        plan = self._connect_plan(ended, time.monotonic())
        while (step := plan.next(time.monotonic())) is not None:
            address, pause = step
            if pause:
                await asyncio.sleep(pause)  # a REDIRECT's retry_ms, or a cluster between owners
            try:
                channel = await AsyncChannel.open(*address,
                                                  timeout=plan.connect_timeout(self.timeout),
                                                  tls=self.tls, ca_file=self.ca_file)
                info = await channel.handshake(self._handshake_frame(), self.timeout)
            except BrokerError as error:
                plan.attempt_ended(address, error)
            else:
                self._granted(plan, address, info)
                return channel
        raise plan.error()

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
