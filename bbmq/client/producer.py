"""The blocking Producer: publishing.py's decisions over a Channel.

Publishing is idempotent: every message carries a ``msgid``; when a
connection drops (or the store is briefly unavailable) before the ack, the
producer reconnects and sends the unacked messages again, and the broker
acks a repeat with the original id instead of storing it twice.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable

from bbmq.client.arguments import checked_name
from bbmq.client.base import Client, never_reached
from bbmq.client.errors import BrokerError, ConnectionLost, PublishError
from bbmq.client.publishing import MsgIds, PublishJob, PublishWindow, publish_frames
from bbmq.client.retry import comes_back, interrupted_level
from bbmq.protocol import ClientPublisher, TypedFrame

log = logging.getLogger("bbmq.client")


class Producer(Client):
    """Publishes to one topic.  ``publish`` waits for the broker's ack; ``publish_many`` pipelines.

    ``brokers`` (``["h1:p1", "h2:p2"]``, or BBMQ_BROKERS) lists the brokers of a
    cluster, instead of one ``host``/``port``: the producer connects to the one
    that serves the topic, following REDIRECTs, and when the topic moves (or its
    broker goes), it resends every message not yet confirmed, with its msgid,
    to the new one, which stores it once.

    ``timeout`` is how long a broker may stay silent (no ack) before the producer
    gives up on the connection and resends elsewhere: 30 s for a single broker,
    6 s once several are known, unless given.

    ``retry_for`` (seconds, default 30) is how long a publish keeps trying
    (reconnecting, resending with the same msgid) through lost connections,
    STORE_UNAVAILABLE and SERVER_BUSY before it raises.  It is for a broker
    that worked and went away (a restart): when no broker can be reached on the
    very first connect, :class:`CannotConnect` is raised at once, naming them.
    """

    def __init__(self, topic: str, host: str | None = None, port: int | None = None, *,
                 brokers: str | Iterable[str] | None = None, name: str | None = None,
                 token: str | None = None, tls: bool | ssl.SSLContext = False,
                 ca_file: str | None = None, timeout: float | None = None,
                 retry_for: float = 30.0) -> None:
        self.topic = checked_name("topic", topic)
        super().__init__(host, port, name=name, token=token, tls=tls, ca_file=ca_file,
                         timeout=timeout, brokers=brokers, topic=self.topic)
        self.retry_for = retry_for
        self._msgids = MsgIds()

    def _handshake_frame(self) -> TypedFrame:
        return ClientPublisher(self.topic, self._options())

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
        frames = publish_frames(bodies, self._msgids, delay=delay, ttl=ttl, group=group,
                                max_message_bytes=self.server_info.get("max_message_bytes"))
        job = PublishJob(frames, window=window, retry_for=self.retry_for, now=time.monotonic())
        while (publish_pass := job.next_pass()) is not None:
            try:
                self._pipeline(publish_pass)
            except BrokerError as error:
                if (isinstance(error, PublishError) or not comes_back(error)
                        or never_reached(self, error)):
                    raise
                if self._channel is not None:
                    self._channel.close()  # the next pass connects again (where a REDIRECT says)
                pause = job.after_loss(error, time.monotonic())
                log.log(interrupted_level(error), "publish interrupted (%s); reconnecting to "
                        "resend", error)
            else:
                pause = job.after_pass(publish_pass, time.monotonic())
            if pause:
                time.sleep(pause)  # back off: the broker or its store is recovering
        return job.ids

    def _pipeline(self, publish_pass: PublishWindow) -> None:
        """Run one pass on the connection: send as the window allows, read every reply owed.

        Raises PublishError once the replies are in if the broker refused a
        message for good.
        """
        channel = self.channel
        while not publish_pass.done:
            if frames := publish_pass.to_send():
                channel.send_all(frames)
            try:
                replies = channel.read_all(self.timeout)
            except ConnectionLost:
                # The refusal may have closed the connection (a frame too large, say).
                if (failure := publish_pass.failure()) is not None:
                    raise failure from None
                raise
            if not replies:
                channel.close()
                raise ConnectionLost(f"no ack from the broker within {self.timeout:g} s")
            publish_pass.on_replies(replies)
        if (failure := publish_pass.failure()) is not None:
            raise failure
