"""One asyncio connection to the broker: a transport (TLS or not) under a sans-IO
:class:`~bbmq.protocol.ClientConnection`.

The asyncio twin of bbmq/client/channel.py, and the only module of
:mod:`bbmq.aio` that touches a socket.  The connection object does all
encoding, decoding and state keeping; this module moves its bytes.

An ``asyncio.Protocol`` rather than streams: the bytes the loop reads go
straight into the connection, and its frames into the inbox, in the loop's
own callback (no copy into a stream buffer, no task step per read).  That is
also what makes it cancellation-safe by construction: no frame ever waits in
a task, so a task cancelled while it waits leaves every frame that came for
the next read.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

from bbmq.client.channel import SOON_MAX_FRAMES
from bbmq.client.errors import BrokerError, CannotConnect, ConnectionLost
from bbmq.client.inbox import Inbox, handshake_info
from bbmq.protocol import (
    ClientShutdownSignal,
    CloseConnectionSignal,
    LocalProtocolError,
    ServerAcknowledgement,
    TypedFrame,
)


class _Transport(asyncio.Protocol):
    """The loop's callbacks for one connection, handed straight to its channel."""

    def __init__(self) -> None:
        self.channel: AsyncChannel | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if self.channel is not None:
            self.channel._receive(data)

    def eof_received(self) -> bool:
        if self.channel is not None:
            self.channel._lost("the broker closed the connection")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel is not None:
            self.channel._lost(f"connection to broker failed: {exc}" if exc else
                               "the broker closed the connection")

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel._wake_writers()


