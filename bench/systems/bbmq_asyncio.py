"""bbmq driven by its asyncio client (:mod:`bbmq.aio`), beside the blocking client's figures.

The same broker process and store as bench/systems/bbmq_broker.py; only the
client differs.  Each bench client object runs its own event loop, and each
``send``/``receive`` call runs one coroutine to the end: a whole
``publish_many`` call, or a whole ``async for`` stream with an ack per message,
so the loop's per-call cost is paid once per call, as a service would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from bbmq import aio
from bench.systems.base import HOST
from bench.systems.bbmq_broker import BbmqSystem


class AsyncioProducer:
    def __init__(self, topic: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._producer = aio.Producer(topic, HOST, port)
        self._loop.run_until_complete(self._producer.connect())

    def send(self, bodies: Sequence[bytes], window: int) -> None:
        if len(bodies) == 1:
            self._loop.run_until_complete(self._producer.publish(bodies[0]))
        else:
            self._loop.run_until_complete(self._producer.publish_many(bodies, window=window))

    def close(self) -> None:
        self._loop.run_until_complete(self._producer.close())
        self._loop.close()


class AsyncioConsumer:
    """``async for`` over the asyncio Consumer (prefetch 100), ``await message.ack()`` each."""

    def __init__(self, topic: str, port: int, prefetch: int = 100) -> None:
        self._loop = asyncio.new_event_loop()
        self._consumer = aio.Consumer(topic, "bench", HOST, port, prefetch=prefetch)
        self._loop.run_until_complete(self._consumer.connect())

    def receive(self, count: int, deadline: float, handle: Callable[[bytes], None]) -> int:
        return self._loop.run_until_complete(self._receive(count, deadline, handle))

    async def _receive(self, count: int, deadline: float,
                       handle: Callable[[bytes], None]) -> int:
        # As the blocking adapter: the phase's child process is killed at its time limit.
        taken = 0
        if count <= 0:
            return taken
        async for message in self._consumer:
            handle(message.body)
            await message.ack()
            taken += 1
            if taken >= count or time.monotonic() >= deadline:
                break
        return taken

    def close(self) -> None:
        self._loop.run_until_complete(self._consumer.close())
        self._loop.close()


class BbmqAsyncioSystem(BbmqSystem):
    """A bbmq broker subprocess with one store kind, driven by bbmq.aio."""

    def __init__(self, store: str) -> None:
        super().__init__(store)
        self.name = f"bbmq-{store}-asyncio"
        self.method = ("bbmq.aio: await publish() per message, await publish_many(window=W); "
                       "async for over the Consumer with prefetch 100, await message.ack() "
                       "per message")

    def producer(self, queue: str, durable: bool) -> AsyncioProducer:  # type: ignore[override]
        return AsyncioProducer(queue, self.port)

    def consumer(self, queue: str, durable: bool) -> AsyncioConsumer:  # type: ignore[override]
        return AsyncioConsumer(queue, self.port)
