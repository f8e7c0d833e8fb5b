"""What the kombu transport maps onto bbmq: names, the message envelope, and one queue's
reader (a Consumer that can be waited on together with others).

kombu's names are free text (Celery's ``celery@host.celery.pidbox`` has an ``@``);
bbmq's are ``[A-Za-z0-9_.-]{1,200}``.  :func:`bbmq_name` keeps a valid name as
it is, so ``bbmq stats`` shows the queue ``celery`` as the topic ``celery``, and
turns any other into a valid one with a hash of the original, so two different
queues never share a topic.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Final

from bbmq.client import Consumer, Message, Redirected
from bbmq.client.channel import Channel

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,200}")
#: Topics of fanout exchanges: one per exchange, with one group per bound queue.
FANOUT_PREFIX: Final = "kombu.fanout."
#: Topics of direct bindings whose routing key is not the queue's name (Celery's replies
#: to remote control): one per exchange and key, with one group per bound queue.
DIRECT_PREFIX: Final = "kombu.direct."
#: How long an idle queue's long poll waits before it ends and is sent again.  It bounds how
#: long one idle queue holds a share of the channel's prefetch that another queue could use.
LONG_POLL_MS: Final = 1000


def bbmq_name(name: str) -> str:
    """A valid bbmq topic or group name for the kombu queue or exchange ``name``."""
    if NAME_PATTERN.fullmatch(name):
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:12]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:180] + "-" + digest


def fanout_topic(exchange: str) -> str:
    return bbmq_name(FANOUT_PREFIX + exchange)


def direct_topic(exchange: str, routing_key: str) -> str:
    return bbmq_name(f"{DIRECT_PREFIX}{exchange}.{routing_key}")


def encode(envelope: dict[str, Any]) -> bytes:
    """kombu's message envelope (body, headers, properties) as the bbmq message body."""
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def decode(body: bytes) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(body)
    return envelope


def publish_delay(envelope: dict[str, Any], now: float) -> float | None:
    """Seconds until the envelope's ``eta`` header (Celery's countdown and eta), or None.

    The broker holds the message that long, so no worker holds it unacked
    meanwhile (where bbmq's ack timeout would redeliver it); the worker still
    checks the eta itself, so a task never runs early even if the clocks differ.
    """
    eta = (envelope.get("headers") or {}).get("eta")
    if not eta:
        return None
    try:
        due = datetime.fromisoformat(eta).timestamp()  # naive: local time, as Celery means it
    except (TypeError, ValueError):
        return None
    delay = due - now
    return delay if delay >= 0.001 else None


def time_to_live(envelope: dict[str, Any]) -> float | None:
    """Seconds from the AMQP ``expiration`` property (milliseconds, as text), or None."""
    expiration = (envelope.get("properties") or {}).get("expiration")
    if expiration in (None, ""):
        return None
    try:
        return max(0.001, float(expiration) / 1000.0)
    except (TypeError, ValueError):
        return None


class QueueReader(Consumer):
    """The consumer of one bbmq topic and group, read by the transport's select loop.

    At most one long-poll FETCH is open at a time; ``owed`` is what it may still
    bring, which the transport counts against kombu's prefetch.
    """

    def __init__(self, queue: str, topic: str, group: str, **client: Any) -> None:
        super().__init__(topic, group, **client)
        #: The kombu queue whose callback gets this reader's messages.
        self.queue = queue

    @property
    def owed(self) -> int:
        channel = self._channel
        return self._fetches.owed if channel is not None and not channel.closed else 0

    def request(self, count: int, wait_ms: int = LONG_POLL_MS) -> None:
        """Open a long poll for up to ``count`` messages, unless one is open already."""
        channel = self.channel
        if not self._fetches.owed:
            channel.send(self._fetches.fetch(count, wait_ms))

    def readable(self) -> Channel | None:
        """The connection to wait on, when a FETCH is open on it."""
        channel = self._channel
        return channel if channel is not None and not channel.closed and self.owed else None

    def take(self, wait: float) -> tuple[Message, Channel] | None:
        """The next message and the connection that brought it (acks go there), waiting up
        to ``wait`` seconds for the rest of a frame; None for a QUEUE_EMPTY or no frame."""
        channel = self.channel
        try:
            message = self._fetches.received(channel.read(wait))
        except Redirected:
            return None  # the topic moved: the next request() connects where it went
        return None if message is None else (message, channel)
