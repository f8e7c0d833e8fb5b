"""Shared fixtures: a real broker on a real socket, and a raw protocol client."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbmq import protocol
from bbmq.testing import BrokerController

from .client_flavours import Asyncio, Blocking, Flavour


class RawClient:
    """Speaks bytes to the broker so tests can send anything, valid or not."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = protocol.FrameDecoder(max_body_bytes=1 << 30)
        self.frames: list[protocol.TypedFrame] = []

    def send(self, *frames: protocol.TypedFrame | bytes) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else f.encode() for f in frames))

    def receive(self, count: int = 1, timeout: float = 10.0) -> list[protocol.TypedFrame]:
        """Exactly ``count`` frames, waiting up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"wanted {count} frames, got {self.frames!r}")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed after {self.frames!r}")
            self.frames += [
                protocol.parse(f, protocol.SERVER_FRAMES) for f in self.decoder.feed(data)
            ]
        taken, self.frames = self.frames[:count], self.frames[count:]
        return taken

    def silent_for(self, seconds: float) -> bool:
        """True if nothing arrives within ``seconds`` (used only to show an absence)."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        self.frames += [protocol.parse(f, protocol.SERVER_FRAMES) for f in self.decoder.feed(data)]
        return not data and not self.frames

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        """Read until EOF; True if the server closed the connection within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(deadline - time.monotonic())
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.frames += [
                protocol.parse(f, protocol.SERVER_FRAMES) for f in self.decoder.feed(data)
            ]
        return False

    def handshake(self, frame: protocol.TypedFrame) -> dict[str, object]:
        self.send(frame)
        [ack] = self.receive()
        assert isinstance(ack, protocol.ServerAcknowledgement), ack
        return ack.info

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerController]:
    """A broker on the default (SQLite) store in a fresh data dir."""
    with BrokerController(data_dir=tmp_path / "data", ack_timeout=5) as controller:
        yield controller


@pytest.fixture
def raw(broker: BrokerController) -> Iterator[RawClient]:
    client = RawClient(broker.port)
    yield client
    client.close()


@pytest.fixture(params=["blocking", "asyncio"])
def clients(request: pytest.FixtureRequest) -> Iterator[Flavour]:
    """The blocking client, then the asyncio one behind the same (blocking) face: a test
    that uses ``clients.Producer`` and ``clients.Consumer`` runs against both."""
    flavour: Flavour = Blocking() if request.param == "blocking" else Asyncio()
    yield flavour
    flavour.close()
