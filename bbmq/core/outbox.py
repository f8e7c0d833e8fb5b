"""What each connection is sent: typed frames per session, until the transport takes them.

The core never makes bytes.  Every part of it that answers a connection puts a
protocol frame (``protocol.Message``, ``protocol.Error``, ``protocol.ProducerAckMessage`` ...) in
that session's outbox through :class:`Outboxes`; the transport takes the
frames of every connection that has any (:meth:`Outboxes.take`) and encodes
them, one write per connection per flush.  Keeping this in one place lets the
engine, the roles and the admin commands answer without knowing each other.

Flow control counts bytes nobody has encoded yet, so the outbox keeps an
estimate: a MESSAGE counts its body plus :data:`FRAME_OVERHEAD_BYTES`, any
other frame :data:`FRAME_OVERHEAD_BYTES` alone.  A delivery's header line and
TAIL (``HEAD MESSAGE <id> <attempt> from=<name> ts=<ms> <size>`` ...) are
about 40-70 bytes, so the estimate is within a header of the truth; the frames
it undercounts (an ERROR's text, an ADMIN_RESULT) never go to a subscriber in
bulk, and only subscribers are throttled by it.
"""

from __future__ import annotations

from typing import Final

from bbmq import protocol
from bbmq.core.records import Session

#: Bytes counted per frame on top of its message body (see the module docstring).
FRAME_OVERHEAD_BYTES: Final = 64


class Outboxes:
    """The frames waiting for the transport, per session, and the sessions that have any."""

    def __init__(self, max_output_bytes: int) -> None:
        self.max_output_bytes = max_output_bytes
        self._dirty: dict[int, Session] = {}
        #: Subscribers whose outbox filled up: they get more once it is flushed.
        self._throttled: set[Session] = set()

    def send(self, session: Session, frame: protocol.TypedFrame,
             size: int = FRAME_OVERHEAD_BYTES) -> None:
        """Queue ``frame`` for ``session``; ``size`` is its estimated encoded length."""
        session.outbox.append(frame)
        session.outbox_bytes += size
        self._dirty[session.id] = session

    def close(self, session: Session) -> None:
        """End the connection once what is queued for it has been sent."""
        session.closing = True
        self._dirty[session.id] = session

    def send_replies(self, session: Session) -> None:
        """Send the PUBLISH replies that are known, stopping at the first still owed."""
        replies = session.replies
        while replies and (frame := replies[0].answer) is not None:
            replies.popleft()
            self.send(session, frame)
        if session.closing_after_replies and not replies:
            self.close(session)

    def has_room(self, session: Session) -> bool:
        """Whether a delivery may go to ``session`` now; a full outbox waits for the flush."""
        if not session.writable:
            return False  # the transport's buffer is over its limit: resume_writing wakes us
        if session.outbox_bytes >= self.max_output_bytes:
            self._throttled.add(session)
            return False
        return True

    def take(self) -> list[tuple[int, list[protocol.TypedFrame], bool]]:
        """The frames to send per session, and whether to close it after them."""
        out = []
        for session in self._dirty.values():
            out.append((session.id, session.outbox, session.closing))
            session.outbox = []
            session.outbox_bytes = 0
        self._dirty.clear()
        return out

    def take_one(self, session: Session) -> tuple[list[protocol.TypedFrame], bool]:
        """The frames to send to one session now, and whether to close it after them."""
        frames, session.outbox, session.outbox_bytes = session.outbox, [], 0
        self._dirty.pop(session.id, None)
        return frames, session.closing

    def take_throttled(self) -> set[Session]:
        """The sessions held back by a full outbox since the last call."""
        throttled, self._throttled = self._throttled, set()
        return throttled

    def pending(self) -> bool:
        """Whether any session has something to send."""
        return bool(self._dirty)

    def forget(self, session: Session) -> None:
        """The connection is gone: nothing more is sent to it."""
        self._dirty.pop(session.id, None)
        self._throttled.discard(session)
