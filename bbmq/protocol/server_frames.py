"""The frames a server sends, typed: each parses its generic frame and encodes itself.

MESSAGE is the one on the hot path of every delivery, so it is encoded in one
%-format and parsed without the generic option machinery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
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
    """A delivery: the message id, which attempt this is, its keys, and the body.

    ``from`` and ``ts``, which nearly every delivery carries, are fields of
    their own (``sender``, ``published_ms``), so the broker builds and encodes
    one per delivery without a dict; ``extra`` holds the other keys in order
    (a dead letter's origin, keys of later versions).  ``meta`` gives them all
    as the wire has them, in the order PROTOCOL.md 7.2 sends them.
    """

    VERB: ClassVar[str] = "MESSAGE"
    id: int
    attempt: int
    body: bytes
    sender: str | None = None
    published_ms: int | None = None
    extra: Mapping[str, str] | None = None

    @property
    def meta(self) -> dict[str, str]:
        """Every key of the delivery, as text: ``from``, ``ts``, then the others."""
        keys = {} if self.sender is None else {"from": self.sender}
        if self.published_ms is not None:
            keys["ts"] = str(self.published_ms)
        if self.extra:
            keys.update(self.extra)
        return keys

    def encode(self) -> bytes:
        # One per delivery, so one %-format with the body copied once, as before the split.
        keys = b"" if self.sender is None else b" from=" + self.sender.encode()
        if self.published_ms is not None:
            keys += b" ts=%d" % self.published_ms
        if self.extra:
            keys += "".join([f" {key}={value}" for key, value in self.extra.items()]).encode()
        body = self.body
        return b"HEAD MESSAGE %d %d%s %d\r\n%sTAIL\r\n" % (
            self.id, self.attempt, keys, len(body), body)

    @classmethod
    def from_frame(cls, frame: Frame) -> Message:
        if len(frame.args) < 2:
            raise invalid("MESSAGE: expected <id> <attempt> [key=value ...]")
        sender: str | None = None
        published_ms: int | None = None
        extra: dict[str, str] = {}
        for arg in frame.args[2:]:
            key, _, value = arg.partition("=")
            if key == "from" and sender is None:
                sender = value
            elif key == "ts" and published_ms is None and value.isascii() and value.isdigit():
                published_ms = int(value)
            else:
                extra[key] = value
        return cls(
            parse_int(cls.VERB, "message id", frame.args[0], minimum=1),
            parse_int(cls.VERB, "attempt", frame.args[1], minimum=1),
            frame.body, sender, published_ms, extra or None,
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
class Redirect(TypedFrame):
    """Another broker of the cluster serves this topic (or none does yet); the connection closes.

    The answer to a publisher or subscriber handshake instead of
    SERVER_ACKNOWLEDGEMENT, or sent at any time on such a connection whose topic
    moved to another broker (PROTOCOL.md 4.7).  ``owner`` is the address
    (``host:port``) of the broker that serves ``topic`` now, with the ``epoch`` of
    its lease; None while no broker serves it, and then ``retry_ms`` says when to
    try again.  ``brokers`` lists the cluster's live brokers; ``reason`` is for people.
    """

    VERB: ClassVar[str] = "REDIRECT"
    topic: str
    owner: str | None
    epoch: int | None = None
    retry_ms: int | None = None
    brokers: tuple[str, ...] = ()
    reason: str = ""

    def encode(self) -> bytes:
        body: dict[str, Any] = {"owner": self.owner, "epoch": self.epoch,
                                "retry_ms": self.retry_ms, "brokers": list(self.brokers),
                                "reason": self.reason}
        return encode(self.VERB, (self.topic,), json_bytes(body))

    @classmethod
    def from_frame(cls, frame: Frame) -> Redirect:
        if len(frame.args) != 1:
            raise invalid("REDIRECT: expected the topic")
        body = json_body(frame)
        owner = body.get("owner")
        epoch = body.get("epoch")
        retry_ms = body.get("retry_ms")
        brokers = body.get("brokers") or []
        well_formed = (
            (owner is None or isinstance(owner, str))
            and (epoch is None or type(epoch) is int)
            and (retry_ms is None or type(retry_ms) is int)
            and isinstance(brokers, list)
            and all(isinstance(address, str) for address in brokers)
        )
        if not well_formed:
            raise invalid("REDIRECT: owner must be a string or null, epoch and retry_ms "
                          "integers or null, brokers a list of strings")
        if owner is None and retry_ms is None:
            raise invalid("REDIRECT: names neither an owner nor a retry_ms")
        return cls(frame.args[0], owner, epoch, retry_ms, tuple(brokers),
                   str(body.get("reason", "")))


@dataclass(slots=True)
class CloseConnectionSignal(TypedFrame):
    """The server's goodbye; the connection closes after it."""

    VERB: ClassVar[str] = "CLOSE_CONNECTION_SIGNAL"

    def encode(self) -> bytes:
        return encode(self.VERB)

    @classmethod
    def from_frame(cls, frame: Frame) -> CloseConnectionSignal:
        return cls()
