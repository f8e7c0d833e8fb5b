"""The bbmq wire protocol, sans-IO: bytes in, frames out; frames in, bytes out.

Every frame, in both directions, is::

    HEAD <VERB>[ <ARG>]* <SIZE>\\r\\n<SIZE bytes of body>TAIL\\r\\n

This module knows nothing of sockets, asyncio or time, so the server, the
client library and the tests all share one implementation of the grammar
(docs/PROTOCOL.md is the public contract it implements).  It has two layers:

* :class:`FrameDecoder` / :func:`encode` turn bytes into generic :class:`Frame`
  tuples and back.  Errors here are *framing* errors: the stream can no longer
  be trusted, so the peer closes the connection after reporting them.
* :func:`parse` turns a generic frame into a typed one (``Publish``,
  ``Fetch``, ``Message`` ...) and every typed frame knows how to encode
  itself.  Errors here leave the stream intact: one bad command, one ERROR.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, NamedTuple

from bbmq.defaults import DLQ_SUFFIX

MAX_HEADER_BYTES: Final = 1024
DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
MAX_MSGID_CHARS: Final = 100
#: Longest delay, ttl or wait_ms: 2**32 seconds (136 years, as beanstalkd), which keeps
#: every deadline far inside a signed 64-bit column.
MAX_DURATION_MS: Final = 2**32 * 1000
#: Message ids, counts and attempts fit a signed 64-bit integer.
MAX_INTEGER: Final = 2**63 - 1

_CRLF: Final = b"\r\n"
_HEAD: Final = b"HEAD "
_TAIL: Final = b"TAIL\r\n"
_VERB_RE: Final = re.compile(r"[A-Z_]+")
#: Topic and group names; a dead-letter topic adds its suffix to a name of up to 200.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,200}(?:" + re.escape(DLQ_SUFFIX) + ")?")
_SENDER_RE: Final = re.compile(r"[!-~]{1,200}")
_ARG_RE: Final = re.compile(r"[!-~]+")  # printable ASCII, no space
#: A well-formed header line with its CRLF, matched in place in the decoder's buffer;
#: for an empty body (acks, FETCH, PING ...) the whole frame, TAIL included (group 3 None).
_HEADER_LINE_RE: Final = re.compile(
    rb"HEAD ([A-Z_]+)((?: [!-~]+)*) (?:0\r\nTAIL\r\n|([0-9]{1,18})\r\n)")


class ErrorCode(StrEnum):
    """The codes an ``ERROR`` frame can carry."""

    INVALID_PROTOCOL = "INVALID_PROTOCOL"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    BAD_NAME = "BAD_NAME"
    NOT_ALLOWED = "NOT_ALLOWED"
    UNKNOWN_MESSAGE = "UNKNOWN_MESSAGE"
    SERVER_BUSY = "SERVER_BUSY"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    UNAUTHORIZED = "UNAUTHORIZED"
    TIMEOUT = "TIMEOUT"
    SERVER_CLOSING = "SERVER_CLOSING"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class ProtocolError(Exception):
    """A frame that breaks the grammar.

    ``fatal`` errors mean the byte stream is out of step (bad header, size over
    the limit, missing TAIL): the connection must be closed after the ERROR
    frame.  Non-fatal ones concern a single well-framed command.
    """

    def __init__(self, code: ErrorCode, text: str, *, fatal: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.fatal = fatal


class Frame(NamedTuple):
    """One frame as it travels: a verb, its arguments and a body."""

    verb: str
    args: tuple[str, ...] = ()
    body: bytes = b""


def encode(verb: str, args: tuple[str, ...] | list[str] = (), body: bytes = b"") -> bytes:
    """The bytes of one frame."""
    head = " ".join((verb, *args, str(len(body))))
    return b"".join((_HEAD, head.encode("ascii"), _CRLF, body, _TAIL))


class FrameDecoder:
    """Incremental decoder: feed it whatever the socket gave, get whole frames.

    Memory is bounded by the limits: a header line longer than
    ``max_header_bytes`` or a SIZE above ``max_body_bytes`` is refused as soon
    as it is seen, before any body is buffered.  After a :class:`ProtocolError`
    the decoder is dead; the connection must be closed.
    """

    def __init__(
        self,
        max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self._buffer = bytearray()
        self._pending: tuple[str, tuple[str, ...], int] | None = None
        self._failed: ProtocolError | None = None

    @property
    def error(self) -> ProtocolError | None:
        """The framing error met after the frames the last feed returned, if any.

        Report it at once: it would otherwise surface only at the next feed.
        """
        return self._failed

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame they complete, in order."""
        if self._failed is not None:
            raise self._failed
        # Most reads hold whole frames and leave nothing over: parse such a read in
        # place (slicing bytes copies once; slicing a bytearray into bytes, twice).
        buffer: bytes | bytearray
        if self._buffer:
            buffer = self._buffer
            buffer += data
        else:
            buffer = data
        frames: list[Frame] = []
        pos = 0  # consumed bytes are dropped once per feed, not once per frame
        max_body = self.max_body_bytes
        line_limit = self.max_header_bytes + len(_CRLF)
        try:
            while True:
                if self._pending is None:
                    # The common case in one regex, in place: no search, no copy of the line.
                    match = _HEADER_LINE_RE.match(buffer, pos, pos + line_limit + len(_TAIL))
                    size_text = None if match is None else match[3]
                    # (The match may run past the header limit by the TAIL it allows for.)
                    line_bytes = 0 if match is None else (
                        match.end() - pos - (len(_TAIL) if size_text is None else 0))
                    if match is not None and line_bytes <= line_limit and (
                        size_text is None or int(size_text) <= max_body
                    ):
                        arg_text = match[2]
                        verb = match[1].decode()
                        args = tuple(arg_text.decode().split(" ")[1:]) if arg_text else ()
                        pos = match.end()
                        if size_text is None:  # an empty body: the frame is whole already
                            frames.append(Frame(verb, args))
                            continue
                        self._pending = (verb, args, int(size_text))
                    else:
                        end = buffer.find(_CRLF, pos, pos + line_limit)
                        if end < 0:
                            if len(buffer) - pos > self.max_header_bytes + 1:
                                raise ProtocolError(
                                    ErrorCode.FRAME_TOO_LARGE,
                                    f"header line longer than {self.max_header_bytes} bytes; "
                                    "frames start with 'HEAD <VERB> ... <SIZE>\\r\\n'",
                                    fatal=True,
                                )
                            break
                        self._pending = self._explain_header(bytes(buffer[pos:end]))
                        pos = end + len(_CRLF)
                verb, args, size = self._pending
                stop = pos + size
                if len(buffer) < stop + len(_TAIL):
                    break
                if not buffer.startswith(_TAIL, stop):
                    raise ProtocolError(
                        ErrorCode.INVALID_PROTOCOL,
                        f"{verb}: expected 'TAIL\\r\\n' after the {size}-byte body; "
                        "check the SIZE field",
                        fatal=True,
                    )
                frames.append(Frame(verb, args, bytes(buffer[pos:stop])))  # bytes(bytes) is free
                pos = stop + len(_TAIL)
                self._pending = None
        except ProtocolError as error:
            self._failed = error
            self._buffer.clear()
            if not frames:
                raise
            # Hand out the frames that were whole; the error is in .error and the next feed.
            return frames
        if buffer is self._buffer:
            del buffer[:pos]
        else:
            self._buffer += buffer[pos:]
        return frames

    def _explain_header(self, line: bytes) -> tuple[str, tuple[str, ...], int]:
        """The slow path, for a line the header regex refused: say what is wrong with it.

        (A line it refused can still be valid, e.g. SIZE with leading zeros past
        18 digits; then this parses it.)
        """
        if not line.startswith(_HEAD):
            raise ProtocolError(
                ErrorCode.INVALID_PROTOCOL,
                "every frame starts with 'HEAD '; see docs/PROTOCOL.md",
                fatal=True,
            )
        try:
            text = line[len(_HEAD) :].decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(
                ErrorCode.INVALID_PROTOCOL, "header line must be printable ASCII", fatal=True
            ) from None
        tokens = text.split(" ")
        if len(tokens) < 2 or not all(_ARG_RE.fullmatch(token) for token in tokens):
            raise ProtocolError(
                ErrorCode.INVALID_PROTOCOL,
                "header must be 'HEAD <VERB> [ARG ...] <SIZE>' with single spaces",
                fatal=True,
            )
        verb, *args, size_text = tokens
        if not _VERB_RE.fullmatch(verb):
            raise ProtocolError(
                ErrorCode.INVALID_PROTOCOL,
                f"verb {verb!r} is not upper-case letters and '_'",
                fatal=True,
            )
        if not size_text.isdigit():
            raise ProtocolError(
                ErrorCode.INVALID_PROTOCOL,
                f"{verb}: the last header field must be the body size, got {size_text!r}",
                fatal=True,
            )
        try:
            size = int(size_text)
        except ValueError:  # more digits than int() converts: far over any limit
            size = self.max_body_bytes + 1
        if size > self.max_body_bytes:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"{verb}: body of {size} bytes is over this server's limit of "
                f"{self.max_body_bytes}; split the message or raise --max-message-size",
                fatal=True,
            )
        return verb, tuple(args), size


