"""Pretend brokers of a cluster on real sockets, for the clients' cluster tests: threads,
sockets and the server side of bbmq.protocol (ServerConnection), nothing of the core.

Each :class:`FakeBroker` answers handshakes as its script says (grant, or a
REDIRECT), stores publishes in a :class:`SharedStore` (the cluster's database:
one copy per msgid, whichever broker took it), may hold publishes unanswered and
then end the connection with a REDIRECT (a topic moving mid-stream), and
delivers the messages it is given to FETCHes.  Everything a client sent is
recorded, so a test can say which broker saw what.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bbmq import protocol
from bbmq.protocol import NEED_DATA, PAUSED, ServerConnection, State, TypedFrame


class SharedStore:
    """The cluster's database: a message is stored once per msgid, whichever broker took it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids: dict[str, int] = {}
        #: Every msgid stored, in the order stored (a repeat is not stored again).
        self.stored: list[str] = []

    def store(self, msgid: str) -> int:
        with self._lock:
            if msgid not in self.ids:
                self.ids[msgid] = len(self.ids) + 1
                self.stored.append(msgid)
            return self.ids[msgid]


@dataclass
class Handshake:
    """A handshake one broker received: when (monotonic) and what."""

    at: float
    frame: TypedFrame


@dataclass
class FakeBroker:
    """One pretend broker listening on 127.0.0.1 (a thread per connection)."""

    store: SharedStore
    epoch: int = 1
    #: Answers to the next handshakes, in turn (a REDIRECT, or an acknowledgement); once
    #: they are used up, every handshake is granted.
    answers: deque[TypedFrame] = field(default_factory=deque)
    #: Publishes to confirm on each connection before holding the rest unanswered.
    confirm_first: int | None = None
    #: Sent (and the connection closed) once this many publishes are held unanswered on
    #: a connection; once.
    redirect_when_held: tuple[int, protocol.Redirect] | None = None
    #: The connection is dropped (no answer, no REDIRECT: a crash) once this many publishes
    #: are held unanswered on it; once.
    drop_when_held: int | None = None
    #: Handed to FETCHes, oldest first (each delivered once).
    deliveries: deque[protocol.Message] = field(default_factory=deque)
    #: Sent (and the connection closed) right after the last of ``deliveries`` went out.
    redirect_when_delivered: protocol.Redirect | None = None
    #: Every frame a client sent, and the handshakes with their time.
    received: list[TypedFrame] = field(default_factory=list)
    handshakes: list[Handshake] = field(default_factory=list)
    #: The brokers this one lists in its answers (set by :func:`cluster`).
    brokers: list[str] = field(default_factory=list)
    #: Close every connection as soon as it is accepted (a broker going down).
    hang_up: bool = False

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"fake-{self.port}").start()

    def acknowledgement(self) -> protocol.ServerAcknowledgement:
        return protocol.ServerAcknowledgement({"epoch": self.epoch, "brokers": self.brokers,
                                               "max_message_bytes": 1 << 20})

    def redirect(self, topic: str, to: FakeBroker | None, *, retry_ms: int | None = None,
                 epoch: int | None = None) -> protocol.Redirect:
        """A REDIRECT as this broker would send it: to ``to``'s address (with ``to``'s
        epoch unless ``epoch`` says otherwise), or, with ``to`` None, retry_ms."""
        if to is None:
            return protocol.Redirect(topic, None, None, retry_ms, tuple(self.brokers), "wait")
        return protocol.Redirect(topic, to.address, to.epoch if epoch is None else epoch, None,
                                 tuple(self.brokers), "moved")

    def frames(self, kind: type[Any]) -> list[Any]:
        return [frame for frame in list(self.received) if isinstance(frame, kind)]

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            if self.hang_up:
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        connection = ServerConnection()
        held = 0
        confirmed = 0
        with sock:
            while True:
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    return
                if not data:
                    return
                connection.receive_data(data)
                out: list[bytes] = []
                dropping = False
                while (event := connection.next_event()) not in (NEED_DATA, PAUSED):
                    assert not isinstance(event, protocol.Rejected), event
                    self.received.append(event)
                    if isinstance(event, (protocol.ClientPublisher, protocol.ClientSubscriber)):
                        self.handshakes.append(Handshake(time.monotonic(), event))
                        answer = self.answers.popleft() if self.answers else \
                            self.acknowledgement()
                        out.append(connection.send(answer))
                    elif isinstance(event, protocol.Publish):
                        if self.confirm_first is None or confirmed < self.confirm_first:
                            confirmed += 1
                            out.append(connection.send(protocol.ProducerAckMessage(
                                self.store.store(event.msgid or ""))))
                        else:
                            held += 1
                            if self.drop_when_held is not None and held >= self.drop_when_held:
                                self.drop_when_held = None
                                dropping = True  # after what is written: a crash
                                break
                            if self.redirect_when_held and held >= self.redirect_when_held[0]:
                                redirect, self.redirect_when_held = self.redirect_when_held[1], None
                                out.append(connection.send(redirect))
                    elif isinstance(event, protocol.Fetch):
                        out += self._deliver(connection, event)
                    elif isinstance(event, protocol.Ping):
                        out.append(connection.send(protocol.Pong()))
                    elif isinstance(event, protocol.ClientShutdownSignal):
                        out.append(connection.send(protocol.CloseConnectionSignal()))
                    if connection.state is State.CLOSED:
                        break
                with contextlib.suppress(OSError):
                    sock.sendall(b"".join(out))
                if dropping:
                    return
                if connection.state in (State.CLOSED, State.CLOSING):
                    return  # after a REDIRECT or the goodbye the server closes

    def _deliver(self, connection: ServerConnection, fetch: protocol.Fetch) -> list[bytes]:
        out = []
        for _ in range(fetch.count):
            if not self.deliveries:
                break
            out.append(connection.send(self.deliveries.popleft()))
        if not self.deliveries and self.redirect_when_delivered is not None and out:
            out.append(connection.send(self.redirect_when_delivered))
        elif len(out) < fetch.count and fetch.wait_ms is not None:
            # A long poll that would end short: at once (nothing more will come here).
            out.append(connection.send(protocol.QueueEmpty(len(out))))
        return out


def cluster(count: int) -> tuple[SharedStore, list[FakeBroker]]:
    """``count`` pretend brokers over one store, each listing them all in its answers."""
    store = SharedStore()
    brokers = [FakeBroker(store, epoch=index + 1) for index in range(count)]
    for broker in brokers:
        broker.brokers = [each.address for each in brokers]
    return store, brokers


def message(message_id: int, attempt: int = 1) -> protocol.Message:
    return protocol.Message(message_id, attempt, f"m{message_id}".encode(), "fake", None, {})


def refused_address() -> str:
    """An address where nothing listens (a port just freed): connecting is refused."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"
