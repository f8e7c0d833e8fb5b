"""What every client connection shares: the brokers, TLS, auth, connect and close.

:class:`Client` is the base of Producer, Consumer and the admin client
(bbmq/client/admin.py); a subclass names its handshake and may watch for new
connections (``_connected``) to reset what belonged to the old one.  Which
broker to try, and after a REDIRECT where to go, is cluster.py's ConnectPlan.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from bbmq.client.arguments import default_address
from bbmq.client.channel import Channel
from bbmq.client.errors import BrokerError, ConnectionLost
from bbmq.client.retry import first_connect_failed
from bbmq.client.settings import ConnectionSettings
from bbmq.protocol import Ping, Pong, TypedFrame


def ping(host: str | None = None, port: int | None = None, *, timeout: float = 5.0,
         tls: bool | ssl.SSLContext = False, ca_file: str | None = None) -> float:
    """Seconds for a PING/PONG round trip (no handshake needed); raises if no answer."""
    default_host, default_port = default_address()
    started = time.monotonic()
    channel = Channel(host or default_host, port or default_port, timeout=timeout, tls=tls,
                      ca_file=ca_file)
    try:
        channel.send(Ping())
        reply = channel.read(timeout)
        if not isinstance(reply, Pong):
            raise ConnectionLost(f"expected PONG, got {reply!r}")
        return time.monotonic() - started
    finally:
        channel.close()


def never_reached(client: Client, error: BrokerError) -> bool:
    """``error`` is ``client``'s first attempt to reach the broker failing: a wrong address
    or a broker that is not running, to report at once rather than retry."""
    return first_connect_failed(error, was_connected=client.was_connected)


class Client(ConnectionSettings):
    """One role's connection to the broker, opened on first use and again after a loss."""

    def __init__(self, host: str | None, port: int | None, *, name: str | None,
                 token: str | None, tls: bool | ssl.SSLContext, ca_file: str | None,
                 timeout: float | None, brokers: str | Iterable[str] | None = None,
                 topic: str | None = None) -> None:
        super().__init__(host, port, name=name, token=token, tls=tls, ca_file=ca_file,
                         timeout=timeout, brokers=brokers, topic=topic)
        self._channel: Channel | None = None

    def _handshake_frame(self) -> TypedFrame:
        raise NotImplementedError

    def _connected(self, channel: Channel) -> None:
        """A new connection is up: whatever state belonged to the old one is void."""

    def connect(self) -> Self:
        """Open the connection and do the handshake (idempotent), trying the brokers in
        turn and following REDIRECTs to the one that serves the topic."""
        if self._channel is not None and not self._channel.closed:
            return self
        ended = None if self._channel is None else self._channel.inbox
        plan = self._connect_plan(ended, time.monotonic())
        while (step := plan.next(time.monotonic())) is not None:
            address, pause = step
            if pause:
                time.sleep(pause)  # a REDIRECT's retry_ms, or a cluster between owners
            try:
                channel = Channel(*address, timeout=plan.connect_timeout(self.timeout),
                                  tls=self.tls, ca_file=self.ca_file)
                info = channel.handshake(self._handshake_frame(), self.timeout)
            except BrokerError as error:
                plan.attempt_ended(address, error)
            else:
                self._granted(plan, address, info)
                self._channel = channel
                self._connected(channel)
                return self
        raise plan.error()

    @property
    def channel(self) -> Channel:
        """The open connection, opened (again) if there is none."""
        if self._channel is None or self._channel.closed:
            self.connect()
        assert self._channel is not None
        return self._channel

    def close(self) -> None:
        """Say goodbye to the broker and close the connection."""
        if self._channel is not None:
            self._channel.goodbye()
            self._channel = None

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