# --------------------------------------------------------------------------- typed frames


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid topic or group name, else raise BAD_NAME."""
    if not _NAME_RE.fullmatch(name):
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


def _invalid(text: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_PROTOCOL, text)


def _parse_int(verb: str, what: str, text: str, minimum: int = 0,
               maximum: int = MAX_INTEGER) -> int:
    # isdigit() alone would let through non-ASCII digits (and strings int() refuses)
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else -1
    if not minimum <= value <= maximum:
        raise _invalid(f"{verb}: {what} must be a whole number from {minimum} to {maximum}, "
                       f"got {text[:40]!r}")
    return value


def _parse_duration(verb: str, what: str, text: str, minimum: int = 0) -> int:
    return _parse_int(verb, what, text, minimum, MAX_DURATION_MS)


def _no_args(frame: Frame) -> None:
    if frame.args:
        raise _invalid(f"{frame.verb}: takes no arguments")


def _parse_options(verb: str, args: tuple[str, ...], allowed: frozenset[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise _invalid(f"{verb}: expected key=value, got {arg[:40]!r}")
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise _invalid(f"{verb}: unknown option {key[:40]!r} (known: {known})")
        options[key] = value
    return options


def _format_options(options: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(f"{key}={value}" for key, value in options.items() if value is not None)


def _no_body(frame: Frame) -> None:
    if frame.body:
        raise _invalid(f"{frame.verb}: takes no body, SIZE must be 0")


def _json_body(frame: Frame) -> dict[str, Any]:
    if not frame.body:
        return {}
    try:
        value = json.loads(frame.body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
        raise _invalid(f"{frame.verb}: body must be a JSON object or empty") from None
    if not isinstance(value, dict):
        raise _invalid(f"{frame.verb}: body must be a JSON object or empty")
    return value


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class TypedFrame:
    """Base of the typed frames: each knows its verb and how to encode itself."""

    VERB: ClassVar[str]

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def from_frame(cls, frame: Frame) -> TypedFrame:
        raise NotImplementedError


# -- client to server --------------------------------------------------------------------


@dataclass(slots=True)
class ClientPublisher(TypedFrame):
    """Handshake of a publishing connection; options are e.g. ``name`` and ``token``."""

    VERB: ClassVar[str] = "CLIENT_PUBLISHER"
    topic: str
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.VERB, (self.topic,), _json_bytes(self.options))

    @classmethod
    def from_frame(cls, frame: Frame) -> ClientPublisher:
        if len(frame.args) != 1:
            raise _invalid("CLIENT_PUBLISHER: expected exactly one argument, the topic")
        return cls(check_name("topic", frame.args[0]), _json_body(frame))


@dataclass(slots=True)
class ClientSubscriber(TypedFrame):
    """Handshake of a consuming connection; ``group`` defaults to ``default``."""

    VERB: ClassVar[str] = "CLIENT_SUBSCRIBER"
    topic: str
    group: str = "default"
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.VERB, (self.topic, self.group), _json_bytes(self.options))

    @classmethod
    def from_frame(cls, frame: Frame) -> ClientSubscriber:
        if len(frame.args) not in (1, 2):
            raise _invalid("CLIENT_SUBSCRIBER: expected <topic> [<group>]")
        group = frame.args[1] if len(frame.args) == 2 else "default"
        return cls(
            check_name("topic", frame.args[0]), check_name("group", group), _json_body(frame)
        )


@dataclass(slots=True)
class ClientAdmin(TypedFrame):
    """Handshake of an administrative connection (stats, topics, purge ...)."""

    VERB: ClassVar[str] = "CLIENT_ADMIN"
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.VERB, (), _json_bytes(self.options))

    @classmethod
    def from_frame(cls, frame: Frame) -> ClientAdmin:
        if frame.args:
            raise _invalid("CLIENT_ADMIN: takes no arguments")
        return cls(_json_body(frame))


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
        return encode(self.VERB, _format_options(options), self.body)

    @classmethod
    def from_frame(cls, frame: Frame) -> Publish:
        args = frame.args
        if not args:  # the hot paths: a plain PUBLISH, and one with only a msgid
            return cls(frame.body)
        if len(args) == 1 and args[0].startswith("msgid=") and 7 <= len(args[0]) <= 106:
            return cls(frame.body, args[0][6:])
        options = _parse_options("PUBLISH", frame.args, _PUBLISH_OPTIONS)
        msgid = options.get("msgid")
        if msgid is not None and not 1 <= len(msgid) <= MAX_MSGID_CHARS:
            raise _invalid(f"PUBLISH: msgid must be 1-{MAX_MSGID_CHARS} printable characters")
        delay = _parse_duration("PUBLISH", "delay", options.get("delay", "0"))
        ttl_text = options.get("ttl")
        ttl = None if ttl_text is None else _parse_duration("PUBLISH", "ttl", ttl_text, minimum=1)
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
        _no_body(frame)
        if len(frame.args) > 2:
            raise _invalid("FETCH: expected [<n> [<wait_ms>]]")
        count = _parse_int("FETCH", "n", frame.args[0], minimum=1) if frame.args else 1
        wait = _parse_duration("FETCH", "wait_ms", frame.args[1]) if len(frame.args) == 2 else None
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
        _no_body(frame)
        if not frame.args:
            raise _invalid("ACK: expected one or more message ids")
        return cls(tuple(_parse_int("ACK", "message id", arg, minimum=1) for arg in frame.args))


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
        return encode(self.VERB, (str(self.id), *_format_options(options)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Nack:
        _no_body(frame)
        if not frame.args:
            raise _invalid("NACK: expected <id> [delay=<ms>] [reason=<text>]")
        message_id = _parse_int("NACK", "message id", frame.args[0], minimum=1)
        options = _parse_options("NACK", frame.args[1:], _NACK_OPTIONS)
        return cls(message_id, _parse_duration("NACK", "delay", options.get("delay", "0")),
                   options.get("reason"))


@dataclass(slots=True)
class Ping(TypedFrame):
    """Liveness check, allowed at any time."""

    VERB: ClassVar[str] = "PING"

    def encode(self) -> bytes:
        return encode(self.VERB)

    @classmethod
    def from_frame(cls, frame: Frame) -> Ping:
        _no_args(frame)
        _no_body(frame)
        return cls()


@dataclass(slots=True)
class ClientShutdownSignal(TypedFrame):
    """Goodbye from the client."""

    VERB: ClassVar[str] = "CLIENT_SHUTDOWN_SIGNAL"

    def encode(self) -> bytes:
        return encode(self.VERB)

    @classmethod
    def from_frame(cls, frame: Frame) -> ClientShutdownSignal:
        _no_args(frame)
        _no_body(frame)
        return cls()


@dataclass(slots=True)
class AdminCommand(TypedFrame):
    """An administrative request on a CLIENT_ADMIN connection (body: JSON parameters)."""

    VERB: ClassVar[str] = "ADMIN"
    command: str
    params: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.VERB, (self.command,), _json_bytes(self.params))

    @classmethod
    def from_frame(cls, frame: Frame) -> AdminCommand:
        if len(frame.args) != 1:
            raise _invalid("ADMIN: expected one argument, the command name")
        return cls(frame.args[0], _json_body(frame))


# -- server to client --------------------------------------------------------------------


@dataclass(slots=True)
class ServerAcknowledgement(TypedFrame):
    """The server's answer to a handshake: who it is and its limits."""

    VERB: ClassVar[str] = "SERVER_ACKNOWLEDGEMENT"
    info: dict[str, Any]

    def encode(self) -> bytes:
        return encode(self.VERB, (), _json_bytes(self.info))

    @classmethod
    def from_frame(cls, frame: Frame) -> ServerAcknowledgement:
        return cls(_json_body(frame))


