"""When a client tries again, and how long it waits first: one policy for the library
(Producer, Consumer.run) and the CLI (``bbmq consume``).

Two kinds of trouble pass:

* a PUBLISH refused *for now* (the store is briefly down, the broker is full
  or stopping): the same message, with the same msgid, is sent again later;
* a connection the broker ended or lost for reasons that pass (a restart,
  the connection limit, a handshake too slow): the client connects again and
  comes back, and what was in flight on the old connection is redelivered.

A connection that ends with a REDIRECT (a cluster moved the topic) is followed
at once, and so is the first loss after things worked: the connect tries the
next broker of the list straight away (fast failover depends on it; see
:class:`Reconnect`).

Every other error is the caller's to see: retrying would only repeat it.
"""

from __future__ import annotations

import logging
from typing import Final

from bbmq.client.errors import CONNECTION_LOST, BrokerError, CannotConnect, Redirected
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


def interrupted_level(error: BrokerError) -> int:
    """How loudly to log a connection that ended: a REDIRECT is a cluster at work (a topic
    moved, a broker drains), a loss is worth a warning."""
    return logging.INFO if isinstance(error, Redirected) else logging.WARNING


def first_connect_failed(error: BrokerError, *, was_connected: bool) -> bool:
    """``error`` is a client's first attempt to reach the broker failing (``was_connected``:
    a handshake has succeeded before): a wrong address or a broker that is not running,
    to report at once rather than retry."""
    return isinstance(error, CannotConnect) and not was_connected


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


class Reconnect:
    """How long to wait before connecting again after a connection ended.

    Not at all after a REDIRECT (the connect goes where it says, and waits its
    ``retry_ms`` itself) nor after the first loss since things last worked: in
    a cluster another broker takes the topic over within a second of a crash,
    and the connect tries every broker in turn, so waiting first only adds to
    the failover.  Losses in a row after that back off (``backoff``), so that
    brokers that are restarting are not hammered.
    """

    __slots__ = ("_backoff", "_quick")

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._quick = True

    def pause(self, error: BrokerError) -> float:
        """Seconds to wait before connecting again after ``error``."""
        if isinstance(error, Redirected):
            return 0.0
        if self._quick:
            self._quick = False
            return 0.0
        return self._backoff.next()

    def reset(self) -> None:
        """Things work again: the next loss is followed at once."""
        self._quick = True
        self._backoff.reset()
