"""The asyncio Producer: bbmq/client/publishing.py's decisions over an AsyncChannel.

Same semantics as the blocking Producer: every message carries a msgid, and a
publish interrupted by a lost connection (or refused for now) is sent again
with the same msgid, so the broker stores it once.

Cancellation: a task cancelled inside ``publish``/``publish_many`` raises
CancelledError as usual; the PUBLISH frames already sent are still answered
by the broker, and the producer reads (and drops) those answers before its
next publish, so the connection stays usable.  Which of the cancelled
messages were stored is unknown to the caller: publish them again to be sure
(at-least-once), as after any failed publish.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable

from bbmq.aio.base import AsyncClient
from bbmq.aio.channel import AsyncChannel
from bbmq.client.arguments import checked_name
from bbmq.client.errors import BrokerError, ConnectionLost, PublishError
from bbmq.client.publishing import MsgIds, PublishJob, PublishWindow, publish_frames
from bbmq.client.retry import interrupted_level
from bbmq.protocol import ClientPublisher, TypedFrame

log = logging.getLogger("bbmq.client")


class Producer(AsyncClient):
    """Publishes to one topic.  ``publish`` waits for the broker's ack; ``publish_many``
    pipelines.  ``brokers``: the brokers of a cluster, as for the blocking Producer (it
    follows REDIRECTs and resends what was not confirmed, with the same msgids, to the
    topic's new broker).  ``retry_for``: how long a publish keeps trying before it raises
    (for a broker that worked and went away: when no broker can be reached on the very
    first connect, CannotConnect is raised at once, naming them)."""

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
        #: Replies the broker still owes to a publish that was cancelled on this connection.
        self._orphan_replies = 0
        #: One publish at a time on the connection: replies pair with PUBLISH frames in order.
        self._publishing = asyncio.Lock()

    def _handshake_frame(self) -> TypedFrame:
        return ClientPublisher(self.topic, self._options())

    def _connected(self) -> None:
        self._orphan_replies = 0  # the old connection's replies will never come

    async def publish(self, body: bytes | str, *, delay: float | None = None,
                      ttl: float | None = None, group: str | None = None) -> int:
        """Publish one message; return its id once the broker has stored it."""
        return (await self.publish_many([body], delay=delay, ttl=ttl, group=group))[0]

    async def publish_many(self, bodies: Iterable[bytes | str], *, window: int = 1000,
                           delay: float | None = None, ttl: float | None = None,
                           group: str | None = None) -> list[int]:
        """Publish in order with up to ``window`` unacked in flight; return the ids in order.

        Concurrent calls on one producer take turns (each keeps its order).
        """
        async with self._publishing:
            frames = publish_frames(bodies, self._msgids, delay=delay, ttl=ttl, group=group,
                                    max_message_bytes=self.server_info.get("max_message_bytes"))
            job = PublishJob(frames, window=window, retry_for=self.retry_for,
                             now=time.monotonic())
            while (publish_pass := job.next_pass()) is not None:
                try:
                    await self._pipeline(publish_pass)
                except BrokerError as error:
                    if isinstance(error, PublishError) or self._gives_up(error):
                        raise
                    if self._channel is not None:
                        self._channel.close()  # the next pass connects again (see base.py)
                    pause = job.after_loss(error, time.monotonic())
                    log.log(interrupted_level(error), "publish interrupted (%s); "
                            "reconnecting to resend", error)
                else:
                    pause = job.after_pass(publish_pass, time.monotonic())
                if pause:
                    await asyncio.sleep(pause)  # back off: the broker is recovering
            return job.ids

    async def _pipeline(self, publish_pass: PublishWindow) -> None:
        """Run one pass on the connection: send as the window allows, read every reply owed."""
        channel = await self.channel()
        await self._drop_orphan_replies(channel)
        try:
            while not publish_pass.done:
                if frames := publish_pass.to_send():
                    channel.send_all(frames)
                    await channel.drain()
                replies = await self._replies(channel, publish_pass)
                publish_pass.on_replies(replies)
        except asyncio.CancelledError:
            self._orphan_replies += publish_pass.unanswered
            raise
        if (failure := publish_pass.failure()) is not None:
            raise failure

    async def _replies(self, channel: AsyncChannel, publish_pass: PublishWindow) -> list[
            TypedFrame]:
        try:
            replies = await channel.read_all(self.timeout)
        except ConnectionLost:
            # The refusal may have closed the connection (a frame too large, say).
            if (failure := publish_pass.failure()) is not None:
                raise failure from None
            raise
        if not replies:
            channel.close()
            raise ConnectionLost(f"no ack from the broker within {self.timeout:g} s")
        return replies

    async def _drop_orphan_replies(self, channel: AsyncChannel) -> None:
        """Read the replies owed to a cancelled publish, so the next ones pair correctly."""
        while self._orphan_replies > 0:
            frame = await channel.read(self.timeout)
            if frame is None:
                channel.close()
                raise ConnectionLost(f"no ack from the broker within {self.timeout:g} s")
            if PublishWindow.is_reply(frame):
                self._orphan_replies -= 1
