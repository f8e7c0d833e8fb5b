"""The Python client library: :class:`Producer` and :class:`Consumer` over plain sockets.

Blocking and dependency-free, built on the same sans-IO :mod:`bbmq.protocol`
as the server.  A lost connection always surfaces as :class:`ConnectionLost`
(never a hang: every read has a deadline or ends when the socket closes), and
errors from the broker as :class:`BrokerError` with the broker's code and text.

Publishing is idempotent: every message carries a ``msgid``; when a connection
drops (or the store is briefly unavailable) before the ack, the producer
reconnects and sends the unacked messages again, and the broker acks a repeat
with the original id instead of storing it twice.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from bbmq import protocol as p
from bbmq.defaults import DEFAULT_HOST, DEFAULT_PORT, DLQ_SUFFIX
from bbmq.protocol import ErrorCode

#: How long an ack may wait to share a write with the acks after it (see Channel.send_soon).
ACK_LINGER_S = 0.002
#: Frames that ``send_soon`` holds at most before it writes them at once.
SOON_MAX_FRAMES = 128
log = logging.getLogger("bbmq.client")


def default_address() -> tuple[str, int]:
    """The broker address from BBMQ_HOST / BBMQ_PORT, else 127.0.0.1:15333."""
    return os.environ.get("BBMQ_HOST", DEFAULT_HOST), int(os.environ.get("BBMQ_PORT",
                                                                         DEFAULT_PORT))


class BrokerError(Exception):
    """The broker answered with an ERROR frame."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class PublishError(BrokerError):
    """The broker refused a message for good (a bad option, say): fix it, do not retry.

    Messages published in the same call may have been stored all the same:
    ``ids`` holds, in call order, each message's id, or 0 where it was not.
    """

    def __init__(self, code: str, text: str, ids: list[int]) -> None:
        super().__init__(code, text)
        self.ids = ids


class InvalidArgument(BrokerError, ValueError):
    """Refused before anything was sent (a bad name or option), with the code the broker
    would have given."""


def _checked_name(kind: str, name: str) -> str:
    try:
        return p.check_name(kind, name)
    except p.ProtocolError as error:
        raise InvalidArgument(error.code, error.text) from None


def _milliseconds(what: str, seconds: float | None, *, minimum: int) -> int | None:
    """``seconds`` as whole milliseconds (rounded up), checked against the protocol's bounds."""
    if seconds is None:
        return None
    ms = math.ceil(seconds * 1000)
    if not minimum <= ms <= p.MAX_DURATION_MS:
        raise InvalidArgument(ErrorCode.INVALID_PROTOCOL,
                              f"{what} must be from {minimum / 1000:g} to "
                              f"{p.MAX_DURATION_MS // 1000} seconds, got {seconds!r}")
    return ms


class ConnectionLost(BrokerError):
    """The connection closed or failed; what was not acked may be redelivered."""

    def __init__(self, text: str) -> None:
        super().__init__("CONNECTION_LOST", text)


@dataclass(frozen=True, slots=True)
class Message:
    """A delivered message: ack it, or nack it to have it redelivered."""

    id: int
    body: bytes
    attempt: int
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def sender(self) -> str | None:
        return self.meta.get("from")


