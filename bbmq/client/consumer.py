"""The blocking Consumer: consuming.py's decisions over a Channel, plus ``run`` with its
worker threads and reconnects."""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from bbmq.client.arguments import checked_name
from bbmq.client.base import Client, never_reached
from bbmq.client.channel import Channel
from bbmq.client.consuming import (
    FetchQueue,
    ack_frames,
    log_handler_failure,
    nack_frame,
    retry_delay,
)
from bbmq.client.errors import BrokerError, ConnectionLost, Redirected
from bbmq.client.message import Message
from bbmq.client.retry import Backoff, Reconnect, comes_back, interrupted_level
from bbmq.defaults import DLQ_SUFFIX
from bbmq.protocol import Ack, ClientSubscriber, TypedFrame

log = logging.getLogger("bbmq.client")

#: How long ``run``'s long polls wait: they end as soon as they brought what was ready,
#: so a trickle is never held back, and an idle consumer sends one FETCH per this.
RUN_POLL_MS: Final = 200


class Consumer(Client):
    """Consumes one topic as a member of ``group`` (consumers of a group share its messages).

    Use :meth:`fetch` for one message at a time, iterate for a stream with a
    prefetch window, or :meth:`run` to process with a thread pool.  They can
    follow one another on the same consumer: leaving a ``for message in
    consumer`` loop early loses nothing, as the messages the stream had
    requested are handed out by the next ``fetch`` or iteration (or, once the
    consumer is closed, redelivered by the broker).

    ``brokers`` (``["h1:p1", "h2:p2"]``, or BBMQ_BROKERS) lists the brokers of a
    cluster: the consumer follows the topic to the broker that serves it (a
    REDIRECT) and asks it for messages again; the messages it had received on
    the connection the REDIRECT closed are not acked there or anywhere (their
    acks are dropped): the new broker delivers them again.
    """

    def __init__(self, topic: str, group: str = "default", host: str | None = None,
                 port: int | None = None, *, brokers: str | Iterable[str] | None = None,
                 name: str | None = None, token: str | None = None,
                 tls: bool | ssl.SSLContext = False, ca_file: str | None = None,
                 timeout: float | None = None, prefetch: int = 100) -> None:
        self.topic = checked_name("topic", topic)
        super().__init__(host, port, name=name, token=token, tls=tls, ca_file=ca_file,
                         timeout=timeout, brokers=brokers, topic=self.topic)
        self.group = checked_name("group", group)
        self.prefetch = max(1, prefetch)
        self._fetches = FetchQueue()
        #: Set by stop() (or close() while run() runs) to end run() after its handlers; a
        #: plain flag, not an Event, so that a signal handler may set it (an Event's lock
        #: may be held by the very thread the signal interrupts).
        self._stop_requested = False
        self._running = False
        self._close_after_run = False

    def _handshake_frame(self) -> TypedFrame:
        return ClientSubscriber(self.topic, self.group, self._options())

    def _connected(self, channel: Channel) -> None:
        self._fetches = FetchQueue()  # what the old connection owed, the broker redelivers

    def fetch(self, timeout: float | None = None) -> Message | None:
        """One message; blocks until one comes, or returns None after ``timeout`` seconds.

        Messages already on their way (requested by a stream left early) come
        first; only when none are does it ask the broker for one.  A REDIRECT is
        followed within the same ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._fetch(deadline)
            except Redirected:
                continue  # the topic moved: the next try connects where the REDIRECT says

    def _fetch(self, deadline: float | None) -> Message | None:
        channel = self.channel
        fetches = self._fetches
        asked = False
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not asked and not fetches.owed and not channel.pending():
                wait_ms = None if left is None else int(left * 1000)
                channel.send(fetches.fetch(1, wait_ms))
                asked = True
            if asked:
                frame = channel.read()  # our FETCH ends with a message or QUEUE_EMPTY
            elif (frame := channel.read(left)) is None:
                return None  # what an earlier FETCH still owes did not come in time
            message = fetches.received(frame)
            if message is not None:
                return message
            if asked and not fetches.owed:
                return None  # QUEUE_EMPTY: nothing came within the long poll

    def __iter__(self) -> Iterator[Message]:
        """Stream messages for ever, keeping up to ``prefetch`` requested ahead."""
        prefetch = self.prefetch
        while True:  # once per connection: closing the consumer between messages reconnects
            channel = self.channel
            fetches = self._fetches
            read, received, top_up = channel.read, fetches.received, fetches.top_up
            try:
                while not channel.closed:
                    if (more := top_up(prefetch)) is not None:
                        channel.send(more)
                    message = received(read())
                    if message is not None:
                        yield message
            except Redirected:
                continue  # the topic moved: connect where the REDIRECT says, ask again

    def ack(self, message: Message | int) -> None:
        """Done with the message: it will not be delivered again (to this group).

        While more delivered messages are already waiting to be worked through,
        the ack may wait up to ACK_LINGER_S to share one write with the next
        ones; close() (or leaving the ``with`` block) sends what is left.
        """
        if (channel := self._settling_channel()) is None:
            return
        frame = Ack((message.id if isinstance(message, Message) else message,))
        if channel.pending():  # more messages to work through: their acks can share a write
            channel.send_soon(frame)
        else:
            channel.send(frame)

    def ack_many(self, messages: Iterable[Message | int]) -> None:
        """Ack several messages in as few frames as fit in a header."""
        if (channel := self._settling_channel()) is None:
            return
        frames = ack_frames(messages)
        if channel.pending():
            for frame in frames:
                channel.send_soon(frame)
        else:
            channel.send_all(frames)

    def nack(self, message: Message | int, *, delay: float | None = None,
             reason: str | None = None) -> None:
        """Give the message back: redelivered at once, or after ``delay`` seconds."""
        if (channel := self._settling_channel()) is not None:
            channel.send(nack_frame(message, delay, reason))

    def _settling_channel(self) -> Channel | None:
        """The connection to settle messages on; None when it ended with a REDIRECT and
        no new one is open yet: the messages came on it, and the topic's new broker
        delivers them again (PROTOCOL.md 4.7), so acking or nacking them is void."""
        channel = self._channel
        if channel is not None and channel.inbox.redirect is not None:
            log.info("not settling a message of %s: its connection was redirected; the "
                     "topic's new broker delivers it again", self.topic)
            return None
        return self.channel

    def stop(self) -> None:
        """End :meth:`run`: it asks for no more messages, lets the handlers running now
        finish (and acks or nacks what they did), and returns.

        Safe from any thread, from a handler and from a signal handler; the
        messages requested but not yet handed to a handler are redelivered
        once the consumer is closed.
        """
        self._stop_requested = True

    def close(self) -> None:
        """Close the connection; while :meth:`run` is running (called from another thread
        or a handler), stop it instead and let it close the connection as it returns."""
        if self._running:
            self._close_after_run = True
            self.stop()
            return
        super().close()

    def run(self, handler: Callable[[Message], object], *, workers: int = 4,
            backoff: float = 1.0, max_backoff: float = 60.0,
            stop: threading.Event | None = None) -> None:
        """Process messages on ``workers`` threads until :meth:`stop` is called (or ``stop``
        is set).

        A message is acked when ``handler`` returns and nacked when it raises,
        with an exponential retry delay: ``backoff * 2**(attempt-1)`` seconds,
        at most ``max_backoff``.  A lost connection (a broker restart, say) is
        re-established with backoff; what was in flight on it is redelivered.
        When the broker cannot be reached at all on the first attempt,
        :class:`~bbmq.client.errors.CannotConnect` is raised at once.
        """
        self._running = True
        try:
            self._run(handler, workers, backoff, max_backoff, stop or threading.Event())
        finally:
            self._running = False
            self._stop_requested = False
            if self._channel is not None and not self._channel.closed:
                with contextlib.suppress(ConnectionLost):  # then they are redelivered
                    self._channel.flush()  # the acks of the last handlers
            if self._close_after_run:
                self._close_after_run = False
                super().close()

    def _run(self, handler: Callable[[Message], object], workers: int, backoff: float,
             max_backoff: float, stop: threading.Event) -> None:
        def stopping() -> bool:
            return self._stop_requested or stop.is_set()

        slots = threading.Semaphore(self.prefetch)

        def process(message: Message, channel: Channel) -> None:
            try:
                handler(message)
            except Exception as error:
                delay = retry_delay(message.attempt, backoff, max_backoff)
                log_handler_failure(message, error, delay, self.server_info.get(
                    "max_attempts", 0), self.topic + DLQ_SUFFIX)
                nack = nack_frame(message, delay, type(error).__name__)
                self._settle(lambda: channel.send(nack))
            else:
                self._settle(lambda: channel.send_soon(Ack((message.id,))))
            finally:
                slots.release()

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bbmq-handler") as pool:
            held = 0  # slots held for the messages run()'s open FETCH may still bring
            reconnect = Reconnect(Backoff.reconnect(max_backoff))
            while not stopping():
                try:
                    channel = self.channel
                    fetches = self._fetches
                    if not fetches.owed and not channel.pending():
                        if not slots.acquire(timeout=0.2):
                            continue
                        held = 1
                        while held < self.prefetch and slots.acquire(blocking=False):
                            held += 1
                        # A long poll for as many as there are free slots.
                        channel.send(fetches.fetch(held, RUN_POLL_MS))
                    frame = channel.read(1.0)
                    # Messages owed beyond the held slots were asked for before run()
                    # (a stream left early): they come first, and need slots of their own.
                    earlier = fetches.owed - held
                    message = None if frame is None else fetches.received(frame)
                except BrokerError as error:
                    if not comes_back(error) or never_reached(self, error):
                        raise
                    if stopping():
                        break  # the connection went with a close() that stopped us
                    for _ in range(held):
                        slots.release()
                    held = 0
                    if self._channel is not None:
                        self._channel.close()  # the next turn connects (where a REDIRECT says)
                    pause = reconnect.pause(error)
                    log.log(interrupted_level(error), "consumer of %s/%s: %s; reconnecting "
                            "in %.1f s", self.topic, self.group, error, pause)
                    _pause(pause, stopping)
                    continue
                reconnect.reset()
                if message is not None:
                    if earlier > 0:
                        slots.acquire()
                    else:
                        held -= 1  # this message takes one of the request's slots
                    pool.submit(process, message, channel)
                elif fetches.owed < held:  # QUEUE_EMPTY: the long poll ended short
                    for _ in range(held - fetches.owed):
                        slots.release()
                    held = fetches.owed

    def _settle(self, send: Callable[[], None]) -> None:
        try:
            send()
        except ConnectionLost as error:
            log.log(interrupted_level(error), "could not settle a message (%s); it will be "
                    "redelivered", error)


#: How often a reconnect pause of run() looks whether it was asked to stop.
STOP_CHECK_S: Final = 0.1


def _pause(seconds: float, stopping: Callable[[], bool]) -> None:
    """Back off for ``seconds`` before reconnecting, or less once ``stopping()`` says so."""
    deadline = time.monotonic() + seconds
    while not stopping() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, STOP_CHECK_S))
