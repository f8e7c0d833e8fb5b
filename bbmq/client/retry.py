"""When a client tries again, and how long it waits first: one policy for the library
(Producer, Consumer.run) and the CLI (``bbmq consume``).

Two kinds of trouble pass:

* a PUBLISH refused *for now* (the store is briefly down, the broker is full
  or stopping): the same message, with the same msgid, is sent again later;
* a connection the broker ended or lost for reasons that pass (a restart,
  the connection limit, a handshake too slow): the client connects again and
  comes back, and what was in flight on the old connection is redelivered.

Every other error is the caller's to see: retrying would only repeat it.
"""

from __future__ import annotations

from typing import Final

from bbmq.client.errors import CONNECTION_LOST, BrokerError
from bbmq.protocol import ErrorCode

#: PUBLISH replies that mean "not now": send the message again, with the same msgid.
RESEND_LATER: Final = frozenset({ErrorCode.STORE_UNAVAILABLE, ErrorCode.SERVER_BUSY,
                                 ErrorCode.SERVER_CLOSING})
#: Errors after which the connection is gone but a client may connect again and come back.
COME_BACK: Final = frozenset({CONNECTION_LOST, ErrorCode.SERVER_CLOSING, ErrorCode.SERVER_BUSY,
                              ErrorCode.TIMEOUT})


def comes_back(error: BrokerError) -> bool:
    """``error`` ended the connection for a reason that passes: reconnect and carry on."""
    return error.code in COME_BACK


class Backoff:
    """Pauses that double from ``first`` up to ``ceiling``, so that a broker (or its store)
    that is recovering is not hammered, and a short hiccup costs little."""

    __slots__ = ("_next", "ceiling", "first")

    def __init__(self, first: float, ceiling: float) -> None:
        self.first = first
        self.ceiling = ceiling
        self._next = first

    @classmethod
    def resend(cls) -> Backoff:
        """Between passes of a publish that waits for the broker to take its messages."""
        return cls(0.05, 1.0)

    @classmethod
    def reconnect(cls, ceiling: float = 5.0) -> Backoff:
        """Between attempts to reach a broker that went away (a restart takes seconds)."""
        return cls(0.1, ceiling)

    def next(self) -> float:
        """The pause to make now; the one after it is twice as long."""
        pause = self._next
        self._next = min(self.ceiling, pause * 2)
        return pause

    def reset(self) -> None:
        """Things work again: the next trouble starts with a short pause."""
        self._next = self.first
