"""One connection's protocol state, sans-IO, for either side: bytes in, events out; frames in,
bytes out.

As in h11, a connection object owns no socket and no clock.  The transport
hands it the bytes it read (``receive_data``) and asks for events one at a
time (``next_event``) until it says NEED_DATA; what the transport wants to
send goes through ``send``, which returns the bytes to write.  Both
directions are checked against the one table in states.py, and both move
the connection's state: a handshake received or sent makes it AWAITING_ACK,
SERVER_ACKNOWLEDGEMENT grants the role, the goodbye makes it CLOSING.

Events are pulled one at a time rather than returned in a list because a
handshake changes what the frames behind it mean: the server side answers
PAUSED after a handshake until the answer to it has been sent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final

from bbmq.protocol.client_frames import ClientShutdownSignal
from bbmq.protocol.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ErrorCode,
    Frame,
    FrameDecoder,
    ProtocolError,
)
from bbmq.protocol.fields import TypedFrame
from bbmq.protocol.server_frames import Error, ServerAcknowledgement
from bbmq.protocol.states import (
    CLIENT_FRAMES,
    CLIENT_MAY_SEND,
    HANDSHAKES,
    SERVER_CLOSES_WITH,
    SERVER_FRAMES,
    SERVER_MAY_ANSWER_HANDSHAKE,
    SERVER_MAY_SEND,
    Role,
    State,
    not_allowed_hint,
    parse,
)

#: A client's frames arrive in one read of a few hundred KiB at most; a server's
#: deliveries can be as large as the broker allows, so the client reads any size.
CLIENT_MAX_BODY_BYTES: Final = 1 << 31


#: The states as module names, for the per-frame checks: on Python 3.11 looking a member
#: up on its Enum class (State.OPEN) costs about 0.1 µs, as much as the rest of a check.
_OPEN: Final = State.OPEN
_AWAITING_ACK: Final = State.AWAITING_ACK
_CLOSING: Final = State.CLOSING
_CLOSED: Final = State.CLOSED
#: The table (states.py) in the shape the server's per-frame work wants: for each role, the
#: class of every frame a client may send, so that one lookup both checks and parses.
_CLIENT_FRAMES_BY_ROLE: Final = {role: {verb: CLIENT_FRAMES[verb] for verb in verbs}
                                 for role, verbs in CLIENT_MAY_SEND.items()}
#: What the server may send on an open connection of each role without changing its state.
_SERVER_SENDS_IN_PASSING: Final = {role: verbs - SERVER_CLOSES_WITH
                                   for role, verbs in SERVER_MAY_SEND.items()}
#: The client frames that move the state when received: the handshakes and the goodbye.
_MOVES_STATE: Final = frozenset(HANDSHAKES) | {ClientShutdownSignal.VERB}


class Pending(Enum):
    """``next_event`` has no event to give."""

    #: No whole frame is buffered: read more bytes.
    NEED_DATA = auto()
    #: A handshake waits for its answer: send the answer, then ask again.
    PAUSED = auto()


NEED_DATA: Final = Pending.NEED_DATA
PAUSED: Final = Pending.PAUSED


@dataclass(frozen=True, slots=True)
class Rejected:
    """A client frame the server refuses, in its place in the stream: answer it with ERROR.

    ``verb`` is the refused frame's verb, or None for a framing error, after
    which the stream is out of step: send the ERROR and close.
    """

    verb: str | None
    error: ProtocolError


class LocalProtocolError(Exception):
    """This side tried to send a frame its state does not allow: a bug in the caller."""


class _Connection:
    """What both sides share: the decoder, the role and the lifecycle."""

    __slots__ = ("_asked", "_decoder", "_frames", "_framing_error", "role", "state")

    def __init__(self, max_body_bytes: int) -> None:
        self._decoder = FrameDecoder(max_body_bytes)
        self._frames: deque[Frame] = deque()
        self._framing_error: ProtocolError | None = None
        self._asked = Role.NONE
        self.role = Role.NONE
        self.state = _OPEN

    def receive_data(self, data: bytes) -> None:
        """Take bytes read from the socket; frames before any framing error still count."""
        if self._framing_error is not None or self.state is _CLOSED:
            return
        try:
            self._frames.extend(self._decoder.feed(data))
        except ProtocolError as error:
            self._framing_error = error
            return
        self._framing_error = self._decoder.error

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as events."""
        return self._decoder.buffered + sum(len(frame.body) for frame in self._frames)

    def _granted(self) -> None:
        self.role, self.state = self._asked, _OPEN

    def _refused(self) -> None:
        self._asked, self.state = Role.NONE, _OPEN


