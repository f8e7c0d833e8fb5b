"""Drive the broker core directly: frames in, frames out, a fake store, a hand-moved clock."""

from __future__ import annotations

import itertools
from collections import defaultdict

from bbmq import protocol
from bbmq.core import Broker, BrokerConfig
from bbmq.handover import hand_over
from bbmq.store.base import Batch, StoredId

START_MS = 1_700_000_000_000


class CoreHarness:
    """A broker core with a store that commits on demand and a clock moved by hand."""

    def __init__(self, **config: object) -> None:
        self.broker = Broker(BrokerConfig(**config))  # type: ignore[arg-type]
        self.now = START_MS
        self._session_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._connections: dict[int, protocol.ServerConnection] = {}
        self._decoders: dict[int, protocol.FrameDecoder] = {}
        self.inbox: dict[int, list[protocol.TypedFrame]] = defaultdict(list)
        self.closed: set[int] = set()
        self.stored = Batch()
        self.msgids: dict[tuple[str, str], int] = {}

    def connect(self) -> int:
        session = next(self._session_ids)
        self.broker.connect(session)
        self._connections[session] = protocol.ServerConnection()
        self._decoders[session] = protocol.FrameDecoder(max_body_bytes=1 << 30)
        return session

    def publisher(self, topic: str, name: str | None = None) -> int:
        session = self.connect()
        options = {"name": name} if name else {}
        self.send(session, protocol.ClientPublisher(topic, options))
        assert isinstance(self.take(session)[0], protocol.ServerAcknowledgement)
        return session

    def subscriber(self, topic: str, group: str = "default") -> int:
        session = self.connect()
        self.send(session, protocol.ClientSubscriber(topic, group))
        assert isinstance(self.take(session)[0], protocol.ServerAcknowledgement)
        return session

    def send(self, session: int, *frames: protocol.TypedFrame) -> None:
        self.feed(session, b"".join(frame.encode() for frame in frames))

    def feed(self, session: int, data: bytes) -> None:
        """Bytes from the client, in pieces cut anywhere, as the server reads them.

        The connection's protocol state keeps a partial frame until the rest comes, then
        each whole frame goes to the core, checked against the protocol's table: the
        server's path (:func:`bbmq.server.hand_over`) without the socket.
        """
        connection = self._connections[session]
        connection.receive_data(data)
        hand_over(connection, self.broker, session, self.now,
                  lambda: self._answer_handshake(session))
        self._collect()

    def _answer_handshake(self, session: int) -> bool:
        frames, close = self.broker.take_output_of(session)
        self._deliver(session, frames, close)
        return not close

    def commit(self) -> list[StoredId]:
        """The store commits everything the broker handed it."""
        publishes, batch = self.broker.take_store_work()
        ids = []
        for pending in publishes:
            message = pending.message
            key = (message.topic, message.msgid or "")
            if message.msgid and key in self.msgids:
                ids.append(StoredId(self.msgids[key], duplicate=True))
                continue
            ids.append(StoredId(next(self._message_ids)))
            if message.msgid:
                self.msgids[key] = ids[-1].id
        self.stored.messages += [pending.message for pending in publishes]
        self.stored.extend(batch)
        self.broker.stored(publishes, ids, self.now)
        self._collect()
        return ids

    def fail_store(self) -> None:
        publishes, _ = self.broker.take_store_work()
        self.broker.store_failed(publishes, "test outage")
        self._collect()

    def advance(self, ms: int) -> None:
        self.now += ms
        self.broker.tick(self.now)
        self._collect()

    def disconnect(self, session: int) -> None:
        self.broker.disconnect(session, self.now)
        self._collect()

    def collect(self) -> None:
        """Take what the broker sent after a call made on it directly (a cluster's membership)."""
        self._collect()

    def take(self, session: int) -> list[protocol.TypedFrame]:
        frames = self.inbox.pop(session, [])
        return frames

    def publish(self, session: int, *bodies: bytes, **options: object) -> list[int]:
        self.send(session, *(protocol.Publish(body, **options) for body in bodies))  # type: ignore[arg-type]
        self.commit()
        return [f.id for f in self.take(session) if isinstance(f, protocol.ProducerAckMessage)]

    def _collect(self) -> None:
        answered = []
        for session, frames, close in self.broker.take_output():
            if self._deliver(session, frames, close) and not close:
                answered.append(session)
        for session in answered:  # as the server does: the frames behind it go on now
            self.feed(session, b"")

    def _deliver(self, session: int, frames: list[protocol.TypedFrame], close: bool) -> bool:
        """Frames to the client, through the wire format and the protocol's state; True if
        they answered a handshake that had waited (a cluster's topic being loaded)."""
        connection = self._connections[session]
        waited = bool(frames) and connection.state is protocol.State.AWAITING_ACK
        data = connection.send_all(frames)
        for frame in self._decoders[session].feed(data):
            self.inbox[session].append(protocol.parse(frame, protocol.SERVER_FRAMES))
        if close:
            self.closed.add(session)
        return waited and connection.state is not protocol.State.AWAITING_ACK


def messages(frames: list[protocol.TypedFrame]) -> list[tuple[int, int, bytes]]:
    """(id, attempt, body) of the MESSAGE frames."""
    return [(f.id, f.attempt, f.body) for f in frames if isinstance(f, protocol.Message)]