class AsyncChannel:
    """One framed asyncio connection to the broker (one per client object).

    Made with :meth:`open`.  Reads are for one task at a time; sends may come
    from any task of the loop (a send is synchronous up to the transport's
    buffer, so frames never interleave).
    """

    def __init__(self, transport: asyncio.Transport, address: tuple[str, int]) -> None:
        self.address = address
        self._transport = transport
        self.inbox = Inbox()
        #: Why the connection ended, once the frames before the end have been read.
        self._ended: str | None = None
        #: The reader waiting for frames, woken when some come or the connection ends.
        self._waiter: asyncio.Future[None] | None = None
        #: Set while the transport's buffer is over its high-water mark (see drain).
        self._writable: asyncio.Future[None] | None = None
        #: Encoded frames that wait for the end of this turn of the loop (see send_soon).
        self._soon: list[bytes] = []
        self._flush_scheduled = False
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, *, timeout: float,
                   tls: bool | ssl.SSLContext, ca_file: str | None) -> AsyncChannel:
        """Connect (and do TLS) within ``timeout`` seconds, or raise ConnectionLost."""
        context: ssl.SSLContext | None = None
        if tls:
            context = tls if isinstance(tls, ssl.SSLContext) else ssl.create_default_context(
                cafile=ca_file)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, callbacks = await loop.create_connection(
                    _Transport, host, port, ssl=context,
                    server_hostname=host if context else None)
        except ssl.SSLError as error:
            raise CannotConnect(f"TLS with {host}:{port} failed: {error}; check that the "
                                "broker serves TLS and that ca_file names its CA") from None
        except (OSError, TimeoutError) as error:
            raise CannotConnect(f"cannot connect to {host}:{port}: {error or 'timed out'}; is "
                                "a broker running there ('bbmq server status' on its "
                                "machine)?") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = cls(transport, (host, port))
        callbacks.channel = channel
        return channel

    # ------------------------------------------------------------------ sending

    def send(self, frame: TypedFrame) -> None:
        """Write ``frame`` now, after whatever ``send_soon`` still holds."""
        self.send_all((frame,))

    def send_all(self, frames: Iterable[TypedFrame]) -> None:
        """Write ``frames`` in one write, after whatever ``send_soon`` still holds."""
        self._check_open()
        try:
            data = b"".join([*self._soon, *map(self.inbox.connection.send, frames)])
        except LocalProtocolError:
            self._refuse_after_goodbye()
            raise
        self._soon.clear()
        self._transport.write(data)

    def send_soon(self, frame: TypedFrame) -> None:
        """Write ``frame`` at the end of this turn of the event loop, in one write with the
        frames sent soon in the same turn (a hundred acks in one write, not a hundred)."""
        self._check_open()
        try:
            self._soon.append(self.inbox.connection.send(frame))
        except LocalProtocolError:
            self._refuse_after_goodbye()
            raise
        if len(self._soon) >= SOON_MAX_FRAMES:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what ``send_soon`` holds, now."""
        if self._soon and not self.closed:
            data = b"".join(self._soon)
            self._soon.clear()
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark (a slow broker)."""
        while self._writable is not None and not self.closed:
            await self._writable  # a lost connection wakes it: the next read says so

    def _wake_writers(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _check_open(self) -> None:
        if self.closed or self._ended is not None:
            raise self.inbox.broken_error() or ConnectionLost(self._ended or
                                                              "connection already closed")

    def _refuse_after_goodbye(self) -> None:
        """A frame refused because the connection is closing fails as on a closed socket."""
        if self.closed or self.inbox.closing():
            raise self.inbox.broken_error() or ConnectionLost("the connection is closing") from None

    # ------------------------------------------------------------------ reading

    def _receive(self, data: bytes) -> None:
        """Take ``data`` into the connection and every event it completes into ``_events``
        (the loop's callback: no task is involved, so no cancel can come between)."""
        if not self.inbox.receive(data):
            self._transport.close()
        self._wake_reader()

    def _lost(self, why: str) -> None:
        if self._ended is None:
            self._ended = why
        self._wake_reader()
        self._wake_writers()

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pending(self) -> bool:
        """A whole frame is already received (reading it will not wait)."""
        return bool(self.inbox.events)

    async def read(self, timeout: float | None = None) -> TypedFrame | None:
        """The next frame from the broker, or None when ``timeout`` seconds pass first."""
        if self.inbox.events or await self._wait(timeout):
            return self.inbox.events.popleft()
        return None

    async def read_all(self, timeout: float | None = None) -> list[TypedFrame]:
        """Every frame received so far, waiting up to ``timeout`` seconds for at least one."""
        if self.inbox.events or await self._wait(timeout):
            return self.inbox.take_all()
        return []

    async def _wait(self, timeout: float | None) -> bool:
        """Wait until a whole frame is in; False when ``timeout`` passes first."""
        self.flush()  # about to wait on the broker: nothing of ours should wait too
        if timeout is None:
            while not self.inbox.events:
                await self._next_data()
            return True
        try:
            async with asyncio.timeout(timeout):
                while not self.inbox.events:
                    await self._next_data()
        except TimeoutError:
            return bool(self.inbox.events)
        return True

    async def _next_data(self) -> None:
        if (broken := self.inbox.broken_error()) is not None:
            self.close()
            raise broken
        if self._ended is not None or self.closed:
            self.close()
            raise ConnectionLost(self._ended or "connection already closed")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # ------------------------------------------------------------------ lifecycle

    async def handshake(self, frame: TypedFrame, timeout: float) -> dict[str, Any]:
        """Send the handshake ``frame``; the server's facts, once it grants the role."""
        try:
            self.send(frame)
            reply = await self.read(timeout)
        except BaseException:
            self.close()  # cancelled or failed half way: a half-open connection is no use
            raise
        if not isinstance(reply, ServerAcknowledgement):
            self.close()
        return handshake_info(reply, timeout)

    async def goodbye(self, timeout: float = 5.0) -> None:
        """Say CLIENT_SHUTDOWN_SIGNAL, wait for CLOSE_CONNECTION_SIGNAL, close."""
        if self.closed:
            return
        try:
            self.send(ClientShutdownSignal())
            async with asyncio.timeout(timeout):
                while not isinstance(await self.read(), CloseConnectionSignal):
                    pass
        except (BrokerError, TimeoutError):
            pass  # the goodbye is best effort: we are closing anyway
        finally:
            self.close()

    def close(self) -> None:
        """Close at once (what was not acked is redelivered by the broker)."""
        if not self.closed:
            self.closed = True
            self._soon.clear()
            self._transport.close()
            self._wake_writers()
