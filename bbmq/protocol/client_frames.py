"""The frames a client sends, typed: each parses its generic frame and encodes itself.

Parsing refuses bad values with a non-fatal ProtocolError (one ERROR, the
connection stays usable).  The hot paths (PUBLISH with only a msgid, an ACK
of one id) are encoded and parsed without the generic option machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from bbmq.protocol.codec import Frame, encode
from bbmq.protocol.fields import (
    MAX_MSGID_CHARS,
    TypedFrame,
    check_name,
    format_options,
    invalid,
    json_body,
    json_bytes,
    no_args,
    no_body,
    parse_duration,
    parse_int,
    parse_options,
)


@dataclass(slots=True)
class ClientPublisher(TypedFrame):
    """Handshake of a publishing connection; options are e.g. ``name`` and ``token``."""

    VERB: ClassVar[str] = "CLIENT_PUBLISHER"
    topic: str
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.VERB, (self.topic,), json_bytes(self.options))

    @classmethod
    def from_frame(cls, frame: Frame) -> ClientPublisher:
        if len(frame.args) != 1:
            raise invalid("CLIENT_PUBLISHER: expected exactly one argument, the topic")
        return cls(check_name("topic", frame.args[0]), json_body(frame))


@dataclass(slots=True)
class ClientSubscriber(TypedFrame):
    """Handshake of a consuming connection; ``group`` defaults to ``default``."""

    VERB: ClassVar[str] = "CLIENT_SUBSCRIBER"
    topic: str
    group: str = "default"
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.VERB, (self.topic, self.group), json_bytes(self.options))

    @classmethod
    def from_frame(cls, frame: Frame) -> ClientSubscriber:
        if len(frame.args) not in (1, 2):
            raise invalid("CLIENT_SUBSCRIBER: expected <topic> [<group>]")
        group = frame.args[1] if len(frame.args) == 2 else "default"
        return cls(
            check_name("topic", frame.args[0]), check_name("group", group), json_body(frame)
        )


@dataclass(slots=True)
class ClientAdmin(TypedFrame):
    """Handshake of an administrative connection (stats, topics, purge ...)."""

    VERB: ClassVar[str] = "CLIENT_ADMIN"
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.VERB, (), json_bytes(self.options))

    @classmethod
    def from_frame(cls, frame: Frame) -> ClientAdmin:
        if frame.args:
            raise invalid("CLIENT_ADMIN: takes no arguments")
        return cls(json_body(frame))


_PUBLISH_OPTIONS: Final = frozenset({"msgid", "delay", "ttl", "group"})


@dataclass(slots=True)
class Publish(TypedFrame):
    """One message.  ``delay_ms`` defers delivery; ``ttl_ms`` expires it unseen;
    ``group`` gives it to that one consumer group of the topic only (a DLQ replay)."""

    VERB: ClassVar[str] = "PUBLISH"
    body: bytes
    msgid: str | None = None
    delay_ms: int = 0
    ttl_ms: int | None = None
    group: str | None = None

    def encode(self) -> bytes:
        if (self.msgid is not None and not self.delay_ms and self.ttl_ms is None
                and self.group is None):  # the hot path
            return b"HEAD PUBLISH msgid=%s %d\r\n%sTAIL\r\n" % (
                self.msgid.encode("ascii"), len(self.body), self.body)
        options = {"msgid": self.msgid, "delay": self.delay_ms or None, "ttl": self.ttl_ms,
                   "group": self.group}
        return encode(self.VERB, format_options(options), self.body)

    @classmethod
    def from_frame(cls, frame: Frame) -> Publish:
        args = frame.args
        if not args:  # the hot paths: a plain PUBLISH, and one with only a msgid
            return cls(frame.body)
        if len(args) == 1 and args[0].startswith("msgid=") and 7 <= len(args[0]) <= 106:
            return cls(frame.body, args[0][6:])
        options = parse_options("PUBLISH", frame.args, _PUBLISH_OPTIONS)
        msgid = options.get("msgid")
        if msgid is not None and not 1 <= len(msgid) <= MAX_MSGID_CHARS:
            raise invalid(f"PUBLISH: msgid must be 1-{MAX_MSGID_CHARS} printable characters")
        delay = parse_duration("PUBLISH", "delay", options.get("delay", "0"))
        ttl_text = options.get("ttl")
        ttl = None if ttl_text is None else parse_duration("PUBLISH", "ttl", ttl_text, minimum=1)
        group = options.get("group")
        return cls(frame.body, msgid, delay, ttl,
                   None if group is None else check_name("group", group))


@dataclass(slots=True)
class Fetch(TypedFrame):
    """Ask for up to ``count`` messages; ``wait_ms`` makes it a long poll."""

    VERB: ClassVar[str] = "FETCH"
    count: int = 1
    wait_ms: int | None = None

    def encode(self) -> bytes:
        args = (str(self.count),) if self.wait_ms is None else (str(self.count), str(self.wait_ms))
        return encode(self.VERB, args)

    @classmethod
    def from_frame(cls, frame: Frame) -> Fetch:
        no_body(frame)
        if len(frame.args) > 2:
            raise invalid("FETCH: expected [<n> [<wait_ms>]]")
        count = parse_int("FETCH", "n", frame.args[0], minimum=1) if frame.args else 1
        wait = parse_duration("FETCH", "wait_ms", frame.args[1]) if len(frame.args) == 2 else None
        return cls(count, wait)


@dataclass(slots=True)
class Ack(TypedFrame):
    """Done with these messages."""

    VERB: ClassVar[str] = "ACK"
    ids: tuple[int, ...]

    def encode(self) -> bytes:
        if len(self.ids) == 1:  # the hot path: one ack per message
            return b"HEAD ACK %d 0\r\nTAIL\r\n" % self.ids[0]
        return encode(self.VERB, tuple(map(str, self.ids)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Ack:
        no_body(frame)
        if not frame.args:
            raise invalid("ACK: expected one or more message ids")
        return cls(tuple(parse_int("ACK", "message id", arg, minimum=1) for arg in frame.args))


_NACK_OPTIONS: Final = frozenset({"delay", "reason"})


@dataclass(slots=True)
class Nack(TypedFrame):
    """Give a message back, now or after ``delay_ms``; ``reason`` is kept for the DLQ."""

    VERB: ClassVar[str] = "NACK"
    id: int
    delay_ms: int = 0
    reason: str | None = None

    def encode(self) -> bytes:
        options = {"delay": self.delay_ms or None, "reason": self.reason}
        return encode(self.VERB, (str(self.id), *format_options(options)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Nack:
        no_body(frame)
        if not frame.args:
            raise invalid("NACK: expected <id> [delay=<ms>] [reason=<text>]")
        message_id = parse_int("NACK", "message id", frame.args[0], minimum=1)
        options = parse_options("NACK", frame.args[1:], _NACK_OPTIONS)
        return cls(message_id, parse_duration("NACK", "delay", options.get("delay", "0")),
                   options.get("reason"))


@dataclass(slots=True)
class Ping(TypedFrame):
    """Liveness check, allowed at any time."""

    VERB: ClassVar[str] = "PING"

    def encode(self) -> bytes:
        return encode(self.VERB)

    @classmethod
    def from_frame(cls, frame: Frame) -> Ping:
        no_args(frame)
        no_body(frame)
        return cls()


@dataclass(slots=True)
class ClientShutdownSignal(TypedFrame):
    """Goodbye from the client."""

    VERB: ClassVar[str] = "CLIENT_SHUTDOWN_SIGNAL"

    def encode(self) -> bytes:
        return encode(self.VERB)

    @classmethod
    def from_frame(cls, frame: Frame) -> ClientShutdownSignal:
        no_args(frame)
        no_body(frame)
        return cls()


@dataclass(slots=True)
class AdminCommand(TypedFrame):
    """An administrative request on a CLIENT_ADMIN connection (body: JSON parameters)."""

    VERB: ClassVar[str] = "ADMIN"
    command: str
    params: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.VERB, (self.command,), json_bytes(self.params))

    @classmethod
    def from_frame(cls, frame: Frame) -> AdminCommand:
        if len(frame.args) != 1:
            raise invalid("ADMIN: expected one argument, the command name")
        return cls(frame.args[0], json_body(frame))