@dataclass(slots=True)
class ProducerAckMessage(TypedFrame):
    """The message is taken (stored, when the broker has a durable store)."""

    VERB: ClassVar[str] = "PRODUCER_ACK_MESSAGE"
    id: int

    def encode(self) -> bytes:
        return b"HEAD PRODUCER_ACK_MESSAGE %d 0\r\nTAIL\r\n" % self.id

    @classmethod
    def from_frame(cls, frame: Frame) -> ProducerAckMessage:
        _no_body(frame)
        if len(frame.args) != 1:
            raise _invalid("PRODUCER_ACK_MESSAGE: expected the message id")
        return cls(_parse_int(cls.VERB, "message id", frame.args[0], minimum=1))


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
            raise _invalid("MESSAGE: expected <id> <attempt> [key=value ...]")
        meta: dict[str, str] = {}
        for arg in frame.args[2:]:
            key, _, value = arg.partition("=")
            meta[key] = value
        return cls(
            _parse_int(cls.VERB, "message id", frame.args[0], minimum=1),
            _parse_int(cls.VERB, "attempt", frame.args[1], minimum=1),
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
        _no_body(frame)
        if len(frame.args) != 1:
            raise _invalid("QUEUE_EMPTY: expected the delivered count")
        return cls(_parse_int(cls.VERB, "count", frame.args[0]))


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
            raise _invalid("ERROR: expected the error code")
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
            raise _invalid("ADMIN_RESULT: body must be JSON") from None


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


CLIENT_FRAMES: Final[dict[str, type[TypedFrame]]] = {
    cls.VERB: cls
    for cls in (ClientPublisher, ClientSubscriber, ClientAdmin, Publish, Fetch, Ack, Nack, Ping,
                ClientShutdownSignal, AdminCommand)
}
SERVER_FRAMES: Final[dict[str, type[TypedFrame]]] = {
    cls.VERB: cls
    for cls in (ServerAcknowledgement, ProducerAckMessage, Message, QueueEmpty, Error,
                AdminResult, Pong, CloseConnectionSignal)
}


def parse(frame: Frame, table: Mapping[str, type[TypedFrame]] = CLIENT_FRAMES) -> TypedFrame:
    """Turn a generic frame into its typed frame, or raise a non-fatal ProtocolError."""
    cls = table.get(frame.verb)
    if cls is None:
        raise _invalid(f"unknown verb {frame.verb!r}; see docs/PROTOCOL.md for the verbs")
    return cls.from_frame(frame)
