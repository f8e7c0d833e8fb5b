"""NATS on 127.0.0.1:4222 via nats-py: JetStream for the durable phases, core NATS for transient.

nats-py is asyncio-only, so each client owns a private event loop and the
synchronous ``send``/``receive`` run coroutines on it to completion.

Durable = a JetStream stream with file storage, one per measurement.
``js.publish`` waits for the stream's PubAck; the window uses
``publish_async`` whose semaphore (``publish_async_max_pending``) is exactly
a sliding window of unacknowledged publishes.  JetStream acknowledges once the
message is written to the stream file, *not* fsynced: by default the server
syncs to disk every two minutes (``sync_interval``), so this is weaker than
RabbitMQ's or bbmq's "durable".  Consuming uses a pull consumer, ``fetch(100)``
and ``msg.ack()`` per message (acks are fire-and-forget publishes).

Transient = core ``nc.publish`` with no stream and no ack; "window" is a
``flush()`` (a PING/PONG round trip) after every ``window`` messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import version as package_version
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.api
from nats.aio.client import Client

from bench.systems.base import HOST, System, Unavailable, unique

URL = f"nats://{HOST}:4222"
T = TypeVar("T")


class _Loop:
    """A private event loop with one NATS connection, used synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc: Client = self.run(nats.connect(URL, connect_timeout=3, allow_reconnect=False))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.run(self.nc.drain())
        self.loop.close()


class JetStreamProducer(_Loop):
    def __init__(self, stream: str) -> None:
        super().__init__()
        self.subject = stream

    def send(self, bodies: Sequence[bytes], window: int) -> None:
        self.run(self._send(bodies, window))

    async def _send(self, bodies: Sequence[bytes], window: int) -> None:
        if window == 1:
            js = self.nc.jetstream()
            for body in bodies:
                await js.publish(self.subject, body)
            return
        js = self.nc.jetstream(publish_async_max_pending=window)
        futures = [await js.publish_async(self.subject, body) for body in bodies]
        await js.publish_async_completed()
        for future in futures:
            future.result()  # raises if the stream refused a message


class CoreProducer(_Loop):
    def __init__(self, subject: str) -> None:
        super().__init__()
        self.subject = subject

    def send(self, bodies: Sequence[bytes], window: int) -> None:
        self.run(self._send(bodies, window))

    async def _send(self, bodies: Sequence[bytes], window: int) -> None:
        for start in range(0, len(bodies), window):
            for body in bodies[start:start + window]:
                await self.nc.publish(self.subject, body)
            await self.nc.flush()


class JetStreamConsumer(_Loop):
    def __init__(self, stream: str, prefetch: int = 100) -> None:
        super().__init__()
        self.prefetch = prefetch
        self.subscription = self.run(self.nc.jetstream().pull_subscribe(
            stream, durable="bench", stream=stream))

    def receive(self, count: int, deadline: float, handle: Callable[[bytes], None]) -> int:
        return self.run(self._receive(count, deadline, handle))

    async def _receive(self, count: int, deadline: float,
                       handle: Callable[[bytes], None]) -> int:
        taken = 0
        while taken < count and (remaining := deadline - time.monotonic()) > 0:
            try:
                messages = await self.subscription.fetch(min(self.prefetch, count - taken),
                                                         timeout=min(remaining, 5.0))
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                handle(message.data)
                await message.ack()
            taken += len(messages)
        return taken


class NatsSystem(System):
    name = "nats"
    durability = ("no fsync per message: JetStream file storage acks after the write; the "
                  "server fsyncs every 2 min by default (sync_interval)")
    method = ("nats-py: js.publish (awaits PubAck) one at a time, js.publish_async with "
              "publish_async_max_pending=W for batches/windows; pull consumer fetch(100) + "
              "ack per message; transient = core publish + flush per window")

    def __init__(self) -> None:
        self._version = ""

    def _admin(self, work: Callable[[Client], Coroutine[Any, Any, T]]) -> T:
        async def run() -> T:
            nc = await nats.connect(URL, connect_timeout=3, allow_reconnect=False)
            try:
                return await work(nc)
            finally:
                await nc.close()

        return asyncio.run(run())

    def start(self) -> None:
        async def probe(nc: Client) -> str:
            await nc.jetstream().account_info()  # fails if JetStream is off
            version = nc.connected_server_version
            return f"{version.major}.{version.minor}.{version.patch}"

        try:
            self._version = f"nats-server {self._admin(probe)}"
        except Exception as error:  # nats-py raises several unrelated types here
            raise Unavailable(f"NATS JetStream on {HOST}:4222 does not answer: "
                              f"{error!r}") from None

    def version(self) -> str:
        return f"{self._version}, nats-py {package_version('nats-py')}"

    def new_queue(self, durable: bool) -> str:
        name = unique("BENCH_")
        if durable:
            config = nats.js.api.StreamConfig(
                name=name, subjects=[name], storage=nats.js.api.StorageType.FILE)
            self._admin(lambda nc: nc.jetstream().add_stream(config))
        return name

    def drop_queue(self, queue: str, durable: bool) -> None:
        if durable:
            self._admin(lambda nc: nc.jetstream().delete_stream(queue))

    def producer(self, queue: str, durable: bool) -> JetStreamProducer | CoreProducer:
        return JetStreamProducer(queue) if durable else CoreProducer(queue)

    def consumer(self, queue: str, durable: bool) -> JetStreamConsumer:
        if not durable:
            raise Unavailable("the benchmark consumes only from JetStream streams")
        return JetStreamConsumer(queue)
