"""The asyncio client: :class:`Producer` and :class:`Consumer` with the names, semantics,
errors and retry policy of the blocking :mod:`bbmq.client`.

Only the socket calls are its own (channel.py, base.py); the grammar is
:mod:`bbmq.protocol`'s ``ClientConnection`` and every decision (the publish
window and its retries, the FETCH bookkeeping, ack chunking, argument checks)
comes from the blocking client's sans-I/O modules::

    async with Producer("jobs") as producer:
        await producer.publish(b"hello")

    async with Consumer("jobs", "workers") as consumer:
        async for message in consumer:
            ...
            await message.ack()
"""

from bbmq.aio.consumer import Consumer, Message
from bbmq.aio.producer import Producer
from bbmq.client.errors import (
    BrokerError,
    CannotConnect,
    ConnectionLost,
    InvalidArgument,
    PublishError,
    Redirected,
)

__all__ = ["BrokerError", "CannotConnect", "ConnectionLost", "Consumer", "InvalidArgument",
           "Message", "Producer", "PublishError",
           "Redirected"]
