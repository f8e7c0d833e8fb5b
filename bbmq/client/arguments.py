"""The user's arguments checked and converted before anything is sent.

A bad name or duration is refused here with the code the broker would have
given (:class:`InvalidArgument`), so that it never costs a round trip or,
in a pipelined publish, the messages behind it.
"""

from __future__ import annotations

import math
import os

from bbmq.client.errors import InvalidArgument
from bbmq.defaults import DEFAULT_HOST, DEFAULT_PORT
from bbmq.protocol import MAX_DURATION_MS, ErrorCode, ProtocolError, check_name


def default_address() -> tuple[str, int]:
    """The broker address from BBMQ_HOST / BBMQ_PORT, else 127.0.0.1:15333."""
    return os.environ.get("BBMQ_HOST", DEFAULT_HOST), int(os.environ.get("BBMQ_PORT",
                                                                         DEFAULT_PORT))


def checked_name(kind: str, name: str) -> str:
    """``name`` if it is a valid topic or group name (``kind``), else InvalidArgument."""
    try:
        return check_name(kind, name)
    except ProtocolError as error:
        raise InvalidArgument(error.code, error.text) from None


def milliseconds(what: str, seconds: float | None, *, minimum: int) -> int | None:
    """``seconds`` as whole milliseconds (rounded up), checked against the protocol's bounds."""
    if seconds is None:
        return None
    ms = math.ceil(seconds * 1000)
    if not minimum <= ms <= MAX_DURATION_MS:
        raise InvalidArgument(ErrorCode.INVALID_PROTOCOL,
                              f"{what} must be from {minimum / 1000:g} to "
                              f"{MAX_DURATION_MS // 1000} seconds, got {seconds!r}")
    return ms


def reason_token(reason: str | None) -> str | None:
    """A NACK reason as the one token the protocol carries (no spaces, 200 characters)."""
    if reason is None:
        return None
    return "_".join(reason.split())[:200] or None

