"""The asyncio Consumer: bbmq/client/consuming.py's decisions over an AsyncChannel, and the
Message it hands out, which settles itself (``await message.ack()``).

Cancellation: the consumer's state (the FETCH requests open and what they
still owe, the frames received) changes only in synchronous steps, so a task
cancelled in ``fetch`` or in ``async for`` loses nothing: a message on its
way is handed out by the next ``fetch`` or iteration, and one still unacked
when the consumer closes is redelivered by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Self, TypeVar

from bbmq.aio.base import AsyncClient
from bbmq.aio.channel import AsyncChannel
from bbmq.client import message as blocking_message
from bbmq.client.arguments import checked_name
from bbmq.client.consuming import (
    FetchQueue,
    ack_frames,
    log_handler_failure,
    nack_frame,
    retry_delay,
)
from bbmq.client.errors import BrokerError, ConnectionLost, Redirected
from bbmq.client.retry import Backoff, Reconnect, interrupted_level
from bbmq.defaults import DLQ_SUFFIX
from bbmq.protocol import Ack, ClientSubscriber, TypedFrame

log = logging.getLogger("bbmq.client")
T = TypeVar("T")

#: A stream lets the event loop run once per this many messages.  A batch of buffered
#: messages is otherwise handed out without a single yield: the application's other tasks
#: would wait for the whole batch, and so would the reads that keep the next batch coming
#: (yielding every 10 raised consume+ack throughput in the bench; every 25, less so).
YIELD_EVERY: Final = 10


@dataclass(frozen=True, slots=True)
class Message(blocking_message.Message):
    """A delivered message that knows the connection it came on: ``await message.ack()`` or
    ``await message.nack(delay=...)`` settles it there.

    The blocking client settles through its consumer (``consumer.ack(message)``),
    which this client offers too; only here does the message carry its
    connection, because only here is settling an ``await`` that a handler
    can do without holding on to the consumer.  Settling on the connection
    the message came on, not on a newer one, keeps the meaning exact: after a
    lost connection, ``ack`` raises ConnectionLost and the broker redelivers.  After
    a REDIRECT (a cluster moved the topic), settling is void and raises nothing: the
    topic's new broker delivers the message again (PROTOCOL.md 4.7).
    """

    consumer: Consumer = field(kw_only=True, repr=False, compare=False)
    channel: AsyncChannel = field(kw_only=True, repr=False, compare=False)

    async def ack(self) -> None:
        """Done with the message: it will not be delivered again (to this group)."""
        try:  # noqa: SIM105 - per message: a try costs nothing, suppress() a call
            _open(self).send_soon(Ack((self.id,)))
        except Redirected:
            pass  # void: the topic's new broker delivers the message again

    async def nack(self, *, delay: float | None = None, reason: str | None = None) -> None:
        """Give the message back: redelivered at once, or after ``delay`` seconds."""
        await self.consumer.nack(self, delay=delay, reason=reason)


def _open(message: Message) -> AsyncChannel:
    """The connection ``message`` came on, where it is settled; ConnectionLost if closed
    (Redirected if a REDIRECT closed it)."""
    channel = message.channel
    if channel.closed:
        raise channel.inbox.broken_error() or ConnectionLost(
            f"the connection message {message.id} came on is closed; the broker redelivers it")
    return channel


class Consumer(AsyncClient):
    """Consumes one topic as a member of ``group`` (consumers of a group share its messages).

    ``await fetch(timeout=...)`` for one message, ``async for message in
    consumer`` for a stream with ``prefetch`` messages requested ahead (they can
    follow one another, as with the blocking Consumer), or ``await run(handler)``.
    ``brokers``: the brokers of a cluster, as for the blocking Consumer (it follows a
    REDIRECT to the topic's broker; the messages of the connection it closed are
    delivered again there, and settling them on the old one is void).
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
        #: Messages the stream handed out since it last let the loop run (see __anext__).
        self._handed_since_yield = 0
        #: run()'s task, and whether stop() may cancel it now (see _stoppable).
        self._run_task: asyncio.Task[Any] | None = None
        self._interruptible = False
        self._stop_requested = False
        self._stop_cancelled = False

    def _handshake_frame(self) -> TypedFrame:
        return ClientSubscriber(self.topic, self.group, self._options())

    def _connected(self) -> None:
        self._fetches = FetchQueue()  # what the old connection owed, the broker redelivers

    def _bound(self, message: blocking_message.Message, channel: AsyncChannel) -> Message:
        return Message(message.id, message.body, message.attempt, message.meta,
                       consumer=self, channel=channel)

    async def fetch(self, timeout: float | None = None) -> Message | None:
        """One message; waits until one comes, or returns None after ``timeout`` seconds.

        Messages already on their way (requested by a stream left early, or by
        a fetch that was cancelled) come first; only when none are does it ask
        the broker for one.  A REDIRECT is followed within the same ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                return await self._fetch(loop, deadline)
            except Redirected:
                continue  # the topic moved: the next try connects where the REDIRECT says

    async def _fetch(self, loop: asyncio.AbstractEventLoop,
                     deadline: float | None) -> Message | None:
        channel = await self.channel()
        fetches = self._fetches
        asked = False
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if not asked and not fetches.owed and not channel.pending():
                channel.send(fetches.fetch(1, None if left is None else int(left * 1000)))
                asked = True
            if asked:
                frame = await channel.read()  # our FETCH ends with a message or QUEUE_EMPTY
            elif (frame := await channel.read(left)) is None:
                return None  # what an earlier FETCH still owes did not come in time
            message = fetches.received(frame)
            if message is not None:
                return self._bound(message, channel)
            if asked and not fetches.owed:
                return None  # QUEUE_EMPTY: nothing came within the long poll

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        """The next message of the stream, keeping up to ``prefetch`` requested ahead."""
        self._handed_since_yield += 1
        if self._handed_since_yield >= YIELD_EVERY:
            # Messages already buffered are handed out without waiting: let the loop run
            # its other tasks and callbacks now and then (before any is taken: a cancel
            # here loses nothing).
            self._handed_since_yield = 0
            await asyncio.sleep(0)
        while True:
            channel = self._channel
            if channel is None or channel.closed:
                channel = await self.channel()  # (re)connects: closed between two messages
            fetches = self._fetches
            try:
                if (more := fetches.top_up(self.prefetch)) is not None:
                    channel.send(more)
                message = fetches.received(await channel.read())
            except Redirected:
                continue  # the topic moved: connect where the REDIRECT says, ask again
            if message is not None:
                return self._bound(message, channel)

    async def _channel_of(self, message: blocking_message.Message | int) -> AsyncChannel:
        return _open(message) if isinstance(message, Message) else await self.channel()

    async def ack(self, message: blocking_message.Message | int) -> None:
        """Done with the message.  The ack is written at the end of this turn of the event
        loop, in one write with the acks made in the same turn; close() sends what is left."""
        try:
            channel = await self._channel_of(message)
            channel.send_soon(Ack((message if isinstance(message, int) else message.id,)))
        except Redirected:
            pass  # void: the topic's new broker delivers the message again

    async def ack_many(self, messages: Iterable[blocking_message.Message | int]) -> None:
        """Ack several messages in as few frames as fit in a header."""
        by_channel: dict[AsyncChannel, list[blocking_message.Message | int]] = {}
        for message in messages:
            try:
                by_channel.setdefault(await self._channel_of(message), []).append(message)
            except Redirected:
                continue  # void: the topic's new broker delivers the message again
        for channel, batch in by_channel.items():
            with contextlib.suppress(Redirected):
                channel.send_all(ack_frames(batch))

    async def nack(self, message: blocking_message.Message | int, *,
                   delay: float | None = None, reason: str | None = None) -> None:
        """Give the message back: redelivered at once, or after ``delay`` seconds."""
        try:
            channel = await self._channel_of(message)
            channel.send(nack_frame(message, delay, reason))
        except Redirected:
            pass  # void: the topic's new broker delivers the message again

    async def run(self, handler: Callable[[Message], Awaitable[object]], *,
                  concurrency: int | None = None, backoff: float = 1.0,
                  max_backoff: float = 60.0) -> None:
        """Process messages with up to ``concurrency`` (default: prefetch) handlers at once,
        until :meth:`stop` is called or the task running this is cancelled.

        As the blocking ``run``: a message is acked when ``handler`` returns and
        nacked when it raises, to come back after ``backoff * 2**(attempt-1)``
        seconds (at most ``max_backoff``); a lost connection is re-established
        with backoff, and what was in flight on it is redelivered; when the
        broker cannot be reached at all on the first attempt, CannotConnect is
        raised at once.  Stopped or cancelled, it takes no more messages and
        waits for the handlers running to settle theirs; cancelled again
        meanwhile, it cancels them (their messages are redelivered).
        """
        slots = asyncio.Semaphore(concurrency or self.prefetch)
        running: set[asyncio.Task[None]] = set()
        reconnect = Reconnect(Backoff.reconnect(max_backoff))

        async def process(message: Message) -> None:
            try:
                await handler(message)
            except Exception as error:
                delay = retry_delay(message.attempt, backoff, max_backoff)
                log_handler_failure(message, error, delay, self.server_info.get(
                    "max_attempts", 0), self.topic + DLQ_SUFFIX)
                await _settle(message.nack(delay=delay, reason=type(error).__name__))
            else:
                await _settle(message.ack())
            finally:
                slots.release()

        self._stop_requested = False
        self._run_task = asyncio.current_task()
        try:
            while not self._stop_requested:
                try:
                    message = await self._next_for_run(slots)
                except BrokerError as error:
                    if self._gives_up(error):
                        raise
                    if self._channel is not None:
                        self._channel.close()
                    pause = reconnect.pause(error)
                    log.log(interrupted_level(error), "consumer of %s/%s: %s; reconnecting "
                            "in %.1f s", self.topic, self.group, error, pause)
                    await self._stoppable(asyncio.sleep(pause))
                    continue
                if message is None:
                    break  # stop() came while it waited
                reconnect.reset()
                task = asyncio.create_task(process(message))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            self._run_task = None
            if running:  # stopped, cancelled or failed: the handlers in hand settle theirs
                await asyncio.gather(*running, return_exceptions=True)
            if self._channel is not None:
                self._channel.flush()  # the acks of the last handlers

    async def _next_for_run(self, slots: asyncio.Semaphore) -> Message | None:
        """The next message for a free handler slot; None once stop() is called."""
        if not await self._stoppable(slots.acquire()):
            return None
        try:
            message: Message | None = await self._stoppable(self.__anext__())
        except BaseException:
            slots.release()
            raise
        if message is None:
            slots.release()
        return message

    async def _stoppable(self, waiting: Awaitable[T]) -> T | None:
        """``await waiting``, or None when stop() interrupts it.  stop() cancels run()'s task
        only while it is in here, where a cancel loses nothing (the stream keeps what
        came); any other cancel goes on as a cancel."""
        self._interruptible = True
        try:
            return await waiting
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop_cancelled and task is not None and task.uncancel() == 0:
                return None
            raise
        finally:
            self._interruptible = False
            self._stop_cancelled = False

    def stop(self) -> None:
        """End :meth:`run`: it takes no more messages, lets the handlers running now finish
        (and acks or nacks what they did), and returns.

        Call it on the event loop's thread (a handler, a signal handler added with
        ``loop.add_signal_handler``; from another thread, through
        ``loop.call_soon_threadsafe``).  The messages requested but not handed to a
        handler stay buffered for the next fetch, or are redelivered once the
        consumer is closed.
        """
        self._stop_requested = True
        if self._run_task is not None and self._interruptible and not self._stop_cancelled:
            self._stop_cancelled = True
            self._run_task.cancel()


async def _settle(settling: Awaitable[None]) -> None:
    try:
        await settling
    except ConnectionLost as error:
        log.warning("could not settle a message (%s); it will be redelivered", error)
