"""Framing, sans-IO: bytes in, generic frames out; a frame in, bytes out.

Every frame, in both directions, is::

    HEAD <VERB>[ <ARG>]* <SIZE>\\r\\n<SIZE bytes of body>TAIL\\r\\n

Errors here are *framing* errors: the byte stream can no longer be trusted, so
the peer closes the connection after reporting them.  What a frame's
arguments mean is the business of the typed frames (client_frames.py,
server_frames.py); which frames are legal when is states.py's.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final, NamedTuple

MAX_HEADER_BYTES: Final = 1024
DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
_CRLF: Final = b"\r\n"
_HEAD: Final = b"HEAD "
_TAIL: Final = b"TAIL\r\n"
_VERB_RE: Final = re.compile(r"[A-Z_]+")
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


def _missing_tail(verb: str, size: int) -> ProtocolError:
    return ProtocolError(
        ErrorCode.INVALID_PROTOCOL,
        f"{verb}: expected 'TAIL\\r\\n' after the {size}-byte body; check the SIZE field",
        fatal=True,
    )


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
                            if buffer.find(b"\n", pos, pos + line_limit) >= 0:
                                # No CRLF can come before this LF: the line is already wrong.
                                raise ProtocolError(
                                    ErrorCode.INVALID_PROTOCOL,
                                    "header line ends in a bare LF; lines end in CRLF "
                                    "('\\r\\n')",
                                    fatal=True,
                                )
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
                    if len(buffer) > stop and not _TAIL.startswith(bytes(buffer[stop:])):
                        raise _missing_tail(verb, size)  # known wrong before TAIL's last byte
                    break
                if not buffer.startswith(_TAIL, stop):
                    raise _missing_tail(verb, size)
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
