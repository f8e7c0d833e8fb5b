"""Handing a connection's frames to the core, a turn's worth at a time.

The transport (bbmq/server.py) and the core's test harness both drive the core
through :func:`hand_over`.  The bounds here keep one client's burst from
holding the others back: the server hands the core at most FRAMES_PER_TURN
frames of one connection per turn of the event loop (reading it paused until
the next turn), and stops reading a connection owed MAX_OWED_REPLIES PUBLISH
replies until the store has caught up with half of them.  A burst of 100,000
PUBLISH frames then costs the other connections a few milliseconds, not seconds.
"""

from __future__ import annotations

from collections.abc import Callable

from bbmq import protocol
from bbmq.core import Broker
from bbmq.protocol import NEED_DATA, PAUSED

#: Frames of one connection handed to the core per turn of the event loop.
FRAMES_PER_TURN = 200
#: PUBLISH replies a connection may be owed (publishes not yet committed, or answered
#: out of turn) before the server stops reading it: above a windowed producer's usual
#: 1,000, so it throttles only bursts, and half a store transaction (--max-batch 2000).
MAX_OWED_REPLIES = 1024


def hand_over(connection: protocol.ServerConnection, broker: Broker, session_id: int, now_ms: int,
              answer_handshake: Callable[[], bool], *, budget: int | None = None) -> bool:
    """Give the broker the connection's events, in order: all of them, or ``budget``.

    After a handshake the connection pauses: what the frames behind it mean
    depends on the answer, so ``answer_handshake`` sends it first (it returns
    False if the broker closed the connection instead, and then nothing more is
    handed over).  Returns True if the budget ran out (events may remain).
    """
    next_event, receive = connection.next_event, broker.receive
    left = -1 if budget is None else budget  # -1: no budget (it never reaches 0)
    while left and (event := next_event()) is not NEED_DATA:
        if event is PAUSED:
            if not answer_handshake() or connection.state is protocol.State.AWAITING_ACK:
                return False
            continue
        receive(session_id, event, now_ms)
        left -= 1
    return left == 0
