"""bbmq as a kombu transport, on kombu's virtual transport.

How kombu's model maps onto bbmq:

* a **queue** is a topic of the same name with one consumer group, also of that name;
  a message put on it is published with ``group=<queue>``, so it belongs to that group
  whether or not a consumer has subscribed yet;
* a **fanout exchange** is a topic (``kombu.fanout.<exchange>``) with one group per
  bound queue: every bound queue gets every message, as in AMQP;
* direct and topic exchanges route in the client, as in every virtual transport; a
  direct binding whose key is not its queue's name is also a topic
  (``kombu.direct.<exchange>.<key>``, a group per queue), so a publisher in another
  process (a Celery worker replying to ``celery inspect``) reaches it;
* **acks** are bbmq acks, sent on the connection that delivered the message: a
  message kombu has not acked when its worker dies is redelivered by the broker as
  soon as the connection drops; ``reject(requeue=True)`` is a NACK, ``requeue=False``
  drops it (an ACK);
* **prefetch**: each channel keeps at most ``prefetch_count`` messages requested or
  unacked, with one long-poll FETCH per queue (no busy polling: an idle queue sends
  one FETCH per LONG_POLL_MS, and a wait on many queues is one ``select``);
* **countdown/eta**: the broker holds the message until its eta (PUBLISH ``delay``);
  the AMQP ``expiration`` property becomes the message's ``ttl``;
* **purge, size, delete** use the broker's admin commands.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import ssl
import time
from collections.abc import Iterator
from queue import Empty
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import virtual
from kombu.utils.objects import cached_property

from bbmq import __version__
from bbmq.client import Admin, BrokerError, CannotConnect, ConnectionLost, Message, Producer, ping
from bbmq.client.channel import Channel as Connection
from bbmq.client.cluster import format_address, seed_brokers
from bbmq.defaults import DEFAULT_PORT
from bbmq.kombu.qos import QoS
from bbmq.kombu.queues import (
    QueueReader,
    bbmq_name,
    decode,
    direct_topic,
    encode,
    fanout_topic,
    publish_delay,
    time_to_live,
)

#: Messages a channel requests at once when kombu sets no prefetch limit.
UNLIMITED_WINDOW = 100
#: Tags of deliveries, unique in the process.
DELIVERY_TAGS = itertools.count(1)
#: Seconds to wait for the rest of a frame once select() said its first bytes are in.
FRAME_WAIT_S = 1.0


class BbmqChannel(virtual.Channel):
    """One kombu channel: producers per topic, a reader per consumed topic and group."""

    QoS = QoS
    supports_fanout = True
    #: Unacked messages are not put back by the client: the broker redelivers them when
    #: their connection closes (a put-back copy would be a duplicate).
    do_restore = False

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._producers: dict[str, Producer] = {}
        #: kombu queue -> its readers: its own topic, then each fanout exchange it is bound to
        self._readers: dict[str, dict[str, QueueReader]] = {}
        self._no_ack: set[str] = set()
        self._retired: list[QueueReader] = []
        self._admin_client: Admin | None = None
        self._turn = itertools.count()

    # -- where the messages go ---------------------------------------------------------

    def _producer(self, topic: str) -> Producer:
        producer = self._producers.get(topic)
        if producer is None:
            producer = self._producers[topic] = Producer(topic, **self.connection.client_options)
        return producer

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        name = bbmq_name(queue)
        self._producer(name).publish(encode(message), group=name,
                                     delay=publish_delay(message, time.time()),
                                     ttl=time_to_live(message))

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str,
                    **kwargs: Any) -> None:
        self._producer(fanout_topic(exchange)).publish(
            encode(message), delay=publish_delay(message, time.time()),
            ttl=time_to_live(message))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """Bindings other processes must see join a topic as the queue's own group now, so
        the queue keeps what is published from here on even before it consumes: a fanout
        exchange's topic, and a direct binding's whose key is not the queue's name."""
        kind = self.typeof(exchange).type
        if kind == "fanout":
            self._reader(queue, fanout_topic(exchange)).connect()
        elif kind == "direct" and routing_key and routing_key != queue:
            self._reader(queue, direct_topic(exchange, routing_key)).connect()

    def basic_publish(self, message: dict[str, Any], exchange: str, routing_key: str,
                      **kwargs: Any) -> Any:
        """Route in the client, as every virtual transport does; a direct exchange whose
        bindings this process has not seen (another process made them) goes to the
        binding's topic if a queue is bound by that key, else to the queue of that name
        (how Celery names its queues)."""
        if not exchange or self.typeof(exchange).type != "direct" or \
                self._bound_here(exchange, routing_key):
            return super().basic_publish(message, exchange, routing_key, **kwargs)
        self._inplace_augment_message(message, exchange, routing_key)
        topic = direct_topic(exchange, routing_key)
        if topic in self._admin("topics"):
            # A connection of its own, closed after: these keys are one-off (a reply topic
            # per `celery inspect`), and a worker must not keep a connection for each.
            with Producer(topic, **self.connection.client_options) as producer:
                producer.publish(encode(message), delay=publish_delay(message, time.time()),
                                 ttl=time_to_live(message))
        elif routing_key:
            self._put(routing_key, message)
        return None

    def _bound_here(self, exchange: str, routing_key: str) -> bool:
        try:
            table = self.get_table(exchange)
        except KeyError:
            return False
        return bool(self.typeof(exchange).lookup(table, exchange, routing_key, None))

    # -- where they come from -------------------------------------------------------------

    def _reader(self, queue: str, topic: str | None = None) -> QueueReader:
        topic = topic or bbmq_name(queue)
        readers = self._readers.setdefault(queue, {})
        reader = readers.get(topic)
        if reader is None:
            reader = readers[topic] = QueueReader(queue, topic, bbmq_name(queue),
                                                  **self.connection.client_options)
        return reader

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack.add(queue)
        self._reader(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack.discard(queue)
            for reader in self._readers.pop(queue, {}).values():
                if self.qos.holds_from(reader._channel):
                    # Deliveries kombu still has to settle need their connection, as
                    # after an AMQP basic.cancel: it closes with the channel.
                    self._retired.append(reader)
                else:
                    reader.close()  # what it had requested and not handed out goes back
        return result

    def waiting_readers(self) -> Iterator[QueueReader]:
        """Open a long poll on each consumed queue that has none, within the prefetch
        limit, then yield every reader with a FETCH open."""
        if not self._consumers:
            return
        readers = [reader for queue in self._active_queues
                   for reader in self._readers.get(queue, {}).values()]
        if self.qos.can_consume():
            limit = self.qos.can_consume_max_estimate()
            credit = (UNLIMITED_WINDOW if limit is None else limit) - sum(
                reader.owed for reader in readers)
            idle = [reader for reader in readers if not reader.owed]
            if idle:  # take turns, so that an idle queue does not always get the credit first
                turn = next(self._turn) % len(idle)
                idle = idle[turn:] + idle[:turn]
            for index, reader in enumerate(idle):
                if credit <= 0:
                    break
                share = max(1, credit // (len(idle) - index))
                reader.request(share)
                credit -= share
        yield from (reader for reader in readers if reader.readable() is not None)

    def take(self, reader: QueueReader) -> bool:
        """Read one frame of ``reader`` and hand its message to kombu; False if it had none."""
        taken = reader.take(FRAME_WAIT_S)
        if taken is None:
            return False
        message, connection = taken
        payload = self._payload(message, connection)
        if reader.queue in self._no_ack:
            self.qos.settle_unacked(payload["properties"]["delivery_tag"])
        self.connection._deliver(payload, reader.queue)
        return True

    def _payload(self, message: Message, connection: Connection) -> dict[str, Any]:
        """kombu's envelope of a delivered message, with a tag of this delivery (acks
        find their way back through it)."""
        payload = decode(message.body)
        properties = payload.setdefault("properties", {})
        # Celery reads delivery_info["redelivered"], as AMQP sets it.
        properties.setdefault("delivery_info", {})["redelivered"] = message.attempt > 1
        # Not the publisher's tag: a redelivery must not be mistaken for an earlier
        # delivery of the same message that kombu may still have in its books.
        delivery_tag = f"bbmq-{next(DELIVERY_TAGS)}"
        properties["delivery_tag"] = delivery_tag
        self.qos.delivered(delivery_tag, connection, message.id)
        return payload

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """One message if one is ready (kombu's Empty if not), for basic_get."""
        reader = self._reader(queue)
        message = reader.fetch(timeout=timeout or 0.0)
        if message is None:
            raise Empty()
        return self._payload(message, reader.channel)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            payload = self._get(queue)
        except Empty:
            return None
        message = self.Message(payload, channel=self)
        if no_ack:
            self.qos.settle_unacked(message.delivery_tag)
        else:
            self.qos.append(message, message.delivery_tag)
        return message

    # -- queue management ---------------------------------------------------------------

    def _admin(self, command: str, **params: Any) -> Any:
        """Run an admin command; a connection the broker closed while idle is opened again."""
        if self._admin_client is None:
            self._admin_client = Admin(**self.connection.client_options)
        try:
            return self._admin_client.command(command, **params)
        except ConnectionLost:
            self._admin_client.close()
            return self._admin_client.command(command, **params)

    def _group_stats(self, queue: str) -> dict[str, Any] | None:
        name = bbmq_name(queue)
        topic = self._admin("stats")["topics"].get(name)
        group: dict[str, Any] | None = None if topic is None else topic["groups"].get(name)
        return group

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        """Create the queue's group (a subscription does), so that it exists for a passive
        declare and for ``bbmq stats`` before anything is published to it."""
        if self._group_stats(queue) is None:
            name = bbmq_name(queue)
            reader = QueueReader(queue, name, name, **self.connection.client_options)
            reader.connect()
            reader.close()

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self._group_stats(queue) is not None

    def _size(self, queue: str) -> int:
        group = self._group_stats(queue)
        return 0 if group is None else int(group["ready"]) + int(group["delayed"])

    def _purge(self, queue: str) -> int:
        if self._group_stats(queue) is None:
            return 0
        name = bbmq_name(queue)
        return int(self._admin("purge", topic=name, group=name)["purged"])

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        name = bbmq_name(queue)
        topics = [name, *(topic for topic in self._readers.get(queue, {}) if topic != name)]
        for reader in self._readers.pop(queue, {}).values():
            reader.close()
        for topic in topics:
            with contextlib.suppress(BrokerError):  # no such topic or group: nothing to delete
                self._admin("group_delete", topic=topic, group=name)

    # -- lifetime -------------------------------------------------------------------------

    def wake(self) -> None:
        if self.connection is not None:
            self.connection.wake()

    def close(self) -> None:
        super().close()
        clients: list[Any] = [*self._producers.values(),
                              *(reader for readers in self._readers.values()
                                for reader in readers.values()), *self._retired]
        if self._admin_client is not None:
            clients.append(self._admin_client)
        self._producers.clear()
        self._readers.clear()
        self._retired.clear()
        self._admin_client = None
        for client in clients:
            with contextlib.suppress(BrokerError, OSError):
                client.close()


class Transport(virtual.Transport):
    """``bbmq://HOST:PORT``: kombu's transport for bbmq (``import bbmq.kombu`` registers it).

    The URL's password, or ``transport_options={"token": ...}``, is the bbmq token;
    ``transport_options={"tls": True, "ca_file": ...}`` or ``ssl=`` turn on TLS.
    """

    Channel = BbmqChannel
    default_port = DEFAULT_PORT  # type: ignore[assignment]  # kombu types it None
    driver_type = "bbmq"
    driver_name = "bbmq"
    #: drain_events waits in select() on the open long polls: never a sleep-and-poll.
    polling_interval = None  # type: ignore[assignment]
    implements = virtual.Transport.implements.extend(
        asynchronous=False, exchange_type=frozenset(["direct", "topic", "fanout"]))
    connection_errors = (  # type: ignore[assignment]  # kombu types these as 1-tuples
        *virtual.Transport.connection_errors, ConnectionLost, OSError)
    channel_errors = (*virtual.Transport.channel_errors, BrokerError)  # type: ignore[assignment]

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        # Acks from other threads (Celery's pool) wake a drain waiting for prefetch room.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)

    @cached_property
    def client_options(self) -> dict[str, Any]:
        """The bbmq client arguments from kombu's Connection (URL and transport_options)."""
        conninfo: Any = self.client
        options = conninfo.transport_options or {}
        tls: bool | ssl.SSLContext = options.get("tls", False)
        if isinstance(conninfo.ssl, ssl.SSLContext):
            tls = conninfo.ssl
        elif conninfo.ssl:
            tls = True
        return {**_where(conninfo, options),
                "token": options.get("token") or conninfo.password or None,
                "tls": tls, "ca_file": options.get("ca_file"),
                "timeout": float(options.get("timeout", 30.0))}

    def driver_version(self) -> str:
        return __version__

    def establish_connection(self) -> Any:
        """Check that the broker answers, so that an unreachable one is a connection error
        now (Celery retries those) rather than at the first publish."""
        options = self.client_options
        addresses = seed_brokers(options.get("brokers"), options.get("host"),
                                 options.get("port"))
        silent: list[str] = []
        for host, port in addresses:
            try:
                ping(host, port, timeout=min(options["timeout"], 10.0), tls=options["tls"],
                     ca_file=options["ca_file"])
                break
            except ConnectionLost as error:
                if len(addresses) == 1:
                    raise
                silent.append(error.text)
        else:
            raise CannotConnect(f"no broker of the cluster answered ({'; '.join(silent)}); "
                                "start one, or fix the URLs")
        return super().establish_connection()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_writer.send(b"\0")

    def drain_events(self, connection: Any,  # type: ignore[override]  # kombu: **kwargs
                     timeout: float | None = None) -> None:
        """Deliver one message, waiting up to ``timeout`` seconds (socket.timeout if none)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waiting = {reader: channel for channel in list(self.channels)
                       for reader in channel.waiting_readers()}
            ready = [reader for reader in waiting if _buffered(reader)]
            if not ready:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError()
                by_socket = {connection.sock: reader for reader in waiting
                             if (connection := reader.readable()) is not None}
                readable, _, _ = select.select([*by_socket, self._wake_reader], [], [],
                                               remaining)
                if self._wake_reader in readable:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_reader.recv(4096)
                ready = [by_socket[sock] for sock in readable if sock in by_socket]
            for reader in ready:
                if waiting[reader].take(reader):
                    return

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)
        self._wake_reader.close()
        self._wake_writer.close()


def _where(conninfo: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The brokers from kombu's Connection: ``transport_options={"brokers": [...]}``, or a
    cluster's URLs in kombu's failover form (``bbmq://h1:p1;bbmq://h2:p2``: every one is a
    broker the clients may be redirected among), or the one of the URL."""
    urls = [urlsplit(url) for url in conninfo.alt or () if isinstance(url, str)]
    if brokers := options.get("brokers"):
        return {"brokers": brokers}
    if len(urls) > 1:
        return {"brokers": [format_address((url.hostname or "127.0.0.1",
                                            url.port or DEFAULT_PORT)) for url in urls]}
    return {"host": conninfo.hostname or "127.0.0.1", "port": conninfo.port or DEFAULT_PORT}


def _buffered(reader: QueueReader) -> bool:
    """Whether reading ``reader`` will not block: a frame (or TLS bytes) already in."""
    channel = reader.readable()
    if channel is None:
        return False
    sock = channel.sock
    return channel.pending() or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0)

