"""What both clients' channels do with the bytes they read, sans-IO: the blocking channel
(bbmq/client/channel.py) and the asyncio one (bbmq/aio/channel.py) differ only in how
they wait for bytes, not in what the bytes mean.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, cast

from bbmq.client.errors import BrokerError, ConnectionLost, Redirected
from bbmq.protocol import (
    NEED_DATA,
    ClientConnection,
    Error,
    ProtocolError,
    Redirect,
    ServerAcknowledgement,
    State,
    TypedFrame,
)


class Inbox:
    """One connection's protocol state and the frames received and checked, not yet read."""

    __slots__ = ("broken", "connection", "events", "redirect")

    def __init__(self) -> None:
        self.connection = ClientConnection()
        #: Frames received and checked, not yet read (a read of the socket brings many).
        self.events: deque[TypedFrame] = deque()
        #: Why the stream broke, once the frames before the break have been read.
        self.broken: ProtocolError | None = None
        #: The REDIRECT that ended the connection (PROTOCOL.md 4.7), once the frames before
        #: it have been read: reading on raises Redirected, which says where to go.
        self.redirect: Redirect | None = None

    def receive(self, data: bytes) -> bool:
        """Take ``data`` and every event it completes; False if the stream ended in it (a
        broken frame, or a REDIRECT: the server closes the connection after one).

        Events are taken until NEED_DATA in one C loop (a client connection never
        says PAUSED: that is the server's side).  What came before a broken frame or
        a REDIRECT is kept, in order.
        """
        connection = self.connection
        connection.receive_data(data)
        events = cast("Iterator[TypedFrame]", iter(connection.next_event, NEED_DATA))
        queued = self.events
        try:
            queued.extend(events)
        except ProtocolError as error:
            self.broken = error
            return False
        if queued and type(queued[-1]) is Redirect:  # nothing follows one: the state is CLOSED
            self.redirect = cast("Redirect", queued.pop())
            return False
        return True

    def take_all(self) -> list[TypedFrame]:
        """Every frame received and not yet read."""
        frames = list(self.events)
        self.events.clear()
        return frames

    def broken_error(self) -> ConnectionLost | None:
        """What to raise once the frames before a broken one (or a REDIRECT) have been read."""
        if self.redirect is not None:
            return Redirected(self.redirect)
        if self.broken is None:
            return None
        return ConnectionLost(f"broker sent an invalid frame: {self.broken.text}")

    def closing(self) -> bool:
        """The goodbye was sent or answered: no frame of ours may follow it."""
        return self.connection.state in (State.CLOSING, State.CLOSED)


def handshake_info(reply: TypedFrame | None, timeout: float) -> dict[str, Any]:
    """The broker's facts from its answer to a handshake, or the error it means (the
    caller closes the connection first)."""
    if isinstance(reply, ServerAcknowledgement):
        return reply.info
    if isinstance(reply, Error):
        raise BrokerError(reply.code, reply.text)
    raise ConnectionLost(f"no handshake answer within {timeout:g} s (got {reply!r})")
