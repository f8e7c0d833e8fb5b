"""One asyncio connection to the broker: a stream (TLS or not) under a sans-IO
:class:`~bbmq.protocol.ClientConnection`.

The asyncio twin of bbmq/client/channel.py, and the only module of
:mod:`bbmq.aio` that touches a socket.  The connection object does all
encoding, decoding and state keeping; this module moves its bytes.

Cancellation-safe by construction: bytes read are turned into frames in the
same step (no ``await`` between a read and the decoding), and frames wait in
``_events`` until a caller takes one synchronously.  A task cancelled while it
waits leaves every frame that came for the next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, cast

from bbmq.client.channel import READ_BYTES, SOON_MAX_FRAMES
from bbmq.client.errors import BrokerError, ConnectionLost
from bbmq.protocol import (
    NEED_DATA,
    ClientConnection,
    ClientShutdownSignal,
    CloseConnectionSignal,
    Error,
    LocalProtocolError,
    ProtocolError,
    ServerAcknowledgement,
    State,
    TypedFrame,
)


class AsyncChannel:
    """One framed asyncio connection to the broker (one per client object).

    Made with :meth:`open`.  Reads are for one task at a time; sends may come
    from any task of the loop (a send is synchronous up to the transport's
    buffer, so frames never interleave).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 address: tuple[str, int]) -> None:
        self.address = address
        self._reader = reader
        self._writer = writer
        self.connection = ClientConnection()
        #: Frames received and checked, not yet read.
        self._events: deque[TypedFrame] = deque()
        #: Why the stream broke, once the frames before the break have been read.
        self._broken: ProtocolError | None = None
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
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context else None,
                    limit=READ_BYTES)
        except ssl.SSLError as error:
            raise ConnectionLost(f"TLS with {host}:{port} failed: {error}; check that the "
                                 "broker serves TLS and that ca_file names its CA") from None
        except (OSError, TimeoutError) as error:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {error or 'timed out'}; "
                                 "is the broker running ('bbmq server status')?") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, (host, port))

    # ------------------------------------------------------------------ sending

    def send(self, frame: TypedFrame) -> None:
        """Write ``frame`` now, after whatever ``send_soon`` still holds."""
        self.send_all((frame,))

    def send_all(self, frames: Iterable[TypedFrame]) -> None:
        """Write ``frames`` in one write, after whatever ``send_soon`` still holds."""
        self._check_open()
        try:
            data = b"".join([*self._soon, *map(self.connection.send, frames)])
        except LocalProtocolError:
            self._refuse_after_goodbye()
            raise
        self._soon.clear()
        self._write(data)

    def send_soon(self, frame: TypedFrame) -> None:
        """Write ``frame`` at the end of this turn of the event loop, in one write with the
        frames sent soon in the same turn (a hundred acks in one write, not a hundred)."""
        self._check_open()
        try:
            self._soon.append(self.connection.send(frame))
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
        with contextlib.suppress(ConnectionLost):  # its user hears of it at the next call
            self.flush()

    def flush(self) -> None:
        """Write what ``send_soon`` holds, now."""
        if self._soon and not self.closed:
            data = b"".join(self._soon)
            self._soon.clear()
            self._write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark (a slow broker)."""
        try:
            await self._writer.drain()
        except OSError as error:
            self.close()
            raise ConnectionLost(f"send to {self.address[0]}:{self.address[1]} failed: "
                                 f"{error}") from None

    def _check_open(self) -> None:
        if self.closed:
            raise ConnectionLost("connection already closed")

    def _refuse_after_goodbye(self) -> None:
        """A frame refused because the connection is closing fails as on a closed socket."""
        if self.closed or self.connection.state in (State.CLOSING, State.CLOSED):
            raise ConnectionLost("the connection is closing") from None

    def _write(self, data: bytes) -> None:
        if self._writer.is_closing():
            self.close()
            raise ConnectionLost(f"send to {self.address[0]}:{self.address[1]} failed: "
                                 "the connection is closed")
        self._writer.write(data)

    # ------------------------------------------------------------------ reading

    def pending(self) -> bool:
        """A whole frame is already received (reading it will not wait)."""
        return bool(self._events)

    async def read(self, timeout: float | None = None) -> TypedFrame | None:
        """The next frame from the broker, or None when ``timeout`` seconds pass first."""
        if self._events or await self._wait(timeout):
            return self._events.popleft()
        return None

    async def read_all(self, timeout: float | None = None) -> list[TypedFrame]:
        """Every frame received so far, waiting up to ``timeout`` seconds for at least one."""
        events = self._events
        if events or await self._wait(timeout):
            frames = list(events)
            events.clear()
            return frames
        return []

    async def _wait(self, timeout: float | None) -> bool:
        """Read until a whole frame is in; False when ``timeout`` passes first."""
        self.flush()  # about to wait on the broker: nothing of ours should wait too
        try:
            async with asyncio.timeout(timeout):
                while not self._events:
                    await self._read_more()
        except TimeoutError:
            return False
        return True

    async def _read_more(self) -> None:
        if self._broken is not None:
            self.close()
            raise ConnectionLost(f"broker sent an invalid frame: {self._broken.text}")
        if self.closed:
            raise ConnectionLost("connection already closed")
        try:
            data = await self._reader.read(READ_BYTES)
        except OSError as error:
            self.close()
            raise ConnectionLost(f"connection to broker failed: {error}") from None
        if not data:
            self.close()
            raise ConnectionLost("the broker closed the connection")
        connection = self.connection
        connection.receive_data(data)
        events = cast("Iterator[TypedFrame]", iter(connection.next_event, NEED_DATA))
        try:
            self._events.extend(events)
        except ProtocolError as error:
            self._broken = error

    # ------------------------------------------------------------------ lifecycle

    async def handshake(self, frame: TypedFrame, timeout: float) -> dict[str, Any]:
        """Send the handshake ``frame``; the server's facts, once it grants the role."""
        try:
            self.send(frame)
            reply = await self.read(timeout)
        except BaseException:
            self.close()  # cancelled or failed half way: a half-open connection is no use
            raise
        if isinstance(reply, ServerAcknowledgement):
            return reply.info
        self.close()
        if isinstance(reply, Error):
            raise BrokerError(reply.code, reply.text)
        raise ConnectionLost(f"no handshake answer within {timeout:g} s (got {reply!r})")

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
            self._writer.close()
