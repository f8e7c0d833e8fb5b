"""The bbmq wire protocol, sans-IO: bytes in, events out; events in, bytes out.

docs/PROTOCOL.md is the public contract this package implements.  It knows
nothing of sockets, asyncio or time, so the server, every client and the
tests share one implementation of the grammar:

* ``codec``: framing.  ``FrameDecoder.feed(bytes) -> [Frame]`` and ``encode``.
* ``fields``: the values inside frames (names, integers, durations, options).
* ``client_frames``, ``server_frames``: the typed frames, each parsing and
  encoding itself.
* ``states``: the one table of which frames are legal in which state.
* ``connection``: ``ServerConnection`` and ``ClientConnection``, which apply
  that table to one connection as frames come and go.
"""

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
from bbmq.protocol.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_HEADER_BYTES,
    ErrorCode,
    Frame,
    FrameDecoder,
    ProtocolError,
    encode,
)
from bbmq.protocol.connection import (
    NEED_DATA,
    PAUSED,
    ClientConnection,
    LocalProtocolError,
    Pending,
    Rejected,
    ServerConnection,
)
from bbmq.protocol.fields import (
    MAX_DURATION_MS,
    MAX_INTEGER,
    MAX_MSGID_CHARS,
    NAME_RE,
    TypedFrame,
    check_name,
    check_sender,
)
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
from bbmq.protocol.states import (
    CLIENT_FRAMES,
    CLIENT_MAY_SEND,
    HANDSHAKES,
    SERVER_FRAMES,
    SERVER_MAY_SEND,
    Role,
    State,
    parse,
)

__all__ = [
    "CLIENT_FRAMES",
    "CLIENT_MAY_SEND",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HANDSHAKES",
    "MAX_DURATION_MS",
    "MAX_HEADER_BYTES",
    "MAX_INTEGER",
    "MAX_MSGID_CHARS",
    "NAME_RE",
    "NEED_DATA",
    "PAUSED",
    "SERVER_FRAMES",
    "SERVER_MAY_SEND",
    "Ack",
    "AdminCommand",
    "AdminResult",
    "ClientAdmin",
    "ClientConnection",
    "ClientPublisher",
    "ClientShutdownSignal",
    "ClientSubscriber",
    "CloseConnectionSignal",
    "Error",
    "ErrorCode",
    "Fetch",
    "Frame",
    "FrameDecoder",
    "LocalProtocolError",
    "Message",
    "Nack",
    "Pending",
    "Ping",
    "Pong",
    "ProducerAckMessage",
    "ProtocolError",
    "Publish",
    "QueueEmpty",
    "Redirect",
    "Rejected",
    "Role",
    "ServerAcknowledgement",
    "ServerConnection",
    "State",
    "TypedFrame",
    "check_name",
    "check_sender",
    "encode",
    "parse",
]
