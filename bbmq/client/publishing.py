"""What a producer decides, sans-IO: the frames of a publish, the window, which reply
belongs to which message, and when a refusal means "again later" or "give up".

No sockets and no clock (``now`` is passed in): the blocking Producer
(producer.py) and an asyncio one share all of it and differ only in how they
send, read and sleep.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable

from bbmq.client.arguments import checked_name, milliseconds
from bbmq.client.errors import BrokerError, InvalidArgument, PublishError
from bbmq.client.retry import RESEND_LATER, Backoff, Reconnect
from bbmq.protocol import Error, ErrorCode, ProducerAckMessage, Publish, TypedFrame


class MsgIds:
    """The msgid of each message a producer publishes.

    Unique per producer and message, so that a message sent again after a lost
    ack is recognised by the broker and acked with its original id.
    """

    __slots__ = ("_prefix", "_sequence")

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._sequence = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}-{next(self._sequence)}"


def publish_frames(bodies: Iterable[bytes | str], msgids: MsgIds, *, delay: float | None,
                   ttl: float | None, group: str | None,
                   max_message_bytes: int | None) -> list[Publish]:
    """One PUBLISH per body, each with its own msgid; bad arguments are refused here."""
    delay_ms = milliseconds("delay", delay, minimum=0) or 0
    ttl_ms = milliseconds("ttl", ttl, minimum=1)
    only = None if group is None else checked_name("group", group)
    datas = [body.encode() if isinstance(body, str) else body for body in bodies]
    if max_message_bytes and (largest := max(map(len, datas), default=0)) > max_message_bytes:
        raise InvalidArgument(ErrorCode.FRAME_TOO_LARGE,
                              f"a message of {largest} bytes is over the broker's limit of "
                              f"{max_message_bytes}; split it or raise the broker's "
                              "--max-message-size")
    return [Publish(data, msgids.next(), delay_ms, ttl_ms, only) for data in datas]


class PublishWindow:
    """One pass over a publish's unacked messages on one connection.

    Keeps up to ``window`` PUBLISH frames unanswered and pairs the replies with
    the messages: each PUBLISH gets exactly one reply, in order, an ack or an
    ERROR.  A refusal for now (RESEND_LATER) leaves the message's id at 0 for
    the next pass; any other refusal is final: nothing more is sent, the
    replies still owed are read, so the connection stays in step.
    """

    __slots__ = ("_frames", "_sent", "_todo", "_window", "failed", "ids", "refused", "replied")

    def __init__(self, frames: list[Publish], todo: list[int], ids: list[int],
                 window: int) -> None:
        self._frames = frames
        self._todo = todo
        self._window = window
        self.ids = ids
        self._sent = 0
        self.replied = 0
        #: The last refusal for now, if any (those messages keep id 0).
        self.refused: Error | None = None
        #: The first final refusal: send no more, read what is owed.
        self.failed: Error | None = None

    @property
    def done(self) -> bool:
        """Every reply owed has come."""
        return self.replied >= (self._sent if self.failed else len(self._todo))

    @property
    def unanswered(self) -> int:
        """PUBLISH frames sent in this pass whose reply has not come yet (what a caller that
        gives up on the pass, an asyncio task cancelled, say, must still read and drop)."""
        return self._sent - self.replied

    @staticmethod
    def is_reply(frame: TypedFrame) -> bool:
        """``frame`` answers a PUBLISH (an ack or an ERROR), as ``on_replies`` counts them."""
        return isinstance(frame, (ProducerAckMessage, Error))

    def to_send(self) -> list[Publish]:
        """The frames to send now: none, or enough to fill the window again.

        The window is topped up once half of it has been answered, so that it
        goes out in large writes rather than a frame per reply.
        """
        sent, todo, window = self._sent, self._todo, self._window
        if self.failed or sent >= len(todo) or (sent and sent - self.replied > window // 2):
            return []
        end = min(len(todo), self.replied + window)
        self._sent = end
        frames = self._frames
        return [frames[index] for index in todo[sent:end]]

    def on_replies(self, replies: Iterable[TypedFrame]) -> None:
        """Take the broker's next frames; each PUBLISH reply fills in its message's id."""
        ids, todo, replied = self.ids, self._todo, self.replied
        for reply in replies:
            if isinstance(reply, ProducerAckMessage):
                ids[todo[replied]] = reply.id
            elif isinstance(reply, Error) and reply.code in RESEND_LATER:
                self.refused = reply
            elif isinstance(reply, Error):
                self.failed = self.failed or reply
            else:
                continue  # PONG and the like: not a reply to a PUBLISH
            replied += 1
        self.replied = replied

    def failure(self) -> PublishError | None:
        """The final refusal as the error to raise, with the ids stored so far."""
        if self.failed is None:
            return None
        return PublishError(self.failed.code, self.failed.text, self.ids)


class PublishJob:
    """One ``publish_many`` call across passes and connections: what is left to send, how
    long to wait before the next pass, and when ``retry_for`` has run out."""

    __slots__ = ("_backoff", "_confirmed", "_deadline", "_frames", "_last", "_reconnect",
                 "_window", "ids")

    def __init__(self, frames: list[Publish], *, window: int, retry_for: float,
                 now: float) -> None:
        self._frames = frames
        self._window = window
        self._deadline = now + retry_for
        self._backoff = Backoff.resend()
        self._reconnect = Reconnect(self._backoff)
        self._last: BrokerError | None = None
        self.ids = [0] * len(frames)
        #: Messages confirmed when the connection was last lost (see after_loss).
        self._confirmed = 0

    def next_pass(self) -> PublishWindow | None:
        """A pass over the messages not acked yet, or None when all are."""
        ids = self.ids
        todo = [index for index in range(len(ids)) if not ids[index]]
        return PublishWindow(self._frames, todo, ids, self._window) if todo else None

    def after_pass(self, window: PublishWindow, now: float) -> float:
        """Seconds to pause before the next pass (0: none needed); raises once out of time."""
        if window.refused is not None:
            self._last = BrokerError(window.refused.code, window.refused.text)
        return self._pause(now)

    def after_loss(self, error: BrokerError, now: float) -> float:
        """The connection went away: seconds to pause before reconnecting (none after a
        REDIRECT or a first loss: see retry.Reconnect), or ``error`` raised when
        ``retry_for`` has run out.  The messages it did not confirm go in the next pass,
        with their msgids, to whichever broker the connect reaches."""
        if now >= self._deadline:
            raise error
        self._last = error
        ids = self.ids
        if (confirmed := len(ids) - ids.count(0)) > self._confirmed:
            self._confirmed = confirmed
            self._reconnect.reset()  # it worked since the last loss: this one is a fresh one
        return self._reconnect.pause(error) if confirmed < len(ids) else 0.0

    def _pause(self, now: float) -> float:
        if all(self.ids):
            return 0.0
        if now >= self._deadline and self._last is not None:
            raise self._last
        return self._backoff.next()
