"""The values inside frames, and the base of the typed frames.

Names, integers, durations, options and JSON bodies are checked here, once,
for every frame that carries them.  Errors here are not framing errors: the
stream is intact, so the peer answers one ERROR and carries on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from bbmq.defaults import DLQ_SUFFIX
from bbmq.protocol.codec import ErrorCode, Frame, ProtocolError

#: Longest msgid (idempotency key) of a PUBLISH.
MAX_MSGID_CHARS: Final = 100
#: Longest delay, ttl or wait_ms: 2**32 seconds (136 years, as beanstalkd), which keeps
#: every deadline far inside a signed 64-bit column.
MAX_DURATION_MS: Final = 2**32 * 1000
#: Message ids, counts and attempts fit a signed 64-bit integer.
MAX_INTEGER: Final = 2**63 - 1
#: Topic and group names; a dead-letter topic adds its suffix to a name of up to 200.
NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,200}(?:" + re.escape(DLQ_SUFFIX) + ")?")
_SENDER_RE: Final = re.compile(r"[!-~]{1,200}")


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid topic or group name, else raise BAD_NAME."""
    if not NAME_RE.fullmatch(name):
        raise ProtocolError(
            ErrorCode.BAD_NAME,
            f"{kind} name {name[:60]!r} is invalid: use 1-200 of A-Z a-z 0-9 _ . -",
        )
    return name


def check_sender(name: str) -> str:
    """Return ``name`` if it can travel as MESSAGE's ``from=`` value, else raise BAD_NAME."""
    if not _SENDER_RE.fullmatch(name):
        raise ProtocolError(
            ErrorCode.BAD_NAME,
            f"sender name {name[:60]!r} is invalid: use 1-200 printable ASCII characters, "
            "no spaces",
        )
    return name


def invalid(text: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_PROTOCOL, text)


def parse_int(verb: str, what: str, text: str, minimum: int = 0,
               maximum: int = MAX_INTEGER) -> int:
    # isdigit() alone would let through non-ASCII digits (and strings int() refuses)
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else -1
    if not minimum <= value <= maximum:
        raise invalid(f"{verb}: {what} must be a whole number from {minimum} to {maximum}, "
                       f"got {text[:40]!r}")
    return value


def parse_duration(verb: str, what: str, text: str, minimum: int = 0) -> int:
    return parse_int(verb, what, text, minimum, MAX_DURATION_MS)


def no_args(frame: Frame) -> None:
    if frame.args:
        raise invalid(f"{frame.verb}: takes no arguments")


def parse_options(verb: str, args: tuple[str, ...], allowed: frozenset[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise invalid(f"{verb}: expected key=value, got {arg[:40]!r}")
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise invalid(f"{verb}: unknown option {key[:40]!r} (known: {known})")
        options[key] = value
    return options


def format_options(options: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(f"{key}={value}" for key, value in options.items() if value is not None)


def no_body(frame: Frame) -> None:
    if frame.body:
        raise invalid(f"{frame.verb}: takes no body, SIZE must be 0")


def json_body(frame: Frame) -> dict[str, Any]:
    if not frame.body:
        return {}
    try:
        value = json.loads(frame.body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
        raise invalid(f"{frame.verb}: body must be a JSON object or empty") from None
    if not isinstance(value, dict):
        raise invalid(f"{frame.verb}: body must be a JSON object or empty")
    return value


def json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class TypedFrame:
    """Base of the typed frames: each knows its verb and how to encode itself."""

    VERB: ClassVar[str]

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def from_frame(cls, frame: Frame) -> TypedFrame:
        raise NotImplementedError
