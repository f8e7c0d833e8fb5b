"""A TCP proxy that can go silent: connections stay open, bytes stop flowing.

This is how a database hangs in real life (a network partition, a frozen
server): no reset, no error, just no answer.  ``black_hole()`` stops
forwarding on every connection, open or new; ``restore()`` drops the silenced
connections (as a recovered network would, once TCP gives up on them) and
forwards again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Self

#: How often a pump looks at the black-hole switch while no bytes come.
POLL_S = 0.05


class BlackHoleProxy:
    """Forwards 127.0.0.1:<port> to ``upstream`` until told to go silent."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._silent = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._accepter.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closing.set()
        self._accepter.join()
        self._listener.close()
        self._drop_all()

    def black_hole(self) -> None:
        self._silent.set()

    def restore(self) -> None:
        self._drop_all()
        self._silent.clear()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._sockets.append(client)
            if self._silent.is_set():
                continue  # accepted, and never answered
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _received(self, source: socket.socket, target: socket.socket) -> Iterator[bytes]:
        """What ``source`` sends, read by read, until it closes (then ``target`` is told: a
        FIN) or breaks, or the proxy stops."""
        source.settimeout(POLL_S)
        while not self._closing.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            yield data

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        for data in self._received(source, target):
            if self._silent.is_set():
                continue  # swallowed: the other side waits for an answer that never comes
            try:
                target.sendall(data)
            except OSError:
                return
