"""RabbitMQ on 127.0.0.1:5672 (guest/guest) through pika.

Publishing uses pika's ``SelectConnection``: ``BlockingConnection`` with
confirms can only wait for each message's confirm in turn, which makes a
batch or a sliding window impossible.  The async connection sends while
fewer than ``window`` messages are unconfirmed and counts the broker's
Basic.Ack frames (single or ``multiple``), all on pika's own ioloop, which
``send`` runs until the last confirm arrives.  Consuming uses
``BlockingConnection`` with ``basic_qos(prefetch_count=100)`` and one
``basic_ack`` per message, the usual way to consume with pika.

Durable = a durable classic queue, persistent messages (delivery_mode 2) and
publisher confirms: RabbitMQ confirms a persistent message routed to a durable
queue only once it is written and fsynced to disk.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from importlib.metadata import version as package_version

import pika
import pika.exceptions
from pika.spec import Basic

from bench.systems.base import HOST, System, Unavailable, unique

PARAMETERS = pika.ConnectionParameters(
    host=HOST, port=5672, credentials=pika.PlainCredentials("guest", "guest"),
    heartbeat=0, connection_attempts=1, socket_timeout=5)


class RabbitProducer:
    """A confirm-mode channel on a SelectConnection, driven synchronously by ``send``."""

    def __init__(self, queue: str, persistent: bool) -> None:
        self._queue = queue
        self._properties = pika.BasicProperties(delivery_mode=2 if persistent else 1)
        self._channel: pika.channel.Channel | None = None
        self._error: str | None = None
        self._bodies: Sequence[bytes] = ()
        self._next = 0
        self._window = 1
        self._tag = 0  # delivery tag of the last message published on this channel
        self._unconfirmed: deque[int] = deque()
        self._confirmed_early: set[int] = set()  # single acks that overtook older tags
        self._connection = pika.SelectConnection(
            PARAMETERS, on_open_callback=self._opened, on_open_error_callback=self._failed,
            on_close_callback=self._failed)
        self._run()

    def _opened(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._channel_open)

    def _channel_open(self, channel: pika.channel.Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._failed)
        channel.confirm_delivery(self._confirmed, callback=lambda _frame: self._stop())

    def _failed(self, _source: object, error: object) -> None:
        self._error = str(error)
        self._stop()

    def _stop(self) -> None:
        self._connection.ioloop.stop()

    def _run(self) -> None:
        self._connection.ioloop.start()
        if self._error is not None:
            raise RuntimeError(f"RabbitMQ: {self._error}")

    def send(self, bodies: Sequence[bytes], window: int) -> None:
        self._bodies, self._next, self._window = bodies, 0, window
        self._pump()
        if self._unconfirmed:
            self._run()

    def _pump(self) -> None:
        """Publish while the window has room; called again on every confirm."""
        assert self._channel is not None
        bodies = self._bodies
        while self._next < len(bodies) and len(self._unconfirmed) < self._window:
            self._channel.basic_publish("", self._queue, bodies[self._next], self._properties)
            self._next += 1
            self._tag += 1
            self._unconfirmed.append(self._tag)

    def _confirmed(self, frame: pika.frame.Method) -> None:
        method = frame.method
        if isinstance(method, Basic.Nack):
            self._error = f"broker nacked delivery tag {method.delivery_tag}"
            self._stop()
            return
        pending = self._unconfirmed
        if method.multiple:
            while pending and pending[0] <= method.delivery_tag:
                self._confirmed_early.discard(pending.popleft())
        else:
            self._confirmed_early.add(method.delivery_tag)
        while pending and pending[0] in self._confirmed_early:
            self._confirmed_early.discard(pending.popleft())
        self._pump()
        if not pending:
            self._stop()

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()
            self._connection.ioloop.start()  # runs until the close completes (_failed stops it)


class RabbitConsumer:
    def __init__(self, queue: str, prefetch: int = 100) -> None:
        self._connection = pika.BlockingConnection(PARAMETERS)
        self._channel = self._connection.channel()
        self._channel.basic_qos(prefetch_count=prefetch)
        self._queue = queue

    def receive(self, count: int, deadline: float, handle: Callable[[bytes], None]) -> int:
        taken = 0
        channel = self._channel
        while taken < count and (remaining := deadline - time.monotonic()) > 0:
            for method, _properties, body in channel.consume(self._queue,
                                                             inactivity_timeout=remaining):
                if method is None:
                    break  # inactivity timeout: the deadline passed
                handle(body)
                channel.basic_ack(method.delivery_tag)
                taken += 1
                if taken >= count or time.monotonic() >= deadline:
                    break
        channel.cancel()  # unacked prefetched messages go back to the queue
        return taken

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()


class RabbitMQSystem(System):
    name = "rabbitmq"
    durability = ("yes: durable classic queue, persistent messages, publisher confirms "
                  "(confirmed after fsync)")
    method = ("pika: SelectConnection with confirms for publishing (sliding window by delivery "
              "tag), BlockingConnection basic_qos(100) + basic_ack per message for consuming")

    def __init__(self) -> None:
        self._version = ""

    def start(self) -> None:
        try:
            connection = pika.BlockingConnection(PARAMETERS)
        except pika.exceptions.AMQPError as error:
            raise Unavailable(f"RabbitMQ on {HOST}:5672 does not answer: {error!r}") from None
        properties = connection._impl.server_properties
        self._version = f"RabbitMQ {properties.get('version', '?')}"
        connection.close()

    def version(self) -> str:
        return f"{self._version}, pika {package_version('pika')}"

    def new_queue(self, durable: bool) -> str:
        name = unique("bench-")
        connection = pika.BlockingConnection(PARAMETERS)
        connection.channel().queue_declare(name, durable=durable)
        connection.close()
        return name

    def drop_queue(self, queue: str, durable: bool) -> None:
        connection = pika.BlockingConnection(PARAMETERS)
        connection.channel().queue_delete(queue)
        connection.close()

    def producer(self, queue: str, durable: bool) -> RabbitProducer:
        return RabbitProducer(queue, persistent=durable)

    def consumer(self, queue: str, durable: bool) -> RabbitConsumer:
        return RabbitConsumer(queue)