class ServerConnection(_Connection):
    """The server's side of one connection.

    The per-frame paths (``next_event`` for an allowed, well-formed frame,
    ``send`` on an open connection) are one lookup each in tables derived
    from states.py when the role changes; everything else takes the slow path.
    """

    __slots__ = ("_error_reported", "_may_receive", "_may_send")

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(max_body_bytes)
        self._error_reported = False
        self._may_receive = _CLIENT_FRAMES_BY_ROLE[Role.NONE]
        self._may_send = _SERVER_SENDS_IN_PASSING[Role.NONE]

    def next_event(self) -> TypedFrame | Rejected | Pending:
        """The next client frame, checked against the table; or why there is none now.

        A frame is parsed before its role is checked, so an unknown verb or a bad
        value is reported as such (INVALID_PROTOCOL, BAD_NAME) whatever the state,
        and NOT_ALLOWED means only that a well-formed frame came at the wrong time.
        """
        frames = self._frames
        if self.state is not _OPEN or not frames:
            return self._no_frame_now()
        frame = frames.popleft()
        verb = frame.verb
        kind = self._may_receive.get(verb)
        if kind is None:
            return self._refusal(frame)
        try:
            event = kind.from_frame(frame)
        except ProtocolError as error:
            return Rejected(verb, error)
        if verb in _MOVES_STATE:
            if verb in HANDSHAKES:
                self._asked, self.state = HANDSHAKES[verb], _AWAITING_ACK
            else:
                self.state = _CLOSING
        return event

    def _no_frame_now(self) -> Rejected | Pending:
        if self.state is _AWAITING_ACK:
            return PAUSED
        if self.state is not _OPEN:  # after the goodbye, frames are ignored (PROTOCOL.md 4.3)
            self._frames.clear()
            return NEED_DATA
        error = self._framing_error
        if error is None or self._error_reported:
            return NEED_DATA
        self._error_reported = True  # one framing error is reported, then nothing more
        return Rejected(None, error)

    @property
    def framing_error(self) -> ProtocolError | None:
        """The framing error that ended the stream, once handed out as an event."""
        return self._framing_error if self._error_reported else None

    def _refusal(self, frame: Frame) -> Rejected:
        """Why a frame the role may not send is refused: its own fault first, else the role's."""
        try:
            parse(frame)
        except ProtocolError as error:
            return Rejected(frame.verb, error)
        return Rejected(frame.verb, ProtocolError(ErrorCode.NOT_ALLOWED,
                                                  not_allowed_hint(self.role, frame.verb)))

    def send(self, frame: TypedFrame) -> bytes:
        """The bytes of ``frame``, which must be legal now; moves the state."""
        if self.state is _OPEN and frame.VERB in self._may_send:
            return frame.encode()
        verb = frame.VERB
        if self.state is _AWAITING_ACK:
            if verb == ServerAcknowledgement.VERB:
                self._granted()
            elif verb == Error.VERB:
                self._refused()
        elif self.state is _CLOSED:
            return b""  # the goodbye or a fatal error went out: nothing may follow it
        elif verb not in SERVER_MAY_SEND[self.role]:
            raise LocalProtocolError(
                f"the server may not send {verb} on a {self.role.name.lower()} connection")
        if verb in SERVER_CLOSES_WITH:
            self.state = _CLOSED
        return frame.encode()

    def send_all(self, frames: list[TypedFrame]) -> bytes:
        """The bytes of several frames, in order, for one write."""
        send = self.send
        return b"".join([send(frame) for frame in frames])

    def _granted(self) -> None:
        super()._granted()
        self._may_receive = _CLIENT_FRAMES_BY_ROLE[self.role]
        self._may_send = _SERVER_SENDS_IN_PASSING[self.role]


class ClientConnection(_Connection):
    """The client's side of one connection."""

    __slots__ = ()

    def __init__(self, max_body_bytes: int = CLIENT_MAX_BODY_BYTES) -> None:
        super().__init__(max_body_bytes)

    def send(self, frame: TypedFrame) -> bytes:
        """The bytes of ``frame``, which must be legal now; moves the state.

        Behind a handshake, the role it asks for may already be used (the
        server handles frames in order), so a publisher can pipeline its
        first PUBLISH frames with its handshake.
        """
        verb = frame.VERB
        state = self.state
        if state is _OPEN:
            role = self.role
        elif state is _AWAITING_ACK and verb not in HANDSHAKES:
            role = self._asked
        else:
            raise LocalProtocolError(f"cannot send {verb}: the connection is "
                                     f"{state.name.lower().replace('_', ' ')}")
        if verb not in CLIENT_MAY_SEND[role]:
            raise LocalProtocolError(not_allowed_hint(role, verb))
        if verb in HANDSHAKES:
            self._asked, self.state = HANDSHAKES[verb], _AWAITING_ACK
        elif verb == ClientShutdownSignal.VERB:
            self.state = _CLOSING
        return frame.encode()

    def next_event(self) -> TypedFrame | Pending:
        """The next server frame, checked against the table, or NEED_DATA.

        Raises ProtocolError when the server broke the protocol (bad framing,
        a frame this connection cannot get): the connection is unusable then.
        """
        frames = self._frames
        if not frames:
            if self._framing_error is not None:
                raise self._framing_error
            return NEED_DATA
        frame = frames.popleft()
        verb = frame.verb
        awaiting = self.state is _AWAITING_ACK
        if verb not in (SERVER_MAY_ANSWER_HANDSHAKE if awaiting else SERVER_MAY_SEND[self.role]):
            raise ProtocolError(
                ErrorCode.INVALID_PROTOCOL,
                f"the server sent {verb} on a {self.role.name.lower()} connection", fatal=True)
        event = parse(frame, SERVER_FRAMES)
        if awaiting and verb == ServerAcknowledgement.VERB:
            self._granted()
        elif awaiting and verb == Error.VERB:
            self._refused()
        elif verb in SERVER_CLOSES_WITH:
            self.state = _CLOSED
        return event
