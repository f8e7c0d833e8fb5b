"""The frames a server sends, typed: each parses its generic frame and encodes itself.

MESSAGE is the one on the hot path of every delivery, so it is encoded in one
%-format and parsed without the generic option machinery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bbmq.protocol.codec import Frame, encode
from bbmq.protocol.fields import (
    TypedFrame,
    invalid,
    json_body,
    json_bytes,
    no_body,
    parse_int,
)


@dataclass(slots=True)
class ServerAcknowledgement(TypedFrame):
    """The server's answer to a handshake: who it is and its limits."""

    VERB: ClassVar[str] = "SERVER_ACKNOWLEDGEMENT"
    info: dict[str, Any]

    def encode(self) -> bytes:
        return encode(self.VERB, (), json_bytes(self.info))

    @classmethod
    def from_frame(cls, frame: Frame) -> ServerAcknowledgement:
        return cls(json_body(frame))


@dataclass(slots=True)
class ProducerAckMessage(TypedFrame):
    """The message is taken (stored, when the broker has a durable store)."""

    VERB: ClassVar[str] = "PRODUCER_ACK_MESSAGE"
    id: int

    def encode(self) -> bytes:
        return b"HEAD PRODUCER_ACK_MESSAGE %d 0\r\nTAIL\r\n" % self.id

    @classmethod
    def from_frame(cls, frame: Frame) -> ProducerAckMessage:
        no_body(frame)
        if len(frame.args) != 1:
            raise invalid("PRODUCER_ACK_MESSAGE: expected the message id")
        return cls(parse_int(cls.VERB, "message id", frame.args[0], minimum=1))


@dataclass(slots=True)
class Message(TypedFrame):
    """A delivered message. ``meta`` carries ``from``, ``ts`` and any future keys."""

    VERB: ClassVar[str] = "MESSAGE"
    id: int
    attempt: int
    body: bytes
    meta: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        # The broker encodes one per delivery: one %-format, the body copied once (a plain
        # loop, as the meta has two or three keys: faster than a join of a comprehension).
        options = ""
        for key, value in self.meta.items():
            options += f" {key}={value}"
        body = self.body
        return b"HEAD MESSAGE %d %d%s %d\r\n%sTAIL\r\n" % (
            self.id, self.attempt, options.encode(), len(body), body)

    @classmethod
    def from_frame(cls, frame: Frame) -> Message:
        if len(frame.args) < 2:
            raise invalid("MESSAGE: expected <id> <attempt> [key=value ...]")
        meta: dict[str, str] = {}
        for arg in frame.args[2:]:
            key, _, value = arg.partition("=")
            meta[key] = value
        return cls(
            parse_int(cls.VERB, "message id", frame.args[0], minimum=1),
            parse_int(cls.VERB, "attempt", frame.args[1], minimum=1),
            frame.body,
            meta,
        )


@dataclass(slots=True)
class QueueEmpty(TypedFrame):
    """Closes a FETCH that ended with fewer messages than asked for."""

    VERB: ClassVar[str] = "QUEUE_EMPTY"
    delivered: int

    def encode(self) -> bytes:
        return encode(self.VERB, (str(self.delivered),))

    @classmethod
    def from_frame(cls, frame: Frame) -> QueueEmpty:
        no_body(frame)
        if len(frame.args) != 1:
            raise invalid("QUEUE_EMPTY: expected the delivered count")
        return cls(parse_int(cls.VERB, "count", frame.args[0]))


@dataclass(slots=True)
class Error(TypedFrame):
    """An error: a code for programs, one line of text for people."""

    VERB: ClassVar[str] = "ERROR"
    code: str
    text: str

    def encode(self) -> bytes:
        return encode(self.VERB, (self.code,), self.text.encode())

    @classmethod
    def from_frame(cls, frame: Frame) -> Error:
        if len(frame.args) != 1:
            raise invalid("ERROR: expected the error code")
        return cls(frame.args[0], frame.body.decode(errors="replace"))


@dataclass(slots=True)
class AdminResult(TypedFrame):
    """The answer to an ADMIN command: a JSON body."""

    VERB: ClassVar[str] = "ADMIN_RESULT"
    result: Any

    def encode(self) -> bytes:
        return encode(self.VERB, (), json.dumps(self.result, separators=(",", ":")).encode())

    @classmethod
    def from_frame(cls, frame: Frame) -> AdminResult:
        try:
            return cls(json.loads(frame.body))
        except (ValueError, RecursionError):
            raise invalid("ADMIN_RESULT: body must be JSON") from None


@dataclass(slots=True)
class Pong(TypedFrame):
    """The answer to PING."""

    VERB: ClassVar[str] = "PONG"

    def encode(self) -> bytes:
        return encode(self.VERB)

    @classmethod
    def from_frame(cls, frame: Frame) -> Pong:
        return cls()


@dataclass(slots=True)
class CloseConnectionSignal(TypedFrame):
    """The server's goodbye; the connection closes after it."""

    VERB: ClassVar[str] = "CLOSE_CONNECTION_SIGNAL"

    def encode(self) -> bytes:
        return encode(self.VERB)

    @classmethod
    def from_frame(cls, frame: Frame) -> CloseConnectionSignal:
        return cls()
