"""One blocking connection to the broker: a socket (TLS or not) under a sans-IO
:class:`~bbmq.protocol.ClientConnection`.

The connection object does all encoding, decoding and state keeping; this
module only moves its bytes.  An asyncio client replaces this module alone.
A lost connection always surfaces as :class:`ConnectionLost`, never as a
hang: every read has a deadline or ends when the socket closes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any, Final

from bbmq.client.errors import BrokerError, CannotConnect, ConnectionLost
from bbmq.client.inbox import Inbox, handshake_info
from bbmq.protocol import (
    ClientShutdownSignal,
    CloseConnectionSignal,
    LocalProtocolError,
    ServerAcknowledgement,
    TypedFrame,
)

#: How long an ack may wait to share a write with the acks after it (see Channel.send_soon).
ACK_LINGER_S: Final = 0.002
#: Frames that ``send_soon`` holds at most before it writes them at once.
SOON_MAX_FRAMES: Final = 128
#: Bytes asked of the socket per read: many deliveries at once when they stream.
READ_BYTES: Final = 1 << 18


class Channel:
    """One framed, blocking connection to the broker (shared by the client classes).

    Sending is thread-safe (worker threads ack while the reader reads);
    reading is for one thread at a time.
    """

    def __init__(self, host: str, port: int, *, timeout: float, tls: bool | ssl.SSLContext,
                 ca_file: str | None) -> None:
        self.address = (host, port)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as error:
            raise CannotConnect(f"cannot connect to {host}:{port}: {error}; is a broker "
                                "running there ('bbmq server status' on its machine)?") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            context = tls if isinstance(tls, ssl.SSLContext) else ssl.create_default_context(
                cafile=ca_file)
            try:
                sock = context.wrap_socket(sock, server_hostname=host)
            except (ssl.SSLError, OSError) as error:
                sock.close()
                raise CannotConnect(f"TLS with {host}:{port} failed: {error}; check that the "
                                     "broker serves TLS and that --ca-file names its CA") from None
        sock.settimeout(None)
        self.sock = sock
        self.inbox = Inbox()
        #: Guards the socket's sending side, the connection's state and ``_soon``;
        #: the flusher waits on it.
        self._sending = threading.Condition()
        self._soon: list[bytes] = []
        self._flusher: threading.Thread | None = None
        self.closed = False

    def send(self, frame: TypedFrame) -> None:
        """Write ``frame`` now, after whatever ``send_soon`` still holds."""
        self.send_all((frame,))

    def send_all(self, frames: Iterable[TypedFrame]) -> None:
        """Write ``frames`` in one write, after whatever ``send_soon`` still holds."""
        with self._sending:
            try:
                data = b"".join([*self._soon, *map(self.inbox.connection.send, frames)])
            except LocalProtocolError:
                self._refuse_after_goodbye()
                raise
            self._soon.clear()
            self._write(data)

    def send_soon(self, frame: TypedFrame) -> None:
        """Write ``frame`` within ACK_LINGER_S, in one write with the frames that join it.

        For acks while a stream of messages is being worked through: a hundred
        acks in one write instead of a hundred.  Frames sent with :meth:`send`
        go after these, so the order on the wire is the order of the calls.
        """
        with self._sending:
            try:
                self._soon.append(self.inbox.connection.send(frame))
            except LocalProtocolError:
                self._refuse_after_goodbye()
                raise
            if len(self._soon) >= SOON_MAX_FRAMES:
                self._write_soon()
                return
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_soon, daemon=True,
                                                 name="bbmq-ack-flusher")
                self._flusher.start()
            elif len(self._soon) == 1:
                self._sending.notify()  # wake the flusher: it has something to linger over

    def _refuse_after_goodbye(self) -> None:
        """A frame the connection refused because it is closing (an ack from a worker thread
        after close(), say) fails as it would on the closed socket it is about to be."""
        if self.closed or self.inbox.closing():
            raise self.inbox.broken_error() or ConnectionLost("the connection is closing") from None

    def flush(self) -> None:
        """Write what ``send_soon`` holds, now."""
        with self._sending:
            self._write_soon()

    def _flush_soon(self) -> None:
        with self._sending:
            while not self.closed:
                if not self._soon:
                    self._sending.wait()
                    continue
                linger_until = time.monotonic() + ACK_LINGER_S  # the next acks join this write
                while (left := linger_until - time.monotonic()) > 0 and self._soon:
                    self._sending.wait(left)
                try:
                    self._write_soon()
                except ConnectionLost:
                    return  # the channel is closed: its user hears of it at the next call

    def _write_soon(self) -> None:
        if self._soon and not self.closed:
            data = b"".join(self._soon)
            self._soon.clear()
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as error:
            self.close()
            raise ConnectionLost(f"send to {self.address[0]}:{self.address[1]} failed: "
                                 f"{error}") from None

    def pending(self) -> bool:
        """A whole frame is already received (reading it will not block)."""
        return bool(self.inbox.events)

    def read(self, timeout: float | None = None) -> TypedFrame | None:
        """The next frame from the broker, or None when ``timeout`` seconds pass first."""
        events = self.inbox.events
        if events or self._wait(timeout):
            return events.popleft()
        return None

    def read_all(self, timeout: float | None = None) -> list[TypedFrame]:
        """Every frame received so far, waiting up to ``timeout`` seconds for at least one
        (none: the time passed)."""
        if self.inbox.events or self._wait(timeout):
            return self.inbox.take_all()
        return []

    def _wait(self, timeout: float | None) -> bool:
        """Read the socket until a whole frame is in; False when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._soon:
            self.flush()  # about to wait on the broker: nothing of ours should wait too
        events = self.inbox.events
        while not events:
            if (broken := self.inbox.broken_error()) is not None:
                self.close()
                raise broken
            if self.closed:
                raise ConnectionLost("connection already closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(READ_BYTES)
            except TimeoutError:
                return False
            except OSError as error:
                self.close()
                raise ConnectionLost(f"connection to broker failed: {error}") from None
            if not data:
                self.close()
                raise ConnectionLost("the broker closed the connection")
            self.inbox.receive(data)
        return True

    def handshake(self, frame: TypedFrame, timeout: float) -> dict[str, Any]:
        """Send the handshake ``frame``; the server's facts, once it grants the role."""
        self.send(frame)
        reply = self.read(timeout)
        if not isinstance(reply, ServerAcknowledgement):
            self.close()
        return handshake_info(reply, timeout)

    def goodbye(self, timeout: float = 5.0) -> None:
        """Say CLIENT_SHUTDOWN_SIGNAL, wait for CLOSE_CONNECTION_SIGNAL, close."""
        if self.closed:
            return
        try:
            self.send(ClientShutdownSignal())
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                frame = self.read(remaining)
                if frame is None or isinstance(frame, CloseConnectionSignal):
                    break
        except BrokerError:
            pass  # the goodbye is best effort: we are closing anyway
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with self._sending:
                self._soon.clear()
                self._sending.notify()  # the flusher ends
            with contextlib.suppress(OSError):
                self.sock.close()
