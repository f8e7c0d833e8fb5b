"""kombu's prefetch bookkeeping (QoS) for the bbmq transport, with acks and rejects that
reach the broker on the connection that delivered the message."""

from __future__ import annotations

import contextlib
from typing import Any

from kombu.transport import virtual

from bbmq.client import ConnectionLost
from bbmq.client.channel import Channel as Connection
from bbmq.protocol import Ack, Nack


class QoS(virtual.QoS):
    """kombu's unacked-message books for one channel, settled at the broker."""

    def __init__(self, channel: Any, prefetch_count: int = 0) -> None:
        super().__init__(channel, prefetch_count)
        #: delivery tag -> (the connection that delivered it, bbmq message id)
        self._origins: dict[str, tuple[Connection, int]] = {}

    def delivered(self, delivery_tag: str, connection: Connection, message_id: int) -> None:
        self._origins[delivery_tag] = (connection, message_id)

    def holds_from(self, connection: Connection | None) -> bool:
        """Whether a delivery on ``connection`` waits to be acked or rejected."""
        # A copy: Celery's pool threads settle deliveries while this runs.
        return any(origin is connection for origin, _ in list(self._origins.values()))

    def _settle(self, delivery_tag: str, frame: Ack | Nack | None) -> None:
        origin = self._origins.pop(delivery_tag, None)
        if origin is None or frame is None:
            return
        connection, _ = origin
        if connection.closed:
            return  # the broker has given it back already: it is redelivered
        with contextlib.suppress(ConnectionLost):  # closed under us: it is redelivered
            if connection.pending():
                # More deliveries are waiting to be handed out: their acks can share one
                # write (within the client's ACK_LINGER_S), as Consumer.ack does.
                connection.send_soon(frame)
            else:
                connection.send(frame)

    def settle_unacked(self, delivery_tag: str) -> None:
        """Ack at the broker a message kombu does not track (a no_ack consumer's)."""
        origin = self._origins.get(delivery_tag)
        if origin is not None:
            self._settle(delivery_tag, Ack((origin[1],)))

    def ack(self, delivery_tag: str) -> None:
        full = bool(self.prefetch_count) and not self.can_consume()
        self.settle_unacked(delivery_tag)
        super().ack(delivery_tag)
        if full:  # a drain may be waiting for this room (acks come from Celery's threads)
            self.channel.wake()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        origin = self._origins.get(delivery_tag)
        if origin is not None:
            self._settle(delivery_tag, Nack(origin[1], 0, "rejected") if requeue
                         else Ack((origin[1],)))
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        """basic_recover(requeue=True): every unacked message goes back to the broker."""
        self._flush()
        for delivery_tag in list(self._delivered):
            self.reject(delivery_tag, requeue=True)
        self._delivered.clear()
        return []
