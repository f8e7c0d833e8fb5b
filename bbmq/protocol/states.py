"""Which frames exist, and which are legal in which state of a connection: the one table.

docs/PROTOCOL.md section 4 in code.  A connection starts with no role; its
handshake asks for one (publisher, subscriber, admin) and the server's
SERVER_ACKNOWLEDGEMENT grants it for the connection's whole life.  The role
decides which frames each side may send; the lifecycle adds the rest:

========================  =====================================  ===============================
state                     the client may send                    the server may send
========================  =====================================  ===============================
OPEN, no role yet         a handshake, PING, goodbye             ERROR, PONG, CLOSE_CONNECTION
AWAITING_ACK              the asked-for role's frames, PING,     SERVER_ACKNOWLEDGEMENT (grants
                          goodbye (pipelined behind it)          the role), ERROR (refuses it) or
                                                                 REDIRECT (another broker serves
                                                                 the topic: closes)
OPEN, with a role         ``CLIENT_MAY_SEND[role]``              ``SERVER_MAY_SEND[role]``
CLOSING (client said      nothing (the server ignores it)        the replies still owed, then
goodbye)                                                         CLOSE_CONNECTION_SIGNAL
CLOSED                    nothing                                nothing
========================  =====================================  ===============================

The server and the client share this table through their connection objects
(bbmq/protocol/connection.py), so the grammar exists once.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, auto
from typing import Final

from bbmq.protocol.client_frames import (
    Ack,
    AdminCommand,
    ClientAdmin,
    ClientPublisher,
    ClientShutdownSignal,
    ClientSubscriber,
    Fetch,
    Nack,
    Ping,
    Publish,
)
from bbmq.protocol.codec import Frame
from bbmq.protocol.fields import TypedFrame, invalid
from bbmq.protocol.server_frames import (
    AdminResult,
    CloseConnectionSignal,
    Error,
    Message,
    Pong,
    ProducerAckMessage,
    QueueEmpty,
    Redirect,
    ServerAcknowledgement,
)


class Role(Enum):
    """What a connection is for, fixed by its handshake."""

    NONE = auto()  # before the handshake
    PUBLISHER = auto()
    SUBSCRIBER = auto()
    ADMIN = auto()

    # The tables below are looked up by role for every frame, both ways.  Members are
    # singletons, so hashing by identity (in C) is right, and several times faster than
    # Enum's own __hash__, a Python function that hashes the name.
    __hash__ = object.__hash__


class State(Enum):
    """Where a connection is in its life, whatever its role."""

    OPEN = auto()
    #: A handshake was sent and has no answer yet.
    AWAITING_ACK = auto()
    #: The client said goodbye; the server still sends the replies it owes.
    CLOSING = auto()
    CLOSED = auto()


CLIENT_FRAMES: Final[Mapping[str, type[TypedFrame]]] = {
    cls.VERB: cls
    for cls in (ClientPublisher, ClientSubscriber, ClientAdmin, Publish, Fetch, Ack, Nack, Ping,
                ClientShutdownSignal, AdminCommand)
}
SERVER_FRAMES: Final[Mapping[str, type[TypedFrame]]] = {
    cls.VERB: cls
    for cls in (ServerAcknowledgement, ProducerAckMessage, Message, QueueEmpty, Error,
                AdminResult, Pong, CloseConnectionSignal, Redirect)
}

#: The handshake that asks for each role.
HANDSHAKES: Final[Mapping[str, Role]] = {
    ClientPublisher.VERB: Role.PUBLISHER,
    ClientSubscriber.VERB: Role.SUBSCRIBER,
    ClientAdmin.VERB: Role.ADMIN,
}
_ALWAYS_FROM_CLIENT: Final = frozenset({Ping.VERB, ClientShutdownSignal.VERB})
_ALWAYS_FROM_SERVER: Final = frozenset({Error.VERB, Pong.VERB, CloseConnectionSignal.VERB})

#: The table: what each side may send on an open connection of each role.
CLIENT_MAY_SEND: Final[Mapping[Role, frozenset[str]]] = {
    Role.NONE: _ALWAYS_FROM_CLIENT | HANDSHAKES.keys(),
    Role.PUBLISHER: _ALWAYS_FROM_CLIENT | {Publish.VERB},
    Role.SUBSCRIBER: _ALWAYS_FROM_CLIENT | {Fetch.VERB, Ack.VERB, Nack.VERB},
    Role.ADMIN: _ALWAYS_FROM_CLIENT | {AdminCommand.VERB},
}
SERVER_MAY_SEND: Final[Mapping[Role, frozenset[str]]] = {
    Role.NONE: _ALWAYS_FROM_SERVER,
    Role.PUBLISHER: _ALWAYS_FROM_SERVER | {ProducerAckMessage.VERB, Redirect.VERB},
    Role.SUBSCRIBER: _ALWAYS_FROM_SERVER | {Message.VERB, QueueEmpty.VERB, Redirect.VERB},
    Role.ADMIN: _ALWAYS_FROM_SERVER | {AdminResult.VERB},
}

#: What the server may send while a handshake waits for its answer (a REDIRECT answers
#: only a publisher's or a subscriber's: an admin connection names no topic).
SERVER_MAY_ANSWER_HANDSHAKE: Final = _ALWAYS_FROM_SERVER | {ServerAcknowledgement.VERB,
                                                            Redirect.VERB}
#: The server frames after which the connection is closed, on both sides.
SERVER_CLOSES_WITH: Final = frozenset({CloseConnectionSignal.VERB, Redirect.VERB})


def not_allowed_hint(role: Role, verb: str) -> str:
    """Why ``verb`` from a client is refused on a connection of ``role``, and what to do."""
    if verb in HANDSHAKES:
        return "handshake already done; open a new connection for another role"
    if role is Role.NONE:
        return f"{verb} not allowed: send CLIENT_PUBLISHER, CLIENT_SUBSCRIBER or CLIENT_ADMIN first"
    return f"{verb} not allowed: this is a {role.name.lower()} connection"


def parse(frame: Frame, table: Mapping[str, type[TypedFrame]] = CLIENT_FRAMES) -> TypedFrame:
    """Turn a generic frame into its typed frame, or raise a non-fatal ProtocolError."""
    cls = table.get(frame.verb)
    if cls is None:
        raise invalid(f"unknown verb {frame.verb!r}; see docs/PROTOCOL.md for the verbs")
    return cls.from_frame(frame)
