"""What a consumer decides, sans-IO: the FETCH requests it has open and what they still
owe, when a stream asks for more, what each frame from the broker means, and the frames
that settle messages.

No sockets and no clock: the blocking Consumer (consumer.py) and an asyncio
one share all of it and differ only in how they send, read and wait.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import Final

from bbmq import protocol
from bbmq.client.arguments import milliseconds, reason_token
from bbmq.client.errors import BrokerError, ConnectionLost
from bbmq.client.message import Message
from bbmq.protocol import MAX_HEADER_BYTES, Ack, ErrorCode, Fetch, Nack, QueueEmpty, TypedFrame

log = logging.getLogger("bbmq.client")

#: Room for the ids of one ACK frame.  The broker refuses a header line longer than
#: MAX_HEADER_BYTES as a framing error (and closes the connection), and an ACK's line is
#: ``HEAD ACK`` + `` <id>`` per id + `` 0``: what is left for `` <id>`` is this.
ACK_IDS_ROOM: Final = MAX_HEADER_BYTES - len("HEAD ACK 0")


class FetchQueue:
    """The FETCH requests open on one connection, oldest first, and what each still owes.

    The broker serves a connection's FETCH requests in order: each MESSAGE
    counts against the oldest open one, and QUEUE_EMPTY closes the oldest (a
    long poll that ended short).  So the client knows at every moment how
    many messages are on their way, which is what lets a stream left early
    (``break`` out of ``for message in consumer``) be taken up again by
    ``fetch()`` without asking twice or losing any.  A new connection starts
    with a new, empty queue: what the old one owed is redelivered.
    """

    __slots__ = ("_open", "owed")

    def __init__(self) -> None:
        self._open: deque[int] = deque()  # messages each open FETCH may still bring
        #: Messages requested and not yet taken in (received or still to come).
        self.owed = 0

    def fetch(self, count: int, wait_ms: int | None = None) -> Fetch:
        """A FETCH for ``count`` more messages, recorded as open."""
        self._open.append(count)
        self.owed += count
        return Fetch(count, wait_ms)

    def top_up(self, prefetch: int) -> Fetch | None:
        """For a stream: a FETCH bringing the messages on their way back to ``prefetch``,
        once half of them have been taken in (so requests go out in large steps)."""
        missing = prefetch - self.owed
        if missing > 0 and missing * 2 >= prefetch:
            return self.fetch(missing)
        return None

    def received(self, frame: TypedFrame | None) -> Message | None:
        """What a frame from the broker means: a message to hand out, or None.

        Raises BrokerError for an ERROR other than UNKNOWN_MESSAGE (an ack of a
        message no longer in flight, which is only worth a warning), and
        ConnectionLost for a frame a subscriber cannot use.
        """
        if isinstance(frame, protocol.Message):
            open_requests = self._open
            if open_requests:  # else a message nobody asked for: nothing to count it against
                self.owed -= 1
                if open_requests[0] == 1:
                    open_requests.popleft()
                else:
                    open_requests[0] -= 1
            return Message(frame.id, frame.body, frame.attempt, frame.meta)
        if isinstance(frame, QueueEmpty):
            if self._open:
                self.owed -= self._open.popleft()
            return None
        if isinstance(frame, protocol.Error):
            if frame.code == ErrorCode.UNKNOWN_MESSAGE:
                log.warning("broker: %s", frame.text)
                return None
            raise BrokerError(frame.code, frame.text)
        raise ConnectionLost(f"unexpected frame from the broker: {frame!r}")


def ack_frames(messages: Iterable[Message | int]) -> list[Ack]:
    """ACK frames for ``messages``, as few as fit in the protocol's header limit."""
    frames: list[Ack] = []
    chunk: list[int] = []
    room = ACK_IDS_ROOM
    for message in messages:
        message_id = message.id if isinstance(message, Message) else message
        needed = len(str(message_id)) + 1
        if needed > room:
            frames.append(Ack(tuple(chunk)))
            chunk, room = [], ACK_IDS_ROOM
        chunk.append(message_id)
        room -= needed
    if chunk:
        frames.append(Ack(tuple(chunk)))
    return frames


def nack_frame(message: Message | int, delay: float | None, reason: str | None) -> Nack:
    """The NACK giving ``message`` back, at once or after ``delay`` seconds."""
    message_id = message.id if isinstance(message, Message) else message
    return Nack(message_id, milliseconds("delay", delay, minimum=0) or 0, reason_token(reason))


def retry_delay(attempt: int, backoff: float, max_backoff: float) -> float:
    """Seconds before a message whose handler failed is redelivered: doubling per attempt."""
    return min(max_backoff, backoff * 2.0 ** min(attempt - 1, 32))
