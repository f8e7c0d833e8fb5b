"""What the client raises: the broker's refusals, refusals made before sending, lost
connections.

Every error carries the code a program can branch on (the broker's ``ERROR``
codes, or ``CONNECTION_LOST``) and one line of text for people.
"""

from __future__ import annotations

from typing import Final

from bbmq.protocol import Redirect

#: The code of :class:`ConnectionLost`: not a broker code, the connection itself failed.
CONNECTION_LOST: Final = "CONNECTION_LOST"


class BrokerError(Exception):
    """The broker answered with an ERROR frame."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class PublishError(BrokerError):
    """The broker refused a message for good (a bad option, say): fix it, do not retry.

    Messages published in the same call may have been stored all the same:
    ``ids`` holds, in call order, each message's id, or 0 where it was not.
    """

    def __init__(self, code: str, text: str, ids: list[int]) -> None:
        super().__init__(code, text)
        self.ids = ids


class InvalidArgument(BrokerError, ValueError):
    """Refused before anything was sent (a bad name or option), with the code the broker
    would have given."""


class ConnectionLost(BrokerError):
    """The connection closed or failed; what was not acked may be redelivered."""

    def __init__(self, text: str) -> None:
        super().__init__(CONNECTION_LOST, text)


class CannotConnect(ConnectionLost):
    """No connection could be opened at all (refused, no route, TLS failed): the text names
    the address.  A client that never reached the broker raises it at once instead of
    retrying, since the address or the broker's state is what needs fixing."""


class Redirected(ConnectionLost):
    """The broker said another broker of the cluster serves the topic (a REDIRECT) and
    closed the connection.  The client follows it by itself (PROTOCOL.md 4.7); this is
    seen only where a redirect cannot be followed."""

    def __init__(self, redirect: Redirect) -> None:
        where = (f"the owner is {redirect.owner}" if redirect.owner is not None
                 else f"no broker serves it yet; try again in {redirect.retry_ms} ms")
        reason = f" ({redirect.reason})" if redirect.reason else ""
        super().__init__(f"topic {redirect.topic} moved: {where}{reason}")
        self.redirect = redirect