class Channel:
    """One framed, blocking connection to the broker (shared by the client classes)."""

    def __init__(self, host: str, port: int, *, timeout: float, tls: bool | ssl.SSLContext,
                 ca_file: str | None) -> None:
        self.address = (host, port)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as error:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {error}; "
                                 "is the broker running ('bbmq server status')?") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            context = tls if isinstance(tls, ssl.SSLContext) else ssl.create_default_context(
                cafile=ca_file)
            try:
                sock = context.wrap_socket(sock, server_hostname=host)
            except (ssl.SSLError, OSError) as error:
                sock.close()
                raise ConnectionLost(f"TLS with {host}:{port} failed: {error}; check that the "
                                     "broker serves TLS and that --ca-file names its CA") from None
        sock.settimeout(None)
        self.sock = sock
        self.decoder = p.FrameDecoder(max_body_bytes=1 << 31)
        self.frames: deque[p.Frame] = deque()
        #: Guards the socket's sending side and ``_soon``; the flusher waits on it.
        self._sending = threading.Condition()
        self._soon: list[bytes] = []
        self._flusher: threading.Thread | None = None
        self.closed = False

    def send(self, data: bytes) -> None:
        """Write ``data`` now, after whatever ``send_soon`` still holds."""
        with self._sending:
            if self._soon:
                data = b"".join((*self._soon, data))
                self._soon.clear()
            self._write(data)

    def send_soon(self, data: bytes) -> None:
        """Write ``data`` within ACK_LINGER_S, in one write with the frames that join it.

        For acks while a stream of messages is being worked through: a hundred
        acks in one write instead of a hundred.  Frames sent with :meth:`send`
        go after these, so the order on the wire is the order of the calls.
        """
        with self._sending:
            self._soon.append(data)
            if len(self._soon) >= SOON_MAX_FRAMES:
                self._write_soon()
                return
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_soon, daemon=True,
                                                 name="bbmq-ack-flusher")
                self._flusher.start()
            elif len(self._soon) == 1:
                self._sending.notify()  # wake the flusher: it has something to linger over

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
        """A whole frame is already buffered (reading it will not block)."""
        return bool(self.frames)

    def read(self, timeout: float | None = None) -> p.TypedFrame | None:
        """The next frame from the broker, or None when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.frames and self._soon:
            self.flush()  # about to wait on the broker: nothing of ours should wait too
        while not self.frames:
            if self.closed:
                raise ConnectionLost("connection already closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 18)
            except TimeoutError:
                return None
            except OSError as error:
                self.close()
                raise ConnectionLost(f"connection to broker failed: {error}") from None
            if not data:
                self.close()
                raise ConnectionLost("the broker closed the connection")
            try:
                self.frames.extend(self.decoder.feed(data))
            except p.ProtocolError as error:
                self.close()
                raise ConnectionLost(f"broker sent an invalid frame: {error.text}") from None
        return p.parse(self.frames.popleft(), p.SERVER_FRAMES)

    def handshake(self, frame: p.TypedFrame, timeout: float) -> dict[str, Any]:
        self.send(frame.encode())
        reply = self.read(timeout)
        if isinstance(reply, p.ServerAcknowledgement):
            return reply.info
        self.close()
        if isinstance(reply, p.Error):
            raise BrokerError(reply.code, reply.text)
        raise ConnectionLost(f"no handshake answer within {timeout:g} s (got {reply!r})")

    def goodbye(self, timeout: float = 5.0) -> None:
        """Say CLIENT_SHUTDOWN_SIGNAL, wait for CLOSE_CONNECTION_SIGNAL, close."""
        if self.closed:
            return
        try:
            self.send(p.ClientShutdownSignal().encode())
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                frame = self.read(remaining)
                if frame is None or isinstance(frame, p.CloseConnectionSignal):
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


def ping(host: str | None = None, port: int | None = None, *, timeout: float = 5.0,
         tls: bool | ssl.SSLContext = False, ca_file: str | None = None) -> float:
    """Seconds for a PING/PONG round trip (no handshake needed); raises if no answer."""
    default_host, default_port = default_address()
    started = time.monotonic()
    channel = Channel(host or default_host, port or default_port, timeout=timeout, tls=tls,
                      ca_file=ca_file)
    try:
        channel.send(p.Ping().encode())
        reply = channel.read(timeout)
        if not isinstance(reply, p.Pong):
            raise ConnectionLost(f"expected PONG, got {reply!r}")
        return time.monotonic() - started
    finally:
        channel.close()


class _Client:
    """What Producer and Consumer share: address, TLS, auth, connect and close."""

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
        self._channel: Channel | None = None

    def _options(self) -> dict[str, Any]:
        return {key: value for key, value in (("name", self.name), ("token", self.token))
                if value is not None}

    def _handshake_frame(self) -> p.TypedFrame:
        raise NotImplementedError

    def connect(self) -> Self:
        """Open the connection and do the handshake (idempotent)."""
        if self._channel is None or self._channel.closed:
            channel = Channel(self.host, self.port, timeout=self.timeout, tls=self.tls,
                              ca_file=self.ca_file)
            self.server_info = channel.handshake(self._handshake_frame(), self.timeout)
            self._channel = channel
        return self

    @property
    def channel(self) -> Channel:
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


class Producer(_Client):
    """Publishes to one topic.  ``publish`` waits for the broker's ack; ``publish_many`` pipelines.

    ``retry_for`` is how long a publish keeps trying (reconnecting, resending
    with the same msgid) through lost connections and STORE_UNAVAILABLE before
    it raises.
    """

    def __init__(self, topic: str, host: str | None = None, port: int | None = None, *,
                 name: str | None = None, token: str | None = None,
                 tls: bool | ssl.SSLContext = False, ca_file: str | None = None,
                 timeout: float = 30.0, retry_for: float = 30.0) -> None:
        super().__init__(host, port, name=name, token=token, tls=tls, ca_file=ca_file,
                         timeout=timeout)
        self.topic = _checked_name("topic", topic)
        self.retry_for = retry_for
        self._msgid_prefix = uuid.uuid4().hex[:16]
        self._msgid_seq = itertools.count()

    def _handshake_frame(self) -> p.TypedFrame:
        return p.ClientPublisher(self.topic, self._options())

    def publish(self, body: bytes | str, *, delay: float | None = None,
                ttl: float | None = None, group: str | None = None) -> int:
        """Publish one message; return its id once the broker has stored it.

        ``delay`` (seconds) defers delivery; ``ttl`` (seconds) drops it if not
        delivered in time; ``group`` gives it to that consumer group only (the
        others never see it), as ``bbmq dlq replay`` does.
        """
        return self.publish_many([body], delay=delay, ttl=ttl, group=group)[0]

    def publish_many(self, bodies: Iterable[bytes | str], *, window: int = 1000,
                     delay: float | None = None, ttl: float | None = None,
                     group: str | None = None) -> list[int]:
        """Publish in order with up to ``window`` unacked in flight; return the ids in order.

        Messages the broker could not take for now (STORE_UNAVAILABLE,
        SERVER_BUSY) or whose ack was lost with the connection are sent again,
        with the same msgid, until ``retry_for`` runs out.
        """
        delay_ms = _milliseconds("delay", delay, minimum=0) or 0
        ttl_ms = _milliseconds("ttl", ttl, minimum=1)
        only = None if group is None else _checked_name("group", group)
        datas = [body.encode() if isinstance(body, str) else body for body in bodies]
        limit = self.server_info.get("max_message_bytes")  # known once connected
        if limit and (largest := max(map(len, datas), default=0)) > limit:
            raise InvalidArgument(ErrorCode.FRAME_TOO_LARGE,
                                  f"a message of {largest} bytes is over the broker's limit of "
                                  f"{limit}; split it or raise the broker's --max-message-size")
        frames = [self._frame(data, delay_ms, ttl_ms, only) for data in datas]
        ids: list[int] = [0] * len(frames)
        todo = list(range(len(frames)))
        deadline = time.monotonic() + self.retry_for
        pause = 0.05
        while todo:
            try:
                refused = self._pipeline(frames, todo, ids, window)
            except ConnectionLost as error:
                self._channel = None
                if time.monotonic() >= deadline:
                    raise
                log.warning("publish interrupted (%s); reconnecting to resend", error)
                refused = None
            todo = [index for index in todo if not ids[index]]
            if todo and time.monotonic() >= deadline:
                assert refused is not None
                raise BrokerError(refused.code, refused.text)
            if todo:
                time.sleep(pause)  # back off: the broker or its store is recovering
                pause = min(1.0, pause * 2)
        return ids

    def _frame(self, data: bytes, delay_ms: int, ttl_ms: int | None, group: str | None) -> bytes:
        msgid = f"{self._msgid_prefix}-{next(self._msgid_seq)}"
        return p.Publish(data, msgid, delay_ms, ttl_ms, group).encode()

    def _pipeline(self, frames: list[bytes], todo: list[int], ids: list[int],
                  window: int) -> p.Error | None:
        """Send ``frames[todo]`` keeping ``window`` unacked; fill ``ids`` as acks come.

        Each PUBLISH gets exactly one reply, in order: an ack or an ERROR.
        Returns the last retryable refusal, if any (those messages keep id 0).
        """
        channel = self.channel
        sent = replied = 0
        refused: p.Error | None = None
        failed: p.Error | None = None  # a final refusal: send no more, read what is owed
        while replied < (sent if failed else len(todo)):
            # Top the window up in large writes: once half of it has been acked.
            if not failed and sent < len(todo) and (sent == 0 or sent - replied <= window // 2):
                end = min(len(todo), replied + window)
                channel.send(b"".join(frames[index] for index in todo[sent:end]))
                sent = end
            try:
                reply = channel.read(self.timeout)
            except ConnectionLost:
                if failed:  # the refusal closed the connection (a frame too large, say)
                    raise PublishError(failed.code, failed.text, ids) from None
                raise
            if reply is None:
                channel.close()
                raise ConnectionLost(f"no ack from the broker within {self.timeout:g} s")
            if isinstance(reply, p.ProducerAckMessage):
                ids[todo[replied]] = reply.id
            elif isinstance(reply, p.Error) and reply.code in _RETRYABLE:
                refused = reply
            elif isinstance(reply, p.Error):
                failed = failed or reply
            else:
                continue  # PONG and the like: not a reply to a PUBLISH
            replied += 1
        if failed:
            raise PublishError(failed.code, failed.text, ids)
        return refused


_RETRYABLE = frozenset({ErrorCode.STORE_UNAVAILABLE, ErrorCode.SERVER_BUSY,
                        ErrorCode.SERVER_CLOSING})
#: Errors after which the server closes the connection and a consumer may come back.
_RECONNECT = frozenset({ErrorCode.SERVER_CLOSING, ErrorCode.SERVER_BUSY, ErrorCode.TIMEOUT})


class Consumer(_Client):
    """Consumes one topic as a member of ``group`` (consumers of a group share its messages).

    Use :meth:`fetch` for one message at a time, iterate for a stream with a
    prefetch window, or :meth:`run` to process with a thread pool.
    """

    def __init__(self, topic: str, group: str = "default", host: str | None = None,
                 port: int | None = None, *, name: str | None = None, token: str | None = None,
                 tls: bool | ssl.SSLContext = False, ca_file: str | None = None,
                 timeout: float = 30.0, prefetch: int = 100) -> None:
        super().__init__(host, port, name=name, token=token, tls=tls, ca_file=ca_file,
                         timeout=timeout)
        self.topic = _checked_name("topic", topic)
        self.group = _checked_name("group", group)
        self.prefetch = max(1, prefetch)
        self._credit = 0  # messages requested by the stream and not yet received

    def _handshake_frame(self) -> p.TypedFrame:
        return p.ClientSubscriber(self.topic, self.group, self._options())

    def fetch(self, timeout: float | None = None) -> Message | None:
        """One message; blocks until one comes, or returns None after ``timeout`` seconds."""
        if self._credit:
            raise RuntimeError("fetch() cannot be mixed with iterating the same consumer")
        channel = self.channel
        wait = None if timeout is None else max(0, int(timeout * 1000))
        channel.send(p.Fetch(1, wait).encode())
        while True:
            frame = channel.read()
            if isinstance(frame, p.Message):
                return Message(frame.id, frame.body, frame.attempt, frame.meta)
            if isinstance(frame, p.QueueEmpty):
                return None
            self._unexpected(frame)

    def __iter__(self) -> Iterator[Message]:
        """Stream messages for ever, keeping up to ``prefetch`` requested ahead."""
        channel = self.channel
        consumed = 0
        self._credit = self.prefetch
        channel.send(p.Fetch(self.prefetch).encode())
        while True:
            frame = channel.read()
            if not isinstance(frame, p.Message):
                self._unexpected(frame)
                continue
            self._credit -= 1
            yield Message(frame.id, frame.body, frame.attempt, frame.meta)
            consumed += 1
            if consumed * 2 >= self.prefetch:
                channel.send(p.Fetch(consumed).encode())
                self._credit += consumed
                consumed = 0

    def ack(self, message: Message | int) -> None:
        """Done with the message: it will not be delivered again (to this group).

        While more delivered messages are already waiting to be worked through,
        the ack may wait up to ACK_LINGER_S to share one write with the next
        ones; close() (or leaving the ``with`` block) sends what is left.
        """
        self._send_acks(p.Ack((message.id if isinstance(message, Message) else message,))
                        .encode())

    def ack_many(self, messages: Iterable[Message | int]) -> None:
        """Ack several messages in as few frames as fit in a header."""
        ids = [str(m.id if isinstance(m, Message) else m) for m in messages]
        frames: list[bytes] = []
        chunk: list[str] = []
        length = 0
        for text in ids:
            if length + len(text) + 1 > 900:
                frames.append(p.encode("ACK", chunk))
                chunk, length = [], 0
            chunk.append(text)
            length += len(text) + 1
        if chunk:
            frames.append(p.encode("ACK", chunk))
        self._send_acks(b"".join(frames))

    def _send_acks(self, data: bytes) -> None:
        channel = self.channel
        if channel.pending():  # more messages to work through: their acks can share a write
            channel.send_soon(data)
        else:
            channel.send(data)

    def nack(self, message: Message | int, *, delay: float | None = None,
             reason: str | None = None) -> None:
        """Give the message back: redelivered at once, or after ``delay`` seconds."""
        message_id = message.id if isinstance(message, Message) else message
        reason_token = None if reason is None else "_".join(reason.split())[:200] or None
        self.channel.send(p.Nack(message_id, _milliseconds("delay", delay, minimum=0) or 0,
                                 reason_token).encode())

    def run(self, handler: Callable[[Message], object], *, workers: int = 4,
            backoff: float = 1.0, max_backoff: float = 60.0,
            stop: threading.Event | None = None) -> None:
        """Process messages on ``workers`` threads until ``stop`` is set.

        A message is acked when ``handler`` returns and nacked when it raises,
        with an exponential retry delay: ``backoff * 2**(attempt-1)`` seconds,
        at most ``max_backoff``.  A lost connection (a broker restart, say) is
        re-established with backoff; what was in flight on it is redelivered.
        """
        stop = stop or threading.Event()
        slots = threading.Semaphore(self.prefetch)

        def process(message: Message, channel: Channel) -> None:
            try:
                handler(message)
            except Exception as error:
                delay = min(max_backoff, backoff * 2 ** min(message.attempt - 1, 32))
                reason = type(error).__name__
                max_attempts = self.server_info.get("max_attempts", 0)
                if max_attempts and message.attempt >= max_attempts:
                    log.warning("handler failed on message %d (attempt %d of %d): %s; it goes "
                                "to the dead-letter topic %s", message.id, message.attempt,
                                max_attempts, error, self.topic + DLQ_SUFFIX)
                else:
                    log.warning("handler failed on message %d (attempt %d): %s; retry in "
                                "%.1f s", message.id, message.attempt, error, delay)
                nack = p.Nack(message.id, _milliseconds("delay", delay, minimum=0) or 0,
                              "_".join(reason.split())[:200] or None)
                self._settle(lambda: channel.send(nack.encode()))
            else:
                self._settle(lambda: channel.send_soon(p.Ack((message.id,)).encode()))
            finally:
                slots.release()

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bbmq-handler") as pool:
            reserved = 0  # slots held for the open FETCH: one per message it may still bring
            pause = 0.1
            while not stop.is_set():
                try:
                    channel = self.channel
                    if not reserved:
                        if not slots.acquire(timeout=0.2):
                            continue
                        reserved = 1
                        while reserved < self.prefetch and slots.acquire(blocking=False):
                            reserved += 1
                        # A long poll for as many as there are free slots: it ends as soon
                        # as it brought what was ready, so a trickle is never held back.
                        channel.send(p.Fetch(reserved, 200).encode())
                    frame = channel.read(1.0)
                    if isinstance(frame, p.Error) and frame.code in _RECONNECT:
                        channel.close()
                        raise ConnectionLost(f"the broker closed the connection: {frame.text}")
                except BrokerError as error:
                    if not isinstance(error, ConnectionLost) and error.code not in _RECONNECT:
                        raise
                    for _ in range(reserved):
                        slots.release()
                    reserved = 0
                    self._channel = None
                    log.warning("consumer of %s/%s: %s; reconnecting in %.1f s",
                                self.topic, self.group, error, pause)
                    stop.wait(pause)
                    pause = min(max_backoff, pause * 2)
                    continue
                pause = 0.1
                if frame is None:
                    continue
                if isinstance(frame, p.QueueEmpty):
                    for _ in range(reserved):
                        slots.release()
                    reserved = 0
                elif isinstance(frame, p.Message):
                    reserved -= 1  # this message takes one of the request's slots
                    pool.submit(process, Message(frame.id, frame.body, frame.attempt, frame.meta),
                                channel)
                else:
                    self._unexpected(frame)

    def _settle(self, send: Callable[[], None]) -> None:
        try:
            send()
        except ConnectionLost as error:
            log.warning("could not settle a message (%s); it will be redelivered", error)

    def _unexpected(self, frame: p.TypedFrame | None) -> None:
        if isinstance(frame, p.Error):
            if frame.code == ErrorCode.UNKNOWN_MESSAGE:
                log.warning("broker: %s", frame.text)
                return
            raise BrokerError(frame.code, frame.text)
        raise ConnectionLost(f"unexpected frame from the broker: {frame!r}")
